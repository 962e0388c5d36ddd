"""Presets resolve to the chain the README promises, and fall back as a whole."""

from __future__ import annotations

import logging
from fractions import Fraction

import pytest

from models import registry
from pipelines.errors import InvalidOptionsError
from pipelines.presets import PRESETS, resolve_chain


def _steps(preset: str, factor: int, ratio: Fraction = Fraction(1), engine: str = "neural"
           ) -> list[tuple[str, str, str | None]]:
    return [(s.kind, s.engine, s.params.get("model"))
            for s in resolve_chain(PRESETS[preset], factor, ratio, engine)]


@pytest.mark.parametrize(("factor", "model"), [(2, "span-x2"), (3, "span-x4"),
                                               (4, "span-x4")])
def test_general_uses_span_weights_for_the_factor(factor: int, model: str):
    # No NL-means in front: noisy chunks go to a denoising model instead.
    assert _steps("general", factor) == [("upscale", "ncnn", model)]
    [spec] = resolve_chain(PRESETS["general"], factor, Fraction(1))
    assert spec.params["noisy_model"] == "waifu2x-photo-noise3-x2"


def test_social_interpolates_with_rife():
    assert _steps("social", 2, Fraction(5, 2)) == [
        ("interpolate", "rife", None), ("upscale", "ncnn", "span-x2")]


def test_cinematic_and_archive_models():
    # Chosen end to end on real footage (benchmarks/fidelity.py), not on photos.
    assert _steps("cinematic", 2)[-1] == ("upscale", "ncnn", "span-x2")
    assert _steps("archive", 2) == [("upscale", "ncnn", "waifu2x-photo-noise3-x2")]


def test_factor_one_drops_plain_upscalers_but_keeps_a_denoiser():
    # general's upscaler stays at ×1: it denoises noisy chunks and skips clean ones.
    assert _steps("general", 1) == [("upscale", "ncnn", "span-x2")]
    assert _steps("general", 1, engine="classical") == [("denoise", "classical", None)]
    assert _steps("archive", 1) == [("upscale", "ncnn", "waifu2x-photo-noise3-x2")]
    [spec] = resolve_chain(PRESETS["archive"], 1, Fraction(1))
    assert spec.params["factor"] == 1


def test_classical_engine_everywhere():
    for name in PRESETS:
        assert {engine for _, engine, _ in _steps(name, 2, Fraction(2), "classical")} == \
            {"classical"}


def test_unknown_engine_is_refused():
    with pytest.raises(InvalidOptionsError, match="engine must be one of neural, classical"):
        resolve_chain(PRESETS["general"], 2, Fraction(1), "tensorrt")


@pytest.mark.parametrize("missing", [("interpolate", "rife"), ("upscale", "ncnn")])
def test_a_missing_model_falls_back_to_the_whole_classical_chain(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        missing: tuple[str, str]):
    monkeypatch.setitem(registry._MISSING, missing,
                        lambda **_: "weights need the package X")
    with caplog.at_level(logging.WARNING, logger="pipelines.presets"):
        steps = _steps("social", 2, Fraction(5, 2))
    assert steps == [("denoise", "classical", None), ("interpolate", "classical", None),
                     ("upscale", "classical", None)]
    assert f"{missing[0]}/{missing[1]} can't run here: weights need the package X" \
        in caplog.text


def test_measured_noise_decides_the_chain_once_for_the_job():
    from pipelines.noise_probe import NoiseLevel

    clean, noisy = NoiseLevel(0.5, 0.05), NoiseLevel(3.5, 0.4)
    general = PRESETS["general"]
    [span] = resolve_chain(general, 2, Fraction(1), noise=clean)
    [waifu] = resolve_chain(general, 2, Fraction(1), noise=noisy)
    assert (span.params["model"], waifu.params["model"]) == ("span-x2",
                                                             "waifu2x-photo-noise3-x2")
    assert "noisy_model" not in span.params and "noisy_model" not in waifu.params
    assert resolve_chain(general, 1, Fraction(1), noise=clean) == []  # nothing to do
    assert resolve_chain(general, 1, Fraction(1), noise=noisy)[0].params["factor"] == 1
    # Chroma noise alone is enough.
    [chroma] = resolve_chain(general, 2, Fraction(1), noise=NoiseLevel(1.0, 0.3))
    assert chroma.params["model"] == "waifu2x-photo-noise3-x2"
    classical = resolve_chain(general, 2, Fraction(1), "classical", noise=clean)
    assert [s.kind for s in classical] == ["upscale"]  # clean: no NL-means at all
    denoise = resolve_chain(general, 2, Fraction(1), "classical", noise=noisy)[0]
    assert denoise.kind == "denoise" and denoise.params["strength"] == pytest.approx(3.5)
