"""Turn a request and a probed input into a concrete plan, before any frame is decoded.

Everything here is pure and validated up front, so a bad request fails in
milliseconds with a message naming the parameter, not minutes into a job.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

from models.registry import works_in_yuv420
from pipelines.chunk_plan import Chunk, chunk_plan, max_chunk_frames
from pipelines.colour import YUV420_FORMATS
from pipelines.encode import Codec, EncoderSettings, as_codec, even_size
from pipelines.errors import InvalidOptionsError
from pipelines.noise_probe import NoiseLevel
from pipelines.presets import PRESETS, OperatorSpec, resolve_chain
from pipelines.probe import VideoInfo
from vocabulary import Backend, Engine, FrameLayout, OperatorKind, PresetName

__all__ = ["MAX_OUTPUT_SIDE", "EnhanceRequest", "JobPlan", "frame_layout", "plan_job"]

# libx264 and most players stop at 8K-ish; anything larger is a mistake, not a request.
MAX_OUTPUT_SIDE = 8192
MAX_FPS = 240
# Below this, per-chunk overhead (seek, encoder start-up) outweighs parallelism.
MIN_PARALLEL_CHUNK_FRAMES = 12
# x264's default keyint: the longest a streamed chunk gets (see plan_job).
STREAMED_CHUNK_FRAMES = 250


@dataclass(frozen=True)
class EnhanceRequest:
    """What a caller asks for; ``None`` means "the preset's default"."""

    preset: str = PresetName.GENERAL  # a PresetName; checked by plan_job
    upscale_factor: int | None = None
    interpolate: int | None = None  # frame-rate multiplier: 2 or 4
    target_fps: Fraction | None = None  # or an explicit output frame rate
    codec: str | None = None  # "h264" (default) or "hevc"
    crf: int | None = None  # encoder quality override, 0 (lossless) to 51
    engine: str = Engine.NEURAL  # an Engine; checked by resolve_chain


@dataclass(frozen=True)
class JobPlan:
    info: VideoInfo
    chain: tuple[OperatorSpec, ...]
    upscale_factor: int
    width: int  # output, after even rounding
    height: int
    fps: Fraction  # output
    ratio: Fraction  # output fps / input fps
    frame_count: int  # output
    encoder: EncoderSettings
    chunks: tuple[Chunk, ...]
    layout: FrameLayout = FrameLayout.RGB  # how frames travel between stages
    # Each chunk is decoded, filtered and encoded in one task that streams its frames
    # from the decoder into the encoder a few at a time (stages.chunk_stage), so chunks
    # are not bounded by the memory budget: they are as long as a GOP of x264's.
    streamed: bool = False
    # Threads a streamed chunk's decoder and encoder each use (0: their own choice, every
    # core).  One when there are at least as many chunks as cores: chunks then run side
    # by side, and two x264s that each threaded over both cores spent 11 % more CPU and
    # 0.5 GiB more memory than one thread each (benchmarks.pipeline_ceiling, 2 cores).
    threads: int = 0


def _output_fps(info: VideoInfo, request: EnhanceRequest, preset_fps: Fraction | None) -> Fraction:
    if request.interpolate is not None and request.target_fps is not None:
        raise InvalidOptionsError("give either interpolate or target fps, not both")
    if request.interpolate is not None:
        if request.interpolate not in (1, 2, 4):
            raise InvalidOptionsError(f"interpolate must be 2 or 4, got {request.interpolate}")
        return info.fps * request.interpolate
    fps = request.target_fps if request.target_fps is not None else preset_fps
    if fps is None:
        return info.fps
    if not 0 < fps <= MAX_FPS:
        raise InvalidOptionsError(f"fps must be in (0, {MAX_FPS}], got {float(fps):g}")
    # A preset's target never lowers the frame rate; an explicit one may.
    if request.target_fps is None and fps <= info.fps:
        return info.fps
    return Fraction(fps)


def _codec(info: VideoInfo, request: EnhanceRequest, preset_codec: Codec) -> Codec:
    """HDR keeps its mastering metadata only through x265 (x264 has no option for it)."""
    if not info.colour.hdr:
        return as_codec(request.codec if request.codec is not None else preset_codec)
    if request.codec not in (None, "hevc"):
        raise InvalidOptionsError(
            f"HDR input needs codec hevc to keep its HDR metadata, got {request.codec!r}"
        )
    return "hevc"


def frame_layout(info: VideoInfo, chain: tuple[OperatorSpec, ...]) -> FrameLayout:
    """Planar 4:2:0 when the input decodes to the planes its output is encoded from (8-bit
    4:2:0, or 10-bit for a 10-bit output) at an even size and every operator can filter
    planes (a Lanczos resize, or no operator): then nothing converts colour, as in
    ``ffmpeg -vf scale``, and half the bytes move.  RGB otherwise.

    Only classical operators are asked: the neural ones work in RGB, and asking them
    would load torch into whatever process plans the job."""
    width, height = info.display_size
    planar = (
        info.pixel_format in YUV420_FORMATS[info.colour.pixel_format]
        and width % 2 == 0
        and height % 2 == 0
        and all(
            spec.backend == Backend.CLASSICAL and works_in_yuv420(spec.kind, spec.backend)
            for spec in chain
        )
    )
    return FrameLayout.YUV420 if planar else FrameLayout.RGB


def plan_job(
    info: VideoInfo,
    request: EnhanceRequest,
    *,
    noise: NoiseLevel,
    chunk_budget_bytes: int,
    max_frames: int | None = None,
    parallelism: int = 1,
    streams: Callable[[tuple[OperatorSpec, ...]], bool] | None = None,
) -> JobPlan:
    """Validate ``request`` against ``info`` and fix geometry, timing and chunks.

    Chunks are capped by ``chunk_budget_bytes`` of processed pixels and, for short
    inputs, small enough that ``parallelism`` workers each get about two; streamed
    chunks hold a few frames whatever their length, so they are capped at
    :data:`STREAMED_CHUNK_FRAMES` and one per worker instead.  An explicit
    ``max_frames`` overrides these.  ``streams`` says whether the pipeline would run a
    chain as streamed chunks (:attr:`JobPlan.streamed`).
    """
    if request.preset not in set(PresetName):
        raise InvalidOptionsError(
            f"preset must be one of {', '.join(PRESETS)}, got {request.preset!r}"
        )
    preset = PRESETS[PresetName(request.preset)]
    factor = request.upscale_factor if request.upscale_factor is not None else preset.upscale_factor
    if factor not in (1, 2, 3, 4):
        raise InvalidOptionsError(f"upscale factor must be 1, 2, 3 or 4, got {factor}")
    fps = _output_fps(info, request, preset.target_fps)
    ratio = fps / info.fps
    display_w, display_h = info.display_size
    width, height = even_size(display_w * factor, display_h * factor)
    if width < 2 or height < 2:
        raise InvalidOptionsError(f"output {width}×{height} is too small to encode")
    if max(width, height) > MAX_OUTPUT_SIDE:
        raise InvalidOptionsError(
            f"output {width}×{height} exceeds {MAX_OUTPUT_SIDE} pixels on a side; "
            "choose a smaller upscale factor"
        )
    encoder = dataclasses.replace(
        preset.encoder,
        codec=_codec(info, request, preset.encoder.codec),
        crf=request.crf if request.crf is not None else preset.encoder.crf,
    )
    chain = tuple(resolve_chain(preset, factor, ratio, request.engine, noise=noise))
    layout = frame_layout(info, chain)
    streamed = streams is not None and streams(chain)
    if max_frames:
        limit = max_frames
    elif streamed:
        # A streamed chunk holds a few frames whatever its length, so it is as long as
        # x264's default GOP (each chunk starts with a keyframe: at that length the
        # output has about as many as ffmpeg's), or shorter where a worker would
        # otherwise get no chunk.
        limit = min(
            STREAMED_CHUNK_FRAMES,
            max(MIN_PARALLEL_CHUNK_FRAMES, math.ceil(info.frame_count / parallelism)),
        )
    else:
        # Bytes a processed pixel takes in flight: RGB or 4:2:0 samples, 8- or 16-bit.
        samples = 3 if layout == FrameLayout.RGB else 1.5
        pixel_bytes = samples * (2 if info.colour.bit_depth > 8 else 1)
        limit = min(
            max_chunk_frames(width, height, ratio, chunk_budget_bytes, pixel_bytes=pixel_bytes),
            max(MIN_PARALLEL_CHUNK_FRAMES, math.ceil(info.frame_count / (2 * parallelism))),
        )
    chunks = chunk_plan(
        info,
        max_frames=limit,
        ratio=ratio,
        lookahead=any(spec.kind == OperatorKind.INTERPOLATE for spec in chain),
    )
    return JobPlan(
        info=info,
        chain=chain,
        upscale_factor=factor,
        width=width,
        height=height,
        fps=fps,
        ratio=ratio,
        frame_count=chunks[-1].out_end,
        encoder=encoder,
        chunks=tuple(chunks),
        layout=layout,
        streamed=streamed,
        threads=max(1, math.ceil(parallelism / len(chunks))) if streamed else 0,
    )
