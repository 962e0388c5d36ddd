"""The pipeline's own ceiling: no model, only a resize, 1080p → 2160p, against ffmpeg.

How fast can the pipeline itself go, whatever the GPU?  A clean 1080p clip runs the
classical `general` chain, which on clean footage is Lanczos ×2 alone (the noise probe
drops the denoiser), against ffmpeg's decode → ``scale=lanczos`` → libx264 with the
same encoder settings (the preset's CRF and speed), in one run.  Also printed:

* bytes through Ray's object store per output frame (Ray Data's own per-operator
  output sizes: what leaves a task as a block), and peak PSS of the process tree;
* where the time goes, measured one step at a time in this process on the clip's
  frames: decode, colour conversion in (YUV → RGB), the resize, colour conversion out
  (RGB → YUV 4:2:0), encode, serialisation (``ray.put`` + ``ray.get`` of the frames
  one stage boundary would move), and assembly (joining the segments, audio copied).

    .venv/bin/python -m benchmarks.pipeline_ceiling [--seconds 2] [--quick]
"""

from __future__ import annotations

import argparse
import io
import os
import re
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import ray

import pipelines.enhance as enhance_module
from benchmarks.measure import MemorySampler, ensure_ffmpeg, ffmpeg_x264
from models.registry import build_operator
from pipelines.assemble import Segment, assemble
from pipelines.colour import frame_to_rgb, rgb_to_frame
from pipelines.encode import encode_segment
from pipelines.enhance import PipelineConfig, enhance_video, ensure_ray
from pipelines.job_plan import EnhanceRequest, plan_job
from pipelines.noise_probe import measure_noise
from pipelines.presets import PRESETS
from pipelines.probe import probe
from pipelines.sample_video import SampleSpec, write_sample_video

MIB = 2**20
RESIZE_ONLY = EnhanceRequest(preset="general", upscale_factor=2, engine="classical")


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - started


def _store_bytes(stats: str) -> int:
    """Bytes that left tasks as blocks, summed over Ray Data's operators."""
    return sum(
        int(total)
        for total in re.findall(r"Output size bytes per block: [^\n]*?(\d+) total", stats)
    )


def _pipeline(source: Path, output: Path) -> tuple[float, int, int, str]:
    """(seconds, peak PSS, object store bytes, Ray Data's stats) of one job."""
    captured: list[ray.data.Dataset] = []
    build = enhance_module.build_dataset

    def keep(*args: Any, **kwargs: Any) -> ray.data.Dataset:
        captured.append(build(*args, **kwargs))
        return captured[-1]

    enhance_module.build_dataset = keep  # type: ignore[assignment]
    try:
        with MemorySampler() as memory:
            _, seconds = _timed(
                lambda: enhance_video(source, output, RESIZE_ONLY, PipelineConfig())
            )
    finally:
        enhance_module.build_dataset = build  # type: ignore[assignment]
    stats = captured[-1].stats() if captured else ""
    return seconds, memory.peak_bytes, _store_bytes(stats), stats


