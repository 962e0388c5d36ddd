"""ONNX export of our torch models, and the onnxruntime check that the export is faithful.

ONNX is where the TensorRT path starts (an engine is built from the ONNX file), so a
model is only as fast on TensorRT as its export is correct: :func:`max_onnx_error`
runs the file on onnxruntime's CPU provider and compares it with torch.

The TorchScript-based exporter is used on purpose: it honours ``dynamic_axes``, so one
file serves any H×W, and exports RIFE in ~2 s.  torch's newer ``dynamo=True`` exporter
took ~60 s and fixed the spatial size at the example's unless every dimension is
declared again through ``dynamic_shapes``.  Its deprecation warning is silenced here.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = ["OPSET", "export_onnx", "max_onnx_error"]

OPSET = 18  # GridSample (RIFE's warp) needs 16+; TensorRT 10 parses 18


def export_onnx(
    module: torch.nn.Module,
    example: Sequence[torch.Tensor],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module.eval(),
            tuple(example),
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
            opset_version=OPSET,
            dynamo=False,
        )
    return path


def max_onnx_error(
    path: Path, module: torch.nn.Module, inputs: Mapping[str, torch.Tensor]
) -> float:
    """Largest absolute difference between onnxruntime (CPU) and torch on ``inputs``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = module(*inputs.values()).float().numpy()
    feed = {name: tensor.numpy() for name, tensor in inputs.items()}
    actual = session.run(None, feed)[0]
    if actual.shape != expected.shape:
        raise ValueError(f"ONNX output shape {actual.shape} != torch {expected.shape}")
    return float(np.abs(actual - expected).max())
