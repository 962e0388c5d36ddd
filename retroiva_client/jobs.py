"""Jobs: the job object, waiting for one to end, downloading its output, listing."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from retroiva_client.errors import APIConnectionError, JobTimeoutError, error_from_response

if TYPE_CHECKING:
    from retroiva_client._http import Transport

__all__ = ["TERMINAL_STATUSES", "Job", "JobError", "Jobs"]

TERMINAL_STATUSES = frozenset({"completed", "failed", "canceled"})


@dataclass(frozen=True)
class JobError:
    """Why a job failed or was canceled: ``type`` (e.g. ``invalid_input``) and a message."""

    type: str
    message: str


@dataclass(repr=False)
class Job:
    """A job as the API last described it; ``refresh()`` asks again.

    Fields the service adds later stay readable in ``raw``.
    """

    id: str
    status: str
    progress: float = 0.0
    phase: str | None = None
    eta_seconds: int | None = None
    input_url: str | None = None
    output_url: str | None = None
    created_at: int | None = None
    started_at: int | None = None
    completed_at: int | None = None
    error: JobError | None = None
    preset: str | None = None
    upscale_factor: int | None = None
    engine: str | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    _transport: Transport | None = field(default=None, compare=False)

    @classmethod
    def from_api(cls, data: dict[str, Any], transport: Transport | None = None) -> Job:
        error = data.get("error")
        return cls(
            id=data["id"],
            status=data["status"],
            progress=float(data.get("progress") or 0),
            phase=data.get("phase"),
            eta_seconds=data.get("eta_seconds"),
            input_url=data.get("input_url"),
            output_url=data.get("output_url"),
            created_at=data.get("created_at"),
            started_at=data.get("started_at"),
            completed_at=data.get("completed_at"),
            error=JobError(error.get("type", ""), error.get("message", ""))
            if isinstance(error, dict)
            else None,
            preset=data.get("preset"),
            upscale_factor=data.get("upscale_factor"),
            engine=data.get("engine"),
            raw=data,
            _transport=transport,
        )

    def __repr__(self) -> str:
        extra = f", error={self.error.type!r}" if self.error else ""
        return f"Job(id={self.id!r}, status={self.status!r}, progress={self.progress}{extra})"

    @property
    def is_terminal(self) -> bool:
        """Completed, failed or canceled: the job will not change any more."""
        return self.status in TERMINAL_STATUSES

    def _client(self) -> Transport:
        if self._transport is None:
            raise RuntimeError("this Job is not bound to a Client")
        return self._transport

    def _update(self, other: Job) -> None:
        for name in self.__dataclass_fields__:
            if name != "_transport":
                setattr(self, name, getattr(other, name))

    def refresh(self) -> Job:
        """Fetch the job again (``GET /v2/jobs/{id}``) and update this object."""
        transport = self._client()
        self._update(Job.from_api(transport.request("GET", f"/v2/jobs/{self.id}").json()))
        return self

    def cancel(self) -> Job:
        """``POST /v2/jobs/{id}/cancel``; a job that has ended is returned unchanged."""
        transport = self._client()
        self._update(Job.from_api(transport.request("POST", f"/v2/jobs/{self.id}/cancel").json()))
        return self

    def wait(
        self,
        timeout: float | None = None,
        *,
        poll_interval: float = 1.0,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        """Poll until the job ends and return it (in whichever terminal status).

        ``on_progress(job)`` is called with the first state seen and again whenever
        status, phase or progress change.  Raises :class:`JobTimeoutError` after
        ``timeout`` seconds (None: wait as long as it takes); the job keeps running.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: tuple[str, str | None, float] | None = None
        while True:
            self.refresh()
            state = (self.status, self.phase, self.progress)
            if on_progress is not None and state != seen:
                on_progress(self)
            seen = state
            if self.is_terminal:
                return self
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(
                    f"job {self.id} is still {self.status} after {timeout:g} s", job=self
                )
            pause = poll_interval
            if deadline is not None:
                pause = max(0.0, min(pause, deadline - time.monotonic()))
            time.sleep(pause)

    def download_url(self) -> str:
        """A fresh signed link to the output (``GET /v2/jobs/{id}/download``)."""
        return str(self._client().request("GET", f"/v2/jobs/{self.id}/download").json()["url"])

    def download(self, path: str | os.PathLike[str], *, chunk_size: int = 1 << 20) -> Path:
        """Write the completed job's output to ``path`` and return it.

        The file appears only once complete (written beside it, then renamed); a
        dropped connection resumes with a Range request.  A job that has not
        completed raises :class:`~retroiva_client.errors.ConflictError` (409).
        """
        transport = self._client()
        url = self.download_url()
        target = Path(path)
        partial = target.with_name(target.name + ".part")
        attempt = 0
        with partial.open("wb") as out:
            while True:
                written = out.tell()
                # The signed URL is the credential: the API key is not sent with it
                # (an object store would refuse a request carrying both).
                headers = {"Range": f"bytes={written}-"} if written else {}
                try:
                    with transport.http.stream(
                        "GET", url, headers=headers, follow_redirects=True
                    ) as response:
                        if response.status_code >= 400:
                            response.read()
                            raise error_from_response(response)
                        if written and response.status_code != 206:
                            out.seek(0)
                            out.truncate()
                        for chunk in response.iter_bytes(chunk_size):
                            out.write(chunk)
                    break
                except httpx.TransportError as exc:
                    if attempt >= transport.retry.max_retries:
                        partial.unlink(missing_ok=True)
                        raise APIConnectionError(f"downloading {self.id}: {exc}") from exc
                    transport.sleep(transport.retry.backoff(attempt))
                    attempt += 1
                except BaseException:
                    out.close()
                    partial.unlink(missing_ok=True)
                    raise
        partial.replace(target)
        return target


class Jobs:
    """``client.jobs``: get, list (every page) and cancel jobs by id."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def __repr__(self) -> str:
        return f"Jobs(base_url={self._transport.base_url!r})"

    def get(self, job_id: str) -> Job:
        return Job.from_api(
            self._transport.request("GET", f"/v2/jobs/{job_id}").json(), self._transport
        )

    def cancel(self, job_id: str) -> Job:
        return Job.from_api(
            self._transport.request("POST", f"/v2/jobs/{job_id}/cancel").json(), self._transport
        )

    def list(self, *, page_size: int = 100, limit: int | None = None) -> Iterator[Job]:
        """The key's jobs, newest first, following ``next_cursor`` through every page.

        Pages are fetched lazily, ``page_size`` (1–100) jobs at a time; ``limit``
        stops after that many jobs in all.
        """
        cursor: str | None = None
        yielded = 0
        while True:
            params: dict[str, Any] = {"limit": page_size}
            if cursor is not None:
                params["starting_after"] = cursor
            page = self._transport.request("GET", "/v2/jobs", params=params).json()
            for data in page["data"]:
                if limit is not None and yielded >= limit:
                    return
                yield Job.from_api(data, self._transport)
                yielded += 1
            cursor = page.get("next_cursor")
            if not page.get("has_more") or not cursor:
                return
