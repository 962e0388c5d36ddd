"""Where finished outputs live until retention ends: a local directory or S3.

Both backends hand out time-limited download URLs: the local one signs
``/v2/files/<key>`` on this API with HMAC-SHA256, S3 presigns a GET.  Methods are
synchronous (boto3 is); async callers run them in a thread.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlencode

from pipelines.resume import LocalSegments, SegmentStore
from serve_app.access.private_files import private_dir
from serve_app.delivery.signing import load_signing_secret, sign_path
from serve_app.jobs.records import JobRecord
from serve_app.settings import Settings
from vocabulary import JobStatus

__all__ = [
    "DownloadLink",
    "LocalStorage",
    "OutputStorage",
    "S3Segments",
    "S3Storage",
    "download_link",
    "open_segments",
    "open_storage",
    "segment_job_ids",
]


@dataclass(frozen=True)
class DownloadLink:
    url: str
    expires_at: int  # Unix seconds: the end of the output's retention


def download_link(
    job: JobRecord, storage: OutputStorage, retention_seconds: int, base_url: str
) -> DownloadLink | None:
    """A link to ``job``'s output, valid until retention ends; None if there is none now.

    Blocking (S3 presigns through boto3): async callers run it in a thread.
    """
    if job.status != JobStatus.COMPLETED or job.output_path is None or job.completed_at is None:
        return None
    expires_at = math.floor(job.completed_at + retention_seconds)
    if expires_at <= time.time():
        return None
    return DownloadLink(storage.signed_url(job.output_path, expires_at, base_url), expires_at)


class OutputStorage(Protocol):
    def put(self, job_id: str, source: Path) -> str:
        """Take ownership of ``source`` (moved or uploaded); return its storage key."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; no error if it is already gone."""

    def signed_url(self, key: str, expires_at: int, base_url: str) -> str:
        """A URL that downloads ``key`` until ``expires_at`` (Unix seconds)."""


class LocalStorage:
    """Outputs in a directory, downloaded through the API's ``/v2/files/`` route."""

    def __init__(self, root: Path, secret: bytes) -> None:
        self.root = root
        self.secret = secret

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def path(self, key: str) -> Path:
        candidate = (self.root / key).resolve()
        if candidate.parent != self.root.resolve():
            raise ValueError(f"invalid storage key {key!r}")
        return candidate

    def put(self, job_id: str, source: Path) -> str:
        key = f"{job_id}.mp4"
        private_dir(self.root)
        if source.resolve() != self.path(key):
            shutil.move(source, self.path(key))
        return key

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def signed_url(self, key: str, expires_at: int, base_url: str) -> str:
        path = f"/v2/files/{quote(key)}"
        query = urlencode(
            {"expires": expires_at, "signature": sign_path(self.secret, path, expires_at)}
        )
        return f"{base_url.rstrip('/')}{path}?{query}"


class S3Storage:
    """Outputs in an S3-compatible bucket, downloaded with presigned GET URLs."""

    def __init__(
        self, bucket: str, prefix: str, *, endpoint_url: str | None, region: str | None
    ) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._s3: Any = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def put(self, job_id: str, source: Path) -> str:
        key = f"{self.prefix}/{job_id}.mp4" if self.prefix else f"{job_id}.mp4"
        self._s3.upload_file(str(source), self.bucket, key, ExtraArgs={"ContentType": "video/mp4"})
        source.unlink(missing_ok=True)
        return key

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=key)

    def signed_url(self, key: str, expires_at: int, base_url: str) -> str:
        lifetime = max(1, expires_at - int(time.time()))
        return str(
            self._s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=lifetime
            )
        )


class S3Segments:
    """A job's finished segments (pipelines/resume.py) in the outputs' S3 bucket, so a
    runner on another machine can resume the job after a crash."""

    def __init__(self, s3: Any, bucket: str, prefix: str) -> None:
        self._s3, self.bucket, self.prefix = s3, bucket, prefix.rstrip("/") + "/"

    def __repr__(self) -> str:
        return f"S3Segments(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def _keys(self) -> list[str]:
        keys: list[str] = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        ):
            keys += [item["Key"] for item in page.get("Contents", [])]
        return keys

    def names(self) -> list[str]:
        return sorted(key.removeprefix(self.prefix) for key in self._keys())

    def put(self, name: str, data: bytes) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=data)

    def fetch(self, name: str, scratch: Path) -> Path:
        path = scratch / "saved" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        self._s3.download_file(self.bucket, self.prefix + name, str(path))
        return path

    def delete(self, name: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self.prefix + name)

    def clear(self) -> None:
        for key in self._keys():
            self._s3.delete_object(Bucket=self.bucket, Key=key)


def open_segments(settings: Settings, job_id: str) -> SegmentStore:
    """Where ``job_id``'s finished segments survive a runner crash: beside the outputs
    in S3 when ``s3_bucket`` is set (any runner can resume), else in the data dir."""
    if settings.s3_bucket:
        import boto3

        s3 = boto3.client(
            "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region
        )
        prefix = "/".join(p for p in (settings.s3_prefix.strip("/"), "segments", job_id) if p)
        return S3Segments(s3, settings.s3_bucket, prefix)
    return LocalSegments(settings.segments_dir / job_id)


def segment_job_ids(settings: Settings) -> list[str]:
    """Jobs with saved segments in the data dir (S3's are cleared by their runner)."""
    root = settings.segments_dir
    return [entry.name for entry in root.iterdir()] if root.is_dir() else []


def open_storage(settings: Settings) -> OutputStorage:
    """S3 when ``s3_bucket`` is set, else the local outputs directory."""
    if settings.s3_bucket:
        return S3Storage(
            settings.s3_bucket,
            settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
        )
    return LocalStorage(
        settings.outputs_dir, load_signing_secret(settings.signing_secret, settings.data_dir)
    )
