from __future__ import annotations

import numpy as np
import pytest

from models.flow_interpolation import FlowInterpolator
from models.lanczos import LanczosUpscale
from models.nlmeans import NonLocalMeansDenoise
from models.operator import FrameFilter, FrameInterpolator, check_frames
from models.registry import UnknownOperatorError, build_operator
from models.scene_cut import is_scene_cut
from pipelines.sample_video import SampleSpec, sample_frame

from media import psnr

SPEC = SampleSpec(width=96, height=64, speed=2.0)


def _frames(*positions: float, scene: int = 0) -> np.ndarray:
    return np.stack([sample_frame(SPEC, p, scene=scene) for p in positions])


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_lanczos_scales_by_factor(factor: int):
    out = LanczosUpscale(factor)(_frames(0, 1))
    assert out.shape == (2, 64 * factor, 96 * factor, 3)
    assert out.dtype == np.uint8


def test_lanczos_beats_nearest_neighbour_on_detail():
    big = _frames(0)[0]
    small = big[::2, ::2].copy()
    nearest = np.repeat(np.repeat(small, 2, axis=0), 2, axis=1)
    assert psnr(LanczosUpscale(2)(small[None])[0], big) > psnr(nearest, big)


def test_lanczos_rejects_bad_factor():
    with pytest.raises(ValueError, match="upscale factor"):
        LanczosUpscale(5)


def test_nlmeans_removes_noise():
    clean = _frames(0, 1)
    rng = np.random.default_rng(1)
    noisy = np.clip(clean + rng.normal(0, 12, clean.shape), 0, 255).astype(np.uint8)
    denoised = NonLocalMeansDenoise(strength=10)(noisy)
    assert psnr(denoised, clean) > psnr(noisy, clean) + 2


def test_interpolation_beats_blending_on_motion():
    first, middle, second = _frames(0, 1, 2)
    synthesised = FlowInterpolator().interpolate(first, second, [0.5])[0]
    blend = ((first.astype(np.float64) + second) / 2 + 0.5).astype(np.uint8)
    assert psnr(synthesised, middle) > psnr(blend, middle) + 3


def test_interpolation_at_several_times():
    first, second = _frames(0, 4)
    quarter, half = FlowInterpolator().interpolate(first, second, [0.25, 0.5])
    assert psnr(quarter, _frames(1)[0]) > psnr(half, _frames(1)[0])


def test_interpolation_rejects_bad_time_and_shapes():
    first, second = _frames(0, 1)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        FlowInterpolator().interpolate(first, second, [1.0])
    with pytest.raises(ValueError, match="shapes differ"):
        FlowInterpolator().interpolate(first, second[:32], [0.5])


def test_scene_cut_detector():
    a, b = _frames(0, 1)
    assert not is_scene_cut(a, b)
    assert is_scene_cut(a, _frames(1, scene=1)[0])
    flat = np.full_like(a, 128)
    assert not is_scene_cut(flat, flat)


def test_operators_follow_the_interfaces():
    assert isinstance(LanczosUpscale(2), FrameFilter)
    assert isinstance(NonLocalMeansDenoise(5.0), FrameFilter)
    assert isinstance(FlowInterpolator(), FrameInterpolator)


def test_frame_contract_is_enforced():
    with pytest.raises(ValueError, match="uint8"):
        check_frames(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        check_frames(np.zeros((4, 4, 3), np.uint8))


def test_registry_builds_and_rejects():
    assert build_operator("upscale", "classical", {"factor": 3}).scale == 3
    with pytest.raises(UnknownOperatorError, match="upscale/classical"):
        build_operator("upscale", "quantum", {})


def _carphone(n: int = 4) -> np.ndarray:
    """Real footage, decoded as the pipeline decodes it."""
    import av

    from benchmarks.fidelity import clip_path
    from pipelines.colour import frame_to_rgb
    from pipelines.probe import probe

    path = clip_path("carphone_pristine.mp4")
    colour = probe(path).colour
    with av.open(str(path)) as container:
        return np.stack(
            [
                frame_to_rgb(f, colour)
                for _, f in zip(range(n), container.decode(video=0), strict=False)
            ]
        )


@pytest.mark.parametrize("sigma", [4.0, 8.0, 12.0])
def test_noise_estimate_tracks_added_noise(sigma: float):
    from models.noise_estimate import estimate_noise

    clean = _carphone()
    rng = np.random.default_rng(2)
    noisy = np.clip(clean + rng.normal(0, sigma, clean.shape) + 0.5, 0, 255).astype(np.uint8)
    assert estimate_noise(clean) < 2.0
    assert 0.75 * sigma < estimate_noise(noisy) < 1.25 * sigma
    # 16-bit frames read the same σ (in 8-bit levels).
    assert estimate_noise(noisy.astype(np.uint16) * 257) == pytest.approx(
        estimate_noise(noisy), rel=0.05
    )
