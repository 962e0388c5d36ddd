"""Where an upload's bytes live until its job ends: a local directory or S3 (multipart).

Both backends write at the offset the store has recorded, and both are idempotent per
byte range: a chunk sent twice lands on the same bytes, so a client that retries after
a lost response changes nothing.  The store's compare-and-set on the offset, not the
backend, decides which write counts.

S3 takes parts of at least 5 MiB (all but the last), while tus chunks may be any size.
Part ``n`` always covers bytes ``[(n-1)·P, n·P)`` of the file (``P`` =
:data:`S3_PART_BYTES`), so a part is a pure function of the offset: a retried chunk
rewrites the same part with the same bytes.  Bytes past the last whole part wait in a
``<key>.tail`` object until the next chunk completes the part, or the upload ends.

Methods are synchronous (boto3 is); async callers run them in a thread.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Protocol

from serve_app.access.private_files import private_dir
from serve_app.settings import Settings

__all__ = [
    "S3_PART_BYTES",
    "LocalUploadStorage",
    "S3UploadStorage",
    "UploadOutOfStep",
    "UploadStorage",
    "open_upload_storage",
]

S3_PART_BYTES = 8 * 1024 * 1024  # over S3's 5 MiB minimum; 10,000 parts make 80 GiB


class UploadOutOfStep(RuntimeError):
    """A write whose starting point is no longer what the storage holds: a request that
    lost a race (a stalled PATCH finishing after the client resumed elsewhere)."""


class UploadStorage(Protocol):
    def create(self, upload_id: str, size: int) -> None:
        """Make room for a new upload of ``size`` bytes."""

    def write(self, upload_id: str, size: int, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset``; ``offset + len(data)`` is the new offset.

        Called with consecutive pieces of one request; the last call of the upload
        (``offset + len(data) == size``) finishes it.
        """

    def materialize(self, upload_id: str, target: Path) -> None:
        """Put the complete upload's bytes at ``target`` (a job's scratch input)."""

    def read(self, upload_id: str) -> bytes:
        """The bytes received so far (tests and small files only)."""

    def delete(self, upload_id: str) -> None:
        """Remove every byte of the upload; no error if it is already gone."""

    def exists(self, upload_id: str) -> bool:
        """Whether any of the upload's bytes are still stored."""


