"""Local `ray start` clusters for tests: free ports and tearing a node down.

A node started with ``start_new_session=True`` and ``--block`` owns a process session
(raylet, GCS, workers and all); killing that session stops exactly that node.  Never
`ray stop`: it stops every Ray on the machine, other test sessions' included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket

import psutil

__all__ = ["free_port", "kill_session", "session_members"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def session_members(sid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                found.append(proc)
        except (ProcessLookupError, psutil.Error):
            continue
    return found


def kill_session(sid: int, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGKILL)) -> None:
    """Every process `ray start` spawned, workers included, shares its session."""
    for sig in signals:
        for proc in session_members(sid):
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        psutil.wait_procs(session_members(sid), timeout=10)
