"""Shared fixtures: one Ray instance per test session, tiny generated videos."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import ray
from service_fixture import service  # noqa: F401  (the deployed service, one per module)

from pipelines.sample_video import SampleSpec, write_sample_video


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


METRICS_PORT = _free_port()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole session: ray.init costs ~6 s, so never per test.

    Its metrics are exported on 127.0.0.1:METRICS_PORT for tests/test_metrics.py.
    """
    # A loaded machine (CI runners, parallel sessions) can take longer than Ray's
    # default 30 s for the raylet to see its metrics agent; the session would then fail
    # to start at all.  Subprocess clusters inherit the same allowance.
    os.environ.setdefault("RAY_agent_register_timeout_ms", "300000")
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level=logging.WARNING,
            configure_logging=True,
            _metrics_export_port=METRICS_PORT,
        )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def metrics_port(ray_session: None) -> int:
    """Where the session's Ray exports metrics (Prometheus text at /metrics)."""
    return METRICS_PORT


@pytest.fixture(scope="session")
def make_video(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: ``make_video(name, **SampleSpec fields)`` → path, cached per session."""
    directory = tmp_path_factory.mktemp("videos")
    made: dict[tuple[str, tuple[tuple[str, object], ...]], Path] = {}

    def make(name: str = "clip.mp4", **fields: object) -> Path:
        key = (name, tuple(sorted(fields.items())))
        if key not in made:
            made[key] = write_sample_video(directory / f"{len(made)}_{name}", SampleSpec(**fields))  # type: ignore[arg-type]
        return made[key]

    return make
