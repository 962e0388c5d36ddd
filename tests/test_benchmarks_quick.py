"""Every benchmark still runs: each module at its ``--quick`` size, as a user runs it.

A benchmark that a later change broke (an import, a renamed setting, a settings value
passed to a child process in a form it refuses) fails here instead of rotting until
someone needs its figures.  Only "exits 0 and prints its figures" is asserted; the
figures at this size measure nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import ray

ROOT = Path(__file__).resolve().parent.parent

# (module, a line fragment its figures always print).  Every file in benchmarks/ that
# can be run is listed; test_every_benchmark_is_listed keeps it that way.
QUICK = {
    "api_latency": "throughput ratio Serve app / bare uvicorn",
    "encode_rate": "cores per GPU node",
    "fidelity": "best ours",
    "hostile_media": "peak MiB",
    "interpolation_quality": "RIFE/classical",
    "load": "lost 0",
    "memory_bounded": "peak memory ratio",
    "pipeline_ceiling": "ratio retroiva / ffmpeg",
    "pipeline_vs_ffmpeg": "ratio retroiva / ffmpeg nlmeans",
    "upscale_quality": "auto/ncnn",
    "upload_resume": "byte-identical: True",
    "gpu_check": "",  # on CPU: the "no CUDA" line; with CUDA: RIFE figures
}
NEEDS_FFMPEG = {"fidelity", "interpolation_quality", "pipeline_vs_ffmpeg", "pipeline_ceiling"}
# These join this session's Ray as drivers (a runner does the same) instead of paying
# for, and on a loaded machine timing out in, a Ray start-up each.  The Serve ones
# (api_latency, load, upload_resume) deploy into it and shut Serve down when they end,
# as the module-scoped ``service`` fixture does; no other module's Serve is running
# while this module runs, since module fixtures end with their module.
SESSION_RAY = {
    "api_latency",
    "fidelity",
    "hostile_media",
    "load",
    "memory_bounded",
    "pipeline_ceiling",
    "pipeline_vs_ffmpeg",
    "upload_resume",
}


def _run(args: list[str], timeout: float, ray_address: str | None = None) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        # gpu.sh calls python3: make it this interpreter.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    # A benchmark given no address starts its own local Ray where it needs one.
    env.pop("RAY_ADDRESS", None)
    if ray_address is not None:
        env["RAY_ADDRESS"] = ray_address
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{args} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


def test_every_benchmark_is_listed() -> None:
    modules = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - {"__init__", "measure"}
    assert modules == set(QUICK)


@pytest.mark.parametrize("module", sorted(QUICK))
def test_quick_run_prints_its_figures(module: str, request: pytest.FixtureRequest) -> None:
    if module in NEEDS_FFMPEG and shutil.which("ffmpeg") is None:
        pytest.skip("needs Debian's ffmpeg (make test installs it)")
    address = None
    if module in SESSION_RAY:
        request.getfixturevalue("ray_session")
        address = ray.get_runtime_context().gcs_address
    out = _run(
        [sys.executable, "-m", f"benchmarks.{module}", "--quick"], timeout=240, ray_address=address
    )
    assert QUICK[module] in out, out[-3000:]
    if module == "gpu_check":
        assert "no CUDA" in out or "RIFE" in out, out


def test_gpu_script_quick_path() -> None:
    out = _run(["bash", "benchmarks/gpu.sh", "--quick"], timeout=120)
    assert "no CUDA" in out or "RIFE" in out, out
