"""ncnn files → a ready torch module, with converted weights cached as safetensors.

The cache key is the SHA-256 of the ``.param`` and ``.bin`` together, so a changed
file is converted again and a cache entry can never be applied to other weights.  The
cache directory is passed in by the caller (``Settings.model_cache`` through
:class:`models.runtime.ModelOptions`; default ``~/.cache/retroiva/models``); an
unwritable cache is skipped, never fatal.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from models.ncnn_graph import NcnnGraph, parse_param, read_ncnn
from models.ncnn_torch import NcnnModule
from models.runtime import DEFAULT_MODEL_CACHE

__all__ = ["load_ncnn_module", "source_digest"]

log = logging.getLogger(__name__)


def source_digest(param: Path, weights: Path) -> str:
    digest = hashlib.sha256()
    for path in (param, weights):
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _tensors(graph: NcnnGraph) -> dict[str, np.ndarray]:
    return {
        f"{i}.{name}": array
        for i, layer in enumerate(graph.layers)
        for name, array in layer.weights.items()
    }


def _cached_graph(param: Path, entry: Path) -> NcnnGraph:
    layers = parse_param(param.read_text())
    for key, array in load_file(str(entry)).items():
        index, name = key.split(".", 1)
        layers[int(index)].weights[name] = array
    return NcnnGraph(layers)


def load_ncnn_module(param: Path, weights: Path, cache: Path | None = None) -> NcnnModule:
    """The graph as a module in eval mode, from the cache when it holds these files."""
    cache = cache or DEFAULT_MODEL_CACHE.expanduser()
    entry = cache / f"{param.stem}-{source_digest(param, weights)[:32]}.safetensors"
    if entry.is_file():
        return NcnnModule(_cached_graph(param, entry)).eval()
    graph = read_ncnn(param, weights)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=cache, suffix=".partial")
        os.close(fd)
        save_file(_tensors(graph), partial)
        os.replace(partial, entry)
    except OSError as exc:
        log.warning("model cache %s not written: %s", cache, exc)
    return NcnnModule(graph).eval()
