"""Pretrained upscaling/denoising models as :class:`~models.operator.FrameFilter` operators.

A model of scale *s* serves any factor *f*: its output is resized by *f/s* (bicubic,
antialiased when shrinking), so ``span-x4`` gives ×3 and a ×2 waifu2x denoiser gives
a clean ×1.  CPU: fp32, torch's threads (Ray sets them to the actor's CPUs).  CUDA:
fp16, channels_last, frames in batches, optionally ``torch.compile`` or a TensorRT
engine (:mod:`models.tensorrt_runtime`), which falls back to torch with a logged reason.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from models.ncnn_convert import load_ncnn_module
from models.operator import check_frames
from models.sr_models import SrModel, sr_model
from models.tiling import run_tiled

__all__ = ["NeuralUpscale"]

log = logging.getLogger(__name__)


class NeuralUpscale:
    name: ClassVar[str] = "neural_upscale"
    needs_gpu = True

    def __init__(self, model: str, factor: int = 2, tile: int = 256, overlap: int = 16,
                 batch: int = 4, device: str | None = None,
                 runtime: Literal["torch", "compile", "tensorrt"] = "torch") -> None:
        if factor not in (1, 2, 3, 4):
            raise ValueError(f"factor must be 1–4, got {factor}")
        if tile and tile < 2 * overlap:
            raise ValueError(f"tile ({tile}) must be at least twice the overlap ({overlap})")
        self.model: SrModel = sr_model(model)
        self.scale = factor
        self.tile, self.overlap, self.batch = tile, overlap, max(1, batch)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        net = load_ncnn_module(*self.model.files())
        if self.device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        self.net = net.to(self.device, self.dtype)
        self._run = self._runtime(runtime)

    def __repr__(self) -> str:
        return f"NeuralUpscale({self.model.name!r}, factor={self.scale}, device={self.device})"

    def _runtime(self, runtime: str) -> torch.nn.Module:
        if runtime == "torch" or self.device.type != "cuda":
            if runtime != "torch":
                log.warning("%s: %s needs CUDA; running torch on %s", self.model.name,
                            runtime, self.device)
            return self.net
        if runtime == "compile":
            return torch.compile(self.net)  # type: ignore[return-value]
        from models.tensorrt_runtime import tensorrt_or_torch

        max_side = self.tile + 2 * self.overlap if self.tile else 2160
        return tensorrt_or_torch(self.net, self.model, max_side=max_side,
                                 max_batch=self.batch)

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
        for start in range(0, n, self.batch):
            # A copy: frames from Ray's object store are read-only, which torch warns of.
            part = torch.from_numpy(frames[start:start + self.batch].copy()).to(self.device)
            x = part.permute(0, 3, 1, 2).to(self.dtype) / 255.0
            if self.device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            y = run_tiled(self._network, x, scale=self.model.scale, tile=self.tile,
                          overlap=self.overlap)
            if self.model.scale != self.scale:
                y = F.interpolate(y.float(), size=(h * self.scale, w * self.scale),
                                  mode="bicubic", align_corners=False,
                                  antialias=self.scale < self.model.scale)
            pixels = (y.float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
            out[start:start + len(part)] = pixels.permute(0, 2, 3, 1).cpu().numpy()
        return out
