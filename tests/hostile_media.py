"""A corpus of hostile and unusual inputs, generated on demand (nothing binary is committed).

    .venv/bin/python -m tests.hostile_media OUT_DIR     # writes the corpus, lists it

Each entry says what the service must do with it: ``"completed"`` or ``"failed"``
(with the error type).  ``tests/test_hostile_media.py`` runs every entry through the
pipeline; ``benchmarks/hostile_media.py`` measures time and peak memory per entry.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipelines.sample_video import (
    SampleSpec,
    write_audio_only,
    write_sample_video,
    write_zero_frame_video,
)

__all__ = ["CORPUS", "HostileInput", "write_corpus"]


@dataclass(frozen=True)
class HostileInput:
    name: str
    make: Callable[[Path], Path]  # writes the file under the given directory
    outcome: str  # "completed" or the expected error type
    note: str


def _sample(name: str, **fields: object) -> Callable[[Path], Path]:
    return lambda d: write_sample_video(d / name, SampleSpec(**fields))  # type: ignore[arg-type]


def _truncated(d: Path) -> Path:
    whole = write_sample_video(d / "whole.mp4", SampleSpec(seconds=2))
    path = d / "truncated.mp4"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])
    whole.unlink()
    return path


def _text_as_mp4(d: Path) -> Path:
    path = d / "readme.mp4"
    path.write_text("This is not a video, whatever its name says.\n" * 50)
    return path


def _mkv_named_mp4(d: Path) -> Path:
    real = write_sample_video(d / "real.mkv", SampleSpec(seconds=1))
    return real.rename(d / "actually-matroska.mp4")


def _absurd_header(d: Path) -> Path:
    """A Y4M stream whose header claims 65535×65535 (12 GiB a frame), with 1 KiB of data."""
    path = d / "absurd.y4m"
    path.write_bytes(b"YUV4MPEG2 W65535 H65535 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\0" * 1024)
    return path


def _encode(
    path: Path,
    frames: list[np.ndarray],
    x264_params: str = "",
    pts_ms: list[int] | None = None,
    *,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
    gop_size: int | None = None,
) -> Path:
    """x264 (or ``codec`` with its ``options``) in ``path``'s container; 25 fps unless
    ``pts_ms`` times each frame (VFR)."""
    h, w = frames[0].shape[:2]
    time_base = Fraction(1, 1000) if pts_ms else Fraction(1, 25)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.time_base = time_base
        if gop_size:
            stream.gop_size = gop_size
        stream.options = (
            options
            if options is not None
            else {"preset": "ultrafast", "crf": "30", "x264-params": x264_params}
        )
        for i, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts, frame.time_base = (pts_ms[i] if pts_ms else i), time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _bomb(d: Path) -> Path:
    """8192×8192 black frames: 200 KB that decode to 200 MB each."""
    black = np.zeros((8192, 8192, 3), np.uint8)
    return _encode(d / "bomb.mp4", [black, black])


def _vfr(d: Path) -> Path:
    pts_ms = [0, 33, 66, 150, 183, 300, 333, 500, 533, 566]
    frames = [np.full((64, 96, 3), 20 * i, np.uint8) for i in range(len(pts_ms))]
    return _encode(d / "vfr.mkv", frames, pts_ms=pts_ms)


def _interlaced(d: Path) -> Path:
    frames = []
    for i in range(24):
        pixels = np.zeros((64, 96, 3), np.uint8)
        pixels[i % 2 :: 2] = 200  # the two fields differ, as in real interlaced video
        frames.append(pixels)
    return _encode(d / "interlaced.mp4", frames, "interlaced=1:tff=1")


def _other_codec(name: str, codec: str, options: dict[str, str]) -> Callable[[Path], Path]:
    """30 frames of a moving gradient in ``codec``, keyframes every 6 frames, so a job
    has several chunks and each seeks."""

    def make(d: Path) -> Path:
        ramp = np.tile(np.linspace(0, 255, 96, dtype=np.uint8)[None, :, None], (64, 1, 3))
        frames = [np.roll(ramp, 3 * i, axis=1) for i in range(30)]
        return _encode(d / name, frames, codec=codec, options=options, gop_size=6)

    return make


def _huge_audio_only(d: Path) -> Path:
    return write_audio_only(d / "ten-minutes.m4a", SampleSpec(seconds=600, audio_rate=8000))


CORPUS: tuple[HostileInput, ...] = (
    HostileInput("truncated", _truncated, "invalid_input", "first third of an MP4"),
    HostileInput("text-named-mp4", _text_as_mp4, "invalid_input", "text with a .mp4 name"),
    HostileInput("mkv-named-mp4", _mkv_named_mp4, "completed", "Matroska named .mp4"),
    HostileInput(
        "zero-frames",
        lambda d: write_zero_frame_video(d / "zero.mp4"),
        "invalid_input",
        "video track with no frames, audio present",
    ),
    HostileInput(
        "audio-only", lambda d: write_audio_only(d / "audio.m4a"), "invalid_input", "no video track"
    ),
    HostileInput(
        "huge-audio-only", _huge_audio_only, "invalid_input", "10 minutes of audio, no video"
    ),
    HostileInput("absurd-dimensions", _absurd_header, "invalid_input", "header claims 65535×65535"),
    HostileInput(
        "decompression-bomb",
        _bomb,
        "invalid_options",
        "8192×8192 frames in 200 KB; ×2 would exceed 8192 px",
    ),
    HostileInput("one-frame", _sample("one.mp4", seconds=1 / 24), "completed", "a single frame"),
    HostileInput(
        "high-fps", _sample("fast.mp4", seconds=0.25, fps=Fraction(240)), "completed", "240 fps"
    ),
    HostileInput("vfr", _vfr, "completed", "variable frame rate, 1 ms timebase"),
    HostileInput(
        "odd-size",
        _sample("odd.mp4", width=33, height=17, seconds=0.5, pixel_format="yuv444p"),
        "completed",
        "33×17 (4:4:4: x264 refuses odd 4:2:0)",
    ),
    HostileInput(
        "rotated",
        _sample("rotated.mp4", rotation=90, seconds=0.5),
        "completed",
        "90° display matrix",
    ),
    HostileInput("interlaced", _interlaced, "completed", "x264 interlaced, top field first"),
    HostileInput(
        "ten-bit",
        _sample("ten.mkv", pixel_format="yuv420p10le", seconds=0.5),
        "completed",
        "yuv420p10le",
    ),
    HostileInput(
        "mpeg2-ts",
        _other_codec("broadcast.ts", "mpeg2video", {"bf": "2", "qscale": "4"}),
        "completed",
        "MPEG-2 in MPEG-TS, B-frames: no index, seeks land a GOP late",
    ),
    HostileInput(
        "vp9-webm",
        _other_codec("clip.webm", "libvpx-vp9", {"crf": "40", "b": "0", "deadline": "realtime"}),
        "completed",
        "VP9 exports a quantiser index but no blocks",
    ),
)


def write_corpus(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return {entry.name: entry.make(directory) for entry in CORPUS}


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "hostile-media")
    for name, path in write_corpus(out).items():
        print(f"{name:20s} {path.stat().st_size:>10d} B  {path}")
