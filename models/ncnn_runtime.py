"""The packaged models on the ``ncnn`` CPU runtime, behind the torch module interface.

The upscalers ship as ncnn ``.param``/``.bin`` files, and ncnn's CPU kernels (packed
layouts, Winograd convolutions) ran them 1.1–2× faster than our torch executor on the
same weights (``benchmarks.upscale_quality``).  :class:`NcnnRunner` takes and returns
NCHW float32 tensors like the torch module it replaces, so tiling, padding, resizing
and colour anchoring stay in :class:`~models.neural_upscale.NeuralUpscale` unchanged.
CPU only: Vulkan is off, and on CUDA nodes torch or TensorRT run.
"""

from __future__ import annotations

import numpy as np
import torch

from models.ncnn_graph import NcnnGraph, parse_param
from models.sr_models import SrModel

__all__ = ["NcnnRunner", "ncnn_version"]


def ncnn_version() -> str | None:
    """The importable ncnn package's version; None where it does not import."""
    try:
        import ncnn
    except (ImportError, OSError):
        return None
    return str(getattr(ncnn, "__version__", "unknown"))


class NcnnRunner:
    """``runner(x)`` with ``x`` NCHW float32 (0–1 RGB) on the CPU, like the torch net."""

    def __init__(self, model: SrModel, threads: int | None = None) -> None:
        import ncnn

        param, weights = model.files()
        graph = NcnnGraph(parse_param(param.read_text()))
        self.input_blob, self.output_blob = graph.input_blob, graph.output_blob
        self._ncnn = ncnn
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        # Ray sets torch's threads to the CPUs the task or actor holds: use as many.
        self.net.opt.num_threads = threads or torch.get_num_threads()
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(weights)) != 0:
            raise RuntimeError(f"ncnn could not load {param.name}")
        self.name = model.name

    def __repr__(self) -> str:
        return f"NcnnRunner({self.name!r}, threads={self.net.opt.num_threads})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for item in x.detach().to("cpu", torch.float32):
            chw = np.ascontiguousarray(item.numpy())  # ncnn.Mat borrows this buffer
            extractor = self.net.create_extractor()
            extractor.input(self.input_blob, self._ncnn.Mat(chw))
            status, out = extractor.extract(self.output_blob)
            if status != 0:
                raise RuntimeError(f"{self.name}: ncnn extract failed ({status})")
            outs.append(torch.from_numpy(np.array(out)))  # a copy: out dies with extractor
        return torch.stack(outs)
