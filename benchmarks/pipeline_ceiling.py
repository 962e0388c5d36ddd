"""The pipeline's own ceiling: no model, only a resize, 1080p → 2160p, against ffmpeg.

How fast can the pipeline itself go, whatever the GPU?  A clean 1080p clip runs the
classical `general` chain, which on clean footage is Lanczos ×2 alone (the noise probe
drops the denoiser), against ffmpeg's decode → ``scale=lanczos`` → libx264 with the
same encoder settings (the preset's CRF and speed), in one run.  Also printed:

* bytes through Ray's object store per output frame (Ray Data's own per-operator
  output sizes: what leaves a task as a block), and peak PSS of the process tree;
* where the time goes, measured one step at a time in this process on the clip's
  frames, for both ways frames travel: planar 4:2:0, which this job takes (decode,
  planes out of the frame, the resize on planes, encode), and RGB, which every job
  with a model or denoiser takes (colour conversion in and out around the resize);
  each with serialisation (``ray.put`` + ``ray.get`` of the frames one stage boundary
  would move, though a streamed job moves none) and assembly (joining the segments,
  audio copied);
* both output sizes: each chunk starts with a keyframe, so shorter chunks cost bytes.

    .venv/bin/python -m benchmarks.pipeline_ceiling [--seconds 2] [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
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
from pipelines.colour import frame_to_rgb, frame_to_yuv420, rgb_to_frame
from pipelines.encode import SegmentEncoder, encode_segment, frame_size
from pipelines.enhance import PipelineConfig, enhance_video, ensure_ray
from pipelines.job_plan import EnhanceRequest, JobPlan, plan_job
from pipelines.noise_probe import measure_noise
from pipelines.presets import PRESETS
from pipelines.probe import VideoInfo, probe
from pipelines.sample_video import SampleSpec, write_sample_video
from vocabulary import FrameLayout, PresetName

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


def _machine_cpu_seconds() -> float:
    """CPU-seconds this machine has spent, all processes (``/proc/stat``; 0 elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return 0.0
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _pipeline(
    source: Path, output: Path, memory_too: bool = True
) -> tuple[float, float, int, int, float]:
    """(seconds, machine CPU-seconds, peak PSS, object store bytes, CPU-seconds inside
    Ray Data's tasks) of one job.  Timed without the memory sampler (reading every
    process's smaps four times a second costs CPU that ffmpeg's run doesn't pay); the
    same job runs again for the memory figure, when ``memory_too`` (else peak is 0)."""
    captured: list[ray.data.Dataset] = []
    build = enhance_module.build_dataset

    def keep(*args: Any, **kwargs: Any) -> ray.data.Dataset:
        captured.append(build(*args, **kwargs))
        return captured[-1]

    enhance_module.build_dataset = keep  # type: ignore[assignment]
    try:
        cpu = _machine_cpu_seconds()
        _, seconds = _timed(lambda: enhance_video(source, output, RESIZE_ONLY, PipelineConfig()))
        cpu = _machine_cpu_seconds() - cpu
        stats = captured[-1].stats() if captured else ""
        peak = 0
        if memory_too:
            with MemorySampler() as memory:
                enhance_video(source, output, RESIZE_ONLY, PipelineConfig())
            peak = memory.peak_bytes
    finally:
        enhance_module.build_dataset = build  # type: ignore[assignment]
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    in_tasks = sum(
        float(total) * unit[suffix]
        for total, suffix in re.findall(r"Remote cpu time: [^\n]*?([\d.]+)(us|ms|s) total", stats)
    )
    return seconds, cpu, peak, _store_bytes(stats), in_tasks


def _layout_steps(
    layout: FrameLayout,
    decoded: list[av.VideoFrame],
    info: VideoInfo,
    plan: JobPlan,
    work: Path,
) -> dict[str, float]:
    """Seconds of each step after decode, for ``decoded`` travelling as ``layout``."""
    colour = info.colour
    upscale: Any = build_operator("upscale", "classical", {"factor": 2})
    steps: dict[str, float] = {}
    if layout == FrameLayout.YUV420:
        frames, steps["planes out of the frame"] = _timed(
            lambda: np.stack([frame_to_yuv420(f, colour) for f in decoded])
        )
        planes, steps["resize (Lanczos ×2)"] = _timed(lambda: upscale.filter_yuv420(frames))
    else:
        frames, steps["colour in (YUV → RGB)"] = _timed(
            lambda: np.stack([frame_to_rgb(f, colour) for f in decoded])
        )
        rgb, steps["resize (Lanczos ×2)"] = _timed(lambda: upscale(frames))
        planes, steps["colour out (RGB → YUV 4:2:0)"] = _timed(
            lambda: np.stack(
                [rgb_to_frame(np.ascontiguousarray(f), colour).to_ndarray() for f in rgb]
            )
        )
    planar = FrameLayout.YUV420

    def encode_only() -> bytes:
        size = frame_size(planes, planar)
        with SegmentEncoder(size, plan.fps, plan.encoder, colour, planar) as encoder:
            encoder.add(planes)
            return encoder.finish()

    _, steps["encode (libx264)"] = _timed(encode_only)

    def round_trip() -> None:
        for array in (frames, planes if layout == planar else rgb):  # both stage hops
            ray.get(ray.put(array))

    _, steps["serialisation (one store hop each side)"] = _timed(round_trip)
    half = max(1, len(planes) // 2)
    segments = []
    for i, part in enumerate((planes[:half], planes[half:])):
        if len(part):
            path = work / f"part{i}.mp4"
            path.write_bytes(encode_segment(part, plan.fps, plan.encoder, colour, planar))
            segments.append(Segment(path, 0 if i == 0 else half))
    _, steps["assembly"] = _timed(
        lambda: assemble(segments, plan.fps, info, work / "assembled.mp4")
    )
    return steps


def _breakdown(source: Path, frames_wanted: int, work: Path) -> dict[str, dict[str, float]]:
    """Milliseconds per frame of each step, one at a time, single process, for both ways
    frames travel: planar 4:2:0 (what this job runs: a resize alone converts no colour)
    and RGB (what a job with a model or a denoiser runs)."""
    info = probe(source)
    plan = plan_job(
        info,
        RESIZE_ONLY,
        chunk_budget_bytes=PipelineConfig().chunk_budget_bytes,
        noise=measure_noise(info),
    )
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        decoded, decode_seconds = _timed(
            lambda: [
                f for _, f in zip(range(frames_wanted), container.decode(stream), strict=False)
            ]
        )
    by_layout = {}
    for layout in (FrameLayout.YUV420, FrameLayout.RGB):
        steps = {"decode": decode_seconds, **_layout_steps(layout, decoded, info, plan, work)}
        by_layout[str(layout)] = {name: s * 1e3 / len(decoded) for name, s in steps.items()}
    return by_layout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--breakdown-frames", type=int, default=24)
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="alternate this many runs of each and report the median ratio",
    )
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
    # Warm every worker (one chunk per core), as a running service's are: a cold one
    # spends seconds importing before its first chunk.
    warm = write_sample_video(work / "warm.mp4", SampleSpec(seconds=0.5))
    cores = int(ray.cluster_resources().get("CPU", 1))
    enhance_video(
        warm,
        work / "warm_out.mp4",
        RESIZE_ONLY,
        PipelineConfig(max_chunk_frames=max(1, probe(warm).frame_count // cores)),
    )

    crf, speed = PRESETS[PresetName.GENERAL].encoder.crf, PRESETS[PresetName.GENERAL].encoder.speed
    runs = []  # (ours: seconds, CPU-s, peak, store bytes, CPU-s in tasks; ffmpeg: seconds, CPU-s)
    for attempt in range(args.repeat):
        # Alternated, so both sides meet the same swings of a shared machine.
        ours_run = _pipeline(source, work / "ours.mp4", memory_too=attempt == 0)
        ff_cpu = _machine_cpu_seconds()
        _, ff_seconds = _timed(
            lambda: ffmpeg_x264(
                ffmpeg, source, "scale=iw*2:ih*2:flags=lanczos", speed, crf, work / "ff.mp4"
            )
        )
        runs.append((*ours_run, ff_seconds, _machine_cpu_seconds() - ff_cpu))
    ratios = sorted(run[5] / run[0] for run in runs)
    # The run whose ratio is the median is the one reported in full.
    seconds, cpu, _, store, in_tasks, ff_seconds, ff_cpu = next(
        run for run in runs if run[5] / run[0] == ratios[len(ratios) // 2]
    )
    peak = runs[0][2]
    ours, theirs = frames / seconds, frames / ff_seconds
    print(
        f"\n{frames} frames {width}x{height} → {2 * width}x{2 * height}, resize only, "
        f"libx264 {speed} CRF {crf}, {os.cpu_count()} CPU cores"
    )
    print(
        f"  retroiva (Ray Data)  {ours:7.2f} fps   peak PSS {peak / MIB:6.0f} MiB   "
        f"object store {store / frames / MIB:7.2f} MiB per output frame"
    )
    print(f"  ffmpeg               {theirs:7.2f} fps")
    print(
        f"  ratio retroiva / ffmpeg {ours / theirs:.2f}"
        + (
            f" (median of {len(ratios)}, alternated runs: "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + ")"
            if len(ratios) > 1
            else ""
        )
    )
    print(
        f"  machine CPU-seconds: retroiva {cpu:.1f} ({in_tasks:.1f} inside the pipeline's "
        f"tasks, the rest Ray and the driver), ffmpeg {ff_cpu:.1f}"
    )
    print(
        f"  output size: retroiva {(work / 'ours.mp4').stat().st_size / MIB:.2f} MiB, "
        f"ffmpeg {(work / 'ff.mp4').stat().st_size / MIB:.2f} MiB "
        "(each chunk starts with a keyframe)"
    )
    for layout, steps in _breakdown(source, args.breakdown_frames, work).items():
        total = sum(steps.values())
        print(
            f"\nwhere the time goes with {layout} frames, {args.breakdown_frames} frames one "
            "step at a time (ms per frame, share):"
        )
        for name, per_frame in sorted(steps.items(), key=lambda kv: -kv[1]):
            print(f"  {name:42s} {per_frame:8.1f} ms  {per_frame / total:6.1%}")


if __name__ == "__main__":
    main()
