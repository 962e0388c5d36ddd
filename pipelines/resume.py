"""Finished segments that outlive a crashed runner, so a re-claimed job resumes.

Each encoded chunk is saved under ``<plan digest>/<index>_<out_start>.mp4`` in the
job's :class:`SegmentStore` as soon as it arrives.  A later run of the same job with
the same plan (same input, chain, encoder and chunking: the digest) reuses every
saved segment and processes only the chunks that are missing; segments saved under
another digest are deleted, never reused.  The service deletes the store's contents
when the job ends, however it ends (zero retention).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import asdict, fields, is_dataclass
from fractions import Fraction
from pathlib import Path
from typing import Protocol

from pipelines.job_plan import JobPlan

__all__ = ["LocalSegments", "SavedSegment", "SegmentStore", "plan_digest", "saved_segments"]

_NAME = re.compile(r"^(?P<digest>[0-9a-f]{16})/(?P<index>\d{5})_(?P<out_start>\d+)\.mp4$")


class SegmentStore(Protocol):
    """One job's saved segments, by name (``<digest>/<index>_<out_start>.mp4``)."""

    def names(self) -> list[str]: ...

    def put(self, name: str, data: bytes) -> None:
        """Save atomically: a crash mid-write must never leave a segment to reuse."""

    def fetch(self, name: str, scratch: Path) -> Path:
        """A local file with the segment's bytes (the store's own file, or a copy in
        ``scratch``)."""

    def delete(self, name: str) -> None: ...

    def clear(self) -> None:
        """Delete every segment of the job; no error if there are none."""


class LocalSegments:
    """Segments in a directory of this machine (the service's data dir)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __repr__(self) -> str:
        return f"LocalSegments({str(self.root)!r})"

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.glob("*/*.mp4"))

    def put(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_name(f".{path.name}.partial")
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, path)

    def fetch(self, name: str, scratch: Path) -> Path:
        return self.root / name

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _input_fingerprint(path: str) -> str:
    """Size and the first and last MiB: a re-fetched input that changed under the
    same URL is told apart without reading all of a two-hour film."""
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        digest.update(f.read(2**20))
        f.seek(max(0, size - 2**20))
        digest.update(f.read(2**20))
    return f"{size}:{digest.hexdigest()}"


def plan_digest(plan: JobPlan) -> str:
    """16 hex digits naming everything that decides a segment's bytes: the input (its
    fingerprint and geometry), the chain, the encoder and the chunking."""
    info = plan.info
    # Canonical JSON of values, not repr: a renamed enum member or class must not
    # change the digest of the same plan (a re-claimed job would start from frame 0).
    described = json.dumps(
        (
            _input_fingerprint(str(info.path)),
            [asdict(chunk) for chunk in plan.chunks],
            plan.chain,
            plan.encoder,
            plan.threads,  # the encoder's threads change its bytes
            plan.layout,
            plan.upscale_factor,
            plan.width,
            plan.height,
            str(plan.fps),
            str(plan.ratio),
            plan.frame_count,
            info.width,
            info.height,
            str(info.fps),
            info.frame_count,
            info.rotation,
            info.colour,
        ),
        sort_keys=True,
        default=_plain,
    )
    return hashlib.sha256(described.encode()).hexdigest()[:16]


def _plain(value: object) -> object:
    """JSON for what ``plan_digest`` names: dataclasses by field, mappings, fractions."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, Fraction | Path):
        return str(value)
    raise TypeError(f"plan_digest can't describe {type(value).__name__}")


class SavedSegment:
    __slots__ = ("index", "name", "out_start")

    def __init__(self, name: str, index: int, out_start: int) -> None:
        self.name, self.index, self.out_start = name, index, out_start


def segment_name(digest: str, index: int, out_start: int) -> str:
    return f"{digest}/{index:05d}_{out_start}.mp4"


def saved_segments(store: SegmentStore, digest: str) -> dict[int, SavedSegment]:
    """The segments saved for this plan, by chunk index; others' are deleted."""
    saved: dict[int, SavedSegment] = {}
    for name in store.names():
        match = _NAME.match(name)
        if match is None or match["digest"] != digest:
            store.delete(name)  # another plan's (or a stray file): never reused
            continue
        saved[int(match["index"])] = SavedSegment(
            name, int(match["index"]), int(match["out_start"])
        )
    return saved
