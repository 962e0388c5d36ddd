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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Any

from pipelines.encode import EncoderSettings
from pipelines.errors import InvalidOptionsError

__all__ = ["PRESETS", "OperatorSpec", "Preset", "resolve_chain"]


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


def _spec(kind: str, **params: Any) -> OperatorSpec:
    return OperatorSpec(kind=kind, params=MappingProxyType(params))


PRESETS: Mapping[str, Preset] = MappingProxyType({
    "general": Preset("general", (_spec("denoise", strength=3.0), _spec("interpolate"),
                                  _spec("upscale")), 2,
                      EncoderSettings(crf=20, speed="veryfast")),
    "cinematic": Preset("cinematic", (_spec("denoise", strength=2.0), _spec("interpolate"),
                                      _spec("upscale")), 2,
                        EncoderSettings(crf=17, speed="slow")),
    "social": Preset("social", (_spec("denoise", strength=4.0), _spec("interpolate"),
                                _spec("upscale")), 2,
                     EncoderSettings(crf=23, speed="veryfast"), target_fps=Fraction(60)),
    "archive": Preset("archive", (_spec("denoise", strength=8.0), _spec("interpolate"),
                                  _spec("upscale")), 2,
                      EncoderSettings(crf=16, speed="medium")),
})


def resolve_chain(preset: Preset, upscale_factor: int, frame_ratio: Fraction,
                  engine: str = "classical") -> list[OperatorSpec]:
    """The preset's chain with per-request parameters, minus stages that would be no-ops."""
    if engine != "classical":
        raise InvalidOptionsError(f"engine must be 'classical', got {engine!r}")
    chain = []
    for spec in preset.chain:
        if spec.kind == "interpolate" and frame_ratio == 1:
            continue
        if spec.kind == "upscale":
            if upscale_factor == 1:
                continue
            spec = OperatorSpec(spec.kind, engine, MappingProxyType(
                {**spec.params, "factor": upscale_factor}))
        chain.append(OperatorSpec(spec.kind, engine, spec.params))
    return chain