class LocalUploadStorage:
    """One file per upload under ``root``, written in place at each offset."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalUploadStorage({str(self.root)!r})"

    def path(self, upload_id: str) -> Path:
        candidate = (self.root / upload_id).resolve()
        if candidate.parent != self.root.resolve():
            raise ValueError(f"invalid upload id {upload_id!r}")
        return candidate

    def create(self, upload_id: str, size: int) -> None:
        private_dir(self.root)
        fd = os.open(self.path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)

    def write(self, upload_id: str, size: int, offset: int, data: bytes) -> None:
        with open(self.path(upload_id), "r+b") as file:
            file.seek(offset)
            file.write(data)

    def materialize(self, upload_id: str, target: Path) -> None:
        # A hard link costs nothing and survives the scratch's deletion; the upload
        # stays for a retry of the job (a lost runner) until the job ends.
        source = self.path(upload_id)
        target.unlink(missing_ok=True)
        try:
            os.link(source, target)
        except OSError:  # another filesystem
            shutil.copyfile(source, target)

    def read(self, upload_id: str) -> bytes:
        return self.path(upload_id).read_bytes()

    def delete(self, upload_id: str) -> None:
        self.path(upload_id).unlink(missing_ok=True)

    def exists(self, upload_id: str) -> bool:
        return self.path(upload_id).is_file()


class S3UploadStorage:
    """Uploads as S3 multipart uploads, one part per :data:`S3_PART_BYTES` of the file."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        endpoint_url: str | None,
        region: str | None,
        part_bytes: int = S3_PART_BYTES,
    ) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_bytes = part_bytes
        self._s3: Any = boto3.client("s3", endpoint_url=endpoint_url, region_name=region)

    def __repr__(self) -> str:
        return f"S3UploadStorage(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def key(self, upload_id: str) -> str:
        return f"{self.prefix}/{upload_id}" if self.prefix else upload_id

    def _multipart_id(self, upload_id: str) -> str | None:
        """The open multipart upload of ``upload_id``, found by its key (so no replica
        needs to be told it)."""
        listing = self._s3.list_multipart_uploads(Bucket=self.bucket, Prefix=self.key(upload_id))
        for entry in listing.get("Uploads", []):
            if entry["Key"] == self.key(upload_id):
                return str(entry["UploadId"])
        return None

    def create(self, upload_id: str, size: int) -> None:
        self._s3.create_multipart_upload(Bucket=self.bucket, Key=self.key(upload_id))

    def _tail_key(self, upload_id: str, end: int) -> str:
        # Named by the offset it ends at: a write at ``offset`` reads only the tail that
        # ends there, so a stale request's tail (ending elsewhere) is never picked up,
        # and one that reads a tail since consumed finds it gone and is refused.
        return f"{self.key(upload_id)}.tail.{end}"

    def _tail(self, upload_id: str, end: int) -> bytes:
        from botocore.exceptions import ClientError

        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=self._tail_key(upload_id, end))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                return b""
            raise
        return bytes(response["Body"].read())

    def write(self, upload_id: str, size: int, offset: int, data: bytes) -> None:
        multipart = self._multipart_id(upload_id)
        if multipart is None:
            raise FileNotFoundError(f"no open multipart upload for {upload_id}")
        start = offset - offset % self.part_bytes  # where the unfinished part begins
        tail = self._tail(upload_id, offset) if offset > start else b""
        if len(tail) != offset - start:
            raise UploadOutOfStep(f"upload {upload_id}: no stored tail ends at {offset}")
        pending = tail + data
        end = offset + len(data)
        while pending and (len(pending) >= self.part_bytes or start + len(pending) == size):
            body, pending = pending[: self.part_bytes], pending[self.part_bytes :]
            self._s3.upload_part(
                Bucket=self.bucket,
                Key=self.key(upload_id),
                UploadId=multipart,
                PartNumber=start // self.part_bytes + 1,
                Body=body,
            )
            start += len(body)
        if pending:
            self._s3.put_object(
                Bucket=self.bucket, Key=self._tail_key(upload_id, end), Body=pending
            )
        if tail:
            self._s3.delete_object(Bucket=self.bucket, Key=self._tail_key(upload_id, offset))
        if end == size:
            parts = self._s3.list_parts(
                Bucket=self.bucket, Key=self.key(upload_id), UploadId=multipart
            ).get("Parts", [])
            self._s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key(upload_id),
                UploadId=multipart,
                MultipartUpload={
                    "Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]
                },
            )

    def materialize(self, upload_id: str, target: Path) -> None:
        self._s3.download_file(self.bucket, self.key(upload_id), str(target))

    def read(self, upload_id: str) -> bytes:
        return bytes(
            self._s3.get_object(Bucket=self.bucket, Key=self.key(upload_id))["Body"].read()
        )

    def delete(self, upload_id: str) -> None:
        multipart = self._multipart_id(upload_id)
        if multipart is not None:
            self._s3.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key(upload_id), UploadId=multipart
            )
        self._s3.delete_object(Bucket=self.bucket, Key=self.key(upload_id))
        tails = self._s3.list_objects_v2(Bucket=self.bucket, Prefix=self.key(upload_id) + ".tail.")
        for entry in tails.get("Contents", []):
            self._s3.delete_object(Bucket=self.bucket, Key=entry["Key"])

    def exists(self, upload_id: str) -> bool:
        if self._multipart_id(upload_id) is not None:
            return True
        listing = self._s3.list_objects_v2(Bucket=self.bucket, Prefix=self.key(upload_id))
        return bool(listing.get("KeyCount"))


def open_upload_storage(settings: Settings) -> UploadStorage:
    """S3 when ``s3_bucket`` is set, else ``<data_dir>/uploads``."""
    if settings.s3_bucket:
        return S3UploadStorage(
            settings.s3_bucket,
            settings.s3_uploads_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
        )
    return LocalUploadStorage(settings.uploads_dir)
