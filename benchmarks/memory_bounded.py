"""Memory stays bounded by chunks in flight, not by video length.

Runs the `general` preset on a 10 s and a 40 s clip of the same resolution in one Ray
session and prints the peak PSS of the whole process tree (driver, raylet, object
store, workers) for each, and their ratio.  Bounded memory means a ratio near 1, not 4.

    .venv/bin/python -m benchmarks.memory_bounded [--short 10 --long 40] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from benchmarks.measure import MemorySampler
from pipelines.enhance import PipelineConfig, enhance_video, ensure_ray
from pipelines.job_plan import EnhanceRequest
from pipelines.sample_video import SampleSpec, write_sample_video

MIB = 2**20

# The classical chain: cheap enough on CPU to run 40 s of video in a benchmark.
CLASSICAL_GENERAL = EnhanceRequest(preset="general", upscale_factor=2, engine="classical")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", type=float, default=10.0)
    parser.add_argument("--long", type=float, default=40.0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="0.5 s and 1 s clips: proves it runs (CI), the ratio means little",
    )
    args = parser.parse_args()
    if args.quick:
        args.short, args.long = 0.5, 1.0
    ensure_ray()
    work = Path(tempfile.mkdtemp(prefix="retroiva-mem-"))
    warm = write_sample_video(work / "warm.mp4", SampleSpec(seconds=0.5))
    enhance_video(warm, work / "warm_out.mp4")

    peaks = {}
    for seconds in (args.short, args.long):
        source = write_sample_video(
            work / f"in_{seconds:g}s.mp4",
            SampleSpec(width=426, height=240, seconds=seconds, fps=Fraction(24), grain=6.0, gop=24),
        )
        with MemorySampler() as sampler:
            started = time.perf_counter()
            result = enhance_video(
                source, work / f"out_{seconds:g}s.mp4", CLASSICAL_GENERAL, PipelineConfig()
            )
            elapsed = time.perf_counter() - started
        peaks[seconds] = sampler.peak_bytes
        print(
            f"{seconds:>5g} s input: {result.frame_count} frames in {result.chunks} chunks, "
            f"{elapsed:.1f} s, peak PSS {sampler.peak_bytes / MIB:.0f} MiB "
            f"({sampler.samples} samples)"
        )
    ratio = peaks[args.long] / peaks[args.short]
    print(
        f"peak memory ratio {args.long:g} s / {args.short:g} s = {ratio:.2f} "
        f"(input length ratio {args.long / args.short:g})"
    )


if __name__ == "__main__":
    main()
