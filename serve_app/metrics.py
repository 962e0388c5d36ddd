"""Service metrics, exported through Ray's metrics endpoint (Prometheus text format).

Ray prefixes every name with ``ray_``, so they appear as ``ray_retroiva_…``.  Outside
a Ray worker or driver (plain uvicorn, unit tests) recording is a no-op.
"""

from __future__ import annotations

from typing import Any

import ray

from vocabulary import JobStatus

__all__ = ["count_rate_limited", "count_webhook_delivery", "record_job_counts", "record_progress"]


class _Metrics:
    def __init__(self) -> None:
        from ray.util.metrics import Counter, Gauge

        self.jobs = Gauge(
            "retroiva_jobs", description="Jobs in the store by status.", tag_keys=("status",)
        )
        self.queue_depth = Gauge("retroiva_queue_depth", description="Queued jobs.")
        self.oldest_queued = Gauge(
            "retroiva_oldest_queued_job_age_seconds",
            description="Age of the oldest queued job (0: none queued).",
        )
        self.frames = Counter(
            "retroiva_frames_processed_total", description="Input frames processed by the pipeline."
        )
        self.fps = Gauge(
            "retroiva_pipeline_fps", description="Input frames per second of the latest job update."
        )
        self.webhooks = Counter(
            "retroiva_webhook_deliveries_total",
            description="Webhook delivery attempts by outcome.",
            tag_keys=("outcome",),
        )
        self.rate_limited = Counter(
            "retroiva_rate_limit_rejections_total", description="Requests rejected with 429."
        )


_created: list[_Metrics] = []  # at most one per process, made once Ray is up


def _metrics() -> _Metrics | None:
    if not _created and ray.is_initialized():
        _created.append(_Metrics())
    return _created[0] if _created else None


def _call(method: str, name: str, *args: Any, **kwargs: Any) -> None:
    metrics = _metrics()
    if metrics is not None:
        getattr(getattr(metrics, name), method)(*args, **kwargs)


def record_job_counts(counts: dict[str, int], oldest_queued_age: float = 0.0) -> None:
    """Set the store gauges.  Called every few seconds (the runner's
    :data:`~serve_app.jobs.runner.GAUGE_SECONDS`), not once per reap: Ray exports a gauge
    only while it keeps being set, so a gauge set once a minute was missing from most
    scrapes."""
    for status, count in counts.items():
        _call("set", "jobs", count, tags={"status": status})
    _call("set", "queue_depth", counts.get(JobStatus.QUEUED, 0))
    _call("set", "oldest_queued", max(0.0, oldest_queued_age))


def record_progress(new_frames: int, fps: float) -> None:
    if new_frames > 0:
        _call("inc", "frames", new_frames)
    _call("set", "fps", fps)


def count_webhook_delivery(outcome: str) -> None:
    _call("inc", "webhooks", 1, tags={"outcome": outcome})


def count_rate_limited() -> None:
    _call("inc", "rate_limited", 1)
