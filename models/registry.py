"""Operator registry: an operator spec (name + parameters) → a ready operator instance.

Presets name operators by ``kind`` and ``backend`` (:mod:`vocabulary`); this table is the
one place that knows which class implements which pair, so adding an operator is one row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from models.flow_interpolation import FlowInterpolator
from models.lanczos import LanczosUpscale
from models.nlmeans import NonLocalMeansDenoise
from models.operator import FrameFilter, FrameInterpolator
from models.runtime import ModelOptions
from vocabulary import Backend, OperatorKind

__all__ = [
    "OPERATORS",
    "Registration",
    "UnknownOperatorError",
    "build_operator",
    "needs_gpu",
    "unavailable_reason",
    "works_in_yuv420",
]

Operator = FrameFilter | FrameInterpolator


def _rife() -> type[Operator]:
    # Imported on use: torch costs every Ray worker a second or two to import.
    from models.rife import RifeInterpolator

    return RifeInterpolator


def _ncnn_upscale() -> type[Operator]:
    from models.neural_upscale import NeuralUpscale

    return NeuralUpscale


def _missing(locate: Callable[[], object]) -> str | None:
    """Why ``locate`` (which finds a model's files) fails, or None when it succeeds."""
    try:
        locate()
    except (ValueError, FileNotFoundError) as exc:
        return str(exc)
    return None


def _rife_missing(**_: Any) -> str | None:
    from models.rife import rife_weights_path

    return _missing(rife_weights_path)


def _sr_missing(model: str, **_: Any) -> str | None:
    from models.sr_models import sr_model

    return _missing(lambda: sr_model(model).files())


@dataclass(frozen=True)
class Registration:
    """One operator: how to get its class (lazily, for the torch-backed ones), whether it
    takes the deployment's :class:`ModelOptions` (runtime, cache directory), and why its
    weights are missing here, if they come from an optional package."""

    load: Callable[[], type[Operator]]
    takes_model_options: bool = False
    missing: Callable[..., str | None] | None = None


OPERATORS: dict[tuple[OperatorKind, Backend], Registration] = {
    (OperatorKind.UPSCALE, Backend.CLASSICAL): Registration(lambda: LanczosUpscale),
    (OperatorKind.DENOISE, Backend.CLASSICAL): Registration(lambda: NonLocalMeansDenoise),
    (OperatorKind.INTERPOLATE, Backend.CLASSICAL): Registration(lambda: FlowInterpolator),
    (OperatorKind.INTERPOLATE, Backend.RIFE): Registration(_rife, True, _rife_missing),
    (OperatorKind.UPSCALE, Backend.NCNN): Registration(_ncnn_upscale, True, _sr_missing),
}


class UnknownOperatorError(KeyError):
    """No operator is registered for the requested (kind, backend) pair."""


def _registration(kind: str, backend: str) -> Registration:
    try:
        return OPERATORS[(OperatorKind(kind), Backend(backend))]
    except (KeyError, ValueError):
        known = ", ".join(f"{k}/{b}" for k, b in sorted(OPERATORS))
        raise UnknownOperatorError(
            f"no operator for kind={kind!r} backend={backend!r}; known: {known}"
        ) from None


def unavailable_reason(
    kind: str, backend: str, params: Mapping[str, Any] | None = None
) -> str | None:
    """None when ``(kind, backend)`` with ``params`` can run here, else why not."""
    try:
        registration = _registration(kind, backend)
    except UnknownOperatorError:
        return f"no operator for kind={kind!r} backend={backend!r}"
    return registration.missing(**(params or {})) if registration.missing else None


def needs_gpu(kind: str, backend: str) -> bool:
    """The operator's own ``needs_gpu``: whether its stage should hold a GPU where the
    cluster has one.  Loads the class (and torch, for the neural ones)."""
    return _registration(kind, backend).load().needs_gpu


def works_in_yuv420(kind: str, backend: str) -> bool:
    """Whether the operator can filter planar Y'CbCr 4:2:0 frames (``accepts_yuv420``,
    :mod:`models.operator`).  Loads the class, like :func:`needs_gpu`."""
    return bool(getattr(_registration(kind, backend).load(), "accepts_yuv420", False))


def build_operator(
    kind: str, backend: str, params: Mapping[str, Any], models: ModelOptions | None = None
) -> Operator:
    """Instantiate the operator registered for ``(kind, backend)`` with ``params``;
    a neural one also gets ``models`` (its runtime and cache directory).

    Raises :class:`UnknownOperatorError` for an unregistered pair and ``ValueError``
    (from the operator) for out-of-range parameters.
    """
    registration = _registration(kind, backend)
    operator = registration.load()
    if registration.takes_model_options:
        return operator(**params, **asdict(models or ModelOptions()))
    return operator(**params)
