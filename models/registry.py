"""Operator registry: an operator spec (name + parameters) → a ready operator instance.

Presets name operators by ``kind`` and ``engine``; this table is the one place that
knows which class implements which pair, so adding a neural model is one new row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from models.flow_interpolation import FlowInterpolator
from models.lanczos import LanczosUpscale
from models.nlmeans import NonLocalMeansDenoise
from models.operator import FrameFilter, FrameInterpolator

__all__ = ["OPERATORS", "UnknownOperatorError", "build_operator"]

Operator = FrameFilter | FrameInterpolator

OPERATORS: dict[tuple[str, str], Callable[..., Operator]] = {
    ("upscale", "classical"): LanczosUpscale,
    ("denoise", "classical"): NonLocalMeansDenoise,
    ("interpolate", "classical"): FlowInterpolator,
}


class UnknownOperatorError(KeyError):
    """No operator is registered for the requested (kind, engine) pair."""


def build_operator(kind: str, engine: str, params: Mapping[str, Any]) -> Operator:
    """Instantiate the operator registered for ``(kind, engine)`` with ``params``.

    Raises :class:`UnknownOperatorError` for an unregistered pair and ``ValueError``
    (from the operator) for out-of-range parameters.
    """
    try:
        factory = OPERATORS[(kind, engine)]
    except KeyError:
        known = ", ".join(f"{k}/{e}" for k, e in sorted(OPERATORS))
        raise UnknownOperatorError(
            f"no operator for kind={kind!r} engine={engine!r}; known: {known}"
        ) from None
    return factory(**params)
