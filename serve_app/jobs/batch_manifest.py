"""Batch manifests: rows of video URLs (CSV or JSONL), each the specification of one job.

The manifest is CSV (a header row) or JSONL (one object per line) with a
``video_url`` per row and optional ``preset``, ``upscale_factor``, ``webhook_url``,
``engine`` and ``metadata`` (a JSON object; in CSV every other column is metadata too).
Metadata is not sent to the service: it is copied into the results manifest beside the
job's id, status, output URL and error.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from serve_app.errors import InvalidRequestError
from serve_app.jobs.job_spec import JobSpec
from vocabulary import Engine, PresetName

__all__ = ["ManifestError", "ManifestRow", "read_manifest", "row_problem"]

_ROW_FIELDS = ("video_url", "preset", "upscale_factor", "webhook_url", "engine", "metadata")
# Names as strings: a JSONL row may hold any JSON value (a list is not even hashable).
_PRESETS = [str(p) for p in PresetName]
_ENGINES = [str(e) for e in Engine]


class ManifestError(ValueError):
    """The manifest can't be used; nothing was submitted."""


@dataclass(frozen=True)
class ManifestRow:
    line: int  # 1-based line of the manifest (CSV: counting the header)
    video_url: str
    preset: PresetName | None = None
    upscale_factor: int | None = None
    webhook_url: str | None = None
    engine: Engine | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def with_defaults(self, preset: str | None, upscale_factor: int | None) -> ManifestRow:
        """The row as it is submitted: the command line's options fill its blanks."""
        return replace(
            self,
            preset=self.preset or (None if preset is None else PresetName(preset)),
            upscale_factor=self.upscale_factor or upscale_factor,
        )

    @property
    def idempotency_key(self) -> str:
        """Same row, same key, so a re-run finds its jobs instead of duplicating them.

        Taken from the row :meth:`with_defaults` returns, so a re-run with another
        ``--preset`` is a new job rather than a conflict with the old one.
        """
        content = {k: v for k, v in asdict(self).items() if k != "line"}
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
        return f"batch-{digest[:40]}"

    def spec(self) -> JobSpec:
        """The job this row asks for (:meth:`with_defaults` first), checked as the API
        checks a body: :class:`~serve_app.errors.InvalidRequestError` if it would refuse it."""
        return JobSpec(
            video_url=self.video_url,
            preset=self.preset or PresetName.GENERAL,
            upscale_factor=self.upscale_factor,
            engine=self.engine or Engine.NEURAL,
            webhook_url=self.webhook_url,
        )


def _row(line: int, raw: dict[str, Any]) -> ManifestRow:
    def fail(message: str) -> ManifestError:
        return ManifestError(f"line {line}: {message}")

    raw = {k.strip(): v for k, v in raw.items() if k is not None}
    url = raw.get("video_url")
    if not isinstance(url, str) or not url.strip():
        raise fail("video_url is required")
    preset = raw.get("preset") or None
    if preset is not None and preset not in _PRESETS:
        raise fail(f"preset must be one of {', '.join(_PRESETS)}, not {preset!r}")
    factor = raw.get("upscale_factor")
    if factor in (None, ""):
        factor = None
    else:
        try:
            factor = int(factor)
        except (TypeError, ValueError):
            raise fail(f"upscale_factor must be an integer, not {factor!r}") from None
        if not 1 <= factor <= 4:
            raise fail(f"upscale_factor must be 1–4, not {factor}")
    engine = raw.get("engine") or None
    if engine is not None and engine not in _ENGINES:
        raise fail(f"engine must be {' or '.join(_ENGINES)}, not {engine!r}")
    metadata = raw.get("metadata") or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            raise fail("metadata must be a JSON object") from None
    if not isinstance(metadata, dict):
        raise fail("metadata must be a JSON object")
    extra = {k: v for k, v in raw.items() if k not in _ROW_FIELDS and v not in (None, "")}
    return ManifestRow(
        line=line,
        video_url=url.strip(),
        preset=None if preset is None else PresetName(preset),
        upscale_factor=factor,
        webhook_url=raw.get("webhook_url") or None,
        engine=None if engine is None else Engine(engine),
        metadata={**extra, **metadata},
    )


def row_problem(row: ManifestRow) -> str | None:
    """Why the service would refuse this row whatever its state, or None.

    Checked for every row before anything is submitted, with the rules of the API's
    body (:class:`~serve_app.jobs.job_spec.JobSpec`); such a row is reported
    ``rejected`` and the others go on.
    """
    try:
        row.spec()
    except InvalidRequestError as exc:
        return exc.message
    return None


def read_manifest(path: Path) -> list[ManifestRow]:
    """Parse and check every row before anything is submitted."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path} is not UTF-8 text") from None
    rows: list[ManifestRow] = []
    if path.suffix.lower() == ".jsonl":
        for line, content in enumerate(text.splitlines(), start=1):
            if not content.strip():
                continue
            try:
                raw = json.loads(content)
            except ValueError:
                raise ManifestError(f"line {line}: not valid JSON") from None
            if not isinstance(raw, dict):
                raise ManifestError(f"line {line}: each line must be a JSON object")
            rows.append(_row(line, raw))
    elif path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if "video_url" not in [name.strip() for name in reader.fieldnames or ()]:
            raise ManifestError("the CSV header must name a video_url column")
        rows = [_row(reader.line_num, raw) for raw in reader]
    else:
        raise ManifestError(f"{path.name}: a manifest is .csv or .jsonl")
    if not rows:
        raise ManifestError(f"{path.name} has no rows")
    return rows
