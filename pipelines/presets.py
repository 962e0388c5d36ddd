"""Presets are data: per preset, an operator chain and encoder settings.

Order within a chain is deliberate: denoise first (noise hurts both flow estimation
and upscaling), interpolate before upscaling (optical flow on the small frames is
cheaper and no less accurate), upscale last.  The upscale factor and the frame-rate
change are per-request parameters with per-preset defaults; ``resolve_chain`` fills
them in.  Why each preset is tuned as it is:

* ``general`` — light denoise, ×2, fast encode: a safe default for mixed content.
* ``cinematic`` — very light denoise to keep film grain and detail, ×2, slower
  encode at a low CRF: quality over speed.
* ``social`` — moderate denoise, ×2, frame rate raised to 60 fps for phones, fast
  encode at a higher CRF (platforms re-encode anyway).
* ``archive`` — strong denoise for old analogue/compressed sources, ×2, low CRF.

Each step names the engine it prefers.  Interpolation prefers RIFE (a pretrained
network: sharper in-between frames than optical flow plus blending, see
``benchmarks/interpolation_quality.py``) in every preset, so ``social`` and any
``--interpolate``/``--fps`` request use it.  A request's ``engine="classical"`` forces
the classical operators, which are also the fallback, with a logged reason, when a
model's weights are not installed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Any

from models.registry import unavailable_reason
from pipelines.encode import EncoderSettings
from pipelines.errors import InvalidOptionsError

__all__ = ["ENGINES", "PRESETS", "OperatorSpec", "Preset", "resolve_chain"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OperatorSpec:
    kind: str  # "denoise" | "upscale" | "interpolate"
    engine: str = "classical"
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Preset:
    name: str
    chain: tuple[OperatorSpec, ...]
    upscale_factor: int
    encoder: EncoderSettings
    target_fps: Fraction | None = None  # None keeps the source frame rate


ENGINES = ("neural", "classical")


def _spec(kind: str, engine: str = "classical", **params: Any) -> OperatorSpec:
    return OperatorSpec(kind=kind, engine=engine, params=MappingProxyType(params))


_RIFE = _spec("interpolate", engine="rife")


PRESETS: Mapping[str, Preset] = MappingProxyType({
    "general": Preset("general", (_spec("denoise", strength=3.0), _RIFE,
                                  _spec("upscale")), 2,
                      EncoderSettings(crf=20, speed="veryfast")),
    "cinematic": Preset("cinematic", (_spec("denoise", strength=2.0), _RIFE,
                                      _spec("upscale")), 2,
                        EncoderSettings(crf=17, speed="slow")),
    "social": Preset("social", (_spec("denoise", strength=4.0), _RIFE,
                                _spec("upscale")), 2,
                     EncoderSettings(crf=23, speed="veryfast"), target_fps=Fraction(60)),
    "archive": Preset("archive", (_spec("denoise", strength=8.0), _RIFE,
                                  _spec("upscale")), 2,
                      EncoderSettings(crf=16, speed="medium")),
})


def _engine_for(spec: OperatorSpec, engine: str) -> str:
    if engine == "classical" or spec.engine == "classical":
        return "classical"
    reason = unavailable_reason(spec.kind, spec.engine)
    if reason is not None:
        log.warning("%s: using the classical operator instead of %s: %s",
                    spec.kind, spec.engine, reason)
        return "classical"
    return spec.engine


def resolve_chain(preset: Preset, upscale_factor: int, frame_ratio: Fraction,
                  engine: str = "neural") -> list[OperatorSpec]:
    """The preset's chain with per-request parameters, minus stages that would be no-ops.

    ``engine="neural"`` takes each step's preferred engine where it can run here;
    ``"classical"`` takes the classical operator for every step.
    """
    if engine not in ENGINES:
        raise InvalidOptionsError(f"engine must be one of {', '.join(ENGINES)}, "
                                  f"got {engine!r}")
    chain = []
    for spec in preset.chain:
        if spec.kind == "interpolate" and frame_ratio == 1:
            continue
        params = dict(spec.params)
        if spec.kind == "upscale":
            if upscale_factor == 1:
                continue
            params["factor"] = upscale_factor
        chain.append(OperatorSpec(spec.kind, _engine_for(spec, engine),
                                  MappingProxyType(params)))
    return chain
