"""Operator registry: an operator spec (name + parameters) → a ready operator instance.

Presets name operators by ``kind`` and ``engine``; this table is the one place that
knows which class implements which pair, so adding a neural model is one new row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

from models.flow_interpolation import FlowInterpolator
from models.lanczos import LanczosUpscale
from models.nlmeans import NonLocalMeansDenoise
from models.operator import FrameFilter, FrameInterpolator
from models.runtime import ModelOptions

__all__ = ["OPERATORS", "UnknownOperatorError", "build_operator", "unavailable_reason"]

Operator = FrameFilter | FrameInterpolator


def _rife(**params: Any) -> Operator:
    # Imported on use: torch costs every Ray worker a second or two to import.
    from models.rife import RifeInterpolator

    return RifeInterpolator(**params)


def _missing(locate: Callable[[], object]) -> str | None:
    """Why ``locate`` (which finds a model's files) fails, or None when it succeeds."""
    try:
        locate()
    except (ValueError, FileNotFoundError) as exc:
        return str(exc)
    return None


def _rife_missing() -> str | None:
    from models.rife import rife_weights_path

    return _missing(rife_weights_path)


def _ncnn_upscale(**params: Any) -> Operator:
    from models.neural_upscale import NeuralUpscale

    return NeuralUpscale(**params)


def _sr_missing(model: str) -> str | None:
    from models.sr_models import sr_model

    return _missing(lambda: sr_model(model).files())


OPERATORS: dict[tuple[str, str], Callable[..., Operator]] = {
    ("upscale", "classical"): LanczosUpscale,
    ("denoise", "classical"): NonLocalMeansDenoise,
    ("interpolate", "classical"): FlowInterpolator,
    ("interpolate", "rife"): _rife,
    ("upscale", "ncnn"): _ncnn_upscale,
}

# Neural operators: they take the deployment's ModelOptions (runtime, cache directory).
_NEURAL = frozenset({("interpolate", "rife"), ("upscale", "ncnn")})

# Operators whose weights come from an optional package: why one can't run here.
_MISSING: dict[tuple[str, str], Callable[..., str | None]] = {
    ("interpolate", "rife"): lambda **_: _rife_missing(),
    ("upscale", "ncnn"): lambda model, **_: _sr_missing(model),
}


def unavailable_reason(
    kind: str, engine: str, params: Mapping[str, Any] | None = None
) -> str | None:
    """None when ``(kind, engine)`` with ``params`` can run here, else why not."""
    if (kind, engine) not in OPERATORS:
        return f"no operator for kind={kind!r} engine={engine!r}"
    check = _MISSING.get((kind, engine))
    return check(**(params or {})) if check else None


class UnknownOperatorError(KeyError):
    """No operator is registered for the requested (kind, engine) pair."""


def build_operator(
    kind: str, engine: str, params: Mapping[str, Any], models: ModelOptions | None = None
) -> Operator:
    """Instantiate the operator registered for ``(kind, engine)`` with ``params``;
    a neural one also gets ``models`` (its runtime and cache directory).

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
    if (kind, engine) in _NEURAL:
        return factory(**params, **asdict(models or ModelOptions()))
    return factory(**params)
