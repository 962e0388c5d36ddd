"""Upscaling/denoising quality on natural images, and our torch path's speed vs ncnn's.

Quality: scikit-image's natural photos (astronaut, chelsea, coffee, rocket), cut to
256×256, are degraded — antialiased bicubic ↓ by the factor, then optionally Gaussian noise
(σ = 10, or σ = 25 followed by JPEG at quality 50) — and restored by every model at
that factor and by Lanczos and OpenCV's fastNlMeans + Lanczos.  PSNR and SSIM against
the originals are printed per condition.

Speed: frames per second of our torch executor and of the ``ncnn`` CPU runtime on the
same model and frame size, in one run, and their ratio.

    .venv/bin/python -m benchmarks.upscale_quality [--quick]
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import cv2
import ncnn
import numpy as np
import torch
from PIL import Image
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from models.ncnn_convert import load_ncnn_module
from models.ncnn_graph import NcnnGraph, parse_param
from models.neural_upscale import NeuralUpscale
from models.sr_models import sr_model

IMAGES = ("astronaut", "chelsea", "coffee", "rocket")
MODELS = {
    2: (
        "span-x2",
        "waifu2x-photo-x2",
        "waifu2x-photo-noise1-x2",
        "waifu2x-photo-noise3-x2",
        "realesr-animevideov3-x2",
    ),
    4: ("span-x4", "clearreality-x4", "realesrgan-x4plus", "realesr-animevideov3-x4"),
}
CONDITIONS = ("bicubic", "bicubic + σ10", "bicubic + σ25 + JPEG50")


def _bicubic(image: np.ndarray, side: int) -> np.ndarray:
    # Antialiased bicubic, like MATLAB's imresize that the models' training data used.
    # OpenCV's INTER_CUBIC does not antialias when shrinking: its aliasing cost every
    # model 3-4 dB in a first version of this benchmark.
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BICUBIC))


def _originals(images: tuple[str, ...] = IMAGES) -> list[np.ndarray]:
    out = []
    for name in images:
        image = getattr(data, name)()
        h, w = image.shape[:2]
        side = min(h, w)
        crop = image[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
        out.append(_bicubic(np.ascontiguousarray(crop), 256))
    return out


def _degrade(
    image: np.ndarray, factor: int, condition: str, rng: np.random.Generator
) -> np.ndarray:
    small = _bicubic(image, 256 // factor)
    if condition == "bicubic":
        return small
    sigma = 10 if "σ10" in condition else 25
    noisy = np.clip(small + rng.normal(0, sigma, small.shape), 0, 255).astype(np.uint8)
    if "JPEG" in condition:
        _, encoded = cv2.imencode(
            ".jpg", cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 50]
        )
        noisy = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return noisy


def _lanczos(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.resize(image, (w * factor, h * factor), interpolation=cv2.INTER_LANCZOS4)


def _nlmeans_lanczos(image: np.ndarray, factor: int, strength: float) -> np.ndarray:
    return _lanczos(cv2.fastNlMeansDenoisingColored(image, None, strength, strength, 7, 21), factor)


def _score(restored: list[np.ndarray], originals: list[np.ndarray]) -> tuple[float, float]:
    psnr = np.mean(
        [peak_signal_noise_ratio(o, r) for o, r in zip(originals, restored, strict=True)]
    )
    ssim = np.mean(
        [
            structural_similarity(o, r, channel_axis=2)
            for o, r in zip(originals, restored, strict=True)
        ]
    )
    return float(psnr), float(ssim)


def quality(quick: bool = False) -> None:
    originals = _originals(IMAGES[:1] if quick else IMAGES)
    models = {2: ("span-x2",)} if quick else MODELS
    operators = {
        name: NeuralUpscale(name, factor=factor, tile=0)
        for factor, names in models.items()
        for name in names
    }
    for factor, names in models.items():
        for condition in CONDITIONS[:1] if quick else CONDITIONS:
            rng = np.random.default_rng(0)
            degraded = [_degrade(o, factor, condition, rng) for o in originals]
            strength = 0 if condition == "bicubic" else (6 if "σ10" in condition else 14)
            rows: dict[str, tuple[float, float]] = {
                "lanczos": _score([_lanczos(d, factor) for d in degraded], originals)
            }
            if strength:
                rows[f"fastNlMeans(h={strength}) + lanczos"] = _score(
                    [_nlmeans_lanczos(d, factor, strength) for d in degraded], originals
                )
            for name in names:
                rows[name] = _score([operators[name](d[None])[0] for d in degraded], originals)
            print(f"\n×{factor}, {condition} ({len(originals)} images, 256×256)")
            print(f"  {'method':34s} {'PSNR dB':>8s} {'SSIM':>7s}")
            for method, (psnr, ssim) in rows.items():
                print(f"  {method:34s} {psnr:8.2f} {ssim:7.4f}")


def _ncnn_once(name: str, frame: np.ndarray) -> Callable[[], None]:
    """The ncnn runtime called directly, as its own documentation shows."""
    param, weights = sr_model(name).files()
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = torch.get_num_threads()
    net.load_param(str(param))
    net.load_model(str(weights))
    graph = NcnnGraph(parse_param(param.read_text()))
    chw = np.ascontiguousarray(frame.transpose(2, 0, 1).astype(np.float32) / 255)
    mat = ncnn.Mat(chw)

    def once() -> None:
        extractor = net.create_extractor()
        extractor.input(graph.input_blob, mat)
        extractor.extract(graph.output_blob)

    return once


def _module_once(
    module: Callable[[torch.Tensor], torch.Tensor], frame: np.ndarray
) -> Callable[[], None]:
    x = torch.from_numpy(frame.transpose(2, 0, 1).astype(np.float32)[None] / 255)

    def once() -> None:
        with torch.inference_mode():
            module(x)

    return once


def speed(quick: bool = False) -> None:
    size = (64, 36) if quick else (320, 180)
    frame = cv2.resize(data.astronaut(), size, interpolation=cv2.INTER_AREA)
    print(
        f"\nCPU speed, {size[0]}×{size[1]} input, {torch.get_num_threads()} threads each "
        "(frames/s of the raw network; each method run in turn, best of the rounds, so "
        "load from other processes hits them alike)"
    )
    print(
        "  torch: our torch executor; auto: the network as the operator runs it with the "
        "runtime auto chooses here; ncnn: the ncnn runtime called directly; operator: "
        "the whole auto operator, tile 0 (padding, anchoring, conversions)"
    )
    # Real-ESRGAN x4plus (RRDB, ~0.07 fps at 320×180 here) on a quarter of the pixels.
    runs = (
        ("span-x2", 5, 1),
        ("realesr-animevideov3-x2", 5, 1),
        ("waifu2x-photo-noise3-x2", 5, 1),
        ("realesrgan-x4plus", 2, 2),
    )
    everything = frame
    for name, rounds, shrink in runs[:1] if quick else runs:
        frame = everything[::shrink, ::shrink].copy()
        factor = sr_model(name).scale
        op = NeuralUpscale(name, factor=factor, tile=0, device="cpu", runtime="auto")
        # The raw networks get the frame with the border the operator adds (the model's
        # prepadding), so all three do the same work.
        pad = sr_model(name).prepadding
        padded = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        methods = {
            "torch": _module_once(load_ncnn_module(*sr_model(name).files()), padded),
            "auto": _module_once(op._network, frame),
            "ncnn": _ncnn_once(name, padded),
            "operator": functools.partial(op, frame[None]),
        }
        best = dict.fromkeys(methods, float("inf"))
        for once in methods.values():
            once()  # warm-up
        for _ in range(1 if quick else rounds):
            for method, once in methods.items():
                # torch's OpenMP threads spin for a while after their last job; let
                # them settle so they don't slow the next method's threads.
                time.sleep(0.5)
                started = time.perf_counter()
                once()
                best[method] = min(best[method], time.perf_counter() - started)
        fps = {method: 1 / seconds for method, seconds in best.items()}
        name = name if shrink == 1 else f"{name} (½ side)"
        print(
            f"  {name:26s} torch {fps['torch']:6.2f}  auto ({op.runtime_choice.runtime}) "
            f"{fps['auto']:6.2f}  ncnn {fps['ncnn']:6.2f}  operator {fps['operator']:6.2f}"
            f"  torch/ncnn {fps['torch'] / fps['ncnn']:.2f}  auto/ncnn "
            f"{fps['auto'] / fps['ncnn']:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one image, one model, one condition, a tiny frame (CI)",
    )
    args = parser.parse_args()
    quality(args.quick)
    speed(args.quick)


if __name__ == "__main__":
    main()
