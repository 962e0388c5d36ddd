"""Archive batches: one job per manifest row, followed to the end, results written back.

    ray job submit --working-dir . -- ~/retroiva/.venv/bin/retroiva batch MANIFEST \\
        [--preset archive] [--upscale-factor 2] [--api-key-file FILE] [--results FILE]

(``python -m serve_app.jobs.batch`` is the same command where the venv's python is the
one on ``PATH``; the console script names its interpreter itself, so it works from a
Ray started without the venv on ``PATH``.)

The manifest (:mod:`serve_app.jobs.batch_manifest`) names a video per row; its
metadata is copied into the results manifest beside the job's id, status, output URL
and error.

Jobs are created in the service's job store (:mod:`serve_app.jobs.batch_queue`), not
run here, so each one is listed, cancellable and webhooked like a job posted to the
API, and the service's runners do the work.

Re-running a manifest creates no duplicate jobs: each row's idempotency key is a hash
of the row with the options in effect for it (``--preset``/``--upscale-factor`` filling
its blanks), so the service returns the job it already has (within its 24 h
idempotency window), and a re-run with other options makes new jobs.

Each batch has an id: the Ray job's submission id under ``ray job submit``, else a
new ``batch_…``; the queue records which jobs it made (``retroiva batches``).

Exit status: 0 when every job completed; 1 when the batch ran to its end but some row
was rejected or its job failed or was canceled (a partial success: the results file
is written and the last line says how many completed); 2 for an unusable manifest,
key or command line (nothing submitted); 3 when the batch itself broke off (the
results so far are written, with unfinished rows as they stood).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import secrets
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from serve_app.jobs.batch_manifest import ManifestError, ManifestRow, read_manifest, row_problem
from serve_app.jobs.batch_queue import (
    PENDING,
    REJECTED,
    TERMINAL,
    BatchResult,
    JobState,
    QueueRefused,
    RowRejected,
    StoreJobQueue,
)
from serve_app.settings import Settings
from vocabulary import ApiErrorType, JobStatus, PresetName

__all__ = ["batch_id", "main", "run_batch", "write_results"]


def batch_id(environ: Mapping[str, str] | None = None) -> str:
    """The Ray job's submission id when Ray runs us (what its dashboard and ``ray job``
    show), else a new id."""
    env = os.environ if environ is None else environ
    try:
        config = json.loads(env.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
        submission = config.get("metadata", {}).get("job_submission_id")
    except (ValueError, AttributeError):
        submission = None
    if isinstance(submission, str) and submission:
        return submission
    return f"batch_{time.strftime('%Y%m%d%H%M%S', time.gmtime())}_{secrets.token_hex(3)}"


async def run_batch(
    rows: Sequence[ManifestRow],
    queue: StoreJobQueue,
    *,
    preset: str | None = None,
    upscale_factor: int | None = None,
    poll_seconds: float = 2.0,
    report_seconds: float = 10.0,
    say: Callable[[str], None] = print,
    batch: str | None = None,
    manifest: str = "",
    sink: list[BatchResult] | None = None,
) -> list[BatchResult]:
    """Submit every row, then follow the jobs until all have ended.

    ``sink``, when given, always holds the results as they stand, so a batch that
    breaks off can still write what it had.
    """
    batch = batch or batch_id()
    rows = [row.with_defaults(preset, upscale_factor) for row in rows]
    # Rows the service would refuse anyway are settled before anything is submitted.
    states = [
        JobState(
            id="",
            status=REJECTED,
            error_type=ApiErrorType.INVALID_REQUEST,
            error_message=problem,
        )
        if (problem := row_problem(row))
        else JobState(id="", status=PENDING)
        for row in rows
    ]
    results = sink if sink is not None else []
    results[:] = [BatchResult(row, state) for row, state in zip(rows, states, strict=True)]

    async def keep(finished: bool) -> None:
        results[:] = [BatchResult(row, state) for row, state in zip(rows, states, strict=True)]
        await queue.record(batch, manifest, results, finished=finished)

    say(f"batch {batch}: {len(rows)} rows")
    for i, row in enumerate(rows):
        if states[i].status == PENDING:
            try:
                states[i] = await queue.submit(row)
            except RowRejected as exc:
                states[i] = JobState(
                    id="", status=REJECTED, error_type=exc.error_type, error_message=str(exc)
                )
        say(
            f"line {row.line}: {states[i].id or '-'} {states[i].status}"
            + (f" ({states[i].error_message})" if states[i].status == REJECTED else "")
        )
    await keep(finished=False)
    next_report = time.monotonic() + report_seconds
    while any(s.status not in TERMINAL for s in states):
        await asyncio.sleep(poll_seconds)
        for i, state in enumerate(states):
            if state.status in TERMINAL:
                continue
            states[i] = await queue.state(state.id)
            if states[i].status != state.status:
                say(
                    f"line {rows[i].line}: {state.id} {states[i].status}"
                    + (f" ({states[i].error_message})" if states[i].error_message else "")
                )
        if time.monotonic() >= next_report:
            next_report = time.monotonic() + report_seconds
            say(_summary(states))
    say(_summary(states))
    await keep(finished=True)
    return list(results)


def _summary(states: Sequence[JobState]) -> str:
    counts: dict[str, int] = {}
    for state in states:
        counts[state.status] = counts.get(state.status, 0) + 1
    done = sum(s.progress if s.status not in TERMINAL else 1.0 for s in states)
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"progress {100 * done / len(states):.0f}%: {parts}"


RESULT_COLUMNS = (
    "line",
    "video_url",
    "id",
    "status",
    "output_url",
    "error_type",
    "error_message",
    "metadata",
)


def _result_record(result: BatchResult) -> dict[str, Any]:
    state = result.state
    return {
        "line": result.row.line,
        "video_url": result.row.video_url,
        "id": state.id,
        "status": state.status,
        "output_url": state.output_url,
        "error_type": state.error_type,
        "error_message": state.error_message,
        "metadata": result.row.metadata,
    }


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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retroiva batch",
        description="Create one Retroiva job per manifest row and follow them to the end.",
    )
    parser.add_argument("manifest", type=Path, help="CSV or JSONL manifest of video URLs.")
    parser.add_argument(
        "--preset",
        choices=[str(p) for p in PresetName],
        help="Preset for rows that name none (default: the service's).",
    )
    parser.add_argument(
        "--upscale-factor",
        type=int,
        choices=range(1, 5),
        help="Factor for rows that name none (default: the preset's).",
    )
    parser.add_argument(
        "--api-key-file",
        type=Path,
        help="File holding the key that owns the jobs (default: "
        "$RETROIVA_API_KEY).  Never the key itself on the command "
        "line: Ray shows a job's command to everyone who can see Ray.",
    )
    # Only to refuse it with a reason: argparse would otherwise take a prefix of it.
    parser.add_argument("--api-key", help=argparse.SUPPRESS)
    parser.add_argument(
        "--results",
        type=Path,
        help="Results manifest (default: MANIFEST.results.csv/.jsonl "
        "beside the manifest); also printed at the end.",
    )
    parser.add_argument("--poll-seconds", type=float, default=2.0)
    return parser


def _api_key(args: argparse.Namespace) -> str:
    """The key from --api-key-file or $RETROIVA_API_KEY; raises ``ValueError`` why not."""
    if args.api_key is not None:
        raise ValueError(
            "--api-key would show the key to everyone who can see Ray's job "
            "list and logs; put it in a file (--api-key-file) or in "
            "RETROIVA_API_KEY in the service's environment"
        )
    if args.api_key_file is not None:
        try:
            key = args.api_key_file.expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(
                f"cannot read --api-key-file {args.api_key_file}: {exc.strerror}"
            ) from None
        if not key:
            raise ValueError(f"--api-key-file {args.api_key_file} is empty")
        return key
    key = os.environ.get("RETROIVA_API_KEY", "").strip()
    if not key:
        raise ValueError("an API key is required: --api-key-file FILE or RETROIVA_API_KEY")
    return key


def _check_results(path: Path) -> None:
    """Fail before submitting anything if the results can't be written where asked."""
    if path.is_dir():
        raise ValueError(f"--results {path} is a directory")
    if not path.parent.is_dir():
        raise ValueError(
            f"cannot write results to {path}: no directory {path.parent} "
            "(on the node running the batch)"
        )
    probe = path.with_name(path.name + ".partial")
    try:
        probe.open("a").close()
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"cannot write results to {path}: {exc.strerror}") from None


