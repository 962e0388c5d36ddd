"""An ncnn graph as a ``torch.nn.Module``: a small executor for the ops our models use.

Why an executor rather than one architecture class per family: the five wheels hold
six architectures (SRVGGNetCompact, RRDBNet, SPAN, waifu2x upconv_7, SRMD, ...) exported
by different converters with their own quirks (mean subtraction inside SPAN, a
bilinear ½ downscale at the end of realesr-animevideov3-x2, valid-padding waifu2x).
Executing the graph as written reproduces each of them exactly from the files alone,
with ~15 op types, and the ``ncnn`` runtime checks it layer for layer (tests compare
outputs).  Weights become ordinary parameters, so CUDA, fp16, channels_last,
``torch.compile`` and ONNX export all apply.  Layers the executor does not know raise
:class:`~models.ncnn_graph.UnsupportedModelError` when the module is built, never
at run time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.ncnn_graph import NcnnGraph, NcnnLayer, UnsupportedModelError

__all__ = ["NcnnModule"]

_PASS_THROUGH = {"Input", "Split", "Noop"}


def _pair(layer: NcnnLayer, key: int, default: int) -> tuple[int, int]:
    """(h, w) of a parameter whose height twin is ``key + 10`` in ncnn's numbering."""
    w = layer.int_param(key, default)
    return layer.int_param(key + 10, w), w


def _activation(kind: int, params: list[float]) -> Callable[[torch.Tensor], torch.Tensor]:
    if kind == 0:
        return lambda x: x
    if kind == 1:
        return F.relu
    if kind == 2:
        slope = params[0] if params else 0.0
        return lambda x: F.leaky_relu(x, slope)
    if kind == 3:
        return lambda x: x.clamp(params[0], params[1])
    if kind == 4:
        return torch.sigmoid
    if kind == 5:
        return F.mish
    raise UnsupportedModelError(f"activation type {kind}")


def _padding(layer: NcnnLayer) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) from ncnn's pad_left=4, right=15, top=14, bottom=16."""
    left = layer.int_param(4, 0)
    if left < 0:
        raise UnsupportedModelError(f"{layer.name}: automatic 'SAME' padding ({left})")
    right = layer.int_param(15, left)
    top = layer.int_param(14, left)
    bottom = layer.int_param(16, top)
    return left, right, top, bottom


