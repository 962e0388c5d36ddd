"""One job, one Ray Data streaming pipeline: the front door of :mod:`pipelines`.

    read chunks ─▶ decode (tasks, on the input's node) ─▶ operator stages (actor pools,
                one GPU each where present) ─▶ encode segment (tasks, on encode nodes
                where the cluster has them) ─▶ driver: segments in order ─▶ assemble

Each row is one chunk, and Ray Data's streaming executor keeps only a bounded number
of rows in flight, so memory grows with chunk size and concurrency, not video length.
The driver writes each encoded segment to scratch as it arrives and joins them at the
end.  Whatever happens, scratch is deleted and no partial output is left behind.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, cast

import ray
from ray.data import ActorPoolStrategy, DataContext, Dataset
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from models.registry import needs_gpu
from models.runtime import ModelOptions, ModelRuntime
from pipelines.assemble import Segment, assemble, output_format
from pipelines.errors import PipelineCanceled, PipelineError, ProcessingError
from pipelines.job_plan import EnhanceRequest, JobPlan, plan_job
from pipelines.noise_probe import measure_noise
from pipelines.presets import OperatorSpec
from pipelines.probe import probe
from pipelines.progress import CancelToken, ProgressCallback, ProgressMeter, StageTally
from pipelines.resume import SegmentStore, plan_digest, saved_segments, segment_name
from pipelines.stages import (
    CancelSignal,
    OperatorStage,
    chunk_stage,
    decode_stage,
    encode_stage,
    operator_stage,
)
from vocabulary import Backend, OperatorKind, Phase

__all__ = [
    "EnhanceResult",
    "PipelineConfig",
    "Placement",
    "Watchdog",
    "build_dataset",
    "decode_placement",
    "end_stale_datasets",
    "enhance_video",
    "ensure_ray",
    "joins_ray_if_running",
    "running_datasets",
    "stage_placement",
    "streams_on_this_cluster",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    """How a job runs (not what it produces)."""

    scratch_dir: Path | None = None  # default: the system temp dir
    chunk_budget_bytes: int = 96 * 1024 * 1024  # processed pixels per chunk
    max_chunk_frames: int | None = None  # override the budget (tests, debugging)
    stage_concurrency: int = 1  # actors per operator stage that runs in actors
    # "auto": model stages run in actor pools with num_gpus=1 where the cluster has
    # GPUs; everything else runs as plain tasks that Ray Data fuses with decode and
    # encode (workers keep loaded models).  "actors": every operator in an actor pool.
    operator_compute: Literal["auto", "actors"] = "auto"
    # The input file lies in this process's scratch: on a multi-node cluster, decode
    # tasks must run on this node (None: pin only when the cluster has several nodes).
    # Decoded frames then travel to operator stages anywhere through the object store.
    decode_on_driver_node: bool | None = None
    # Neural models: "auto" (TensorRT where it imports on a CUDA node; ncnn for the
    # upscalers on a CPU node; else torch), "torch", "compile", "tensorrt" or "ncnn";
    # each operator stage logs what it got and why.
    model_runtime: ModelRuntime = "auto"
    # Converted weights, ONNX files and TensorRT engines, on the node that runs the
    # model (None: ~/.cache/retroiva/models there).
    model_cache: Path | None = None
    # Where this job's finished segments survive a crash (pipelines/resume.py): a
    # re-run with the same plan processes only the chunks missing there.  None: kept
    # in scratch only, gone with it.  The caller clears it when the job ends.
    segments: SegmentStore | None = None
    # The Ray Data dataset's name (the service passes the job id): the dashboard lists
    # the pipeline as ``<name>_<uuid>_0`` instead of ``dataset_<uuid>_0``.
    dataset_name: str | None = None
    # The Ray resource that marks the nodes model stages run on: "GPU" (one per actor
    # whose operator wants a GPU), or a custom resource the operator gives those nodes
    # (every actor stage then takes one unit of it; a test stands one in for a GPU).
    accelerator_resource: str = "GPU"
    # The custom resource that marks CPU-only encode nodes (``ray start
    # --resources='{"retroiva_encode": 1000}'``: plenty of units, so the node's CPUs
    # bound how many encodes run there).  When the cluster has it and model stages run
    # in actors, every encode task takes one unit, so encoding leaves the model nodes'
    # CPUs to feed the models.  None, or no such node: encode runs wherever Ray puts it.
    encode_resource: str | None = "retroiva_encode"
    # A stage whose required resource has left the cluster (its last node died) would
    # wait for an actor that can never be placed: after this many seconds with no
    # progress, the job fails with a ProcessingError naming the resource.  Generous,
    # so an autoscaler can bring a replacement node up.
    lost_resource_seconds: float = 600.0

    def __post_init__(self) -> None:
        ModelOptions(self.model_runtime, self.model_cache)  # a bad runtime fails here

    @property
    def models(self) -> ModelOptions:
        return ModelOptions(self.model_runtime, self.model_cache)


@dataclass(frozen=True)
class EnhanceResult:
    output: Path
    width: int
    height: int
    fps: Fraction
    frame_count: int
    chunks: int
    seconds: float
    resumed_chunks: int = 0  # chunks taken from config.segments, not processed again
    # Per stage ("decode", "<kind>/<backend>", …, "encode"): the Ray node ids its
    # chunks ran on, first seen first (empty when every chunk was resumed).
    placement: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # Each chunk ran decode → filters → encode in one task (stages.chunk_stage).
    streamed: bool = False


def ensure_ray() -> None:
    """Start a local Ray instance unless this process is already connected to one."""
    if not ray.is_initialized():
        ray.init(include_dashboard=False, logging_level=logging.WARNING, configure_logging=True)


def joins_ray_if_running() -> bool:
    """Whether this process is connected to Ray, connecting first when ``RAY_ADDRESS``
    (Ray's own variable) names a cluster; never starts one.  For work that only
    matters where Ray already runs (tidying its dashboard)."""
    if not ray.is_initialized() and os.environ.get("RAY_ADDRESS"):
        ensure_ray()
    return ray.is_initialized()


def _holds_gpu(spec: OperatorSpec, config: PipelineConfig, use_gpu: bool) -> bool:
    """Whether the stage of ``spec`` takes a unit of the accelerator resource: the
    cluster has it, and the operator wants a GPU (its own ``needs_gpu``) or the
    resource is a custom one, which only marks where model stages belong and costs a
    CPU operator nothing (a real GPU would sit idle under one)."""
    if not use_gpu:
        return False
    if config.accelerator_resource != "GPU" and config.operator_compute == "actors":
        return True
    return needs_gpu(spec.kind, spec.backend)


def _in_actors(spec: OperatorSpec, config: PipelineConfig, use_gpu: bool) -> bool:
    # Actors pay off where a stage holds a GPU.  On CPU-only clusters an actor pool
    # cost ~3.5 s of start-up per job on 2 cores and bought nothing: tasks reuse worker
    # processes, which keep the models they loaded (stages._cached_operator).
    return config.operator_compute == "actors" or _holds_gpu(spec, config, use_gpu)


def _accelerator_args(config: PipelineConfig) -> dict[str, Any]:
    if config.accelerator_resource == "GPU":
        return {"num_gpus": 1}
    return {"resources": {config.accelerator_resource: 1}}


@dataclass(frozen=True)
class Placement:
    """What build_dataset decided: the resource each stage needs beyond CPUs (the
    watchdog fails a job whose needed resource left the cluster), and stage names."""

    stage_names: tuple[str, ...]
    needs: tuple[tuple[str, str], ...]  # (stage name, resource)


def streams_on_this_cluster(
    config: PipelineConfig,
) -> Callable[[tuple[OperatorSpec, ...]], bool]:
    """Whether a chain would run as streamed chunks here (``stages.chunk_stage``): every
    operator a filter that runs as a plain task, and decode not pinned to this node (on
    a multi-node cluster, one task per chunk would keep all the work on the driver's
    node)."""
    use_gpu = ray.cluster_resources().get(config.accelerator_resource, 0) > 0
    pinned = bool(decode_placement(config))

    def streams(chain: tuple[OperatorSpec, ...]) -> bool:
        return not pinned and all(
            spec.kind != OperatorKind.INTERPOLATE and not _in_actors(spec, config, use_gpu)
            for spec in chain
        )

    return streams


def decode_placement(config: PipelineConfig) -> dict[str, Any]:
    """Ray remote args that keep decode tasks on the node holding the input file."""
    pin = config.decode_on_driver_node
    if pin is None:
        pin = sum(1 for node in ray.nodes() if node.get("Alive")) > 1
    if not pin:
        return {}
    node_id = ray.get_runtime_context().get_node_id()
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)}


def _one_chunk_at_a_time(ds: Dataset, stage: Any, **options: Any) -> Dataset:
    """``ds.map_batches`` with one chunk (one row, as numpy) per call.  ``stage`` is Any
    because Ray types it as a one-argument callable, not seeing that ``fn_kwargs`` or
    ``fn_constructor_kwargs`` supply the rest of its parameters."""
    return ds.map_batches(stage, batch_size=1, batch_format="numpy", **options)


def stage_placement(plan: JobPlan, config: PipelineConfig) -> Placement:
    """Stage names, and the resources beyond CPUs that stages need on this cluster."""
    resources = ray.cluster_resources()
    use_gpu = resources.get(config.accelerator_resource, 0) > 0
    names = ["decode"]
    needs: list[tuple[str, str]] = []
    for spec in plan.chain:
        names.append(f"{spec.kind}/{spec.backend}")
        if _in_actors(spec, config, use_gpu) and _holds_gpu(spec, config, use_gpu):
            needs.append((names[-1], config.accelerator_resource))
    names.append("encode")
    encode = config.encode_resource
    if needs and encode is not None and resources.get(encode, 0) > 0:
        needs.append(("encode", encode))
    return Placement(tuple(names), tuple(needs))


def build_dataset(
    plan: JobPlan,
    signal: CancelSignal | None,
    config: PipelineConfig,
    skip: frozenset[int] = frozenset(),
) -> Dataset:
    """The job's Ray Data pipeline; it reads like its stage list.  Chunks whose index
    is in ``skip`` (already encoded by an earlier run) are left out.

    Where stages run: decode on the node holding the input (:func:`decode_placement`);
    model stages in actor pools, each actor taking one unit of the accelerator resource
    (a GPU) where the cluster has it; encode tasks on nodes with the encode resource
    when the cluster has both (so a GPU node's CPUs feed its GPU instead of encoding),
    else anywhere.  Each stage appends its node id to the chunk's ``nodes`` column."""
    resources = ray.cluster_resources()
    use_gpu = resources.get(config.accelerator_resource, 0) > 0
    placement = stage_placement(plan, config)
    actor_stages = sum(_in_actors(spec, config, use_gpu) for spec in plan.chain)
    # Actors hold their CPUs for the whole job: size every stage so one decode and one
    # encode task always fit beside all actors, or a small machine deadlocks.  These are
    # scheduling shares; OpenCV and the encoders still use every core they are given.
    total_cpus = resources.get("CPU", 1)
    stage_cpus = min(1.0, total_cpus / (actor_stages * config.stage_concurrency + 2))

    rows = [chunk.as_row() for chunk in plan.chunks if chunk.index not in skip]
    ds: Dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    source = {"path": plan.info.path, "rotation": plan.info.rotation, "colour": plan.info.colour}
    every_stage = {"signal": signal, "layout": plan.layout, "job": config.dataset_name}
    if plan.streamed:
        ds = _one_chunk_at_a_time(
            ds,
            chunk_stage,
            num_cpus=stage_cpus,
            fn_kwargs={
                **source,
                **every_stage,
                "chain": plan.chain,
                "models": config.models,
                "fps": plan.fps,
                "settings": plan.encoder,
                "threads": plan.threads,
            },
        )
        # One operator, so nothing to reserve resources between: Ray Data's reservation
        # allocator would keep half the CPUs for "other operators" until its estimates
        # settle (measured: the second chunk started ~4 s after the first on 2 cores).
        ds.context.op_resource_reservation_enabled = False
        ds.set_name(config.dataset_name)
        return ds
    ds = _one_chunk_at_a_time(
        ds,
        decode_stage,
        num_cpus=stage_cpus,
        fn_kwargs={**source, **every_stage, "stage": 0},
        **decode_placement(config),
    )
    for stage, spec in enumerate(plan.chain, start=1):
        args: dict[str, Any] = {
            "spec": spec,
            "ratio": plan.ratio,
            "models": config.models,
            "stage": stage,
            **every_stage,
        }
        holds = _holds_gpu(spec, config, use_gpu)
        if spec.backend != Backend.CLASSICAL:
            # The choice itself is made (and logged, with its reason) where the model
            # loads: only that node knows whether TensorRT imports and CUDA is there.
            log.info(
                "stage %s/%s: model runtime %s requested, %s",
                spec.kind,
                spec.backend,
                config.model_runtime,
                f"1 {config.accelerator_resource} per actor"
                if holds
                else f"no {config.accelerator_resource} in the cluster",
            )
        if _in_actors(spec, config, use_gpu):
            ds = _one_chunk_at_a_time(
                ds,
                OperatorStage,
                fn_constructor_kwargs=args,
                compute=ActorPoolStrategy(size=config.stage_concurrency),
                num_cpus=stage_cpus,
                **(_accelerator_args(config) if holds else {}),
            )
        else:
            ds = _one_chunk_at_a_time(ds, operator_stage, fn_kwargs=args, num_cpus=stage_cpus)
    encode_needs = dict(placement.needs).get("encode")
    ds = _one_chunk_at_a_time(
        ds,
        encode_stage,
        num_cpus=stage_cpus,
        fn_kwargs={
            "fps": plan.fps,
            "settings": plan.encoder,
            "colour": plan.info.colour,
            "stage": len(plan.chain) + 1,
            **every_stage,
        },
        **({"resources": {encode_needs: 1}} if encode_needs else {}),
    )
    ds.set_name(config.dataset_name)
    return ds


def stage_count(plan: JobPlan) -> int:
    """Stages that report work: decode, each operator, encode."""
    return len(plan.chain) + 2


def _segments(
    ds: Dataset,
    scratch: Path,
    cancel: CancelToken,
    store: SegmentStore | None = None,
    digest: str = "",
    nodes: list[list[str]] | None = None,
) -> Iterator[Segment]:
    for row in ds.iter_rows():
        cancel.raise_if_canceled()
        index, out_start = int(row["index"]), int(row["out_start"])
        if nodes is not None:
            nodes.append(str(row["nodes"]).split(","))
        path = scratch / f"segment_{index:05d}.mp4"
        path.write_bytes(row["segment"])
        if store is not None:
            # Saved as it arrives, so a runner killed later loses none of it.
            store.put(segment_name(digest, index, out_start), row["segment"])
        log.info("chunk %d encoded", index)
        yield Segment(path, out_start)


class Watchdog:
    """Fails a job that waits for a resource the cluster no longer has.

    Ray restarts a stage's actor when its node dies, and the restarted actor waits
    until a node with the resources it needs joins.  When the last node with the
    accelerator (or encode) resource is gone, that can be forever: Ray Data would only
    give up after its own no-progress timeout (30 minutes).  The progress watcher
    calls :meth:`check` with each tally; once a needed resource is absent and nothing
    has progressed for ``grace`` seconds, :attr:`failure` is set, and the dataset's
    execution callback (:meth:`callback_class`) raises it inside Ray Data's scheduling
    loop, which shuts the execution down (releasing its actors) and hands the error to
    the driver's iterator.
    """

    def __init__(self, needs: tuple[tuple[str, str], ...], grace: float) -> None:
        self._needs = needs
        self._grace = grace
        self._last_tally: StageTally | None = None
        self._last_change = time.monotonic()
        self.failure: ProcessingError | None = None

    def check(self, tally: StageTally, resources: dict[str, float]) -> None:
        now = time.monotonic()
        if tally != self._last_tally:
            self._last_tally, self._last_change = tally, now
        if self.failure is not None or not self._needs:
            return
        gone = [(stage, name) for stage, name in self._needs if resources.get(name, 0) <= 0]
        if gone and now - self._last_change >= self._grace:
            stage, name = gone[0]
            self.failure = ProcessingError(
                f"stage {stage} needs the Ray resource {name!r}, which no node of the "
                f"cluster has any more (its node left), and the job made no progress "
                f"for {now - self._last_change:.0f} s"
            )
            log.warning("%s; failing the job", self.failure)

    def lost_resource(self, exc: BaseException) -> ProcessingError | None:
        """``exc`` explained, when it came while a resource a stage needs is missing
        from the cluster (a node died and took work with it, e.g. blocks only it held)."""
        try:
            resources = ray.cluster_resources()
        except Exception:
            return None
        for stage, name in self._needs:
            if resources.get(name, 0) <= 0:
                return ProcessingError(
                    f"stage {stage} needs the Ray resource {name!r}, which left the "
                    f"cluster with its node mid-job ({type(exc).__name__})"
                )
        return None

    def watching(self, ds: Dataset) -> Dataset:
        """``ds``, whose execution this watchdog can fail (its own DataContext copy)."""
        ds.context.custom_execution_callback_classes = [
            *ds.context.custom_execution_callback_classes,
            self.callback_class(),
        ]
        return ds

    def callback_class(self) -> type:
        """An ExecutionCallback class (Ray Data instantiates it with no arguments)
        bound to this watchdog."""
        # Internal to Ray Data, and the only hook that runs in its scheduling loop.
        from ray.data._internal.execution.execution_callback import ExecutionCallback

        watchdog = self

        class _Abort(ExecutionCallback):
            def on_execution_step(self, executor: Any) -> None:
                if watchdog.failure is not None:
                    raise watchdog.failure

        return _Abort


def _watch_progress(
    signal: CancelSignal,
    meter: ProgressMeter,
    finished: threading.Event,
    watchdog: Watchdog | None = None,
    interval: float = 0.5,
) -> None:
    """Turns the stages' work reports into progress reports while the pipeline runs,
    and lets ``watchdog`` see them with the cluster's resources."""
    while not finished.wait(interval):
        try:
            tally = cast(StageTally, ray.get(signal.ask_tally(), timeout=10))
            meter.update(tally)
            if watchdog is not None:
                watchdog.check(tally, ray.cluster_resources())
        except Exception:  # progress is best effort; the pipeline's own errors matter
            log.debug("progress poll failed", exc_info=True)


def _log_placement(
    placement: Placement, nodes: list[list[str]]
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Per stage, the nodes its chunks ran on (first seen first); logged once."""
    found: list[tuple[str, tuple[str, ...]]] = []
    for i, name in enumerate(placement.stage_names):
        seen = dict.fromkeys(chunk[i] for chunk in nodes if i < len(chunk))
        found.append((name, tuple(seen)))
    if found:
        log.info(
            "placement: %s",
            ", ".join(
                f"{name} on node{'s' if len(ids) > 1 else ''} {' '.join(i[:12] for i in ids)}"
                for name, ids in found
            ),
        )
    return tuple(found)


def _as_pipeline_error(exc: BaseException, cancel: CancelToken) -> PipelineError:
    if cancel.canceled:
        return PipelineCanceled("job was canceled")
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, PipelineError):
            return current
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    return ProcessingError(f"processing failed ({type(exc).__name__})")


def _stats_actor_datasets() -> tuple[Any, dict[str, dict[str, Any]]]:
    from ray.data._internal.stats import get_or_create_stats_actor

    actor = get_or_create_stats_actor()
    # Ray types the actor method's remote result loosely; it is {tag: state}.
    datasets: dict[str, dict[str, Any]] = ray.get(actor.get_datasets.remote(), timeout=5)  # type: ignore[assignment]
    return actor, datasets


def _dataset_name(tag: str) -> str:
    """The name in a Ray Data dataset tag, ``<name>_<uuid>_<n>`` (a job id may hold
    underscores itself; Ray's uuid doesn't)."""
    return tag.rsplit("_", 2)[0]


def running_datasets() -> dict[str, str]:
    """Ray Data datasets that Ray lists as running or pending: ``{tag: name}``, the
    name being what :attr:`PipelineConfig.dataset_name` gave (a job id), or
    ``dataset`` for unnamed ones."""
    _, datasets = _stats_actor_datasets()
    return {
        tag: _dataset_name(tag)
        for tag, state in datasets.items()
        if state.get("state") in ("RUNNING", "PENDING")
    }


def end_stale_datasets(*names: str) -> list[str]:
    """Mark the datasets named any of ``names`` that Ray still lists as running as
    failed (one read of Ray's list, however many names), and return their tags: the
    pipelines of attempts whose process was killed, so their
    executor never reported an end.  Callers know none of them is live: a new attempt
    of the job before it starts its own (only one attempt of a job runs at a time: the
    store's lease), or the runner for a job that is no longer processing.  Uses Ray
    Data's stats actor, which is what the dashboard's Data view reads (internal API;
    pinned by ``tests/test_private_apis.py``)."""
    actor, datasets = _stats_actor_datasets()
    ended: list[str] = []
    for tag, state in datasets.items():
        if _dataset_name(tag) not in names or state.get("state") not in ("RUNNING", "PENDING"):
            continue
        operators = {
            op: {**op_state, "state": "FAILED"}
            for op, op_state in state.get("operators", {}).items()
        }
        actor.update_dataset.remote(
            tag, {"state": "FAILED", "end_time": time.time(), "operators": operators}
        )
        ended.append(tag)
    return ended


def _end_stale_datasets_quietly(name: str) -> None:
    """:func:`end_stale_datasets`, which only tidies what Ray's dashboard shows: a slow
    or changed stats actor must never hold up or fail the job itself."""
    try:
        for tag in end_stale_datasets(name):
            log.info("dataset %s of an earlier attempt marked failed", tag)
    except Exception as exc:  # an internal Ray API: whatever it raises, the job goes on
        log.warning("could not tidy earlier attempts' datasets of %s: %s", name, exc)


def _relay_cancel(cancel: CancelToken, signal: CancelSignal, finished: threading.Event) -> None:
    while not finished.is_set():
        if cancel.wait(0.1):
            signal.set()
            return


def enhance_video(
    source: str | Path,
    output: str | Path,
    request: EnhanceRequest = EnhanceRequest(),
    config: PipelineConfig = PipelineConfig(),
    *,
    on_progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> EnhanceResult:
    """Enhance ``source`` into ``output`` (MP4/MOV/MKV by suffix).

    Raises :class:`~pipelines.errors.InvalidInputError` for inputs that cannot be
    processed, :class:`~pipelines.errors.InvalidOptionsError` for impossible requests,
    :class:`~pipelines.errors.PipelineCanceled` when ``cancel`` fires and
    :class:`~pipelines.errors.ProcessingError` for anything else; in every case no
    output file and no scratch file is left behind.
    """
    started = time.monotonic()
    output = Path(output)
    output_format(output)
    cancel = cancel or CancelToken()
    info = probe(source)
    ensure_ray()
    # Denoising and model choice are decided once for the whole job, so chunk seams
    # never show a change of strength or model.
    plan = plan_job(
        info,
        request,
        chunk_budget_bytes=config.chunk_budget_bytes,
        max_frames=config.max_chunk_frames,
        noise=measure_noise(info),
        parallelism=int(ray.cluster_resources().get("CPU", 1)),
        streams=streams_on_this_cluster(config),
    )
    context = DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False

    scratch = Path(tempfile.mkdtemp(prefix="retroiva-", dir=config.scratch_dir))
    partial = output.with_name(f".{output.stem}.partial{output.suffix}")
    signal = CancelSignal.for_new_job()
    finished = threading.Event()
    relay = threading.Thread(target=_relay_cancel, args=(cancel, signal, finished), daemon=True)
    relay.start()
    failure: PipelineError | None = None
    where: tuple[tuple[str, tuple[str, ...]], ...] = ()
    digest = plan_digest(plan)
    saved = saved_segments(config.segments, digest) if config.segments is not None else {}
    resumed_frames = sum(plan.chunks[i].frame_count for i in saved)
    if saved:
        log.info(
            "resuming: %d of %d chunks already encoded (plan %s)",
            len(saved),
            len(plan.chunks),
            digest,
        )
    meter = ProgressMeter(
        plan.info.frame_count, on_progress, stage_count(plan), resumed=resumed_frames
    )
    processed = threading.Event()
    placement = stage_placement(plan, config)
    watchdog = Watchdog(placement.needs, config.lost_resource_seconds)
    watcher = threading.Thread(
        target=_watch_progress, args=(signal, meter, processed, watchdog), daemon=True
    )
    nodes: list[list[str]] = []
    try:
        cancel.raise_if_canceled()
        meter.phase(Phase.PROCESSING)  # the input is here; Ray Data is starting
        watcher.start()
        segments = (
            [Segment(config.segments.fetch(s.name, scratch), s.out_start) for s in saved.values()]
            if config.segments is not None
            else []
        )
        if config.dataset_name:
            _end_stale_datasets_quietly(config.dataset_name)
        if len(saved) < len(plan.chunks):
            # No local name for the dataset: one would keep its executor, and the stage
            # actors it holds, alive until this function returns (see the end).
            segments += _segments(
                watchdog.watching(build_dataset(plan, signal, config, frozenset(saved))),
                scratch,
                cancel,
                config.segments,
                digest,
                nodes,
            )
            where = _log_placement(placement, nodes)
        segments.sort(key=lambda s: s.first_frame)
        processed.set()
        watcher.join()
        cancel.raise_if_canceled()
        meter.phase(Phase.ASSEMBLING)
        assemble(segments, plan.fps, plan.info, partial)
        os.replace(partial, output)
    except Exception as exc:
        failure = (
            watchdog.failure
            or (None if cancel.canceled else watchdog.lost_resource(exc))
            or _as_pipeline_error(exc, cancel)
        )
        log.debug("job failed: %s", "".join(traceback.format_exception(exc)))
    finally:
        finished.set()
        processed.set()
        partial.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)
        signal.forget()
    if failure is not None:
        # Ray Data's failed executor releases its stage actors by dropping their handles,
        # but the handles sit in reference cycles (and in the original traceback), so the
        # actors, and any GPU they hold, would live until the next cyclic GC.  Raise
        # outside the except block, without a traceback, and collect the cycles now.
        gc.collect()
        raise failure.with_traceback(None)
    return EnhanceResult(
        output=output,
        width=plan.width,
        height=plan.height,
        fps=plan.fps,
        frame_count=plan.frame_count,
        chunks=len(plan.chunks),
        seconds=time.monotonic() - started,
        resumed_chunks=len(saved),
        placement=where,
        streamed=plan.streamed,
    )
