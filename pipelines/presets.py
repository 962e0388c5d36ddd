"""Presets are data: per preset, a neural and a classical operator chain and encoder settings.

Order within a chain is deliberate: denoise first (noise hurts both motion estimation
and upscaling), interpolate before upscaling (motion on the small frames is cheaper
and no less accurate), upscale last.  The upscale factor and the frame-rate change
are per-request parameters with per-preset defaults; ``resolve_chain`` fills them in.

Neural chains (the default, ``engine="neural"``) use pretrained models where they
earn their cost; why each preset is tuned as it is:

Denoising follows the footage: the job's noise and its encoder's quantiser are measured
once (:mod:`pipelines.noise_probe`, :mod:`pipelines.quantiser`); NL-means runs at
``gain × σ`` or not at all, and the upscaler is SPAN, or the denoising model where the
input is noisy or compressed (``_for_noise``), so clean in means untouched texture out.
Compression needs the quantiser: the noise estimate reads heavily compressed footage as
clean.  Operators used without a plan make the noise decisions per batch (frames carry
no quantiser).

* ``general`` — RIFE, then SPAN (a compact, fast, PSNR-oriented model; ×2 weights for
  ×1–2, ×4 weights for ×3–4) on clean input and SRMD on noisy or compressed input,
  told the noise σ to remove (``noise_map_sigma``: from the quantiser's step, at least
  15 on noisy input); at ×1 clean input is left alone; fast encode.  No NL-means before
  it: on real noisy clips NL-means + SPAN lost 1.1 dB to NL-means + Lanczos (SPAN
  sharpens what noise NL-means leaves).  SRMD replaced waifu2x at noise level 3, one
  fixed strength: on the fidelity clips' half-size copies at CRF 24–40 it led waifu2x
  by 0.03–0.35 dB at every QP from 29 on, and on the noisy copies by 0.6 (carphone) and 3.0 dB
  (bikes).
* ``cinematic`` — light NL-means (gain 0.6) to keep grain, RIFE, SPAN, slower encode at
  a low CRF.  It used ClearReality (SPAN trained on real-world footage, for texture),
  but end to end on real clips (``benchmarks/fidelity.py``) ClearReality lost 1.8 dB to
  Lanczos on clean bikes footage while adding no more high-frequency detail than SPAN
  (detail ratio 1.56 vs 1.48), so the texture argument did not hold; it stays in the
  registry.  ``realesrgan-x4plus`` is ~30× slower on CPU; it stays for GPU deployments.
* ``social`` — as general, with RIFE to 60 fps for phones, fast encode at a higher CRF
  (platforms re-encode anyway).
* ``archive`` — the upscaler as general's (SRMD, which removes noise and compression
  blocking while doubling the size, on noisy or compressed input; SPAN on clean), then
  RIFE's time-symmetric ensemble when a frame rate is asked, low CRF at a slower x264
  speed.  It used a denoising model (then waifu2x) whatever the input, for its lead on
  compressed footage, and scored 0.23 dB under Lanczos on clean bikes footage; with the
  quantiser it keeps that lead and loses nothing on clean input,
  where the codec exports one (H.264, MPEG-2/4; HEVC, AV1 and VP9 do not, and there
  compression that does not read as noise gets SPAN).  It upscales before RIFE, so
  RIFE sees the denoised frames.

Classical chains (``engine="classical"``) are NL-means, DIS-flow interpolation and
Lanczos.  They are also the fallback: when any model of a neural chain can't run here
(its wheel is not installed) the whole classical chain is used and the reason logged,
so a preset never mixes in a half-configured model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import Any

from models.nlmeans import MIN_SIGMA
from models.noise_estimate import NOISY_CHROMA_SIGMA, NOISY_SIGMA
from models.registry import unavailable_reason
from models.sr_models import sr_model
from pipelines.encode import EncoderSettings
from pipelines.errors import InvalidOptionsError
from pipelines.noise_probe import NoiseLevel
from pipelines.quantiser import COMPRESSED_QP, quantiser_step
from vocabulary import Backend, Engine, OperatorKind, PresetName

__all__ = [
    "ENGINES",
    "NOISY_MAP_SIGMA",
    "PRESETS",
    "OperatorSpec",
    "Preset",
    "noise_map_sigma",
    "resolve_chain",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OperatorSpec:
    kind: OperatorKind
    backend: Backend = Backend.CLASSICAL
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class Preset:
    name: PresetName
    neural: tuple[OperatorSpec, ...]
    classical: tuple[OperatorSpec, ...]
    upscale_factor: int
    encoder: EncoderSettings
    target_fps: Fraction | None = None  # None keeps the source frame rate


# Derived from the vocabulary, for membership tests and messages.
ENGINES: tuple[Engine, ...] = tuple(Engine)


def _spec(kind: OperatorKind, backend: Backend = Backend.CLASSICAL, **params: Any) -> OperatorSpec:
    return OperatorSpec(kind=kind, backend=backend, params=MappingProxyType(params))


_RIFE = _spec(OperatorKind.INTERPOLATE, Backend.RIFE)
# Time-symmetric ensemble: twice RIFE's cost, +0.15 dB on carphone rebuilt at ×2
# (30.71 vs 30.56), so for the presets that trade speed for quality.
_RIFE_ENSEMBLE = _spec(OperatorKind.INTERPOLATE, Backend.RIFE, ensemble=True)
_SPAN_MODELS = {1: "span-x2", 2: "span-x2", 3: "span-x4", 4: "span-x4"}
_SPAN = _spec(OperatorKind.UPSCALE, Backend.NCNN, models=_SPAN_MODELS)
# SPAN on clean jobs, SRMD on noisy or compressed ones (thresholds measured in
# models.neural_upscale and pipelines.quantiser, with waifu2x noise 3, the denoiser
# then); decided once per job by _for_noise.
_SPAN_OR_DENOISER = _spec(
    OperatorKind.UPSCALE, Backend.NCNN, models=_SPAN_MODELS, noisy_model="srmd-x2"
)
# SRMD's noise level (σ, 8-bit levels) for a job.  Compression: the quantiser's step
# over 3, capped at 30.  On half-size copies of carphone and bikes at x264 CRF 24–40
# (mean QP 25–46, 12 frames, ×2, against the originals), that σ scored within 0.02 dB
# of the best of σ 5, 10, … 30 at every QP from 29 on (below 28 the plan runs SPAN).
# Noise: on the noisy copies (``noise=alls=14`` at CRF 26) the best σ was 15–20
# whatever the noise estimate read (3.8 and 2.4), and their quantiser's σ (8–10) lost
# 0.2–1.8 dB, hence at least 15.
# σ is snapped to steps of 2.5, at most 1.25 away (near the best, σ 5 apart differed
# by 0.01–0.2 dB): on CUDA each σ is its own TensorRT engine and compiled graph, so a
# deployment builds at most 13 of them, not one per job.
NOISY_MAP_SIGMA = 15.0
MAX_MAP_SIGMA = 30.0
MAP_SIGMA_STEP = 2.5


def noise_map_sigma(noise: NoiseLevel, *, noisy: bool) -> float:
    """The noise σ a noise-map model (SRMD) is told to remove from this job."""
    sigma = 0.0 if noise.quantiser is None else quantiser_step(noise.quantiser) / 3
    sigma = max(min(sigma, MAX_MAP_SIGMA), NOISY_MAP_SIGMA if noisy else 0.0)
    return round(sigma / MAP_SIGMA_STEP) * MAP_SIGMA_STEP


def _denoise(gain: float) -> OperatorSpec:
    """NL-means at ``gain`` × the job's measured noise σ; none on clean jobs."""
    return _spec(OperatorKind.DENOISE, gain=gain)


