"""Presets resolve to the chain the README promises, and fall back as a whole."""

from __future__ import annotations

import dataclasses
import logging
from fractions import Fraction

import numpy as np
import pytest

from models import registry
from models.noise_estimate import estimate_chroma_noise, estimate_noise
from models.registry import build_operator
from pipelines.errors import InvalidOptionsError
from pipelines.noise_probe import NoiseLevel
from pipelines.presets import PRESETS, resolve_chain
from vocabulary import Backend, OperatorKind, PresetName

from media import psnr

CLEAN, NOISY = NoiseLevel(0.5, 0.05), NoiseLevel(3.5, 0.4)
# What a CRF 36 copy reads: no noise left to measure, a high quantiser.
COMPRESSED = NoiseLevel(0.04, 0.01, quantiser=37.4)


def _steps(
    preset: str,
    factor: int,
    ratio: Fraction = Fraction(1),
    engine: str = "neural",
    noise: NoiseLevel = CLEAN,
) -> list[tuple[str, str, str | None]]:
    return [
        (s.kind, s.backend, s.params.get("model"))
        for s in resolve_chain(PRESETS[preset], factor, ratio, engine, noise=noise)
    ]


@pytest.mark.parametrize(("factor", "model"), [(2, "span-x2"), (3, "span-x4"), (4, "span-x4")])
def test_general_uses_span_weights_for_the_factor(factor: int, model: str):
    # No NL-means in front: a noisy job goes to a denoising model instead.
    assert _steps("general", factor) == [("upscale", "ncnn", model)]
    assert _steps("general", factor, noise=NOISY) == [("upscale", "ncnn", "srmd-x2")]


def test_social_interpolates_with_rife():
    assert _steps("social", 2, Fraction(5, 2)) == [
        ("interpolate", "rife", None),
        ("upscale", "ncnn", "span-x2"),
    ]


def test_cinematic_and_archive_models():
    # Chosen end to end on real footage (benchmarks/fidelity.py), not on photos.
    assert _steps("cinematic", 2)[-1] == ("upscale", "ncnn", "span-x2")
    assert _steps("archive", 2) == [("upscale", "ncnn", "span-x2")]
    for degraded in (NOISY, COMPRESSED):
        assert _steps("archive", 2, noise=degraded) == [("upscale", "ncnn", "srmd-x2")]


@pytest.mark.parametrize("preset", ["general", "social", "archive"])
def test_a_compressed_job_gets_the_denoising_model_whatever_its_noise_reads(preset: str):
    denoiser = ("upscale", "ncnn", "srmd-x2")
    assert _steps(preset, 2, noise=COMPRESSED)[-1] == denoiser
    # Below the threshold, or where the codec exports no quantiser, the noise decides.
    assert _steps(preset, 2, noise=NoiseLevel(0.04, 0.01, quantiser=24.0))[-1][2] == "span-x2"
    assert _steps(preset, 2, noise=NoiseLevel(0.04, 0.01, quantiser=None))[-1][2] == "span-x2"
    # Cinematic keeps SPAN: its chain has no denoising model to switch to.
    assert _steps("cinematic", 2, noise=COMPRESSED)[-1][2] == "span-x2"


def test_factor_one_drops_plain_upscalers_but_keeps_a_denoiser():
    # At ×1 a clean job has nothing to do; a noisy one is denoised, scaled back down.
    assert _steps("general", 1) == []
    assert _steps("general", 1, noise=NOISY) == [("upscale", "ncnn", "srmd-x2")]
    assert _steps("general", 1, engine="classical") == []
    assert _steps("general", 1, engine="classical", noise=NOISY) == [("denoise", "classical", None)]
    assert _steps("archive", 1) == []
    denoiser = ("upscale", "ncnn", "srmd-x2")
    assert _steps("archive", 1, noise=COMPRESSED) == [denoiser]
    [spec] = resolve_chain(PRESETS["archive"], 1, Fraction(1), noise=COMPRESSED)
    assert spec.params["factor"] == 1


def test_classical_engine_everywhere():
    for name in PRESETS:
        assert {engine for _, engine, _ in _steps(name, 2, Fraction(2), "classical")} == {
            "classical"
        }


def test_unknown_engine_is_refused():
    with pytest.raises(InvalidOptionsError, match="engine must be one of neural, classical"):
        resolve_chain(PRESETS["general"], 2, Fraction(1), "tensorrt", noise=CLEAN)


@pytest.mark.parametrize("missing", [("interpolate", "rife"), ("upscale", "ncnn")])
def test_a_missing_model_falls_back_to_the_whole_classical_chain(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, missing: tuple[str, str]
):
    pair = (OperatorKind(missing[0]), Backend(missing[1]))
    unavailable = dataclasses.replace(
        registry.OPERATORS[pair], missing=lambda **_: "weights need the package X"
    )
    monkeypatch.setitem(registry.OPERATORS, pair, unavailable)
    with caplog.at_level(logging.WARNING, logger="pipelines.presets"):
        steps = _steps("social", 2, Fraction(5, 2), noise=NOISY)
    assert steps == [
        ("denoise", "classical", None),
        ("interpolate", "classical", None),
        ("upscale", "classical", None),
    ]
    assert f"{missing[0]}/{missing[1]} can't run here: weights need the package X" in caplog.text


