"""Which runtime a neural model runs on, and where converted weights and engines live.

The service decides both once (``Settings.model_runtime`` and ``Settings.model_cache``)
and passes them down as :class:`ModelOptions`; nothing under :mod:`models` reads the
environment.  Runtimes:

* ``torch``: eager PyTorch (fp32 on CPU, fp16 on CUDA).
* ``compile``: ``torch.compile`` of the same module, on CUDA only.
* ``tensorrt``: an engine built from the model's ONNX export
  (:mod:`models.tensorrt_runtime`), on CUDA with the ``tensorrt`` package only.
* ``ncnn``: the ncnn CPU runtime on the model's own ``.param``/``.bin``
  (:mod:`models.ncnn_runtime`), for the upscalers, on CPU only.
* ``auto`` (the default): TensorRT where it imports, a CUDA device exists and the
  model has an engine path; without CUDA, ncnn where it imports and the model ships
  ncnn files (it ran every packaged upscaler faster than torch on CPU:
  ``benchmarks.upscale_quality``); else torch.

A request that can't be met here runs torch, and the reason is logged: nothing claims
to have run a runtime it did not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

__all__ = [
    "DEFAULT_MODEL_CACHE",
    "RUNTIMES",
    "ModelOptions",
    "ModelRuntime",
    "RuntimeChoice",
    "choose_runtime",
    "cuda_device_name",
    "runtime_report",
    "tensorrt_version",
]

log = logging.getLogger(__name__)

ModelRuntime = Literal["auto", "torch", "compile", "tensorrt", "ncnn"]
RUNTIMES: tuple[str, ...] = get_args(ModelRuntime)

# Expanded where it is used, i.e. on the node that runs the model, not where the job
# was planned: a GPU worker's home is not the head's.
DEFAULT_MODEL_CACHE = Path("~/.cache/retroiva/models")


@dataclass(frozen=True)
class ModelOptions:
    """How neural operators run; classical operators ignore it."""

    runtime: ModelRuntime = "auto"
    cache_dir: Path | None = None  # None: DEFAULT_MODEL_CACHE

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise ValueError(
                f"model runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}"
            )

    @property
    def cache(self) -> Path:
        return (self.cache_dir or DEFAULT_MODEL_CACHE).expanduser()


@dataclass(frozen=True)
class RuntimeChoice:
    runtime: Literal["torch", "compile", "tensorrt", "ncnn"]
    reason: str
    fallback: bool  # the request could not be met as asked


def choose_runtime(
    requested: str,
    *,
    cuda: str | None,
    tensorrt: str | None,
    has_engine_path: bool = True,
    ncnn: str | None = None,
    has_ncnn_path: bool = False,
) -> RuntimeChoice:
    """The runtime a model gets, given the CUDA device's name (None: no CUDA), the
    importable TensorRT and ncnn versions (None: it does not import) and whether the
    model can run on each.  Pure, so every branch is tested on a machine with neither."""
    if requested not in RUNTIMES:
        raise ValueError(f"model runtime must be one of {', '.join(RUNTIMES)}, got {requested!r}")
    if requested == "ncnn" and cuda is not None:
        return RuntimeChoice("torch", f"ncnn runs on the CPU only here; torch on {cuda}", True)
    if requested in ("ncnn", "auto") and cuda is None:
        if has_ncnn_path and ncnn is not None:
            return RuntimeChoice(
                "ncnn", f"{requested}: no CUDA device, ncnn {ncnn} on the CPU", False
            )
        if requested == "ncnn":
            why = (
                "this model has no ncnn path"
                if not has_ncnn_path
                else "the ncnn package does not import"
            )
            return RuntimeChoice("torch", f"ncnn: {why}; torch on the CPU", True)
    if cuda is None:
        if requested in ("torch", "auto"):
            return RuntimeChoice("torch", f"{requested}: no CUDA device, torch on the CPU", False)
        return RuntimeChoice("torch", f"{requested} needs a CUDA device; torch on the CPU", True)
    if requested == "torch":
        return RuntimeChoice("torch", f"torch requested, on {cuda}", False)
    if requested == "compile":
        return RuntimeChoice("compile", f"compile requested, on {cuda}", False)
    fallback = requested == "tensorrt"
    if not has_engine_path:
        return RuntimeChoice(
            "torch",
            f"{requested}: this model has no TensorRT engine path; torch on {cuda}",
            fallback,
        )
    if tensorrt is None:
        return RuntimeChoice(
            "torch",
            f"{requested}: the tensorrt package does not import "
            f"(install the gpu extra: make install-gpu); torch on {cuda}",
            fallback,
        )
    return RuntimeChoice(
        "tensorrt",
        f"{requested}: TensorRT {tensorrt} imports and CUDA device {cuda} is present",
        False,
    )


def cuda_device_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except (ImportError, OSError):  # OSError: an install whose libraries are missing
        return None
    return str(tensorrt.__version__)


def runtime_report(options: ModelOptions) -> list[str]:
    """What models would run on here, for ``retroiva models list``."""
    from models.ncnn_runtime import ncnn_version

    cuda, trt = cuda_device_name(), tensorrt_version()
    upscalers = choose_runtime(
        options.runtime, cuda=cuda, tensorrt=trt, ncnn=ncnn_version(), has_ncnn_path=True
    )
    rife = choose_runtime(options.runtime, cuda=cuda, tensorrt=trt, has_engine_path=False)
    return [
        f"  CUDA device: {cuda or 'none'}; TensorRT: {trt or 'not importable'}",
        f"  upscalers: {upscalers.runtime} ({upscalers.reason})",
        f"  rife: {rife.runtime} ({rife.reason})",
        f"  cache: {options.cache} (TensorRT engines in tensorrt/, one per model, shape "
        "range, GPU model and TensorRT version)",
    ]
