"""Archive batches: one job per manifest row, followed to the end, results written back.

    ray job submit --working-dir . -- python -m pipelines.batch MANIFEST \\
        [--preset archive] [--upscale-factor 2] [--api-key sk_live_…] [--results FILE]

The manifest is CSV (a header row) or JSONL (one object per line) with a
``video_url`` per row and optional ``preset``, ``upscale_factor``, ``webhook_url``,
``engine`` and ``metadata`` (a JSON object; in CSV every other column is metadata too).  Metadata is
not sent to the service: it is copied into the results manifest beside the job's id,
status, output URL and error.

Jobs are created in the service's job store, not run here, so each one is listed,
cancellable and webhooked like a job posted to the API, and the service's runners do
the work.  This module knows nothing of the store: it talks to a :class:`JobQueue`,
which the installed service registers under the ``retroiva.job_queues`` entry point
(``serve_app.batch_queue``), keeping the import arrows one way (serve_app → pipelines).

Re-running a manifest creates no duplicate jobs: each row's idempotency key is a hash
of the row, so the service returns the job it already has (within its 24 h idempotency
window).  Exit status: 0 when every job completed, 1 when any was rejected, failed or
canceled, 2 for an unusable manifest or command line.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from pipelines.presets import ENGINES, PRESETS

__all__ = ["BatchResult", "JobQueue", "JobState", "ManifestError", "ManifestRow",
           "QueueRefused", "RowRejected", "main", "read_manifest", "run_batch", "write_results"]

ENTRY_POINT_GROUP = "retroiva.job_queues"
TERMINAL = frozenset({"completed", "failed", "canceled", "rejected"})
_ROW_FIELDS = ("video_url", "preset", "upscale_factor", "webhook_url", "engine", "metadata")


class ManifestError(ValueError):
    """The manifest can't be used; nothing was submitted."""


class QueueRefused(Exception):
    """The service refused the whole batch (an invalid or revoked API key)."""


class RowRejected(Exception):
    """The service refused one row (bad URL, key conflict); the others go on."""


@dataclass(frozen=True)
class ManifestRow:
    line: int  # 1-based line of the manifest (CSV: counting the header)
    video_url: str
    preset: str | None = None
    upscale_factor: int | None = None
    webhook_url: str | None = None
    engine: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def idempotency_key(self) -> str:
        """Same row, same key, so a re-run finds its jobs instead of duplicating them."""
        content = {k: v for k, v in asdict(self).items() if k != "line"}
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
        return f"batch-{digest[:40]}"


@dataclass(frozen=True)
class JobState:
    id: str
    status: str
    progress: float = 0.0
    output_url: str | None = None
    error_type: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class BatchResult:
    row: ManifestRow
    state: JobState


class JobQueue(Protocol):
    """What a batch needs from the service: create jobs and read them back."""

    async def open(self) -> None: ...

    async def submit(self, row: ManifestRow, preset: str | None,
                     upscale_factor: int | None) -> JobState:
        """Create (or find, by ``row.idempotency_key``) the row's job.

        Raises :class:`RowRejected` when the service refuses the row.
        """

    async def state(self, job_id: str) -> JobState: ...

    async def close(self) -> None: ...


def _row(line: int, raw: dict[str, Any]) -> ManifestRow:
    def fail(message: str) -> ManifestError:
        return ManifestError(f"line {line}: {message}")

    raw = {k.strip(): v for k, v in raw.items() if k is not None}
    url = raw.get("video_url")
    if not isinstance(url, str) or not url.strip():
        raise fail("video_url is required")
    preset = raw.get("preset") or None
    if preset is not None and preset not in PRESETS:
        raise fail(f"preset must be one of {', '.join(PRESETS)}, not {preset!r}")
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
    if engine is not None and engine not in ENGINES:
        raise fail(f"engine must be neural or classical, not {engine!r}")
    metadata = raw.get("metadata") or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            raise fail("metadata must be a JSON object") from None
    if not isinstance(metadata, dict):
        raise fail("metadata must be a JSON object")
    extra = {k: v for k, v in raw.items() if k not in _ROW_FIELDS and v not in (None, "")}
    return ManifestRow(line=line, video_url=url.strip(), preset=preset,
                       upscale_factor=factor, webhook_url=raw.get("webhook_url") or None,
                       engine=engine, metadata={**extra, **metadata})


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


