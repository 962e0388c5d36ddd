"""Pretrained upscaling/denoising models as :class:`~models.operator.FrameFilter` operators.

A model of scale *s* serves any factor *f*: its output is resized by *f/s* (bicubic,
antialiased when shrinking), so ``span-x4`` gives ×3 and a ×2 denoiser (waifu2x,
SRMD) gives a clean ×1.  SRMD is told the noise σ to remove (``noise_sigma``,
:mod:`models.degradation_map`); the other models' strength is in their weights.

CPU: fp32, torch's threads (Ray sets them to the actor's CPUs).  CUDA: fp16,
channels_last, frames in batches, and the runtime :mod:`models.runtime` chooses:
eager torch, ``torch.compile`` or a TensorRT engine (:mod:`models.tensorrt_runtime`);
on CPU, the ncnn runtime on the model's own files (:mod:`models.ncnn_runtime`).
Which one each instance got, and why, is logged and kept in ``runtime_choice``.

Colour anchoring: some published models shift colour (ClearReality darkened real footage
by 1.7 / 4.2 / 2.0 levels in ``benchmarks/fidelity.py``).  The output's low frequencies
are tied back to the input's: the output, area-downscaled to the input's size, minus the
input, blurred (σ ``ANCHOR_SIGMA`` px of the input) is the drift, which is upscaled and
subtracted.  Detail above that band, which is what the model adds, is untouched.

Noise-adaptive model choice is the planner's (:mod:`pipelines.presets`): it measures the
job's noise once and plans SPAN or the denoising model for the whole job, so chunks
never disagree at their seams. The thresholds it uses were measured with this operator:
on real clips (``benchmarks/fidelity.py``) SPAN kept and sharpened the noise of noisy
footage (bikes: 28.1 dB against 32.8 for waifu2x noise level 3), while on clean footage
SPAN led by 0.3–0.5 dB. Per 8-frame chunk, noisy degraded copies read σ 1.74–4.4 and
clean ones 0.26–1.76 (carphone, bikes, Big Buck Bunny), so the classes touch; the costs
are lopsided (a noisy chunk given SPAN lost ~4 dB, a clean chunk given waifu2x ~0.4 dB
and still beat Lanczos), hence a default threshold of 1.8, at the clean end. Chroma
noise is the second test, for chunks whose luma texture hides their noise: decoded as
the pipeline decodes (12-frame chunks), clean footage (degraded copies and the
originals) read 0.01–0.26 and noisy chunks 0.29–0.38, hence 0.28, again at the clean
end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from models.degradation_map import DegradationMapped, degradation_channels
from models.host_staging import HostStaging
from models.ncnn_convert import load_ncnn_module
from models.ncnn_runtime import NcnnRunner, ncnn_version
from models.operator import check_frames
from models.runtime import (
    ModelOptions,
    ModelRuntime,
    RuntimeChoice,
    choose_runtime,
    tensorrt_version,
)
from models.sr_models import SrModel, sr_model
from models.tiling import run_tiled

__all__ = ["NeuralUpscale"]

log = logging.getLogger(__name__)

# The band the colour anchor ties to the input.  It was σ 1.5 px, which also tied the
# denoisers' output back to the input's noise and blocking in that band: on the noisy
# bikes copy waifu2x noise 3 went from 34.37 to 35.20 dB at σ 6 (35.33 at σ 12), the
# compressed one from 33.00 to 33.07, with the same mean colour shifts; a model's colour
# drift (ClearReality's several levels) is that low in frequency and is still removed.
ANCHOR_SIGMA = 6.0


class NeuralUpscale:
    name: ClassVar[str] = "neural_upscale"
    needs_gpu = True

    def __init__(
        self,
        model: str,
        factor: int = 2,
        tile: int = 256,
        overlap: int = 16,
        batch: int = 4,
        device: str | None = None,
        runtime: ModelRuntime = "auto",
        cache_dir: Path | None = None,
        anchor: bool = True,
        noise_sigma: float | None = None,
    ) -> None:
        if factor not in (1, 2, 3, 4):
            raise ValueError(f"factor must be 1–4, got {factor}")
        if tile and tile < 2 * overlap:
            raise ValueError(f"tile ({tile}) must be at least twice the overlap ({overlap})")
        options = ModelOptions(runtime, cache_dir)  # validates runtime
        self.model: SrModel = sr_model(model)
        if noise_sigma is not None and not self.model.noise_map:
            raise ValueError(f"{model} takes no noise_sigma: its noise level is in its weights")
        # A noise-map model told nothing is told "no noise": it then only upscales.
        self.noise_sigma = noise_sigma or 0.0
        self.maps = degradation_channels(self.noise_sigma) if self.model.noise_map else None
        self.scale = factor
        self.anchor = anchor
        self.tile, self.overlap, self.batch = tile, overlap, max(1, batch)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        net: torch.nn.Module = load_ncnn_module(*self.model.files(), cache=options.cache)
        if self.maps is not None:
            net = DegradationMapped(net, self.maps)
        if self.device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes memory_format; torch's stubs omit it
        self.net = net.to(self.device, self.dtype)
        self.staging = HostStaging(self.device)
        self._run, self.runtime_choice = self._runtime(options)

    def __repr__(self) -> str:
        return (
            f"NeuralUpscale({self.model.name!r}, factor={self.scale}, "
            + (f"noise_sigma={self.noise_sigma:g}, " if self.maps is not None else "")
            + f"device={self.device}, "
            f"runtime={self.runtime_choice.runtime})"
        )

    def _runtime(
        self, options: ModelOptions
    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], RuntimeChoice]:
        cuda = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        choice = choose_runtime(
            options.runtime,
            cuda=cuda,
            tensorrt=tensorrt_version() if cuda else None,
            ncnn=None if cuda else ncnn_version(),
            has_ncnn_path=True,
        )
        run: Callable[[torch.Tensor], torch.Tensor] = self.net
        if choice.runtime == "ncnn":
            try:
                runner = NcnnRunner(self.model)
                run = runner if self.maps is None else DegradationMapped(runner, self.maps)
            except Exception as exc:  # a build of ncnn that can't load these files
                choice = RuntimeChoice(
                    "torch", f"{choice.reason}, but ncnn could not load the model ({exc})", True
                )
        elif choice.runtime == "compile":
            run = torch.compile(self.net)
        elif choice.runtime == "tensorrt":
            from models.tensorrt_runtime import tensorrt_or_torch

            # Tiles arrive with their overlap and the model's own padding on each side.
            side = (self.tile + 2 * self.overlap if self.tile else 2160) + 2 * self.model.prepadding
            run = tensorrt_or_torch(
                self.net,
                self.model,
                max_side=side,
                max_batch=self.batch,
                cache=options.cache,
                baked=self.maps or (),
            )
            if run is self.net:  # the engine could not be built or loaded: logged there
                choice = RuntimeChoice(
                    "torch", f"{choice.reason}, but no engine could be built or loaded", True
                )
        log.log(
            logging.WARNING if choice.fallback else logging.INFO,
            "%s: runtime %s (%s)%s",
            self.model.name,
            choice.runtime,
            choice.reason,
            "" if self.maps is None else f", noise σ {self.noise_sigma:g}",
        )
        return run, choice

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.model.prepadding
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        return self._run(x)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        check_frames(frames)
        n, h, w, _ = frames.shape
        out = np.empty((n, h * self.scale, w * self.scale, 3), dtype=np.uint8)

        def place(start: int, copied: Callable[[], np.ndarray]) -> None:
            result = copied()
            out[start : start + len(result)] = result

        # Batch i's result goes into ``out`` while batch i+1 computes (models.host_staging).
        pending: tuple[int, Callable[[], np.ndarray]] | None = None
        for i, start in enumerate(range(0, n, self.batch)):
            part = self.staging.upload(frames[start : start + self.batch], slot=i)
            x = part.permute(0, 3, 1, 2).to(self.dtype) / 255.0
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            y = run_tiled(
                self._network, x, scale=self.model.scale, tile=self.tile, overlap=self.overlap
            )
            if self.model.scale != self.scale:
                y = F.interpolate(
                    y.float(),
                    size=(h * self.scale, w * self.scale),
                    mode="bicubic",
                    align_corners=False,
                    antialias=self.scale < self.model.scale,
                )
            if self.anchor:
                y = _anchored(y.float(), x.float())
            pixels = (y.float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
            copied = self.staging.download(pixels.permute(0, 2, 3, 1), slot=i)
            if pending is not None:
                place(*pending)
            pending = (start, copied)
        if pending is not None:
            place(*pending)
        return out


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, round(3 * sigma))
    taps = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-(taps**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    # Reflect padding needs the pad smaller than the side; replicate works for any size.
    x = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def _anchored(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` (upscaled) with its low frequencies tied to those of ``x`` (its input)."""
    down = F.interpolate(y, size=x.shape[-2:], mode="area") if y.shape != x.shape else y
    drift = _gaussian_blur(down - x, ANCHOR_SIGMA)
    if drift.shape != y.shape:
        drift = F.interpolate(drift, size=y.shape[-2:], mode="bilinear", align_corners=False)
    return y - drift
