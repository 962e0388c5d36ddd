"""cluster.yaml must be a config `ray up` accepts (Ray's own schema, offline) and agree
with the project: images, GPU install, start commands, and a gpu extra that resolves."""

from __future__ import annotations

import io
import json
import re
import resource
import socket
import struct
import subprocess
import tarfile
import tomllib
import urllib.request
import zlib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import Tag
from packaging.utils import parse_wheel_filename
from packaging.version import Version
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).parents[1] / "cluster.yaml"


def test_cluster_yaml_passes_rays_schema():
    config = prepare_config(yaml.safe_load(CLUSTER_YAML.read_text()))
    validate_config(config)  # raises on any field Ray does not accept


def test_cpu_head_and_autoscaling_gpu_workers():
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert any(
        t["resources"].get("GPU", 0) >= 1 and t["min_workers"] == 0 and t["max_workers"] >= 1
        for t in workers
    )
    assert any("make install" in command for command in config["setup_commands"])


def test_serve_config_places_service_on_the_head_only():
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    types = config["available_node_types"]
    head = config["head_node_type"]
    assert types[head]["resources"]["retroiva_head"] == 1
    assert all("retroiva_head" not in t["resources"] for n, t in types.items() if n != head)
    serve = yaml.safe_load((CLUSTER_YAML.parent / "serve_config.yaml").read_text())
    [app] = serve["applications"]
    assert app["import_path"] == "serve_app.deployments:service"
    placed = {d["name"]: d["ray_actor_options"]["resources"] for d in app["deployments"]}
    assert set(placed) == {"api", "runner"}
    assert all(r.get("retroiva_head", 0) > 0 for r in placed.values())
    # Secrets come from the node's environment, never from the config file.
    assert not any(
        "SECRET" in k or "MONGODB" in k or "AWS" in k
        for k in app.get("runtime_env", {}).get("env_vars", {})
    )


# --- The cluster agrees with the project: images, GPU install, start commands. ---

ROOT = CLUSTER_YAML.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
IMAGE = re.compile(
    r"^rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py3(?P<minor>\d+)"
    r"-(?P<platform>cpu|gpu|cu\d+)$"
)


def _config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _ray_pin() -> str:
    [pin] = [
        Requirement(r) for r in PYPROJECT["project"]["dependencies"] if Requirement(r).name == "ray"
    ]
    [spec] = pin.specifier
    assert spec.operator == "=="
    return spec.version


def _images(config: dict) -> dict[str, str]:
    """Node type → the container image `ray up` runs it in."""
    docker = config["docker"]
    images = {}
    for name, node in config["available_node_types"].items():
        if name == config["head_node_type"]:
            images[name] = docker.get("head_image", docker.get("image"))
        else:
            images[name] = node.get("docker", {}).get(
                "worker_image", docker.get("worker_image", docker.get("image"))
            )
    return images


def _commands(config: dict, name: str) -> list[str]:
    """Every setup command a node type runs, by Ray's rules for node-type overrides."""
    node = config["available_node_types"][name]
    if name == config["head_node_type"]:
        return [*config.get("setup_commands", []), *config.get("head_setup_commands", [])]
    if "worker_setup_commands" in node:  # replaces the global setup and worker lists
        return list(node["worker_setup_commands"])
    return [*config.get("setup_commands", []), *config.get("worker_setup_commands", [])]


def _gpu_types(config: dict) -> list[str]:
    return [
        n
        for n, t in config["available_node_types"].items()
        if t.get("resources", {}).get("GPU", 0) >= 1
    ]


def test_images_run_the_pinned_ray_on_a_python_the_project_accepts():
    config = _config()
    requires = SpecifierSet(PYPROJECT["project"]["requires-python"])
    images = _images(config)
    assert set(images) == set(config["available_node_types"])
    for name, image in images.items():
        match = IMAGE.match(image or "")
        assert match, f"{name}: {image!r} is not one of Ray's published images"
        assert match["ray"] == _ray_pin(), f"{name}: {image} is not Ray {_ray_pin()}"
        assert f"3.{match['minor']}" in requires, f"{name}: {image}'s Python vs {requires}"
        gpu = name in _gpu_types(config)
        assert (match["platform"] != "cpu") == gpu, f"{name}: {image} for GPU={gpu}"


