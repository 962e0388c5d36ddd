"""The ``retroiva`` console command."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from tqdm import tqdm

from pipelines.errors import PipelineError
from pipelines.job_plan import EnhanceRequest
from pipelines.presets import ENGINES, PRESETS
from pipelines.progress import Progress
from serve_app.access.keys import new_api_key, rotate_webhook_secret
from serve_app.jobs.records import ApiKeyRecord, JobRecord
from serve_app.jobs.store import AmbiguousKey, JobStore
from serve_app.settings import Settings
from vocabulary import Backend, Engine, JobStatus, OperatorKind, PresetName

T = TypeVar("T")

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Retroiva: denoise, upscale and interpolate videos on Ray.",
)


def _quiet_ray_logs() -> None:
    for name in ("ray", "ray.data", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)


@app.command()
def enhance(
    source: Annotated[
        Path, typer.Argument(help="Input video file.", exists=True, dir_okay=False, readable=True)
    ],
    output: Annotated[Path, typer.Argument(help="Output file: .mp4 (default), .mov or .mkv.")],
    preset: Annotated[str, typer.Option(help=f"One of: {', '.join(PRESETS)}.")] = "general",
    upscale_factor: Annotated[
        int | None, typer.Option("--upscale-factor", min=1, max=4, help="1–4; default per preset.")
    ] = None,
    fps: Annotated[
        float | None, typer.Option(help="Output frame rate, e.g. 60 (interpolates).")
    ] = None,
    interpolate: Annotated[
        int | None, typer.Option(help="Multiply the frame rate by 2 or 4.")
    ] = None,
    codec: Annotated[str | None, typer.Option(help="h264 (default) or hevc.")] = None,
    chunk_frames: Annotated[
        int | None, typer.Option(help="Maximum frames per chunk (default: from the memory budget).")
    ] = None,
    engine: Annotated[
        str, typer.Option(help="neural (pretrained models where installed) or classical.")
    ] = Engine.NEURAL,
) -> None:
    """Enhance SOURCE into OUTPUT, showing progress with fps and ETA."""
    # Every argument is checked before Ray starts (seconds on a small machine):
    # enhance_video itself probes the input before it starts Ray.
    from pipelines.assemble import output_format
    from pipelines.enhance import PipelineConfig, enhance_video

    if preset not in PRESETS:
        raise typer.BadParameter(
            f"preset must be one of {', '.join(PRESETS)}, got {preset!r}", param_hint="--preset"
        )
    if engine not in ENGINES:
        raise typer.BadParameter(f"one of {', '.join(ENGINES)}", param_hint="--engine")
    if codec not in (None, "h264", "hevc"):
        raise typer.BadParameter("h264 or hevc", param_hint="--codec")
    if interpolate not in (None, 1, 2, 4):
        raise typer.BadParameter("1, 2 or 4", param_hint="--interpolate")
    try:
        output_format(output)
    except PipelineError as exc:
        raise typer.BadParameter(str(exc), param_hint="OUTPUT") from None
    _quiet_ray_logs()
    request = EnhanceRequest(
        preset=preset,
        upscale_factor=upscale_factor,
        interpolate=interpolate,
        target_fps=Fraction(fps).limit_denominator(1001) if fps is not None else None,
        codec=codec,
        engine=engine,
    )
    bar = tqdm(total=None, unit="frame", desc="enhancing", dynamic_ncols=True)

    def show(progress: Progress) -> None:
        bar.total = progress.frames_total
        bar.n = progress.frames_done
        bar.set_description(progress.phase)
        bar.set_postfix(
            fps=f"{progress.fps:.1f}",
            eta=f"{progress.eta_seconds:.0f}s" if progress.eta_seconds else "-",
        )
        bar.refresh()

    # The same model runtime and cache as the service (RETROIVA_MODEL_RUNTIME, …).
    settings = Settings()
    config = PipelineConfig(
        max_chunk_frames=chunk_frames,
        model_runtime=settings.model_runtime,
        model_cache=settings.model_cache,
    )
    try:
        result = enhance_video(source, output, request, config, on_progress=show)
    except PipelineError as exc:
        bar.close()
        typer.echo(f"error ({exc.type}): {exc}", err=True)
        raise typer.Exit(code=2) from None
    bar.close()
    typer.echo(
        f"wrote {result.output}: {result.width}x{result.height} "
        f"@ {float(result.fps):.3f} fps, {result.frame_count} frames "
        f"in {result.seconds:.1f}s ({result.chunks} chunks)"
    )


@app.command()
def sample(
    output: Annotated[Path, typer.Argument(help="Where to write the clip (.mp4/.mkv).")],
    seconds: Annotated[float, typer.Option(min=0.1, max=600)] = 2.0,
    width: Annotated[int, typer.Option(min=16, max=3840)] = 320,
    height: Annotated[int, typer.Option(min=16, max=2160)] = 240,
) -> None:
    """Write a synthetic test clip (moving pattern, grain, sine-tone audio)."""
    from pipelines.sample_video import SampleSpec, write_sample_video

    output.parent.mkdir(parents=True, exist_ok=True)
    write_sample_video(output, SampleSpec(width=width, height=height, seconds=seconds, grain=6.0))
    typer.echo(f"wrote {output}")


@app.command()
def demo(
    directory: Annotated[Path, typer.Option(help="Where to write the sample and result.")] = Path(
        "out"
    ),
) -> None:
    """Generate a sample clip and enhance it: a smoke test of the whole pipeline."""
    from pipelines.sample_video import SampleSpec, write_sample_video

    directory.mkdir(parents=True, exist_ok=True)
    sample = write_sample_video(
        directory / "sample.mp4", SampleSpec(width=320, height=240, seconds=2, grain=8.0)
    )
    typer.echo(f"generated {sample}")
    enhance(
        sample,
        directory / "sample_enhanced.mp4",
        preset=PresetName.GENERAL,
        upscale_factor=2,
        fps=None,
        interpolate=2,
        codec=None,
        chunk_frames=None,
    )


@app.command()
def submit(
    source: Annotated[
        str,
        typer.Argument(
            metavar="FILE_OR_URL",
            help="A local video file (uploaded, resumably) or an "
            "http(s) URL the service can fetch.",
        ),
    ],
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the job to end, showing its progress.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Download the result here (implies --wait)."),
    ] = None,
    preset: Annotated[str | None, typer.Option(help=f"One of: {', '.join(PRESETS)}.")] = None,
    upscale_factor: Annotated[
        int | None, typer.Option("--upscale-factor", min=1, max=4, help="1–4; default per preset.")
    ] = None,
    engine: Annotated[str | None, typer.Option(help="neural or classical.")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Receives job.* events.")] = None,
    cancel_after: Annotated[
        int | None, typer.Option(min=1, help="The service cancels the job after this many seconds.")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="With --wait: give up waiting after this many seconds.")
    ] = None,
    base_url: Annotated[
        str, typer.Option(envvar="RETROIVA_BASE_URL", help="The service.")
    ] = "http://127.0.0.1:8000",
) -> None:
    """Enhance FILE_OR_URL on a (remote) service through the Python client.

    The API key comes from RETROIVA_API_KEY, not an argument that others could see in ps.
    """
    import os

    from retroiva_client import Client, RetroivaError

    api_key = os.environ.get("RETROIVA_API_KEY")
    if not api_key:
        typer.echo("error: set RETROIVA_API_KEY to your API key (sk_live_…)", err=True)
        raise typer.Exit(code=2)
    is_url = source.startswith(("http://", "https://"))
    if not is_url and not Path(source).is_file():
        raise typer.BadParameter(
            f"{source} is neither an http(s) URL nor a file", param_hint="FILE_OR_URL"
        )
    options: dict[str, Any] = {
        "preset": preset,
        "upscale_factor": upscale_factor,
        "engine": engine,
        "webhook_url": webhook_url,
        "cancel_after": cancel_after,
    }
    try:
        with Client(api_key, base_url) as client:
            if is_url:
                job = client.enhance(source, **options)
            else:
                size = Path(source).stat().st_size
                with tqdm(
                    total=size, unit="B", unit_scale=True, desc="uploading", dynamic_ncols=True
                ) as bar:
                    upload = client.upload_file(
                        source, on_progress=lambda sent, total: bar.update(sent - bar.n)
                    )
                job = client.enhance(upload_id=upload.id, **options)
            typer.echo(f"{job.id}: {job.status}")
            if not (wait or output):
                return
            with tqdm(
                total=100,
                unit="%",
                desc=job.status,
                dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}",
            ) as bar:

                def show(current: object) -> None:
                    bar.n = round(job.progress * 100)
                    bar.set_description(job.phase or job.status)
                    bar.set_postfix_str(f"eta {job.eta_seconds}s" if job.eta_seconds else "")
                    bar.refresh()

                job.wait(timeout=timeout, on_progress=show)
            if job.status != JobStatus.COMPLETED:
                error = f" ({job.error.type}: {job.error.message})" if job.error else ""
                typer.echo(f"{job.id}: {job.status}{error}", err=True)
                raise typer.Exit(code=1)
            if output is None:
                typer.echo(f"{job.id}: completed; download: {job.output_url}")
                return
            job.download(output)
    except RetroivaError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    typer.echo(f"{job.id}: completed; wrote {output}")


keys_app = typer.Typer(no_args_is_help=True, help="Manage API keys (reads the store directly).")
app.add_typer(keys_app, name="keys")
jobs_app = typer.Typer(
    no_args_is_help=True, help="Inspect and cancel any key's jobs (reads the store directly)."
)
app.add_typer(jobs_app, name="jobs")
models_app = typer.Typer(no_args_is_help=True, help="Pretrained models this install knows.")
batches_app = typer.Typer(
    no_args_is_help=True, help="Archive batches run on this node: list, show, cancel."
)
app.add_typer(batches_app, name="batches")
app.add_typer(models_app, name="models")


def _describe_store(settings: Settings) -> str:
    if settings.mongodb_uri:
        return f"MongoDB database {settings.mongodb_database!r} (RETROIVA_MONGODB_URI)"
    return f"SQLite {settings.sqlite_path.resolve()}"


def _store_call(
    fn: Callable[[JobStore], Awaitable[T]],
    *,
    create: bool = False,
    settings: Settings | None = None,
    quiet: bool = False,
) -> T:
    """Run ``fn`` on the store the service uses with these settings.

    Operator commands read the store where the service keeps it (the same settings,
    so the same default data directory from any working directory), say which one
    on stderr, and refuse to create an empty one unless ``create``.
    """
    from serve_app.jobs.store import open_store

    settings = settings or Settings()
    if not quiet:
        typer.echo(f"store: {_describe_store(settings)}", err=True)
    if not create and not settings.mongodb_uri and not settings.sqlite_path.exists():
        typer.echo(
            f"error: no store at {settings.sqlite_path.resolve()}: start the service "
            "with `retroiva serve` first, or set RETROIVA_DATA_DIR to the service's "
            "data directory",
            err=True,
        )
        raise typer.Exit(code=1)

    async def run() -> T:
        store = open_store(settings)
        await store.init()
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _parse_rate(rate: str | None) -> int | None:
    if rate is None:
        return None
    count, _, unit = rate.partition("/")
    if not count.isdigit() or int(count) < 1 or unit not in ("", "min"):
        raise typer.BadParameter("use N/min, e.g. 60/min", param_hint="--rate-limit")
    return int(count)


async def _create_key(
    store: JobStore,
    name: str,
    rate_limit: int,
    max_queued: int | None = None,
    max_running: int | None = None,
) -> tuple[str, ApiKeyRecord]:
    key, record = new_api_key(name, rate_limit)
    record = dataclasses.replace(record, max_queued=max_queued, max_running=max_running)
    await store.add_key(record)
    return key, record


def _limits(record: ApiKeyRecord) -> str:
    queued = record.max_queued or "default"
    running = record.max_running or "default"
    return f"max queued {queued}, max running {running}"


def _announce_key(key: str, record: ApiKeyRecord) -> None:
    typer.echo(
        f"API key ({record.name}, {record.rate_limit} requests/min, {_limits(record)}): {key}"
    )
    typer.echo(f"webhook secret: {record.webhook_secret}")
    typer.echo("Both are shown once; only a digest of the key is stored.")


_MAX_QUEUED_HELP = "Queued jobs this key may have (default: RETROIVA_MAX_QUEUED_PER_KEY)."
_MAX_RUNNING_HELP = "Jobs of this key processing at once (default: RETROIVA_MAX_RUNNING_PER_KEY)."
_KEY_REF_HELP = "Key id, or a prefix of the id or of the key that matches one key only."


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key.")],
    rate_limit: Annotated[
        str | None, typer.Option("--rate-limit", help="Requests per minute, e.g. 60/min.")
    ] = None,
    max_queued: Annotated[int | None, typer.Option(min=1, help=_MAX_QUEUED_HELP)] = None,
    max_running: Annotated[int | None, typer.Option(min=1, help=_MAX_RUNNING_HELP)] = None,
) -> None:
    """Create a key and print it and its webhook secret, once."""
    from serve_app.settings import Settings

    limit = _parse_rate(rate_limit) or Settings().default_rate_limit
    key, record = _store_call(
        lambda store: _create_key(store, name, limit, max_queued, max_running), create=True
    )
    _announce_key(key, record)


@keys_app.command("list")
def keys_list() -> None:
    """List keys: id, prefix, name, rate limit, queue limits, state."""
    keys = _store_call(lambda store: store.list_keys())
    if not keys:
        typer.echo("no keys")
        return
    typer.echo(f"{'ID':<24}  {'PREFIX':<16}  {'NAME':<16}  {'RATE':>9}  {'LIMITS':<24}  STATE")
    for key in keys:
        state = "revoked" if key.revoked_at else "active"
        typer.echo(
            f"{key.id:<24}  {key.prefix + '…':<16}  {key.name:<16}  "
            f"{str(key.rate_limit) + '/min':>9}  {_limits(key):<24}  {state}"
        )


def _refuse_ambiguous(exc: AmbiguousKey) -> typer.Exit:
    typer.echo(
        f"{exc.reference!r} matches {len(exc.candidates)} keys; nothing changed. "
        "Give one of these ids:",
        err=True,
    )
    for key in exc.candidates:
        state = "revoked" if key.revoked_at else "active"
        typer.echo(f"  {key.id}  {key.prefix}…  {key.name}  {state}", err=True)
    return typer.Exit(code=1)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help=_KEY_REF_HELP)]) -> None:
    """Revoke a key: its requests get 401 from now on."""
    try:
        revoked = _store_call(lambda store: store.revoke_key(key_id, time.time()))
    except AmbiguousKey as exc:
        raise _refuse_ambiguous(exc) from None
    if not revoked:
        typer.echo(f"no active key {key_id!r}", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"revoked {key_id}")


@keys_app.command("rotate-webhook-secret")
def keys_rotate_webhook_secret(key_id: Annotated[str, typer.Argument(help=_KEY_REF_HELP)]) -> None:
    """Give a key a new webhook secret and print it once; the previous one keeps
    signing for RETROIVA_WEBHOOK_SECRET_OVERLAP_SECONDS (the API's rotation, same code)."""
    settings = Settings()
    try:
        rotated = _store_call(
            lambda store: rotate_webhook_secret(
                store, key_id, time.time(), settings.webhook_secret_overlap_seconds
            ),
            settings=settings,
        )
    except AmbiguousKey as exc:
        raise _refuse_ambiguous(exc) from None
    if rotated is None:
        typer.echo(f"no key {key_id!r}", err=True)
        raise typer.Exit(code=1)
    secret, until = rotated
    typer.echo(f"new webhook secret for {key_id}: {secret}")
    typer.echo(
        f"the previous secret also signs deliveries (webhook-signature) until "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(until))}"
    )


