"""The ``retroiva`` console command."""

from __future__ import annotations

import logging
import sys
from fractions import Fraction
from pathlib import Path
from typing import Annotated

import typer
from tqdm import tqdm

from pipelines.errors import PipelineError
from pipelines.job_plan import EnhanceRequest
from pipelines.presets import PRESETS
from pipelines.progress import Progress

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Retroiva: denoise, upscale and interpolate videos on Ray.")


def _quiet_ray_logs() -> None:
    for name in ("ray", "ray.data", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)


@app.command()
def enhance(
    source: Annotated[Path, typer.Argument(help="Input video file.")],
    output: Annotated[Path, typer.Argument(help="Output file: .mp4 (default), .mov or .mkv.")],
    preset: Annotated[str, typer.Option(help=f"One of: {', '.join(PRESETS)}.")] = "general",
    upscale_factor: Annotated[int | None, typer.Option(
        "--upscale-factor", min=1, max=4, help="1–4; default per preset.")] = None,
    fps: Annotated[float | None, typer.Option(
        help="Output frame rate, e.g. 60 (interpolates).")] = None,
    interpolate: Annotated[int | None, typer.Option(
        help="Multiply the frame rate by 2 or 4.")] = None,
    codec: Annotated[str | None, typer.Option(help="h264 (default) or hevc.")] = None,
    chunk_frames: Annotated[int | None, typer.Option(
        help="Maximum frames per chunk (default: from the memory budget).")] = None,
) -> None:
    """Enhance SOURCE into OUTPUT, showing progress with fps and ETA."""
    from pipelines.enhance import PipelineConfig, enhance_video, ensure_ray

    _quiet_ray_logs()
    ensure_ray()
    request = EnhanceRequest(
        preset=preset,
        upscale_factor=upscale_factor,
        interpolate=interpolate,
        target_fps=Fraction(fps).limit_denominator(1001) if fps is not None else None,
        codec=codec,
    )
    bar = tqdm(total=None, unit="frame", desc="enhancing", dynamic_ncols=True)

    def show(progress: Progress) -> None:
        bar.total = progress.frames_total
        bar.n = progress.frames_done
        bar.set_postfix(fps=f"{progress.fps:.1f}",
                        eta=f"{progress.eta_seconds:.0f}s" if progress.eta_seconds else "-")
        bar.refresh()

    try:
        result = enhance_video(source, output, request,
                               PipelineConfig(max_chunk_frames=chunk_frames), on_progress=show)
    except PipelineError as exc:
        bar.close()
        typer.echo(f"error ({exc.type}): {exc}", err=True)
        raise typer.Exit(code=2) from None
    bar.close()
    typer.echo(f"wrote {result.output}: {result.width}x{result.height} "
               f"@ {float(result.fps):.3f} fps, {result.frame_count} frames "
               f"in {result.seconds:.1f}s ({result.chunks} chunks)")


@app.command()
def demo(
    directory: Annotated[Path, typer.Option(help="Where to write the sample and result.")]
    = Path("out"),
) -> None:
    """Generate a sample clip and enhance it: a smoke test of the whole pipeline."""
    from pipelines.sample_video import SampleSpec, write_sample_video

    directory.mkdir(parents=True, exist_ok=True)
    sample = write_sample_video(directory / "sample.mp4",
                                SampleSpec(width=320, height=240, seconds=2, grain=8.0))
    typer.echo(f"generated {sample}")
    enhance(sample, directory / "sample_enhanced.mp4", preset="general",
            upscale_factor=2, fps=None, interpolate=2, codec=None, chunk_frames=None)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