def _classical(gain: float) -> tuple[OperatorSpec, ...]:
    return (_denoise(gain), _spec(OperatorKind.INTERPOLATE), _spec(OperatorKind.UPSCALE))


PRESETS: Mapping[PresetName, Preset] = MappingProxyType(
    {
        PresetName.GENERAL: Preset(
            PresetName.GENERAL,
            (_RIFE, _SPAN_OR_DENOISER),
            _classical(1.0),
            2,
            EncoderSettings(crf=20, speed="veryfast"),
        ),
        PresetName.CINEMATIC: Preset(
            PresetName.CINEMATIC,
            (_denoise(0.6), _RIFE_ENSEMBLE, _SPAN),
            _classical(0.6),
            2,
            EncoderSettings(crf=17, speed="slow"),
        ),
        PresetName.SOCIAL: Preset(
            PresetName.SOCIAL,
            (_RIFE, _SPAN_OR_DENOISER),
            _classical(1.2),
            2,
            EncoderSettings(crf=23, speed="veryfast"),
            target_fps=Fraction(60),
        ),
        PresetName.ARCHIVE: Preset(
            PresetName.ARCHIVE,
            (_SPAN_OR_DENOISER, _RIFE_ENSEMBLE),
            _classical(1.2),
            2,
            EncoderSettings(crf=16, speed="medium"),
        ),
    }
)