@keys_app.command("set-limits")
def keys_set_limits(
    key_id: Annotated[str, typer.Argument(help=_KEY_REF_HELP)],
    max_queued: Annotated[int | None, typer.Option(min=1, help=_MAX_QUEUED_HELP)] = None,
    max_running: Annotated[int | None, typer.Option(min=1, help=_MAX_RUNNING_HELP)] = None,
) -> None:
    """Set (or, with neither option, clear) a key's own queued/running job limits."""

    async def update(store: JobStore) -> ApiKeyRecord | None:
        matches = await store.find_keys(key_id)
        if len(matches) > 1:
            raise AmbiguousKey(key_id, matches)
        if not matches:
            return None
        await store.set_key_limits(matches[0].id, max_queued, max_running)
        return await store.get_key(matches[0].id)

    try:
        record = _store_call(update)
    except AmbiguousKey as exc:
        raise _refuse_ambiguous(exc) from None
    if record is None:
        typer.echo(f"no key {key_id!r}", err=True)
        raise typer.Exit(code=1)
    typer.echo(f"{record.id}: {_limits(record)}")


_JOB_HEADER = (
    f"{'ID':<28}  {'STATUS':<10}  {'PROGRESS':>8}  {'PRESET':<9}  {'FACTOR':<6}  {'KEY':<24}  INPUT"
)


