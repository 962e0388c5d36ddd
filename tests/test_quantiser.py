"""The encoder's quantiser, read while probing, tells compressed input from clean input
where the noise estimate can't (it reads heavily compressed footage as clean)."""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from benchmarks.fidelity import clip_path
from pipelines.job_plan import EnhanceRequest, plan_job
from pipelines.noise_probe import measure_noise
from pipelines.probe import probe
from pipelines.quantiser import COMPRESSED_QP

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg (make test installs it)"
)


def _copy(tmp_path: Path, name: str, codec: list[str], frames: int = 12) -> Path:
    """A half-size copy of carphone (real footage) encoded with ``codec``."""
    out = tmp_path / name
    subprocess.run(
        [
            *("ffmpeg", "-v", "error", "-y", "-i", str(clip_path("carphone_pristine.mp4"))),
            *("-frames:v", str(frames), "-vf", "scale=88:72:flags=bicubic", *codec),
            *("-an", str(out)),
        ],
        check=True,
    )
    return out


def _x264(crf: int) -> list[str]:
    return ["-c:v", "libx264", "-crf", str(crf), "-preset", "veryfast", "-pix_fmt", "yuv420p"]


def test_h264_quantiser_separates_a_crf_36_copy_from_a_crf_18_one(tmp_path: Path):
    clean = measure_noise(probe(_copy(tmp_path, "clean.mp4", _x264(18))))
    compressed = measure_noise(probe(_copy(tmp_path, "compressed.mp4", _x264(36))))
    assert clean.quantiser is not None and compressed.quantiser is not None
    assert clean.quantiser < COMPRESSED_QP <= compressed.quantiser
    # x264 at CRF c quantises near QP c (keyframes finer, B-frames coarser).
    assert 14 < clean.quantiser < 26 and 32 < compressed.quantiser < 46
    # The reason for the quantiser: the noise estimate calls the compressed copy cleaner.
    assert compressed.luma <= clean.luma


def test_mpeg2_quantiser_is_put_on_h264_s_scale(tmp_path: Path):
    # libavcodec's qp2qscale: qscale 2 is QP 19.4, qscale 16 is QP 37.4.
    fine = measure_noise(probe(_copy(tmp_path, "fine.mpg", ["-c:v", "mpeg2video", "-q:v", "2"])))
    coarse = measure_noise(
        probe(_copy(tmp_path, "coarse.mpg", ["-c:v", "mpeg2video", "-q:v", "16"]))
    )
    assert fine.quantiser == pytest.approx(19.4, abs=1.0)
    assert coarse.quantiser == pytest.approx(37.4, abs=1.0)


def test_a_codec_without_exported_quantisers_reads_none(tmp_path: Path):
    x265 = ["-c:v", "libx265", "-crf", "36", "-x265-params", "log-level=error"]
    hevc = _copy(tmp_path, "hevc.mp4", x265)
    assert measure_noise(probe(hevc)).quantiser is None


@pytest.mark.parametrize(("crf", "model"), [(18, "span-x2"), (36, "waifu2x-photo-noise3-x2")])
def test_the_plan_upscales_a_compressed_copy_with_the_denoising_model(
    tmp_path: Path, crf: int, model: str
):
    info = probe(_copy(tmp_path, f"crf{crf}.mp4", _x264(crf)))
    for preset in ("general", "archive"):
        plan = plan_job(
            info,
            EnhanceRequest(preset=preset, upscale_factor=2),
            noise=measure_noise(info),
            chunk_budget_bytes=2**26,
        )
        [upscale] = [s for s in plan.chain if s.kind == "upscale"]
        assert upscale.params["model"] == model, preset
        assert plan.fps == Fraction(info.fps)
