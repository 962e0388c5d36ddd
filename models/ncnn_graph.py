"""Reading ncnn model files: the ``.param`` text graph and the ``.bin`` weight blob.

``.param``: a magic line (7767517), ``layer_count blob_count``, then one line per
layer: ``Type name n_bottoms n_tops bottoms… tops… key=value…``.  A key below -23300
is an array (``-23310=1,0.2`` is key 10 holding ``[0.2]``).

``.bin``: each layer's tensors, in layer order, concatenated.  A tensor loaded "with a
flag" starts with a 4-byte tag: 0 means float32 follows, 0x01306B47 float16 (padded to
4 bytes); quantised tables are not used by any model we register and are refused.
Tensors loaded "raw" (biases, PReLU slopes, MemoryData) are float32 without a tag.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["NcnnGraph", "NcnnLayer", "UnsupportedModelError", "parse_param", "read_ncnn"]

_MAGIC = 7767517
_FP16_TAG = 0x01306B47
_ARRAY_BASE = -23300

Param = int | float | list[int | float]


class UnsupportedModelError(ValueError):
    """The files use something this reader or executor does not implement."""


@dataclass
class NcnnLayer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, Param]
    weights: dict[str, np.ndarray] = field(default_factory=dict)

    def get(self, key: int, default: Param) -> Param:
        return self.params.get(key, default)

    def int_param(self, key: int, default: int) -> int:
        """Parameter ``key`` as an integer (ncnn writes flags and sizes as numbers)."""
        value = self.params.get(key, default)
        if isinstance(value, list):
            raise UnsupportedModelError(f"{self.name}: parameter {key} is an array, not a number")
        return int(value)

    def float_param(self, key: int, default: float) -> float:
        value = self.params.get(key, default)
        if isinstance(value, list):
            raise UnsupportedModelError(f"{self.name}: parameter {key} is an array, not a number")
        return float(value)

    def float_params(self, key: int) -> list[float]:
        """Parameter ``key`` as an array (a single number is an array of one)."""
        value = self.params.get(key, [])
        return [float(v) for v in value] if isinstance(value, list) else [float(value)]


@dataclass
class NcnnGraph:
    layers: list[NcnnLayer]

    @property
    def input_blob(self) -> str:
        return next(layer.tops[0] for layer in self.layers if layer.type == "Input")

    @property
    def output_blob(self) -> str:
        return self.layers[-1].tops[0]


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def _parse_params(tokens: list[str]) -> dict[int, Param]:
    params: dict[int, Param] = {}
    for token in tokens:
        key_text, _, value = token.partition("=")
        key = int(key_text)
        if key <= _ARRAY_BASE:
            count, *items = value.split(",")
            params[_ARRAY_BASE - key] = [_number(v) for v in items[: int(count)]]
        else:
            params[key] = _number(value)
    return params


def parse_param(text: str) -> list[NcnnLayer]:
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines or lines[0] != [str(_MAGIC)]:
        raise UnsupportedModelError("not an ncnn .param file (bad magic)")
    layers = []
    for fields in lines[2:]:
        kind, name, n_bottom, n_top = fields[0], fields[1], int(fields[2]), int(fields[3])
        bottoms = fields[4 : 4 + n_bottom]
        tops = fields[4 + n_bottom : 4 + n_bottom + n_top]
        params = _parse_params(fields[4 + n_bottom + n_top :])
        layers.append(NcnnLayer(kind, name, bottoms, tops, params))
    return layers


class _Blob:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def _take(self, size: int) -> int:
        """Advance past ``size`` bytes; returns where they start."""
        start = self.offset
        if start + size > len(self.data):
            raise UnsupportedModelError("weight file ends early")
        self.offset += size
        return start

    def raw(self, count: int) -> np.ndarray:
        return np.frombuffer(self.data, "<f4", count, self._take(4 * count)).copy()

    def flagged(self, count: int) -> np.ndarray:
        (tag,) = struct.unpack_from("<I", self.data, self._take(4))
        if tag == 0:
            return self.raw(count)
        if tag == _FP16_TAG:
            start = self._take((2 * count + 3) // 4 * 4)
            return np.frombuffer(self.data, "<f2", count, start).astype(np.float32)
        raise UnsupportedModelError(f"weight storage tag {tag:#x} (quantised) is not supported")


def _load_weights(layer: NcnnLayer, blob: _Blob) -> None:
    if layer.type in ("Convolution", "Deconvolution", "ConvolutionDepthWise"):
        layer.weights["weight"] = blob.flagged(layer.int_param(6, 0))
        if layer.int_param(5, 0):
            layer.weights["bias"] = blob.raw(layer.int_param(0, 0))
    elif layer.type == "PReLU":
        layer.weights["slope"] = blob.raw(layer.int_param(0, 1))
    elif layer.type == "MemoryData":
        w, h, c = (layer.int_param(k, 0) for k in (0, 1, 2))
        layer.weights["data"] = blob.raw(max(w, 1) * max(h, 1) * max(c, 1))


def read_ncnn(param: Path, weights: Path) -> NcnnGraph:
    """Parse ``param`` and attach each layer's tensors from ``weights``."""
    layers = parse_param(param.read_text())
    blob = _Blob(weights.read_bytes())
    for layer in layers:
        _load_weights(layer, blob)
    if blob.offset != len(blob.data):
        raise UnsupportedModelError(
            f"{len(blob.data) - blob.offset} bytes of {weights.name} were not used: "
            "a layer type stores weights this reader does not know"
        )
    return NcnnGraph(layers)
