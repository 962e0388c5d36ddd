"""TensorRT engines for the upscaling models, built from ONNX, cached, or torch instead.

``tensorrt_or_torch`` returns a callable with the torch module's signature.  When the
``tensorrt`` package imports and CUDA is present, it is an engine built from the
model's fp16 ONNX export with one optimisation profile (1 to ``max_batch`` frames,
sides up to ``max_side``), cached on disk under a key of model, source digest,
precision, shape range, GPU name and TensorRT version, so a driver or GPU change never
loads a stale engine.  Otherwise, or when the build fails, it is the torch module, and
the log says why: nothing claims to have run TensorRT when it did not.

The network is strongly typed: its precision is the ONNX file's (fp16 weights and
activations, exported from the fp16 module), not a builder flag.  TensorRT 10.12
deprecated weakly typed networks and the ``FP16`` builder flag, and TensorRT 11 (what
the ``gpu`` extra installs) removed them.

TensorRT is not installed on the machines this was written on (nor on the GPU machine
lent to the project: its wheels are larger than what can be carried there), so only
the ONNX export, the build's calls (against a stand-in) and the fallback are tested.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.ncnn_convert import source_digest
from models.onnx_export import export_onnx
from models.sr_models import SrModel

__all__ = ["baked_digest", "engine_key", "export_model_onnx", "tensorrt_or_torch"]

log = logging.getLogger(__name__)

_MIN_SIDE = 8
# Part of the engine key: a change of how engines are built must not load old ones.
_PRECISION = "fp16-strongly-typed"


def engine_key(
    model: SrModel, digest: str, max_side: int, max_batch: int, gpu: str, trt_version: str
) -> str:
    parts = [
        model.name,
        digest,
        _PRECISION,
        f"b1-{max_batch}",
        f"s{_MIN_SIDE}-{max_side}",
        gpu,
        trt_version,
    ]
    return f"{model.name}-{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:24]}"


def export_model_onnx(net: torch.nn.Module, path: Path, channels: int = 3) -> Path:
    """``net`` as ONNX with dynamic batch, height and width, in the module's own dtype
    and on its device (fp16 on CUDA: the precision a strongly typed engine keeps)."""
    frames = {0: "n", 2: "height", 3: "width"}
    param = next(net.parameters())
    example = torch.rand(1, channels, 32, 32, device=param.device).to(param.dtype)
    return export_onnx(
        net,
        (example,),
        path,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": frames, "output": frames},
    )


class _Engine:
    """Runs a deserialised engine on CUDA tensors, as the torch module would; inputs
    outside the engine's shape profile go to the torch module instead of failing."""

    def __init__(
        self,
        trt: Any,
        engine: Any,
        dtype: torch.dtype,
        fallback: torch.nn.Module,
        max_side: int,
        max_batch: int,
    ) -> None:
        self._trt = trt
        self._engine = engine
        self._fallback = fallback
        self._max_side, self._max_batch = max_side, max_batch
        self._context = engine.create_execution_context()
        self._dtype = dtype
        # A strongly typed engine's I/O has the ONNX file's types (fp16 here).
        self._in = _torch_dtype(trt, engine.get_tensor_dtype("input"))
        self._out = _torch_dtype(trt, engine.get_tensor_dtype("output"))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if n > self._max_batch or max(h, w) > self._max_side or min(h, w) < _MIN_SIDE:
            return self._fallback(x)
        x = x.to(self._in).contiguous()
        self._context.set_input_shape("input", tuple(x.shape))
        out = torch.empty(
            tuple(self._context.get_tensor_shape("output")), dtype=self._out, device=x.device
        )
        self._context.set_tensor_address("input", x.data_ptr())
        self._context.set_tensor_address("output", out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out.to(self._dtype)


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.DataType.HALF: torch.float16, trt.DataType.FLOAT: torch.float32}
    if dtype not in table:
        raise RuntimeError(f"unexpected engine I/O type {dtype}")
    return table[dtype]


def _network_flags(trt: Any) -> int:
    # TensorRT 10 builds weakly typed networks unless asked; 11 knows only strongly
    # typed ones and may drop the flag.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def _build(trt: Any, onnx_path: Path, max_side: int, max_batch: int) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"ONNX parse failed: {errors}")
    config = builder.create_builder_config()  # no precision flags: the types are the ONNX's
    profile = builder.create_optimization_profile()
    profile.set_shape(
        "input",
        (1, 3, _MIN_SIDE, _MIN_SIDE),
        (max_batch, 3, max_side, max_side),
        (max_batch, 3, max_side, max_side),
    )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("engine build returned nothing")
    return bytes(serialized)


def baked_digest(model: SrModel, baked: tuple[float, ...] = ()) -> str:
    """What an engine or ONNX file is made from: the model's files, and the constant
    inputs baked into it (SRMD's noise level: each σ is its own engine)."""
    digest = source_digest(*model.files())
    return hashlib.sha256(f"{digest}|{baked!r}".encode()).hexdigest() if baked else digest


def tensorrt_or_torch(
    net: torch.nn.Module,
    model: SrModel,
    *,
    max_side: int,
    max_batch: int,
    cache: Path,
    baked: tuple[float, ...] = (),
) -> Callable[[torch.Tensor], torch.Tensor]:
    """An engine for ``net`` (fp16, on CUDA) or, failing that, ``net`` itself; engines
    and ONNX files are kept under ``cache``.  ``baked``: constant inputs ``net`` holds
    (SRMD's degradation maps), part of the engine's identity like its weights."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as exc:
        log.warning("%s: TensorRT is not importable (%s); running torch", model.name, exc)
        return net
    if not torch.cuda.is_available():
        log.warning("%s: TensorRT needs CUDA; running torch", model.name)
        return net
    dtype = next(net.parameters()).dtype
    try:
        digest = baked_digest(model, baked)
        key = engine_key(
            model, digest, max_side, max_batch, torch.cuda.get_device_name(), trt.__version__
        )
        engine_path = cache / "tensorrt" / f"{key}.engine"
        if not engine_path.is_file():
            onnx_path = cache / "onnx" / f"{model.name}-{digest[:24]}-fp16.onnx"
            # Two actors on one node may build at once: each renames a whole file.
            if not onnx_path.is_file():
                partial = onnx_path.with_suffix(f".{os.getpid()}.partial")
                os.replace(export_model_onnx(_fp16_copy(net), partial), onnx_path)
            engine_path.parent.mkdir(parents=True, exist_ok=True)
            partial = engine_path.with_suffix(f".{os.getpid()}.partial")
            partial.write_bytes(_build(trt, onnx_path, max_side, max_batch))
            os.replace(partial, engine_path)
            log.info("%s: built TensorRT engine %s", model.name, engine_path.name)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise RuntimeError(f"could not deserialise {engine_path}")
        return _Engine(trt, engine, dtype, net, max_side, max_batch)
    except Exception as exc:
        log.warning("%s: TensorRT engine unavailable (%s); running torch", model.name, exc)
        return net


def _fp16_copy(net: torch.nn.Module) -> torch.nn.Module:
    # Contiguous (not channels_last) weights export to plain ONNX initialisers.
    fp16 = copy.deepcopy(net).half()
    return fp16.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # Module.to takes memory_format; torch's stubs omit it
