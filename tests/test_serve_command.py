"""`retroiva serve` as a user runs it (what `make serve` does): key printed, API up."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_prints_a_working_key_and_stops_on_ctrl_c(tmp_path: Path):
    port = _free_port()
    env = {**os.environ, "RETROIVA_DATA_DIR": str(tmp_path / "data"),
           "RETROIVA_PORT": str(port), "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        process = subprocess.Popen([sys.executable, "-m", "serve_app.cli", "serve"], env=env,
                                   stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Try: curl" not in log.read_text():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        text = log.read_text()
        key = re.search(r"Bearer (sk_live_[A-Za-z0-9_-]+)", text).group(1)
        assert re.search(r"webhook secret: whsec_", text)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        jobs = httpx.get(f"{base}/v2/jobs", headers={"Authorization": f"Bearer {key}"})
        assert jobs.status_code == 200 and jobs.json() == {
            "data": [], "has_more": False, "next_cursor": None}
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert "shutting down" in log.read_text()
