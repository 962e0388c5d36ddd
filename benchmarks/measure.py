"""Shared by the benchmark scripts: the ffmpeg baseline and memory sampling."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = ["MemorySampler", "ensure_ffmpeg", "ffmpeg_x264"]


def ffmpeg_x264(
    ffmpeg: str, source: Path | str, vf: str, speed: str, crf: int, output: Path
) -> None:
    """The command a user would run: ``vf``, then libx264 at the preset's speed and CRF,
    yuv420p, audio copied, faststart MP4 (the baseline the speed benchmarks time)."""
    subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-y",
            "-i",
            str(source),
            "-vf",
            vf,
            "-c:v",
            "libx264",
            "-preset",
            speed,
            "-crf",
            str(crf),
            "-pix_fmt",
            "yuv420p",
            "-c:a",
            "copy",
            "-movflags",
            "+faststart",
            str(output),
        ],
        check=True,
    )


def ensure_ffmpeg() -> str:
    """Path of Debian's ffmpeg, installing it with apt if missing (benchmarks only)."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    print("ffmpeg not found; installing Debian's ffmpeg with apt-get …", flush=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "ffmpeg"], check=True, stdout=subprocess.DEVNULL
    )
    found = shutil.which("ffmpeg")
    if not found:
        raise SystemExit("ffmpeg is still missing after apt-get install")
    return found


@dataclass
class MemorySampler:
    """Peak proportional set size (PSS) of this process and all its descendants.

    The driver starts Ray, so raylet, the object store and every worker descend from
    it; PSS counts shared pages (the object store's) once instead of per process.
    """

    interval: float = 0.25
    peak_bytes: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _total(self) -> int:
        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._total())
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self.peak_bytes = self._total()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        time.sleep(0)
