"""Generate small synthetic videos with known content: for tests, benchmarks and demos.

The picture is a smooth, structured background panning slowly with a textured disc
moving across it (optical flow has real structure to lock onto), optionally with a
hard cut to a different scene, grain, rotation metadata or 10-bit pixels.  The sound
track is a sine tone, so its duration and start are easy to check.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from pipelines.av_typed import add_audio_stream, add_video_stream

__all__ = [
    "SampleSpec",
    "sample_frame",
    "write_audio_only",
    "write_sample_video",
    "write_zero_frame_video",
]


@dataclass(frozen=True)
class SampleSpec:
    width: int = 96
    height: int = 64
    seconds: float = 1.0
    fps: Fraction = Fraction(24)
    audio: bool = True
    audio_rate: int = 48000
    audio_codec: str = "aac"  # e.g. "pcm_s16le" in .mkv/.mov, to exercise transcoding
    tone_hz: float = 440.0
    codec: str = "libx264"
    pixel_format: str = "yuv420p"
    gop: int = 12
    crf: int = 16  # lower for sources whose encoding noise must not mask a measurement
    rotation: int = 0  # clockwise degrees written as display-matrix metadata
    cut_at_frame: int | None = None  # frames from here on show a different scene
    grain: float = 0.0  # std-dev of Gaussian noise added to each frame (0–255 scale)
    speed: float = 1.5  # disc motion in pixels per frame
    seed: int = 0

    @property
    def frame_count(self) -> int:
        return round(self.seconds * self.fps)


def sample_frame(spec: SampleSpec, position: float, *, scene: int = 0) -> np.ndarray:
    """The noise-free frame at (possibly fractional) frame ``position``, RGB uint8."""
    h, w = spec.height, spec.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    pan = 0.5 * position
    if scene == 0:
        r = 127 + 60 * np.sin((xx + pan) / 7.0 + yy / 11.0) + 40 * np.cos(yy / 5.0)
        g = 127 + 70 * np.sin((xx + pan) / 13.0 - yy / 9.0)
        b = 127 + 50 * np.cos((xx + pan + yy) / 8.0)
    else:
        r = 40 + 30 * np.cos(yy / 4.0)
        g = 180 + 50 * np.sin(xx / 5.0)
        b = 220 - 60 * np.sin((xx - yy) / 6.0)
    img = np.dstack([r, g, b])
    cx = w / 4 + spec.speed * position
    cy, radius = h / 2, h / 5
    disc = (xx - cx) ** 2 + (yy - cy) ** 2 < radius**2
    texture = np.dstack(
        [
            200 + 50 * np.sin((xx - cx) / 3.0),
            60 + 40 * np.cos((yy - cy) / 3.0),
            np.full_like(xx, 30.0),
        ]
    )
    img[disc] = texture[disc]
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def write_sample_video(path: str | Path, spec: SampleSpec = SampleSpec()) -> Path:
    """Encode ``spec`` to ``path`` (container from the suffix) and return the path."""
    path = Path(path)
    rng = np.random.default_rng(spec.seed)
    with av.open(str(path), mode="w") as container:
        video = add_video_stream(container, spec.codec, spec.fps)
        video.width, video.height = spec.width, spec.height
        video.pix_fmt = spec.pixel_format
        if spec.codec in ("libx264", "libx265"):
            params = f"keyint={spec.gop}:min-keyint={spec.gop}:scenecut=0"
            video.options = {
                "preset": "ultrafast",
                "crf": str(spec.crf),
                f"{spec.codec[3:]}-params": params,
            }
        if spec.rotation:
            # FFmpeg's display matrix angle is counter-clockwise.
            video.set_display_rotation(-spec.rotation)
        audio = None
        if spec.audio:
            audio = add_audio_stream(container, spec.audio_codec, spec.audio_rate)
            audio.layout = "mono"
        for i in range(spec.frame_count):
            scene = 1 if spec.cut_at_frame is not None and i >= spec.cut_at_frame else 0
            img = sample_frame(spec, i, scene=scene)
            if spec.grain:
                noisy = img + rng.normal(0, spec.grain, img.shape)
                img = np.clip(noisy, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            frame.time_base = 1 / spec.fps
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if audio is not None:
            _write_tone(container, audio, spec)
    return path


def _write_tone(
    container: av.container.OutputContainer, stream: av.audio.AudioStream, spec: SampleSpec
) -> None:
    total = round(spec.seconds * spec.audio_rate)
    block = 1024
    for start in range(0, total, block):
        n = min(block, total - start)
        t = (np.arange(start, start + n) / spec.audio_rate).astype(np.float32)
        samples = (0.3 * np.sin(2 * np.pi * spec.tone_hz * t)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = spec.audio_rate
        frame.pts = start
        frame.time_base = Fraction(1, spec.audio_rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def write_zero_frame_video(path: str | Path, spec: SampleSpec = SampleSpec()) -> Path:
    """A container whose video track has no frames, beside a real audio track."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        video = add_video_stream(container, spec.codec, spec.fps)
        video.width, video.height, video.pix_fmt = spec.width, spec.height, spec.pixel_format
        audio = add_audio_stream(container, "aac", spec.audio_rate)
        audio.layout = "mono"
        _write_tone(container, audio, spec)
        container.mux(video.encode(None))
    return path


def write_audio_only(path: str | Path, spec: SampleSpec = SampleSpec()) -> Path:
    """An MP4/M4A with only the sine-tone audio track."""
    path = Path(path)
    with av.open(str(path), mode="w", format="mp4") as container:
        _write_tone(container, add_audio_stream(container, "aac", spec.audio_rate), spec)
    return path