async def _run(
    args: argparse.Namespace, key: str, rows: list[ManifestRow], sink: list[BatchResult]
) -> list[BatchResult]:
    queue = StoreJobQueue(key, Settings())
    await queue.open()
    try:
        return await run_batch(
            rows,
            queue,
            preset=args.preset,
            upscale_factor=args.upscale_factor,
            poll_seconds=args.poll_seconds,
            batch=batch_id(),
            manifest=str(args.manifest),
            sink=sink,
        )
    finally:
        await queue.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        key = _api_key(args)
        rows = read_manifest(args.manifest)
        path = args.results or _default_results(args.manifest)
        _check_results(path)
    except (ManifestError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sink: list[BatchResult] = []
    try:
        results = asyncio.run(_run(args, key, rows, sink))
    except QueueRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (Exception, KeyboardInterrupt) as exc:  # the batch broke off: keep what it had
        if sink:
            write_results(sink, path)
        print(
            f"error: the batch broke off ({type(exc).__name__}: {exc}); the jobs it "
            f"created go on in the service; results so far in {path}",
            file=sys.stderr,
        )
        return 3
    write_results(results, path)
    for result in results:
        print(json.dumps(_result_record(result), ensure_ascii=False))
    failed = sum(r.state.status != JobStatus.COMPLETED for r in results)
    if failed:
        counts = _summary([r.state for r in results]).partition(": ")[2]
        print(
            f"partial: {len(results) - failed} of {len(results)} completed ({counts}); "
            f"results in {path}"
        )
    else:
        print(f"{len(results)} of {len(results)} completed; results in {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