class NcnnModule(nn.Module):
    """Runs ``graph`` on ``(N, C, H, W)`` float tensors laid out as ncnn's blobs."""

    def __init__(self, graph: NcnnGraph) -> None:
        super().__init__()
        self.graph = graph
        self.input_blob = graph.input_blob
        self.output_blob = graph.output_blob
        self.weights = nn.ParameterDict()
        self._steps: list[tuple[NcnnLayer, Callable[..., torch.Tensor]]] = []
        for index, layer in enumerate(graph.layers):
            self._steps.append((layer, self._build(index, layer)))

    def _param(self, index: int, name: str, array: np.ndarray, shape: tuple[int, ...]) -> str:
        key = f"l{index}_{name}"
        self.weights[key] = nn.Parameter(
            torch.from_numpy(array.reshape(shape)), requires_grad=False
        )
        return key

    def _build(self, index: int, layer: NcnnLayer) -> Callable[..., torch.Tensor]:
        kind = layer.type
        if kind in _PASS_THROUGH:
            return lambda x: x
        if kind in ("Convolution", "ConvolutionDepthWise", "Deconvolution"):
            return self._convolution(index, layer)
        if kind == "PReLU":
            weights = layer.weights["slope"]
            key = self._param(index, "slope", weights, (weights.size,))
            return lambda x: F.prelu(x, self.weights[key].to(x.dtype))
        if kind == "ReLU":
            slope = layer.float_param(0, 0.0)
            return (lambda x: F.leaky_relu(x, slope)) if slope else F.relu
        if kind == "Sigmoid":
            return torch.sigmoid
        if kind == "Swish":
            return F.silu
        if kind == "TanH":
            return torch.tanh
        if kind == "PixelShuffle":
            if layer.int_param(1, 0):
                raise UnsupportedModelError(f"{layer.name}: PixelShuffle mode 1")
            factor = layer.int_param(0, 1)
            return lambda x: F.pixel_shuffle(x, factor)
        if kind == "Interp":
            return self._interp(layer)
        if kind == "BinaryOp":
            return self._binary(layer)
        if kind == "Eltwise":
            return self._eltwise(layer)
        if kind == "Concat":
            axis = layer.int_param(0, 0) + 1
            return lambda *xs: torch.cat(xs, dim=axis)
        if kind == "MemoryData":
            w, h, c = (layer.int_param(k, 0) for k in (0, 1, 2))
            shape = (1, c, max(h, 1), max(w, 1)) if c else (1, 1, max(h, 1), max(w, 1))
            key = self._param(index, "data", layer.weights["data"], shape)
            return lambda: self.weights[key]
        raise UnsupportedModelError(f"layer type {kind} ({layer.name})")

    def _convolution(self, index: int, layer: NcnnLayer) -> Callable[..., torch.Tensor]:
        out = layer.int_param(0, 0)
        kh, kw = _pair(layer, 1, 1)
        dilation = _pair(layer, 2, 1)
        stride = _pair(layer, 3, 1)
        groups = layer.int_param(7, 1) if layer.type == "ConvolutionDepthWise" else 1
        weight = layer.weights["weight"]
        per_group_in = weight.size // (out * kh * kw)
        activation = _activation(
            layer.int_param(9, 0),
            layer.float_params(10),
        )
        left, right, top, bottom = _padding(layer)
        if layer.type == "Deconvolution":
            if (
                groups != 1
                or (left, top) != (right, bottom)
                or layer.int_param(18, 0)
                or layer.int_param(20, 0)
            ):
                raise UnsupportedModelError(f"{layer.name}: deconvolution options")
            # ncnn stores deconvolution weights output-major; torch wants input-major.
            w_key = self._param(
                index,
                "weight",
                weight.reshape(out, per_group_in, kh, kw).transpose(1, 0, 2, 3).copy(),
                (per_group_in, out, kh, kw),
            )
        else:
            w_key = self._param(index, "weight", weight, (out, per_group_in, kh, kw))
        b_key = (
            self._param(index, "bias", layer.weights["bias"], (out,))
            if "bias" in layer.weights
            else None
        )

        def run(x: torch.Tensor) -> torch.Tensor:
            w = self.weights[w_key].to(x.dtype)
            b = self.weights[b_key].to(x.dtype) if b_key else None
            if layer.type == "Deconvolution":
                y = F.conv_transpose2d(x, w, b, stride, (top, left), dilation=dilation)
            else:
                if (left, top) != (right, bottom):
                    x = F.pad(x, (left, right, top, bottom))
                    pad: tuple[int, int] = (0, 0)
                else:
                    pad = (top, left)
                y = F.conv2d(x, w, b, stride, pad, dilation, groups)
            return activation(y)

        return run

    @staticmethod
    def _interp(layer: NcnnLayer) -> Callable[..., torch.Tensor]:
        mode = {1: "nearest", 2: "bilinear", 3: "bicubic"}.get(layer.int_param(0, 1))
        if mode is None:
            raise UnsupportedModelError(f"{layer.name}: resize type {layer.get(0, 1)}")
        size = (layer.int_param(3, 0), layer.int_param(4, 0))
        scale = (layer.float_param(1, 1.0), layer.float_param(2, 1.0))
        align = bool(layer.get(6, 0)) if mode != "nearest" else None

        def run(x: torch.Tensor) -> torch.Tensor:
            if size[0] and size[1]:
                return F.interpolate(x, size=size, mode=mode, align_corners=align)
            return F.interpolate(
                x, scale_factor=scale, mode=mode, align_corners=align, recompute_scale_factor=False
            )

        return run

    @staticmethod
    def _binary(layer: NcnnLayer) -> Callable[..., torch.Tensor]:
        ops: dict[int, Callable[[torch.Tensor, torch.Tensor | float], torch.Tensor]] = {
            0: lambda a, b: a + b,
            1: lambda a, b: a - b,
            2: lambda a, b: a * b,
            3: lambda a, b: a / b,
            4: lambda a, b: torch.maximum(a, torch.as_tensor(b)),
            5: lambda a, b: torch.minimum(a, torch.as_tensor(b)),
            7: lambda a, b: b - a,
            8: lambda a, b: b / a,
        }
        op = ops.get(layer.int_param(0, 0))
        if op is None:
            raise UnsupportedModelError(f"{layer.name}: binary op {layer.get(0, 0)}")
        if layer.int_param(1, 0):
            scalar = layer.float_param(2, 0.0)
            return lambda x: op(x, scalar)
        return lambda a, b: op(a, b.to(a.dtype))

    @staticmethod
    def _eltwise(layer: NcnnLayer) -> Callable[..., torch.Tensor]:
        op = layer.int_param(0, 1)
        coeffs = layer.float_params(1)

        def run(*xs: torch.Tensor) -> torch.Tensor:
            if op == 0:
                out = xs[0]
                for x in xs[1:]:
                    out = out * x
                return out
            if op == 2:
                out = xs[0]
                for x in xs[1:]:
                    out = torch.maximum(out, x)
                return out
            weights = coeffs or [1.0] * len(xs)
            out = xs[0] * weights[0]
            for x, c in zip(xs[1:], weights[1:], strict=True):
                out = out + x * c
            return out

        if op not in (0, 1, 2):
            raise UnsupportedModelError(f"{layer.name}: eltwise op {op}")
        return run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blobs: dict[str, torch.Tensor] = {self.input_blob: x}
        for layer, step in self._steps:
            if layer.type == "Input":
                continue
            # ncnn gives every blob exactly one consumer (Split makes the copies), so a
            # blob is dropped as soon as it is read and memory follows the live set.
            result = step(*(blobs.pop(b) for b in layer.bottoms))
            for top in layer.tops:
                blobs[top] = result
        return blobs[self.output_blob]
