"""Throughput of the `general` preset (classical operators) against the same work in ffmpeg.

Both run in this process's session on the same generated 480p clip: NL-means denoise,
Lanczos ×2 and libx264 (veryfast, CRF 20), audio copied.  ffmpeg runs twice, with its
own nlmeans (the same algorithm) and with the much cheaper hqdn3d.  Prints input
frames per second for each and our ratio to each.

    .venv/bin/python -m benchmarks.pipeline_vs_ffmpeg [--seconds 5] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from benchmarks.measure import ensure_ffmpeg, ffmpeg_x264
from pipelines.enhance import PipelineConfig, enhance_video, ensure_ray
from pipelines.job_plan import EnhanceRequest
from pipelines.presets import PRESETS
from pipelines.probe import probe
from pipelines.sample_video import SampleSpec, write_sample_video

# The classical chain: what the ffmpeg filters reproduce, and cheap enough for CPU.
CLASSICAL_GENERAL = EnhanceRequest(preset="general", upscale_factor=2, engine="classical")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--quick", action="store_true", help="0.5 s of 240p: proves it runs (CI), not a measurement"
    )
    args = parser.parse_args()
    width, height = (854, 480) if not args.quick else (426, 240)
    if args.quick:
        args.seconds = 0.5
    ffmpeg = ensure_ffmpeg()
    ensure_ray()
    work = Path(tempfile.mkdtemp(prefix="retroiva-bench-"))
    spec = SampleSpec(
        width=width, height=height, seconds=args.seconds, fps=Fraction(30), grain=8.0, gop=30
    )
    source = write_sample_video(work / "in_480p.mp4", spec)
    frames = probe(source).frame_count
    preset = PRESETS["general"]
    # The preset's denoiser runs at gain × the measured noise; the sample's grain σ is
    # known, so ffmpeg's nlmeans gets the strength ours chooses for it.
    gain = next(s.params["gain"] for s in preset.classical if s.kind == "denoise")
    strength = gain * spec.grain
    crf, speed = preset.encoder.crf, preset.encoder.speed

    # Warm the Ray workers once, as a running service would have them.
    warm = write_sample_video(work / "warm.mp4", SampleSpec(seconds=0.5))
    enhance_video(warm, work / "warm_out.mp4", CLASSICAL_GENERAL)

    started = time.perf_counter()
    enhance_video(source, work / "ours.mp4", CLASSICAL_GENERAL, PipelineConfig())
    ours = frames / (time.perf_counter() - started)

    results = {"retroiva (Ray Data, classical)": ours}
    for name, denoise in [
        ("ffmpeg nlmeans", f"nlmeans=s={strength / 2:g}"),
        ("ffmpeg hqdn3d", "hqdn3d"),
    ]:
        started = time.perf_counter()
        ffmpeg_x264(
            ffmpeg,
            source,
            f"{denoise},scale=iw*2:ih*2:flags=lanczos",
            speed,
            crf,
            work / "ff.mp4",
        )
        results[name] = frames / (time.perf_counter() - started)

    print(
        f"\n{frames} frames of {width}x{height} → {2 * width}x{2 * height}, general preset, "
        f"{psutil_cores()} CPU cores"
    )
    for name, fps in results.items():
        print(f"  {name:<32} {fps:7.2f} fps")
    for name, fps in list(results.items())[1:]:
        print(f"  ratio retroiva / {name:<15} {ours / fps:7.2f}")


def psutil_cores() -> int:
    import os

    return os.cpu_count() or 1


if __name__ == "__main__":
    main()
