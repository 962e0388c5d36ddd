"""The encoder's quantiser, read while probing, tells compressed input from clean input
where the noise estimate can't (it reads heavily compressed footage as clean)."""

from __future__ import annotations

import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from benchmarks.fidelity import clip_path
from pipelines.job_plan import EnhanceRequest, JobPlan, plan_job
from pipelines.noise_probe import NoiseLevel, measure_noise
from pipelines.presets import noise_map_sigma
from pipelines.probe import VideoInfo, probe
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


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        ("hevc.mp4", ["-c:v", "libx265", "-crf", "36", "-x265-params", "log-level=error"]),
        # VP9 exports its own frame-level index and no blocks: it used to raise.
        ("vp9.webm", ["-c:v", "libvpx-vp9", "-crf", "40", "-b:v", "0"]),
    ],
)
def test_a_codec_without_comparable_quantisers_reads_none(
    tmp_path: Path, name: str, codec: list[str]
):
    noise = measure_noise(probe(_copy(tmp_path, name, codec)))
    assert noise.quantiser is None and noise.luma > 0


def test_h264_frame_cropping_still_reads_its_quantiser(tmp_path: Path):
    # Cropping 16 px or more leaves more blocks than the cropped frame's 16×16 grid,
    # which PyAV's qp_map refuses; the blocks are read one by one instead.
    cropped = _copy(tmp_path, "cropped.mp4", [*_x264(36), "-bsf:v", "h264_metadata=crop_bottom=32"])
    info = probe(cropped)
    assert info.height == 48  # coded 80 rows (5 macroblocks), 32 cropped off
    quantiser = measure_noise(info).quantiser
    assert quantiser is not None and quantiser >= COMPRESSED_QP


def _plan(info: VideoInfo, preset: str, noise: NoiseLevel) -> JobPlan:
    return plan_job(
        info,
        EnhanceRequest(preset=preset, upscale_factor=2),
        noise=noise,
        chunk_budget_bytes=2**26,
    )


@pytest.mark.parametrize(("crf", "model"), [(18, "span-x2"), (36, "srmd-x2")])
def test_the_plan_upscales_a_compressed_copy_with_the_denoising_model(
    tmp_path: Path, crf: int, model: str
):
    info = probe(_copy(tmp_path, f"crf{crf}.mp4", _x264(crf)))
    noise = measure_noise(info)
    for preset in ("general", "archive"):
        plan = _plan(info, preset, noise)
        [upscale] = [s for s in plan.chain if s.kind == "upscale"]
        assert upscale.params["model"] == model, preset
        assert plan.fps == Fraction(info.fps)
    if model == "srmd-x2":  # told the compression's strength, read from the quantiser
        assert upscale.params["noise_sigma"] == noise_map_sigma(noise, noisy=False)
        assert 10 <= upscale.params["noise_sigma"] <= 30
    else:
        assert "noise_sigma" not in upscale.params


def test_the_planned_noise_level_undoes_more_compression_than_fixed_ones(tmp_path: Path):
    """SRMD at the σ planned from the quantiser, on a CRF 36 copy, against the original:
    better than SRMD told "no noise" and than waifu2x's strongest fixed level."""
    from benchmarks.fidelity import decode_rgb
    from models.neural_upscale import NeuralUpscale

    from media import psnr

    copy = _copy(tmp_path, "crf36.mp4", _x264(36))
    info = probe(copy)
    [upscale] = _plan(info, "general", measure_noise(info)).chain
    small = decode_rgb(copy, 12)
    original = decode_rgb(clip_path("carphone_pristine.mp4"), 12)
    sigma = upscale.params["noise_sigma"]
    planned = psnr(NeuralUpscale("srmd-x2", noise_sigma=sigma)(small), original)
    told_clean = psnr(NeuralUpscale("srmd-x2", noise_sigma=0)(small), original)
    waifu2x = psnr(NeuralUpscale("waifu2x-photo-noise3-x2")(small), original)
    assert planned > told_clean + 0.3, (planned, told_clean)
    assert planned > waifu2x + 0.1, (planned, waifu2x)


def test_a_10_bit_h264_quantiser_is_put_on_the_8_bit_scale(tmp_path: Path):
    """FFmpeg exports 10-bit H.264's QP′ (QP + 12); the same CRF must read alike, or a
    10-bit copy would be planned as heavily compressed, and SRMD told 4× the σ."""
    eight = measure_noise(probe(_copy(tmp_path, "8.mp4", _x264(30)))).quantiser
    ten_bit = [*_x264(30)[:-1], "yuv420p10le"]
    ten = measure_noise(probe(_copy(tmp_path, "10.mp4", ten_bit))).quantiser
    assert eight is not None and ten is not None
    assert abs(ten - eight) < 2.5, (eight, ten)
