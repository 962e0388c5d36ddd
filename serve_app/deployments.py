"""Ray Serve deployments: thin shells around the Starlette app and the job runner.

Settings travel as ``RETROIVA_*`` environment variables in each replica's runtime
environment, so the same variables configure ``retroiva serve``, a Serve config YAML
and a plain ``python -m serve_app.jobs.runner``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import cast

from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle
from starlette.types import ASGIApp

from serve_app.api.app import create_api
from serve_app.jobs.runner import JobRunner
from serve_app.jobs.store import open_store
from serve_app.settings import Settings

__all__ = ["ApiDeployment", "RunnerDeployment", "build_app", "service", "settings_env"]

log = logging.getLogger(__name__)


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the environment variables that recreate it in a replica."""
    env = {}
    for name, value in settings.model_dump(mode="json", exclude_none=True).items():
        # pydantic-settings reads complex values (lists) from the environment as JSON.
        env[f"RETROIVA_{name.upper()}"] = value if isinstance(value, str) else json.dumps(value)
    return env


def _log_access_to_stderr() -> None:
    """The replica's access lines go to its stderr, which Ray relays to the console of
    ``retroiva serve`` (and to the replica's log file), at INFO whatever Serve's level."""
    access = logging.getLogger("retroiva.access")
    if not access.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s access %(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False


def _log_runner_to_stderr() -> None:
    """The runner's per-job lifecycle lines (INFO) go to the replica's stderr: its log
    file under Ray's logs, the dashboard's log view, and the console of ``retroiva
    serve``; Serve's logger would drop them below WARNING."""
    runner_log = logging.getLogger("serve_app.jobs.runner")
    if not runner_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s runner %(levelname)s %(message)s"))
        runner_log.addHandler(handler)
        runner_log.setLevel(logging.INFO)
        runner_log.propagate = False


def _api_from_environment() -> ASGIApp:
    _log_access_to_stderr()
    return create_api(Settings())


# Handlers are async and spend microseconds on the store; Serve's default of 5 ongoing
# requests per replica made its proxy back off and retry under 64 connections
# (18 req/s, p50 5 s on 2 cores; see benchmarks/api_latency.py).
@serve.deployment(name="api", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=200)
@serve.ingress(_api_from_environment)
class ApiDeployment:
    """HTTP ingress; all logic is in :mod:`serve_app.api.app`."""

    def __init__(self, runner: DeploymentHandle | None = None) -> None:
        self._runner = runner


@serve.deployment(name="runner", num_replicas=1, ray_actor_options={"num_cpus": 0})
class RunnerDeployment:
    """Hosts one :class:`~serve_app.jobs.runner.JobRunner` loop; Serve restarts it if it dies."""

    def __init__(self) -> None:
        settings = Settings()
        if settings.public_url is None:
            # serve_config.yaml's http_options say where Serve listens, which a replica
            # can't see; RETROIVA_HOST:PORT would put 127.0.0.1:8000 in every link.
            raise ValueError(
                "RETROIVA_PUBLIC_URL is required (where clients reach this "
                "service; webhook bodies and batch results link to it): set "
                "it in the environment of `ray start` (~/retroiva.env)"
            )
        _log_runner_to_stderr()
        self._runner = JobRunner(open_store(settings), settings)
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._runner.run(self._stop))

    async def check_health(self) -> None:
        if self._task.done():
            raise RuntimeError(f"runner loop ended: {self._task.exception()!r}")

    async def owner(self) -> str:
        return self._runner.owner

    async def __del__(self) -> None:
        # Serve awaits this on a redeploy or shutdown (within graceful_shutdown_timeout_s):
        # the runner hands its jobs back to the queue before the replica goes.
        self._stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._task), 15)


# @serve.deployment turns each class into a Deployment; Ray's annotations keep the class.
_API = cast(Deployment, ApiDeployment)
_RUNNER = cast(Deployment, RunnerDeployment)


def build_app(settings: Settings) -> Application:
    """The whole service: the API (``api_replicas`` replicas) bound to one runner."""
    env = {"env_vars": settings_env(settings)}
    runner_settings = settings
    if settings.public_url is None:
        # The runner makes links without a request to take the address from: here
        # Serve listens on HOST:PORT, so that stands in (the API keeps the request's).
        runner_settings = settings.model_copy(update={"public_url": settings.public_base_url})
    runner_env = {"env_vars": settings_env(runner_settings)}
    runner = _RUNNER.options(ray_actor_options={"num_cpus": 0, "runtime_env": runner_env})
    api = _API.options(
        num_replicas=settings.api_replicas, ray_actor_options={"num_cpus": 0, "runtime_env": env}
    )
    # The runner is bound as an argument only so it is deployed with the API; they talk
    # through the job store, never directly.
    return api.bind(runner.bind())


# What serve_config.yaml deploys: every replica reads its settings from its own
# environment (the Ray node's, plus the config's runtime_env), and the config sets
# replica counts and placement, so nothing is fixed here at import time.
service: Application = _API.bind(_RUNNER.bind())
