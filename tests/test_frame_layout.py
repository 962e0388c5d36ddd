"""Planar 4:2:0 frames: when the planner chooses them, and that a resize on planes is
what the user's own ``ffmpeg -vf scale=…:flags=lanczos`` gives."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from models.lanczos import LanczosUpscale
from models.operator import check_yuv420
from pipelines.colour import frame_to_yuv420, yuv420_to_frame
from pipelines.job_plan import EnhanceRequest, JobPlan, frame_layout, plan_job
from pipelines.noise_probe import NoiseLevel
from pipelines.presets import OperatorSpec
from pipelines.probe import VideoInfo, probe
from pipelines.sample_video import SampleSpec, write_sample_video
from vocabulary import Backend, FrameLayout, OperatorKind

FFMPEG = shutil.which("ffmpeg")
LANCZOS = OperatorSpec(OperatorKind.UPSCALE, Backend.CLASSICAL, {"factor": 2})
NLMEANS = OperatorSpec(OperatorKind.DENOISE, Backend.CLASSICAL, {"h": 4.0})
SPAN = OperatorSpec(OperatorKind.UPSCALE, Backend.NCNN, {"model": "span-x2", "factor": 2})
CLEAN = NoiseLevel(luma=0.0, chroma=0.0)


@pytest.fixture(scope="module")
def info(tmp_path_factory: pytest.TempPathFactory) -> VideoInfo:
    path = tmp_path_factory.mktemp("layout") / "in.mp4"
    return probe(write_sample_video(path, SampleSpec(width=96, height=64, seconds=2, gop=48)))


def test_a_resize_alone_on_4_2_0_input_stays_planar(info: VideoInfo):
    assert info.pixel_format == "yuv420p"
    assert frame_layout(info, (LANCZOS,)) == FrameLayout.YUV420
    assert frame_layout(info, ()) == FrameLayout.YUV420  # nothing to do: nothing converted
    assert frame_layout(dataclasses.replace(info, pixel_format="yuvj420p"), (LANCZOS,)) == (
        FrameLayout.YUV420
    )


@pytest.mark.parametrize(
    "change, chain",
    [
        ({}, (NLMEANS, LANCZOS)),  # NL-means works on RGB
        ({}, (SPAN,)),  # neural models work on RGB
        ({"pixel_format": "yuv444p"}, (LANCZOS,)),  # its planes aren't 4:2:0
        ({"pixel_format": "yuv420p10le"}, (LANCZOS,)),  # 10-bit codes, 8-bit output
        ({"width": 95}, (LANCZOS,)),  # 4:2:0 needs an even size
    ],
)
def test_anything_else_travels_as_rgb(info: VideoInfo, change: dict, chain: tuple):
    assert frame_layout(dataclasses.replace(info, **change), chain) == FrameLayout.RGB


def test_the_plan_carries_the_layout_and_budgets_chunks_by_it(info: VideoInfo):
    request = EnhanceRequest(preset="general", engine="classical", upscale_factor=2)
    planar = plan_job(info, request, noise=CLEAN, chunk_budget_bytes=192 * 128 * 3 * 8)
    assert planar.layout == FrameLayout.YUV420
    # Half the bytes per pixel of RGB: twice the frames in the same budget.
    assert planar.chunks[0].frame_count == 16


@pytest.mark.skipif(FFMPEG is None, reason="needs Debian's ffmpeg (make test installs it)")
def test_planar_lanczos_is_what_ffmpegs_scale_gives(tmp_path: Path):
    source = write_sample_video(
        tmp_path / "in.mp4", SampleSpec(width=160, height=96, seconds=0.25, fps=Fraction(24))
    )
    assert FFMPEG is not None
    theirs = subprocess.run(
        [
            *(FFMPEG, "-v", "error", "-i", str(source), "-frames:v", "1"),
            *("-vf", "scale=iw*2:ih*2:flags=lanczos", "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"),
        ],
        capture_output=True,
        check=True,
    ).stdout
    info = probe(source)
    with av.open(str(source)) as container:
        planes = frame_to_yuv420(next(container.decode(video=0)), info.colour)
    ours = LanczosUpscale(2).filter_yuv420(planes[None])
    check_yuv420(ours)
    assert ours.shape == (1, 96 * 2 * 3 // 2, 320)
    assert np.array_equal(ours[0].ravel(), np.frombuffer(theirs, np.uint8))


def test_planes_round_trip_exactly_and_rotate(info: VideoInfo):
    with av.open(info.path) as container:
        frame = next(container.decode(video=0))
    planes = frame_to_yuv420(frame, info.colour)
    assert planes.shape == (64 * 3 // 2, 96)
    assert np.array_equal(yuv420_to_frame(planes, info.colour).to_ndarray(), frame.to_ndarray())
    turned = frame_to_yuv420(frame, info.colour, rotation=90)
    assert turned.shape == (96 * 3 // 2, 64)
    y = frame.to_ndarray()[:64]
    assert np.array_equal(turned[:96], np.rot90(y, k=-1))


def test_a_streamed_plan_is_not_bounded_by_the_memory_budget(info: VideoInfo):
    """A streamed chunk holds a few frames whatever its length: its chunks run to x264's
    default GOP (250 frames, on the input's keyframes), or one per worker when shorter;
    a staged plan's chunks still hold their output, so its budget bounds them."""
    request = EnhanceRequest(preset="general", engine="classical", upscale_factor=2)
    budget = 96 * 64 * 3 // 2 * 20  # 20 decoded frames, or 5 of the ×2 output
    step = info.frame_pts[1] - info.frame_pts[0]
    film = dataclasses.replace(
        info,
        frame_count=600,
        frame_pts=tuple(i * step for i in range(600)),
        keyframe_pts=tuple(i * step for i in range(0, 600, 24)),
    )

    def plan(video: VideoInfo, streamed: bool) -> list[int]:
        return [
            chunk.frame_count
            for chunk in plan_job(
                video,
                request,
                noise=CLEAN,
                chunk_budget_bytes=budget,
                parallelism=2,
                streams=(lambda chain: True) if streamed else None,
            ).chunks
        ]

    assert plan(film, streamed=True) == [240, 240, 120]  # the last keyframe ≤ 250
    assert max(plan(film, streamed=False)) == 5  # the budget: 5 output frames
    assert plan(info, streamed=True) == [24, 24]  # 48 frames, one per worker


def test_streamed_chunks_thread_only_over_the_cores_no_other_chunk_uses(info: VideoInfo):
    """As many chunks as cores: each chunk's decoder and encoder get one thread (they
    run side by side); fewer chunks than cores share the cores out; a staged plan
    leaves its encoders their own choice (0)."""
    request = EnhanceRequest(preset="general", engine="classical", upscale_factor=2)

    def plan(parallelism: int, streamed: bool) -> JobPlan:
        return plan_job(
            info,
            request,
            noise=CLEAN,
            chunk_budget_bytes=2**30,
            parallelism=parallelism,
            streams=(lambda chain: True) if streamed else None,
        )

    assert plan(2, streamed=True).threads == 1
    many_cores = plan(16, streamed=True)
    assert len(many_cores.chunks) == 4  # 12 frames each at least, of 48
    assert many_cores.threads == 4
    assert plan(16, streamed=False).threads == 0
