"""TensorRT engines for the upscaling models, built from ONNX, cached, or torch instead.

``tensorrt_or_torch`` returns a callable with the torch module's signature.  When the
``tensorrt`` package imports and CUDA is present, it is an fp16 engine built from the
model's ONNX export with one optimisation profile (1 to ``max_batch`` frames, sides up
to ``max_side``), cached on disk under a key of model, source digest, shape range, GPU
name and TensorRT version, so a driver or GPU change never loads a stale engine.
Otherwise, or when the build fails, it is the torch module, and the log says why:
nothing claims to have run TensorRT when it did not.

TensorRT is not installed on the machines this was written on (nor on the GPU machine
lent to the project), so only the ONNX export and the fallback are tested here.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.ncnn_convert import cache_dir, source_digest
from models.onnx_export import export_onnx
from models.sr_models import SrModel

__all__ = ["engine_key", "export_model_onnx", "tensorrt_or_torch"]

log = logging.getLogger(__name__)

_MIN_SIDE = 8


def engine_key(model: SrModel, digest: str, max_side: int, max_batch: int, gpu: str,
               trt_version: str) -> str:
    parts = [model.name, digest, f"b1-{max_batch}", f"s{_MIN_SIDE}-{max_side}", gpu,
             trt_version]
    return f"{model.name}-{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:24]}"


def export_model_onnx(net: torch.nn.Module, path: Path, channels: int = 3) -> Path:
    """``net`` (fp32, on the CPU) as ONNX with dynamic batch, height and width."""
    frames = {0: "n", 2: "height", 3: "width"}
    example = torch.rand(1, channels, 32, 32)
    return export_onnx(net, (example,), path, input_names=["input"],
                       output_names=["output"],
                       dynamic_axes={"input": frames, "output": frames})


class _Engine:
    """Runs a deserialised engine on CUDA tensors, as the torch module would."""

    def __init__(self, trt: Any, engine: Any, dtype: torch.dtype) -> None:
        self._trt = trt
        self._engine = engine
        self._context = engine.create_execution_context()
        self._dtype = dtype

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous()
        self._context.set_input_shape("input", tuple(x.shape))
        out = torch.empty(tuple(self._context.get_tensor_shape("output")),
                          dtype=torch.float32, device=x.device)
        self._context.set_tensor_address("input", x.data_ptr())
        self._context.set_tensor_address("output", out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out.to(self._dtype)


def _build(trt: Any, onnx_path: Path, max_side: int, max_batch: int) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"ONNX parse failed: {errors}")
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, _MIN_SIDE, _MIN_SIDE),
                      (max_batch, 3, max_side, max_side), (max_batch, 3, max_side, max_side))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("engine build returned nothing")
    return bytes(serialized)


def tensorrt_or_torch(net: torch.nn.Module, model: SrModel, *, max_side: int,
                      max_batch: int) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import tensorrt as trt
    except ImportError as exc:
        log.warning("%s: TensorRT is not importable (%s); running torch", model.name, exc)
        return net
    if not torch.cuda.is_available():
        log.warning("%s: TensorRT needs CUDA; running torch", model.name)
        return net
    dtype = next(net.parameters()).dtype
    try:
        param, weights = model.files()
        digest = source_digest(param, weights)
        key = engine_key(model, digest, max_side, max_batch, torch.cuda.get_device_name(),
                         trt.__version__)
        engine_path = cache_dir() / "tensorrt" / f"{key}.engine"
        if not engine_path.is_file():
            onnx_path = cache_dir() / "onnx" / f"{model.name}-{digest[:24]}.onnx"
            if not onnx_path.is_file():
                export_model_onnx(_fp32_copy(net), onnx_path)
            engine_path.parent.mkdir(parents=True, exist_ok=True)
            engine_path.write_bytes(_build(trt, onnx_path, max_side, max_batch))
            log.info("%s: built TensorRT engine %s", model.name, engine_path.name)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise RuntimeError(f"could not deserialise {engine_path}")
        return _Engine(trt, engine, dtype)
    except Exception as exc:
        log.warning("%s: TensorRT engine unavailable (%s); running torch", model.name, exc)
        return net


def _fp32_copy(net: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(net).float().cpu()