def test_gpu_workers_install_the_gpu_extra_and_request_gpus_and_the_head_never_does():
    config = _config()
    head = config["head_node_type"]
    gpu_types = _gpu_types(config)
    assert gpu_types and head not in gpu_types
    assert config["available_node_types"][head]["resources"].get("GPU", 0) == 0
    for name in config["available_node_types"]:
        commands = " ; ".join(_commands(config, name))
        assert "make install" in commands, name
        assert ("make install-gpu" in commands) == (name in gpu_types), name
        options = config["docker"].get("run_options", []) + config["available_node_types"][
            name
        ].get("docker", {}).get("worker_run_options", [])
        assert ("--gpus all" in options) == (name in gpu_types), name
    # `make install-gpu` installs the extra; `make test` (CI) never reaches it.
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ninstall-gpu:")[1].split("\n\n")[0]
    assert "'.[gpu]'" in recipe
    assert "gpu" not in makefile.split("\ntest:")[1].split("\n\n")[0]
    assert "gpu" not in makefile.split("\n$(STAMP):")[1].split("\n\n")[0]
    assert "retroiva[gpu]" not in str(PYPROJECT["project"]["optional-dependencies"]["dev"])


def _run_start_commands(
    config: dict, key: str, home: Path, hard_limit: int
) -> subprocess.CompletedProcess[str]:
    commands = config[key]
    for command in commands:
        # Only the venv's ray (a stub under the temporary HOME here) may be invoked:
        # never the machine's own `ray stop`.
        assert not re.search(r"(^|[\s;&|])ray\s", command), command
    # `ulimit -n` sets the soft and the hard limit: a node whose hard limit is below 65536.
    script = f"ulimit -n {hard_limit} && set -e; " + "; ".join(commands)
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "RAY_HEAD_IP": "10.0.0.1"}
    return subprocess.run(
        ["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize("key", ["head_start_ray_commands", "worker_start_ray_commands"])
def test_start_commands_put_the_venv_on_path_and_survive_a_low_file_limit(key: str, tmp_path: Path):
    """Run as written, with `ray` and `python` stubbed in the venv: the job entrypoint
    `python -m serve_app.jobs.batch` must find the venv's python, and a hard limit below
    65536 must lower the request, not stop Ray from starting."""
    venv_bin = tmp_path / "retroiva" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    log = tmp_path / "ray.log"
    (venv_bin / "ray").write_text(
        '#!/bin/sh\necho "$1 python=$(command -v python) nofile=$(ulimit -n)'
        f' token=${{RAY_AUTH_MODE:-}}" >> {log}\n'
    )
    (venv_bin / "python").write_text("#!/bin/sh\n")
    for stub in ("ray", "python"):
        (venv_bin / stub).chmod(0o755)
    (tmp_path / "retroiva.env").write_text("RAY_AUTH_MODE=token\n")
    hard = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 4096)
    result = _run_start_commands(_config(), key, tmp_path, hard)
    assert result.returncode == 0, result.stderr
    stop, start = log.read_text().splitlines()
    assert stop.startswith("stop ")
    assert start.startswith("start ")
    assert f"python={venv_bin / 'python'}" in start
    assert f"nofile={hard}" in start
    # The head reads ~/retroiva.env; workers, which don't have the head's secrets, set
    # token auth themselves, or they could not join a head that uses it.
    assert "token=token" in start


def test_cpu_encode_workers_offer_the_encode_resource_the_pipeline_looks_for():
    """Issue 19 item 3: encode work has CPU-only nodes of its own on a GPU cluster."""
    from serve_app.settings import Settings

    config = _config()
    resource = Settings().encode_resource
    encoders = [
        name
        for name, node in config["available_node_types"].items()
        if node["resources"].get(resource, 0) > 0
    ]
    assert encoders and not set(encoders) & set(_gpu_types(config))
    for name in encoders:
        node = config["available_node_types"][name]
        assert node["resources"][resource] >= 100  # CPUs, not units, bound concurrency
        assert node["docker"]["worker_image"].endswith("-cpu")


def test_every_node_gets_rays_token():
    """Token auth is cluster-wide: the token made on the launcher reaches every node."""
    config = _config()
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert readme.index(".venv/bin/ray get-auth-token --generate") < readme.index(
        ".venv/bin/ray up cluster.yaml "
    )  # made before the first `ray up`, which copies it


# --- The gpu extra resolves from the package index (metadata only, no big wheels). ---

PYPI = "https://pypi.org/simple"
TARGET = {"python": "3.11", "platform": "manylinux_2_28_x86_64"}


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


needs_pypi = pytest.mark.skipif(not _pypi_reachable(), reason="pypi.org is not reachable")


def _files(project: str) -> list[dict]:
    request = urllib.request.Request(
        f"{PYPI}/{project}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["files"]


def _installable(requirement: Requirement) -> list[dict]:
    """Files of ``requirement`` that pip could install on the GPU image's Python."""
    tags = set(sys_tags_for(TARGET["python"], TARGET["platform"]))
    out = []
    for file in _files(requirement.name):
        name = file["filename"]
        if file.get("yanked"):
            continue
        if name.endswith(".whl"):
            _, version, _, file_tags = parse_wheel_filename(name)
            if not tags & set(file_tags):
                continue
        elif name.endswith(".tar.gz"):
            version = Version(name[: -len(".tar.gz")].rsplit("-", 1)[1])
        else:
            continue
        if requirement.specifier.contains(version, prereleases=True):
            out.append(file)
    return out


def sys_tags_for(python: str, platform: str) -> list[Tag]:
    major, minor = python.split(".")
    glibc = int(platform.split("_")[2])
    platforms = [f"manylinux_2_{n}_x86_64" for n in range(glibc, 16, -1)]
    platforms += ["manylinux2014_x86_64", "linux_x86_64"]
    interpreters = [f"cp{major}{minor}"]
    return [
        Tag(i, abi, p)
        for i in interpreters
        for p in platforms
        for abi in (f"cp{major}{minor}", "abi3", "none")
    ] + [Tag(f"py{major}", "none", "any"), Tag(f"py{major}{minor}", "none", "any")]


def _range(url: str, start: int, end: int) -> bytes:
    request = urllib.request.Request(url, headers={"Range": f"bytes={start}-{end}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 206, "the index must serve byte ranges"
        return response.read()


def _wheel_metadata(url: str, size: int) -> str:
    """A wheel's METADATA read through a few byte ranges: its central directory, then
    that one member, so a 500 MB wheel costs about 100 kB."""
    tail = _range(url, max(0, size - 65536), size - 1)
    end = tail.rfind(b"PK\x05\x06")
    count, cd_size, cd_offset = struct.unpack("<HII", tail[end + 10 : end + 20])
    directory = _range(url, cd_offset, cd_offset + cd_size - 1)
    at = 0
    for _ in range(count):
        (method, csize, nlen, xlen, clen, local) = struct.unpack(
            "<H8xI4xHHH8xI", directory[at + 10 : at + 46]
        )
        name = directory[at + 46 : at + 46 + nlen].decode()
        at += 46 + nlen + xlen + clen
        if name.endswith(".dist-info/METADATA"):
            header = _range(url, local, local + 29)
            offset = local + 30 + sum(struct.unpack("<HH", header[26:30]))
            data = _range(url, offset, offset + csize - 1)
            return (zlib.decompress(data, -15) if method == 8 else data).decode()
    raise AssertionError(f"no METADATA in {url}")


def _gpu_requirements() -> list[Requirement]:
    extras = PYPROJECT["project"]["optional-dependencies"]
    out: list[Requirement] = []
    for text in extras["gpu"]:
        requirement = Requirement(text)
        if requirement.name == "retroiva":  # our own extras, e.g. retroiva[onnx]
            out += [Requirement(t) for extra in requirement.extras for t in extras[extra]]
        else:
            out.append(requirement)
    return out


@needs_pypi
def test_gpu_extra_resolves_for_the_gpu_image_and_matches_torchs_cuda():
    requirements = _gpu_requirements()
    for requirement in requirements:
        assert _installable(requirement), f"{requirement}: nothing for cp311 x86-64 Linux"
    [trt] = [r for r in requirements if r.name.startswith("tensorrt")]
    # TensorRT's own dependencies: the bindings are wheels on PyPI; the libraries are a
    # stub that fetches NVIDIA's wheel, which `make install-gpu` asks NVIDIA's index for.
    [stub] = [f for f in _installable(trt) if f["filename"].endswith(".tar.gz")]
    with urllib.request.urlopen(stub["url"], timeout=60) as response:
        assert int(response.headers.get("Content-Length", 0)) < 1 << 20
        data = response.read()
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        pkg_info = next(
            m
            for m in archive.getmembers()
            if m.name.endswith("/PKG-INFO") and m.name.count("/") == 1
        )
        lines = archive.extractfile(pkg_info).read().decode().splitlines()  # type: ignore[union-attr]
    depends = [
        Requirement(line.split(":", 1)[1].strip())
        for line in lines
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert {d.name for d in depends} == {
        f"{trt.name.replace('-', '_')}_libs",
        f"{trt.name.replace('-', '_')}_bindings",
    }
    for dependency in depends:
        assert _installable(dependency), f"{dependency}: nothing for cp311 x86-64 Linux"
    assert "--extra-index-url https://pypi.nvidia.com" in (ROOT / "Makefile").read_text()
    # The CUDA major of TensorRT's build is the one torch's Linux wheel was built for.
    torch_pin = re.search(r"torch==([\d.]+)", (ROOT / "Makefile").read_text())[1]
    [wheel] = [
        f
        for f in _installable(Requirement(f"torch=={torch_pin}"))
        if f["filename"].endswith(".whl")
    ]
    metadata = _wheel_metadata(wheel["url"], wheel["size"])
    cuda = re.search(r"^Requires-Dist: cuda-toolkit\[[^]]*\]==(\d+)\.", metadata, re.M)
    assert cuda, "torch's Linux wheel no longer names its CUDA toolkit"
    assert trt.name == f"tensorrt-cu{cuda[1]}", f"torch {torch_pin} is built for CUDA {cuda[1]}"