def _job_line(job: JobRecord) -> str:
    error = f"  {job.error_type}: {job.error_message}" if job.error_type else ""
    return (
        f"{job.id:<28}  {job.status:<10}  {job.progress:8.1%}  {job.preset:<9}  "
        f"{'x' + str(job.upscale_factor):<6}  {job.key_id:<24}  {job.input_url}{error}"
    )


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


@jobs_app.command("list")
def jobs_list(
    key_id: Annotated[str | None, typer.Option("--key", help="Only this key's jobs.")] = None,
    status: Annotated[str | None, typer.Option(help="Only jobs in this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
) -> None:
    """Newest jobs first, across keys unless --key is given."""
    if status is not None and status not in set(JobStatus):
        raise typer.BadParameter(f"one of {', '.join(JobStatus)}", param_hint="--status")
    jobs = _store_call(lambda store: store.recent_jobs(limit, key_id, status))
    if not jobs:
        typer.echo("no jobs")
        return
    typer.echo(_JOB_HEADER)
    for job in jobs:
        typer.echo(_job_line(job))


@jobs_app.command("show")
def jobs_show(job_id: Annotated[str, typer.Argument()]) -> None:
    """Every stored field of one job (webhook body excluded)."""
    job = _store_call(lambda store: store.get_job(job_id))
    if job is None:
        typer.echo(f"no job {job_id!r}", err=True)
        raise typer.Exit(code=1)
    for name, value in dataclasses.asdict(job).items():
        if name == "webhook_body":
            continue
        if name.endswith("_at") and isinstance(value, float):
            value = _iso(value)  # created_at, started_at, lease_expires_at, …
        typer.echo(f"{name:>18}: {value}")


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[str, typer.Argument()]) -> None:
    """Cancel a job as its owner could: queued at once, processing within seconds."""
    job = _store_call(lambda store: store.request_cancel(job_id, time.time()))
    if job is None:
        typer.echo(f"no job {job_id!r}", err=True)
        raise typer.Exit(code=1)
    state = "cancel requested" if job.status == JobStatus.PROCESSING else str(job.status)
    typer.echo(f"{job.id}: {state}")


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def batch(ctx: typer.Context) -> None:
    """Run an archive batch: MANIFEST [--preset P] [--upscale-factor N]
    [--api-key-file FILE] [--results FILE] (`retroiva batch --help` for more).

    The entrypoint for `ray job submit`: this script names the venv's interpreter
    itself, so it runs the project's Python however Ray was started.
    """
    from serve_app.jobs.batch import main as batch_main

    raise typer.Exit(code=batch_main(ctx.args))


def _batch_line(batch: dict[str, Any]) -> str:
    created = batch["created_at"]
    when = _iso(created) if isinstance(created, float | int) else "-"
    summary = ", ".join(f"{n} {status}" for status, n in sorted(batch["counts"].items()))
    outcome = batch["outcome"]
    return f"{batch['id']:<34}  {when:<25}  {outcome:<9}  {len(batch['rows']):>4}  {summary}"


def _ledger(batch_id: str) -> dict[str, object]:
    from serve_app.jobs.batch_queue import batch_ledger

    settings = Settings()
    ledger = batch_ledger(settings, batch_id)
    if ledger is None:
        typer.echo(
            f"no batch {batch_id!r} in {settings.data_dir / 'batches'} (ledgers "
            "are kept on the node that ran the batch: the head node)",
            err=True,
        )
        raise typer.Exit(code=1)
    return ledger


@batches_app.command("list")
def batches_list() -> None:
    """Batches run on this node, newest first: each one's outcome (running, completed,
    partial, failed, canceled) and its rows' statuses as the store has them now."""
    from serve_app.jobs.batch_queue import batch_view, list_batches

    ledgers = list_batches(Settings())
    if not ledgers:
        typer.echo("no batches")
        return

    async def views(store: JobStore) -> list[dict[str, Any]]:
        return [await batch_view(store, ledger) for ledger in ledgers]

    typer.echo(f"{'BATCH':<34}  {'CREATED':<25}  {'OUTCOME':<9}  {'ROWS':>4}  STATUSES")
    for batch in _store_call(views):
        typer.echo(_batch_line(batch))


def _batch_jobs(ledger: dict[str, object]) -> list[str]:
    rows = ledger.get("rows") or []
    assert isinstance(rows, list)
    return [row["job_id"] for row in rows if row.get("job_id")]


@batches_app.command("show")
def batches_show(batch_id: Annotated[str, typer.Argument()]) -> None:
    """The batch's jobs as the store has them now."""
    ledger = _ledger(batch_id)
    ids = _batch_jobs(ledger)

    async def fetch(store: JobStore) -> list[JobRecord | None]:
        return [await store.get_job(job_id) for job_id in ids]

    jobs = _store_call(fetch)
    typer.echo(_JOB_HEADER)
    for job in jobs:
        if job is not None:
            typer.echo(_job_line(job))
    rows = ledger.get("rows") or []
    assert isinstance(rows, list)
    for row in rows:
        if not row.get("job_id"):
            typer.echo(f"line {row['line']}: {row['status']} (no job)  {row['video_url']}")


@batches_app.command("cancel")
def batches_cancel(batch_id: Annotated[str, typer.Argument()]) -> None:
    """Cancel every job of the batch that has not ended (`ray job stop` stops only the
    batch's driver: its jobs go on in the service)."""
    ids = _batch_jobs(_ledger(batch_id))

    async def cancel(store: JobStore) -> list[JobRecord | None]:
        return [await store.request_cancel(job_id, time.time()) for job_id in ids]

    for job_id, job in zip(ids, _store_call(cancel), strict=True):
        if job is None:
            typer.echo(f"{job_id}: not found")
        else:
            state = "cancel requested" if job.status == JobStatus.PROCESSING else str(job.status)
            typer.echo(f"{job.id}: {state}")


@models_app.command("list")
def models_list() -> None:
    """Every registered model: family, scale, noise level, use, source, license."""
    from models.registry import unavailable_reason
    from models.rife import RIFE_MODEL
    from models.sr_models import SR_MODELS

    def installed(kind: str, backend: str, **params: str) -> str:
        return "no" if unavailable_reason(kind, backend, params) else "yes"

    used_by = _models_by_preset()
    rife = RIFE_MODEL

    def presets(name: str) -> str:
        return ",".join(used_by.get(name, [])) or "-"

    typer.echo(
        f"{'name':26s} {'family':32s} {'scale':5s} {'noise':5s} {'use':11s} "
        f"{'installed':9s} {'presets':26s} source / license"
    )
    for m in SR_MODELS.values():
        typer.echo(
            f"{m.name:26s} {m.family:32s} x{m.scale:<4d} "
            f"{'σ' if m.noise_map else '-' if m.noise is None else m.noise:<5} {m.use:11s} "
            f"{installed(OperatorKind.UPSCALE, Backend.NCNN, model=m.name):9s} "
            f"{presets(m.name):26s} "
            f"{m.package} {m.version}: {m.param} / {m.license}"
        )
    typer.echo(
        f"{rife.name:26s} {rife.architecture:32s} {'-':5s} {'-':5s} "
        f"{'any':11s} {installed(OperatorKind.INTERPOLATE, Backend.RIFE):9s} "
        f"{presets(_RIFE_ROW):26s} {rife.package} {rife.version}: {rife.file} / "
        f"{rife.license} (frame interpolation)"
    )
    typer.echo(
        "presets: the neural chains that use the model (for an upscale factor, or "
        "when interpolating); --engine classical uses none.\n"
        "noise: the level a model's weights remove; σ: told per job (SRMD, from the "
        "input's quantiser and noise)."
    )
    from models.runtime import ModelOptions, runtime_report

    settings = Settings()
    typer.echo(f"\nmodel runtime on this node (RETROIVA_MODEL_RUNTIME={settings.model_runtime}):")
    for line in runtime_report(ModelOptions(settings.model_runtime, settings.model_cache)):
        typer.echo(line)


_RIFE_ROW = "rife"


def _models_by_preset() -> dict[str, list[str]]:
    """Model name (RIFE as ``_RIFE_ROW``) → presets whose neural chain uses it."""
    used: dict[str, list[str]] = {}
    for preset in PRESETS.values():
        for spec in preset.neural:
            names = (
                [_RIFE_ROW]
                if spec.backend == Backend.RIFE
                else [spec.params["model"]]
                if "model" in spec.params
                else list(dict.fromkeys(spec.params.get("models", {}).values()))
            )
            if "noisy_model" in spec.params:
                names.append(spec.params["noisy_model"])
            for name in names:
                used.setdefault(name, []).append(preset.name)
    return used


class _Stop(Exception):
    """SIGTERM, raised in the main thread so that serve stops like on Ctrl-C."""


def _port_in_use(host: str, port: int) -> bool:
    """Whether something listens on ``host:port``.

    Ray Serve's proxy binds with SO_REUSEPORT, so a second service on the same port
    would start and split the traffic; a plain bind (without that option) fails then.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


@app.command()
def serve() -> None:
    """Run the API and the job runner on Ray Serve until interrupted.

    Settings come from RETROIVA_* environment variables.  On an empty store, a first
    API key is created and printed.  Ctrl-C or SIGTERM stops it (exit status 0);
    jobs in flight go back to the queue when their lease expires.
    """
    import ray
    from ray import serve as ray_serve
    from ray.serve.schema import LoggingConfig

    from serve_app.deployments import build_app

    _quiet_ray_logs()
    settings = Settings()
    if _port_in_use(settings.host, settings.port):
        typer.echo(
            f"error: {settings.host}:{settings.port} is already in use (another "
            "`retroiva serve`?); stop it or choose another port with RETROIVA_PORT",
            err=True,
        )
        raise typer.Exit(code=1)
    settings.data_dir.mkdir(parents=True, exist_ok=True)

    async def first_key(store: JobStore) -> tuple[str, ApiKeyRecord] | None:
        if await store.list_keys():
            return None
        return await _create_key(store, "default", settings.default_rate_limit)

    created = _store_call(first_key, create=True, settings=settings, quiet=True)
    from serve_app.dashboard.sessions import admin_token_path, load_admin_token

    admin_token, admin_created = load_admin_token(settings.admin_token, settings.data_dir)
    try:
        context = ray.init(
            include_dashboard=settings.dashboard,
            dashboard_host=settings.host,
            dashboard_port=settings.dashboard_port,
            logging_level=logging.WARNING,
            configure_logging=True,
        )
    except Exception as exc:  # Ray's start-up errors are plain Exceptions
        typer.echo(f"error: Ray could not start: {exc}", err=True)
        raise typer.Exit(code=1) from None
    # Replicas log one access line per request themselves (serve_app.api.app); Serve's own
    # request lines and INFO chatter go to its log files only.
    ray_serve.start(
        http_options={"host": settings.host, "port": settings.port},
        logging_config=LoggingConfig(log_level="WARNING", enable_access_log=False),
    )
    ray_serve.run(
        build_app(settings),
        name="retroiva",
        route_prefix="/",
        logging_config=LoggingConfig(log_level="WARNING", enable_access_log=False),
    )
    base = f"http://{settings.host}:{settings.port}"
    typer.echo(f"Retroiva API listening on {base}")
    typer.echo(f"store: {_describe_store(settings)}; data in {settings.data_dir.resolve()}")
    dashboard_url = getattr(context, "dashboard_url", None)
    if settings.dashboard and dashboard_url:
        typer.echo(f"Ray dashboard: http://{dashboard_url}")
    typer.echo(f"Web dashboard: {base}/dashboard/")
    if admin_created:
        typer.echo(
            f"Dashboard admin token (operator sign-in; kept in "
            f"{admin_token_path(settings.data_dir).resolve()}): {admin_token}"
        )
    elif not settings.admin_token:
        typer.echo(f"Dashboard admin token: in {admin_token_path(settings.data_dir).resolve()}")
    if created is not None:
        _announce_key(*created)
        typer.echo(f"Try: curl {base}/v2/jobs -H 'Authorization: Bearer {created[0]}'")
    else:
        typer.echo("Using the existing API keys; `retroiva keys create --name NAME` adds one.")

    def on_sigterm(signum: int, frame: object) -> None:
        raise _Stop

    # Installed after ray.init, whose own handler would print a stack trace instead.
    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        # Inside the try, so a signal sent the moment this line is read is handled.
        typer.echo("Stop with Ctrl-C (or SIGTERM).")
        while True:
            # Short sleeps: the kernel may deliver the signal to one of Ray's threads,
            # and then Python runs its handler only when this thread next wakes; a
            # sleep of an hour left a Ctrl-C unanswered (CI, test_serve_command).
            time.sleep(0.5)
    except (KeyboardInterrupt, _Stop) as exc:
        how = "SIGTERM" if isinstance(exc, _Stop) else "Ctrl-C"
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        typer.echo(f"{how}: shutting down (jobs in flight go back to the queue)")
        ray_serve.shutdown()
        ray.shutdown()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
