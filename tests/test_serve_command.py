"""`retroiva serve` as a user runs it (what `make serve` does): key printed, API up,
one access line per request, the dashboard's URL, a refused second start on the same
port, and a clean stop on SIGTERM or Ctrl-C."""

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
import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    env = {
        **os.environ,
        "RETROIVA_DATA_DIR": str(tmp_path / "data"),
        "RETROIVA_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        "RETROIVA_DASHBOARD_PORT": str(_free_port()),
        **extra,
    }
    env.pop("RAY_ADDRESS", None)
    return env


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "serve_app.cli", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for(process: subprocess.Popen[bytes], log: Path, text: str, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while text not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)
    return log.read_text()


def _stop(process: subprocess.Popen[bytes], how: int) -> int:
    os.kill(process.pid, how) if how == signal.SIGTERM else os.killpg(process.pid, how)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


@pytest.mark.parametrize("stop_with", [signal.SIGTERM])
def test_serve_prints_a_working_key_logs_requests_and_stops_cleanly(tmp_path: Path, stop_with: int):
    port = _free_port()
    env = _env(tmp_path, port)
    log = tmp_path / "serve.log"
    process = _start(env, log)
    try:
        text = _wait_for(process, log, "Try: curl", 150)
        key = re.search(r"Bearer (sk_live_[A-Za-z0-9_-]+)", text).group(1)
        assert re.search(r"webhook secret: whsec_", text)
        dashboard = re.search(r"Ray dashboard: (http://\S+)", text)
        assert dashboard, text
        assert httpx.get(dashboard.group(1), timeout=10).status_code == 200
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz").status_code == 200
        jobs = httpx.get(f"{base}/v2/jobs?limit=3", headers={"Authorization": f"Bearer {key}"})
        assert jobs.status_code == 200 and jobs.json() == {
            "data": [],
            "has_more": False,
            "next_cursor": None,
        }
        request_id = jobs.headers["x-request-id"]
        missing = httpx.get(f"{base}/v2/jobs/job_nope", headers={"Authorization": "Bearer x"})
        assert missing.status_code == 401
        # Issue 18: the web dashboard's address and the operator's admin token, printed.
        assert f"Web dashboard: {base}/dashboard/" in text
        admin = re.search(r"Dashboard admin token .*: (adm_[A-Za-z0-9_-]+)", text).group(1)
        assert (tmp_path / "data" / "admin.token").read_text() == admin
        assert httpx.get(f"{base}/dashboard/login").status_code == 200

        # Item 1: a second service on the same port refuses to start.
        second = subprocess.run(
            [sys.executable, "-m", "serve_app.cli", "serve"],
            env=_env(tmp_path / "second", port),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 1
        assert f"127.0.0.1:{port} is already in use" in second.stderr
        assert "listening" not in second.stdout

        # Item 6: one access line per request, with method, path, status, duration, id.
        deadline = time.monotonic() + 30
        pattern = rf"access GET /v2/jobs 200 [0-9.]+ms {re.escape(request_id)}"
        while not re.search(pattern, log.read_text()):
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        assert re.search(r"access GET /v2/jobs/job_nope 401 [0-9.]+ms \S+", log.read_text())
        assert not re.search(r"\bINFO\b.*(ray|serve)", log.read_text(), re.IGNORECASE)
    finally:
        code = _stop(process, stop_with)
    text = log.read_text()
    assert code == 0, text
    assert "SIGTERM: shutting down" in text
    assert "*** SIGTERM received" not in text and "Traceback" not in text, text


def test_ctrl_c_stops_with_exit_status_0(tmp_path: Path):
    port = _free_port()
    log = tmp_path / "serve.log"
    process = _start(_env(tmp_path, port, RETROIVA_DASHBOARD="false"), log)
    try:
        text = _wait_for(process, log, "Stop with Ctrl-C", 150)
        assert "Ray dashboard" not in text
    finally:
        code = _stop(process, signal.SIGINT)
    assert code == 0, log.read_text()
    assert "Ctrl-C: shutting down" in log.read_text()