def _for_noise(spec: OperatorSpec, noise: NoiseLevel) -> OperatorSpec | None:
    """``spec`` decided for the whole job's measured ``noise``: NL-means at its strength
    or dropped, the upscaler's model fixed.  The only place these choices are made."""
    params = dict(spec.params)
    if spec.kind == OperatorKind.DENOISE and "gain" in params:
        if noise.luma < MIN_SIGMA:
            return None
        params["strength"] = min(30.0, params.pop("gain") * noise.luma)
    noisy_model = params.pop("noisy_model", None)
    noisy = noise.luma >= NOISY_SIGMA or noise.chroma >= NOISY_CHROMA_SIGMA
    compressed = noise.quantiser is not None and noise.quantiser >= COMPRESSED_QP
    if noisy_model is not None and (noisy or compressed):
        params.pop("models", None)
        params["model"] = noisy_model
        if sr_model(noisy_model).noise_map:
            params["noise_sigma"] = noise_map_sigma(noise, noisy=noisy)
    return OperatorSpec(spec.kind, spec.backend, MappingProxyType(params))


def _concrete(
    spec: OperatorSpec, upscale_factor: int, frame_ratio: Fraction, noise: NoiseLevel
) -> OperatorSpec | None:
    """``spec`` with the request's parameters, or None where it would be a no-op."""
    if spec.kind == OperatorKind.INTERPOLATE and frame_ratio == 1:
        return None
    decided = _for_noise(spec, noise)
    if decided is None:
        return None
    params = dict(decided.params)
    if spec.kind == OperatorKind.UPSCALE:
        models = params.pop("models", None)
        if models is not None:
            params["model"] = models[upscale_factor]
        # A model that denoises is worth running even at ×1 (it is scaled back down).
        denoises = "model" in params and sr_model(params["model"]).denoises
        if upscale_factor == 1 and not denoises:
            return None
        params["factor"] = upscale_factor
    return OperatorSpec(spec.kind, spec.backend, MappingProxyType(params))


def resolve_chain(
    preset: Preset,
    upscale_factor: int,
    frame_ratio: Fraction,
    engine: str = Engine.NEURAL,
    *,
    noise: NoiseLevel,
) -> list[OperatorSpec]:
    """The chain ``engine`` selects, with per-request parameters, the job's measured
    ``noise`` deciding denoise and model (:func:`_for_noise`), and no no-op stages.

    ``"neural"`` falls back to the classical chain, logging why, when one of its
    models can't run here.
    """
    if engine not in ENGINES:
        raise InvalidOptionsError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")

    def concrete(chain: tuple[OperatorSpec, ...]) -> list[OperatorSpec]:
        specs = (_concrete(spec, upscale_factor, frame_ratio, noise) for spec in chain)
        return [spec for spec in specs if spec is not None]

    if engine == Engine.CLASSICAL:
        return concrete(preset.classical)
    chain = concrete(preset.neural)
    for spec in chain:
        reason = unavailable_reason(spec.kind, spec.backend, spec.params)
        if reason is not None:
            log.warning(
                "preset %s: using the classical operators, because %s/%s can't run here: %s",
                preset.name,
                spec.kind,
                spec.backend,
                reason,
            )
            return concrete(preset.classical)
    return chain