def test_measured_noise_decides_the_chain_once_for_the_job():
    clean, noisy = CLEAN, NOISY
    general = PRESETS["general"]
    [span] = resolve_chain(general, 2, Fraction(1), noise=clean)
    [denoiser] = resolve_chain(general, 2, Fraction(1), noise=noisy)
    assert (span.params["model"], denoiser.params["model"]) == ("span-x2", "srmd-x2")
    assert "noisy_model" not in span.params and "noisy_model" not in denoiser.params
    assert resolve_chain(general, 1, Fraction(1), noise=clean) == []  # nothing to do
    assert resolve_chain(general, 1, Fraction(1), noise=noisy)[0].params["factor"] == 1
    # Chroma noise alone is enough.
    [chroma] = resolve_chain(general, 2, Fraction(1), noise=NoiseLevel(1.0, 0.3))
    assert chroma.params["model"] == "srmd-x2"
    classical = resolve_chain(general, 2, Fraction(1), "classical", noise=clean)
    assert [s.kind for s in classical] == ["upscale"]  # clean: no NL-means at all
    denoise = resolve_chain(general, 2, Fraction(1), "classical", noise=noisy)[0]
    assert denoise.kind == "denoise" and denoise.params["strength"] == pytest.approx(3.5)


# The planner is the only place noise decides anything: measured on real frames, its
# choices (NL-means strength, SPAN or the denoising model) are the ones that help.
def _measured(frames: np.ndarray) -> NoiseLevel:
    return NoiseLevel(estimate_noise(frames), estimate_chroma_noise(frames))


def _carphone_and_noisy(n: int) -> tuple[np.ndarray, np.ndarray]:
    from test_operators import _carphone

    clean = _carphone(n)
    rng = np.random.default_rng(3)
    return clean, np.clip(clean + rng.normal(0, 8, clean.shape) + 0.5, 0, 255).astype(np.uint8)


def test_planned_nl_means_leaves_clean_footage_alone_and_fits_noisy_footage():
    clean, noisy = _carphone_and_noisy(3)
    general = PRESETS["general"]
    assert [
        s.kind for s in resolve_chain(general, 2, Fraction(1), "classical", noise=_measured(clean))
    ] == ["upscale"]
    denoise, _ = resolve_chain(general, 2, Fraction(1), "classical", noise=_measured(noisy))
    assert denoise.kind == "denoise" and 6 < denoise.params["strength"] < 10
    fitted = build_operator(denoise.kind, denoise.backend, denoise.params)
    assert psnr(fitted(noisy), clean) > psnr(noisy, clean) + 1.5
    [cinematic, *_] = resolve_chain(
        PRESETS["cinematic"], 2, Fraction(1), "classical", noise=_measured(noisy)
    )
    assert cinematic.params["strength"] == pytest.approx(0.6 * denoise.params["strength"])


def test_planned_denoising_model_beats_span_on_noisy_footage():
    import cv2

    clean, noisy = _carphone_and_noisy(2)
    general = PRESETS["general"]
    [span] = resolve_chain(general, 2, Fraction(1), noise=_measured(clean))
    [denoiser] = resolve_chain(general, 2, Fraction(1), noise=_measured(noisy))
    assert (span.params["model"], denoiser.params["model"]) == ("span-x2", "srmd-x2")
    big = np.stack([cv2.resize(f, None, fx=2, fy=2, interpolation=cv2.INTER_CUBIC) for f in clean])
    by_span = build_operator(span.kind, span.backend, span.params)(noisy)
    by_denoiser = build_operator(denoiser.kind, denoiser.backend, denoiser.params)(noisy)
    assert psnr(by_denoiser, big) > psnr(by_span, big) + 1
    assert resolve_chain(general, 1, Fraction(1), noise=_measured(clean)) == []


def test_every_preset_name_of_the_vocabulary_has_a_preset_and_no_other():
    """The API's preset enum and the preset table are one vocabulary (issue 14)."""
    assert set(PRESETS) == set(PresetName)
    assert all(PRESETS[name].name == name for name in PresetName)


def test_gpu_placement_follows_each_operators_own_needs_gpu():
    """A stage holds a GPU because its operator says so, not because of its backend's name."""
    from models.registry import OPERATORS, needs_gpu

    wants = {pair: needs_gpu(*pair) for pair in OPERATORS}
    assert wants == {pair: reg.load().needs_gpu for pair, reg in OPERATORS.items()}
    assert not any(wants[(kind, Backend.CLASSICAL)] for kind in OperatorKind)
    assert wants[(OperatorKind.INTERPOLATE, Backend.RIFE)]
    assert wants[(OperatorKind.UPSCALE, Backend.NCNN)]


def test_the_noise_map_sigma_follows_the_quantiser_and_the_noise():
    """SRMD is told σ = the quantiser step / 3 (capped at 30), at least 15 on noisy input,
    in steps of 2.5; SPAN, which takes no noise level, is told nothing."""
    from pipelines.presets import NOISY_MAP_SIGMA, noise_map_sigma

    def planned(noise: NoiseLevel) -> object:
        return resolve_chain(PRESETS["general"], 2, Fraction(1), noise=noise)[-1].params.get(
            "noise_sigma"
        )

    assert planned(CLEAN) is None
    # QP 37.4: step 0.625 · 2^(37.4/6) = 47.0, a third of it 15.7, snapped to 15.
    assert planned(COMPRESSED) == 15.0
    assert planned(NoiseLevel(0.04, 0.01, quantiser=30.0)) == 7.5  # 6.7
    assert planned(NoiseLevel(0.04, 0.01, quantiser=51.0)) == 30.0
    assert planned(NOISY) == NOISY_MAP_SIGMA  # no quantiser (HEVC, say): the noise alone
    assert planned(dataclasses.replace(NOISY, quantiser=42.0)) == 27.5  # 26.7
    assert noise_map_sigma(NoiseLevel(0.04, 0.01, quantiser=20.0), noisy=False) == 2.5
    # Every QP gives one of 13 levels (one engine or compiled graph each on CUDA).
    levels = {noise_map_sigma(NoiseLevel(0, 0, quantiser=q / 10), noisy=False) for q in range(520)}
    assert levels == {2.5 * k for k in range(13)}