async def run_batch(rows: Sequence[ManifestRow], queue: JobQueue, *,
                    preset: str | None = None, upscale_factor: int | None = None,
                    poll_seconds: float = 2.0, report_seconds: float = 10.0,
                    say: Callable[[str], None] = print) -> list[BatchResult]:
    """Submit every row, then follow the jobs until all have ended."""
    states: list[JobState] = []
    for row in rows:
        try:
            state = await queue.submit(row, preset, upscale_factor)
        except RowRejected as exc:
            state = JobState(id="", status="rejected", error_type="invalid_request",
                             error_message=str(exc))
        states.append(state)
        say(f"line {row.line}: {state.id or '-'} {state.status}"
            + (f" ({state.error_message})" if state.status == "rejected" else ""))
    next_report = time.monotonic() + report_seconds
    while any(s.status not in TERMINAL for s in states):
        await asyncio.sleep(poll_seconds)
        for i, state in enumerate(states):
            if state.status in TERMINAL:
                continue
            states[i] = await queue.state(state.id)
            if states[i].status != state.status:
                say(f"line {rows[i].line}: {state.id} {states[i].status}"
                    + (f" ({states[i].error_message})" if states[i].error_message else ""))
        if time.monotonic() >= next_report:
            next_report = time.monotonic() + report_seconds
            say(_summary(states))
    say(_summary(states))
    return [BatchResult(row, state) for row, state in zip(rows, states, strict=True)]


def _summary(states: Sequence[JobState]) -> str:
    counts: dict[str, int] = {}
    for state in states:
        counts[state.status] = counts.get(state.status, 0) + 1
    done = sum(s.progress if s.status not in TERMINAL else 1.0 for s in states)
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"progress {100 * done / len(states):.0f}%: {parts}"


RESULT_COLUMNS = ("line", "video_url", "id", "status", "output_url", "error_type",
                  "error_message", "metadata")


def _result_record(result: BatchResult) -> dict[str, Any]:
    state = result.state
    return {"line": result.row.line, "video_url": result.row.video_url, "id": state.id,
            "status": state.status, "output_url": state.output_url,
            "error_type": state.error_type, "error_message": state.error_message,
            "metadata": result.row.metadata}


def write_results(results: Sequence[BatchResult], path: Path) -> None:
    """The results manifest: CSV (metadata as JSON text) or JSONL, by ``path``'s suffix."""
    records = [_result_record(r) for r in results]
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8", newline="") as out:
        if path.suffix.lower() == ".jsonl":
            for record in records:
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            writer = csv.DictWriter(out, fieldnames=RESULT_COLUMNS)
            writer.writeheader()
            for record in records:
                writer.writerow({**record, "metadata": json.dumps(record["metadata"])})
    os.replace(partial, path)


def _default_results(manifest: Path) -> Path:
    return manifest.with_name(f"{manifest.stem}.results{manifest.suffix}")


def _load_queue(api_key: str) -> JobQueue:
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if "store" not in found:
        raise SystemExit("no job queue is installed: install retroiva itself "
                         "(pip install -e .), which registers one")
    factory = found["store"].load()
    return factory(api_key)  # type: ignore[no-any-return]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.batch",
        description="Create one Retroiva job per manifest row and follow them to the end.")
    parser.add_argument("manifest", type=Path, help="CSV or JSONL manifest of video URLs.")
    parser.add_argument("--preset", choices=list(PRESETS),
                        help="Preset for rows that name none (default: the service's).")
    parser.add_argument("--upscale-factor", type=int, choices=range(1, 5),
                        help="Factor for rows that name none (default: the preset's).")
    parser.add_argument("--api-key", default=os.environ.get("RETROIVA_API_KEY"),
                        help="Key that owns the jobs (default: $RETROIVA_API_KEY).")
    parser.add_argument("--results", type=Path,
                        help="Results manifest (default: MANIFEST.results.csv/.jsonl "
                             "beside the manifest); also printed at the end.")
    parser.add_argument("--poll-seconds", type=float, default=2.0)
    return parser


async def _run(args: argparse.Namespace, rows: list[ManifestRow]) -> list[BatchResult]:
    queue = _load_queue(args.api_key)
    await queue.open()
    try:
        return await run_batch(rows, queue, preset=args.preset,
                               upscale_factor=args.upscale_factor,
                               poll_seconds=args.poll_seconds)
    finally:
        await queue.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not args.api_key:
        print("error: an API key is required: --api-key or RETROIVA_API_KEY", file=sys.stderr)
        return 2
    try:
        rows = read_manifest(args.manifest)
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        results = asyncio.run(_run(args, rows))
    except QueueRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = args.results or _default_results(args.manifest)
    write_results(results, path)
    for result in results:
        print(json.dumps(_result_record(result), ensure_ascii=False))
    failed = sum(r.state.status != "completed" for r in results)
    print(f"{len(results) - failed} of {len(results)} completed; results in {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
