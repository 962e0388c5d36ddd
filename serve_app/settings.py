"""The service's one settings object: environment variables with the ``RETROIVA_`` prefix."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, PositiveFloat, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.runtime import ModelRuntime
from serve_app.delivery.fetch_rules import FetchLimits, UrlPolicy

__all__ = ["DEFAULT_WEBHOOK_RETRY_SCHEDULE", "Settings", "default_data_dir"]

# Seconds before each webhook retry: 1 min, 5 min, 25 min, 2 h 5 min, 10 h 25 min.
# The reference promises "up to 5 times with exponential backoff"; growing ×5 from a
# minute, those 5 retries span 13 h (10.4-15.6 h with the ±20 % jitter): the first
# catches a blip, the last a receiver down for most of a night, and all come before
# the event's download link expires (retention_seconds, 24 h after completion): an
# event delivered later would point at a deleted output.
DEFAULT_WEBHOOK_RETRY_SCHEDULE: tuple[float, ...] = (60, 300, 1500, 7500, 37500)


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/retroiva`` (``~/.local/share/retroiva``): the same store from
    whichever directory the service or an operator command starts."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "retroiva"


class Settings(BaseSettings):
    """Every knob of the service; ``Settings()`` reads them from the environment."""

    model_config = SettingsConfigDict(env_prefix="RETROIVA_", frozen=True)

    data_dir: Path = Field(
        default_factory=default_data_dir, description="SQLite file, outputs and scratch."
    )
    host: str = "127.0.0.1"
    port: int = 8000
    dashboard: bool = Field(True, description="Start Ray's dashboard with `retroiva serve`.")
    dashboard_port: int = Field(8265, description="The Ray dashboard's port.")
    # Secrets are left out of repr() so that a logged Settings object can't leak them.
    mongodb_uri: str | None = Field(None, repr=False, description="Use MongoDB instead of SQLite.")
    mongodb_database: str = "retroiva"
    store_timeout_seconds: float = Field(
        1.5,
        gt=0,
        description="Longest wait for one "
        "store operation before it counts as unavailable "
        "(API: 503 with Retry-After).",
    )
    max_queued_per_key: int = Field(
        1000, ge=1, description="Queued jobs one key may have; more get 429 queue_limit_error."
    )
    max_running_per_key: int | None = Field(
        None,
        ge=1,
        description="Jobs of one key processing at once, across runners; None: no limit.",
    )
    api_replicas: int = Field(1, ge=1)
    runner_concurrency: int = Field(1, ge=1, description="Jobs one runner processes at once.")
    lease_seconds: float = Field(
        30.0,
        gt=0,
        description="A claimed job's lease; renewed by heartbeats, re-queued when it expires.",
    )
    max_attempts: int = Field(3, ge=1, description="Claims per job before it fails.")
    poll_seconds: float = Field(0.5, gt=0, description="Runner's queue polling interval.")
    default_rate_limit: int = Field(120, ge=1, description="Requests per minute per key.")
    rate_window_seconds: int = Field(60, ge=1)
    max_body_bytes: int = 64 * 1024
    max_input_bytes: int = 10 * 1024**3
    fetch_timeout_seconds: float = Field(
        30.0, gt=0, description="Longest wait for a connection or for the next bytes of an input."
    )
    fetch_deadline_seconds: float = Field(
        3600.0, gt=0, description="Longest a whole input download may take, redirects included."
    )
    fetch_min_bytes_per_second: float = Field(
        64 * 1024,
        ge=0,
        description="Slowest average rate an input download may keep "
        "once it has run for fetch_rate_grace_seconds.",
    )
    fetch_rate_grace_seconds: float = Field(10.0, ge=0)
    fetch_concurrency: int = Field(
        4,
        ge=1,
        description="Most inputs one runner "
        "downloads at once; a download past 2 s stops holding "
        "a processing slot, so another job can use it.",
    )
    allow_private_urls: bool = Field(
        False, description="Let video_url reach loopback and private addresses (tests, local use)."
    )
    private_url_allowlist: tuple[str, ...] = Field(
        (), description="host:port pairs exempt from the private-address refusal."
    )
    chunk_frames: int | None = Field(None, description="Override the pipeline's chunk size.")
    retention_seconds: int = Field(
        24 * 3600,
        ge=1,
        description="How long outputs (and their download URLs) live after completion.",
    )
    reap_interval_seconds: float = Field(60.0, gt=0)
    public_url: str | None = Field(
        None,
        description="Base URL of this API for local download links; default: the request's own.",
    )
    signing_secret: str | None = Field(
        None,
        repr=False,
        description="Secret for local download signatures; default: generated in data_dir.",
    )
    secrets_key: str | None = Field(
        None,
        repr=False,
        description="Fernet keys sealing "
        "webhook secrets at rest, comma-separated, newest "
        "first; default: generated in data_dir/secrets.key.",
    )
    admin_token: str | None = Field(
        None,
        repr=False,
        description="The operator's "
        "sign-in for the web dashboard; default: generated in "
        "data_dir/admin.token (printed by `retroiva serve`).",
    )
    dashboard_session_seconds: int = Field(
        8 * 3600, ge=60, description="How long a dashboard sign-in lasts."
    )
    webhook_timeout_seconds: float = Field(
        10.0, gt=0, description="Deadline for one whole delivery attempt, connect to status line."
    )
    webhook_concurrency: int = Field(16, ge=1, description="Deliveries one runner makes at once.")
    webhook_concurrency_per_key: int = Field(
        4,
        ge=1,
        description="Of those, how many may "
        "be one key's, so one slow receiver can't "
        "take every slot.",
    )
    webhook_retry_schedule: tuple[PositiveFloat, ...] | None = Field(
        None,
        description="Seconds before each retry, in order, ±20 % jitter (a JSON "
        "list in the environment); its length is the number of retries.  Default: "
        "DEFAULT_WEBHOOK_RETRY_SCHEDULE (5 retries over 13 h), unless the two legacy "
        "knobs below are set.",
    )
    # None unless set: unset knobs are not even passed on to replicas (settings_env
    # drops None), so "set" is still known there and the default schedule applies.
    webhook_max_retries: int | None = Field(
        None,
        ge=0,
        description="Legacy: retries "
        "after the first try (5 when only the base "
        "is set), when webhook_retry_schedule is unset.",
    )
    webhook_retry_base_seconds: float | None = Field(
        None,
        gt=0,
        description="Legacy: "
        "first retry delay (30 s when only the "
        "count is set), doubling each retry, "
        "when webhook_retry_schedule is unset.",
    )
    webhook_secret_overlap_seconds: float = Field(
        24 * 3600,
        ge=0,
        description="After a webhook secret is rotated, how long the "
        "previous one still signs deliveries (a second webhook-signature entry).",
    )
    model_cache: Path | None = Field(
        None,
        description="Converted model weights, ONNX "
        "exports and TensorRT engines, on each node that runs "
        "a model; default ~/.cache/retroiva/models there.",
    )
    model_runtime: ModelRuntime = Field(
        "auto",
        description="Neural models' runtime: auto "
        "(TensorRT where it imports and a GPU exists; "
        "without one, ncnn for the upscalers; else torch), "
        "torch, compile, tensorrt or ncnn.",
    )
    accelerator_resource: str = Field(
        "GPU",
        min_length=1,
        description="The Ray resource model stages "
        "require, one unit per actor: GPU, or a custom resource "
        "the operator gives the model nodes.",
    )
    encode_resource: str | None = Field(
        "retroiva_encode",
        description="The custom Ray resource that "
        "marks CPU-only encode nodes; when the cluster has it and "
        "model stages run in actors, each encode task takes one "
        "unit (start those nodes with plenty of units, e.g. "
        "1000, so CPUs bound how many run). Empty: encode "
        "anywhere.",
    )
    upload_expiry_seconds: int = Field(
        24 * 3600,
        ge=1,
        description="How long an upload "
        "may stay unfinished or unused by a job; then "
        "it is refused and its bytes deleted.",
    )
    max_open_uploads: int = Field(
        20,
        ge=1,
        description="Uploads a key may hold that no "
        "job has taken yet; more get 429 queue_limit_error "
        "(each may be MAX_INPUT_BYTES: this bounds one key's "
        "disk or bucket use).",
    )
    s3_bucket: str | None = Field(None, description="Store outputs in this S3 bucket.")
    s3_prefix: str = "outputs"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_uploads_prefix: str = Field(
        "uploads", description="Where uploads' bytes go in s3_bucket (S3 multipart uploads)."
    )

    @property
    def retry_schedule(self) -> tuple[float, ...]:
        """The delays before each webhook retry: the setting, else the legacy doubling
        (when either legacy knob is set), else the default schedule."""
        if self.webhook_retry_schedule is not None:
            return self.webhook_retry_schedule
        if self.webhook_max_retries is None and self.webhook_retry_base_seconds is None:
            return DEFAULT_WEBHOOK_RETRY_SCHEDULE
        base = self.webhook_retry_base_seconds or 30.0
        retries = 5 if self.webhook_max_retries is None else self.webhook_max_retries
        return tuple(base * 2**n for n in range(retries))

    @field_validator("data_dir", "model_cache")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        # Resolved once, where the settings are read: `retroiva serve` hands replicas
        # the absolute path, and a process started elsewhere (a Ray job runs in its
        # own copy of --working-dir) shows the path it really used when it says where
        # it looked.
        return None if path is None else path.expanduser().absolute()

    @property
    def public_base_url(self) -> str:
        """Where links made without a request point (the runner's webhook bodies, batch
        results): ``public_url``, else the address the API listens on, with a wildcard
        host read as this machine (0.0.0.0 is no address a client can use)."""
        if self.public_url is not None:
            return self.public_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def url_policy(self) -> UrlPolicy:
        return UrlPolicy(self.allow_private_urls, frozenset(self.private_url_allowlist))

    @property
    def fetch_limits(self) -> FetchLimits:
        return FetchLimits(
            max_bytes=self.max_input_bytes,
            read_timeout=self.fetch_timeout_seconds,
            deadline=self.fetch_deadline_seconds,
            min_rate=self.fetch_min_bytes_per_second,
            rate_grace=self.fetch_rate_grace_seconds,
        )

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "retroiva.sqlite3"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def scratch_dir(self) -> Path:
        return self.data_dir / "scratch"

    @property
    def segments_dir(self) -> Path:
        """Finished segments of unfinished jobs, kept across runner crashes."""
        return self.data_dir / "segments"
