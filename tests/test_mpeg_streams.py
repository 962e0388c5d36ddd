"""MPEG-TS and MPEG-PS inputs (broadcast captures, DVD-era archives) decode chunk by chunk.

Their demuxers have no index, and a seek to a keyframe's own pts landed on the next
keyframe: every chunk after the first decoded none of its frames and the job failed
with "frames … do not decode".  Each chunk must give exactly the frames ffmpeg decodes.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from benchmarks.fidelity import clip_path
from pipelines.chunk_plan import chunk_plan
from pipelines.decode import decode_chunk
from pipelines.noise_probe import measure_noise
from pipelines.probe import probe

from media import psnr

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg (make test installs it)"
)

FRAMES = 36


def _ffmpeg_rgb(path: Path, width: int, height: int) -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True,
        capture_output=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        ("dvd.mpg", ["-c:v", "mpeg2video", "-q:v", "4", "-bf", "2", "-f", "mpeg"]),
        ("broadcast.ts", ["-c:v", "mpeg2video", "-q:v", "4", "-bf", "2", "-f", "mpegts"]),
        ("camera.ts", ["-c:v", "libx264", "-crf", "20", "-bf", "2", "-f", "mpegts"]),
    ],
)
def test_every_chunk_of_an_unindexed_stream_decodes_its_own_frames(
    tmp_path: Path, name: str, codec: list[str]
):
    source = tmp_path / name
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-i", str(clip_path("carphone_pristine.mp4"))),
            *("-frames:v", str(FRAMES), "-g", "6", *codec, "-an", str(source)),
        ],
        check=True,
    )
    info = probe(source)
    assert info.frame_count == FRAMES and len(info.keyframe_pts) >= 5
    reference = _ffmpeg_rgb(source, info.width, info.height)
    chunks = chunk_plan(info, max_frames=6)
    assert len(chunks) == FRAMES // 6
    decoded = np.concatenate(
        [decode_chunk(info.path, c, info.rotation, info.colour)[0] for c in chunks]
    )
    assert decoded.shape == reference.shape
    # Frame for frame: a frame from a neighbouring GOP scores ~25 dB; the same frame
    # 42 dB and up (MPEG-2's chroma is resampled a little differently from swscale).
    for i, (ours, theirs) in enumerate(zip(decoded, reference, strict=True)):
        assert psnr(ours, theirs) > 38, f"frame {i}"
    # The noise probe seeks the same way and finds frames at every place it samples.
    assert measure_noise(info).luma > 0
