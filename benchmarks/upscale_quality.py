"""Upscaling/denoising quality on natural images, and our torch path's speed vs ncnn's.

Quality: scikit-image's natural photos (astronaut, chelsea, coffee, rocket), cut to
256×256, are degraded — antialiased bicubic ↓ by the factor, then optionally Gaussian noise
(σ = 10, or σ = 25 followed by JPEG at quality 50) — and restored by every model at
that factor and by Lanczos and OpenCV's fastNlMeans + Lanczos.  PSNR and SSIM against
the originals are printed per condition.

Speed: frames per second of our torch executor and of the ``ncnn`` CPU runtime on the
same model and frame size, in one run, and their ratio.

    .venv/bin/python -m benchmarks.upscale_quality
"""

from __future__ import annotations

import time

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
    2: ("span-x2", "waifu2x-photo-x2", "waifu2x-photo-noise1-x2", "waifu2x-photo-noise3-x2",
        "realesr-animevideov3-x2"),
    4: ("span-x4", "clearreality-x4", "realesrgan-x4plus", "realesr-animevideov3-x4"),
}
CONDITIONS = ("bicubic", "bicubic + σ10", "bicubic + σ25 + JPEG50")


def _bicubic(image: np.ndarray, side: int) -> np.ndarray:
    # Antialiased bicubic, like MATLAB's imresize that the models' training data used.
    # OpenCV's INTER_CUBIC does not antialias when shrinking: its aliasing cost every
    # model 3-4 dB in a first version of this benchmark.
    return np.asarray(Image.fromarray(image).resize((side, side), Image.BICUBIC))


def _originals() -> list[np.ndarray]:
    out = []
    for name in IMAGES:
        image = getattr(data, name)()
        h, w = image.shape[:2]
        side = min(h, w)
        crop = image[(h - side) // 2:(h + side) // 2, (w - side) // 2:(w + side) // 2]
        out.append(_bicubic(np.ascontiguousarray(crop), 256))
    return out


def _degrade(image: np.ndarray, factor: int, condition: str, rng: np.random.Generator
             ) -> np.ndarray:
    small = _bicubic(image, 256 // factor)
    if condition == "bicubic":
        return small
    sigma = 10 if "σ10" in condition else 25
    noisy = np.clip(small + rng.normal(0, sigma, small.shape), 0, 255).astype(np.uint8)
    if "JPEG" in condition:
        _, encoded = cv2.imencode(".jpg", cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR),
                                  [cv2.IMWRITE_JPEG_QUALITY, 50])
        noisy = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return noisy


def _lanczos(image: np.ndarray, factor: int) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.resize(image, (w * factor, h * factor), interpolation=cv2.INTER_LANCZOS4)


def _nlmeans_lanczos(image: np.ndarray, factor: int, strength: float) -> np.ndarray:
    return _lanczos(cv2.fastNlMeansDenoisingColored(image, None, strength, strength, 7, 21),
                    factor)


def _score(restored: list[np.ndarray], originals: list[np.ndarray]) -> tuple[float, float]:
    psnr = np.mean([peak_signal_noise_ratio(o, r) for o, r in
                    zip(originals, restored, strict=True)])
    ssim = np.mean([structural_similarity(o, r, channel_axis=2) for o, r in
                    zip(originals, restored, strict=True)])
    return float(psnr), float(ssim)


def quality() -> None:
    originals = _originals()
    operators = {name: NeuralUpscale(name, factor=factor, tile=0)
                 for factor, names in MODELS.items() for name in names}
    for factor, names in MODELS.items():
        for condition in CONDITIONS:
            rng = np.random.default_rng(0)
            degraded = [_degrade(o, factor, condition, rng) for o in originals]
            strength = 0 if condition == "bicubic" else (6 if "σ10" in condition else 14)
            rows: dict[str, tuple[float, float]] = {
                "lanczos": _score([_lanczos(d, factor) for d in degraded], originals)}
            if strength:
                rows[f"fastNlMeans(h={strength}) + lanczos"] = _score(
                    [_nlmeans_lanczos(d, factor, strength) for d in degraded], originals)
            for name in names:
                rows[name] = _score([operators[name](d[None])[0] for d in degraded],
                                    originals)
            print(f"\n×{factor}, {condition} ({len(originals)} images, 256×256)")
            print(f"  {'method':34s} {'PSNR dB':>8s} {'SSIM':>7s}")
            for method, (psnr, ssim) in rows.items():
                print(f"  {method:34s} {psnr:8.2f} {ssim:7.4f}")


def _ncnn_fps(name: str, frame: np.ndarray, repeats: int) -> float:
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

    once()
    started = time.perf_counter()
    for _ in range(repeats):
        once()
    return repeats / (time.perf_counter() - started)


def _torch_fps(name: str, frame: np.ndarray, repeats: int) -> float:
    param, weights = sr_model(name).files()
    module = load_ncnn_module(param, weights)
    x = torch.from_numpy(frame.transpose(2, 0, 1).astype(np.float32)[None] / 255)
    with torch.inference_mode():
        module(x)
        started = time.perf_counter()
        for _ in range(repeats):
            module(x)
    return repeats / (time.perf_counter() - started)


def speed() -> None:
    frame = cv2.resize(data.astronaut(), (320, 180), interpolation=cv2.INTER_AREA)
    print(f"\nCPU speed, 320×180 input, {torch.get_num_threads()} threads each "
          "(frames/s of the raw network)")
    for name, repeats in (("span-x2", 5), ("realesr-animevideov3-x2", 5),
                          ("waifu2x-photo-noise3-x2", 5), ("realesrgan-x4plus", 1)):
        ours, theirs = _torch_fps(name, frame, repeats), _ncnn_fps(name, frame, repeats)
        print(f"  {name:26s} torch {ours:6.2f}  ncnn {theirs:6.2f}  torch/ncnn "
              f"{ours / theirs:.2f}")


def main() -> None:
    quality()
    speed()


if __name__ == "__main__":
    main()