def _breakdown(source: Path, frames_wanted: int, work: Path) -> dict[str, float]:
    """Seconds per frame of each step, one at a time, single process."""
    info = probe(source)
    plan_chain = build_operator("upscale", "classical", {"factor": 2})
    plan = plan_job(
        info,
        RESIZE_ONLY,
        chunk_budget_bytes=PipelineConfig().chunk_budget_bytes,
        noise=measure_noise(info),
    )
    colour = info.colour
    steps: dict[str, float] = {}
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        decoded, steps["decode"] = _timed(
            lambda: [
                f for _, f in zip(range(frames_wanted), container.decode(stream), strict=False)
            ]
        )
    n = len(decoded)
    rgb, steps["colour in (YUV → RGB)"] = _timed(
        lambda: np.stack([frame_to_rgb(f, colour) for f in decoded])
    )
    big, steps["resize (Lanczos ×2)"] = _timed(lambda: plan_chain(rgb))
    out_frames, steps["colour out (RGB → YUV 4:2:0)"] = _timed(
        lambda: [rgb_to_frame(np.ascontiguousarray(f), colour) for f in big]
    )

    def encode_only() -> bytes:
        buffer = io.BytesIO()
        with av.open(buffer, mode="w", format="mp4") as out:
            s = out.add_stream("libx264", rate=plan.fps)
            s.width, s.height = big.shape[2], big.shape[1]
            s.pix_fmt = colour.pixel_format
            s.options = {"crf": str(plan.encoder.crf), "preset": plan.encoder.speed}
            for i, frame in enumerate(out_frames):
                frame.pts = i
                out.mux(s.encode(frame))
            out.mux(s.encode(None))
        return buffer.getvalue()

    _, steps["encode (libx264)"] = _timed(encode_only)

    def round_trip() -> None:
        for array in (rgb, big):  # decode → operator, operator → encode
            ray.get(ray.put(array))

    _, steps["serialisation (one store hop each side)"] = _timed(round_trip)
    half = max(1, n // 2)
    segments = []
    for i, part in enumerate((big[:half], big[half:])):
        if len(part):
            path = work / f"part{i}.mp4"
            path.write_bytes(encode_segment(part, plan.fps, plan.encoder, colour))
            segments.append(Segment(path, 0 if i == 0 else half))
    _, steps["assembly"] = _timed(
        lambda: assemble(segments, plan.fps, info, work / "assembled.mp4")
    )
    return {name: seconds / n for name, seconds in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--breakdown-frames", type=int, default=12)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="0.5 s of 240p → 480p: proves it runs (CI), not a measurement",
    )
    args = parser.parse_args()
    width, height = (1920, 1080) if not args.quick else (426, 240)
    if args.quick:
        args.seconds, args.breakdown_frames = 0.5, 4
    ffmpeg = ensure_ffmpeg()
    ensure_ray()
    work = Path(tempfile.mkdtemp(prefix="retroiva-ceiling-"))
    source = write_sample_video(
        work / "in.mp4",
        SampleSpec(width=width, height=height, seconds=args.seconds, fps=Fraction(24), gop=24),
    )
    frames = probe(source).frame_count
    warm = write_sample_video(work / "warm.mp4", SampleSpec(seconds=0.5))
    enhance_video(warm, work / "warm_out.mp4", RESIZE_ONLY)  # warm workers, as a service

    seconds, peak, store, _ = _pipeline(source, work / "ours.mp4")
    ours = frames / seconds
    crf, speed = PRESETS["general"].encoder.crf, PRESETS["general"].encoder.speed
    _, ff_seconds = _timed(
        lambda: ffmpeg_x264(
            ffmpeg, source, "scale=iw*2:ih*2:flags=lanczos", speed, crf, work / "ff.mp4"
        )
    )
    theirs = frames / ff_seconds
    print(
        f"\n{frames} frames {width}x{height} → {2 * width}x{2 * height}, resize only, "
        f"libx264 {speed} CRF {crf}, {os.cpu_count()} CPU cores"
    )
    print(
        f"  retroiva (Ray Data)  {ours:7.2f} fps   peak PSS {peak / MIB:6.0f} MiB   "
        f"object store {store / frames / MIB:7.2f} MiB per output frame"
    )
    print(f"  ffmpeg               {theirs:7.2f} fps")
    print(f"  ratio retroiva / ffmpeg {ours / theirs:.2f}")
    steps = _breakdown(source, args.breakdown_frames, work)
    total = sum(steps.values())
    print(
        f"\nwhere the time goes, {args.breakdown_frames} frames one step at a time "
        "(ms per frame, share):"
    )
    for name, per_frame in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"  {name:42s} {per_frame * 1e3:8.1f} ms  {per_frame / total:6.1%}")


if __name__ == "__main__":
    main()
