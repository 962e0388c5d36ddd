"""One-shot GPU check for a lent CUDA machine (see benchmarks/gpu.sh).

For each upscaler and for RIFE: CUDA fp16 output against CPU fp32 on the same real
frame (max and mean absolute error on 0–255), then 1080p frames per second in fp16,
eager and with ``torch.compile`` (upscalers: 1080p → ×2, tiles of 512, 12 frames a
call as a chunk brings them; RIFE: batch 1 and 4), and a TensorRT attempt that
reports its fallback reason when it can't run.

``e2e``: one whole job through :func:`pipelines.enhance.enhance_video` on a local Ray
with the GPU (preset ``general`` ×2: the clip is grainy, so the plan picks SRMD, in a
``num_gpus=1`` actor pool), once per model runtime (``auto``,
``compile``), with the runtime each model stage got, as the stage logged it, and the
output checked (size, frame count, PSNR against the same job on the classical chain).

Prints "no CUDA" and exits 0 where there is none, so it can't pretend to have
measured anything.

``staging``: the upscalers' pinned, double-buffered copies (:mod:`models.host_staging`)
against the synchronous copies of before (``pinned=False``), same operator, same
process, rounds alternated, and their outputs compared byte for byte.

    python3 -m benchmarks.gpu_check rife|span|waifu2x|srmd|realesrgan|staging|e2e|--quick

``--quick`` (CI, no GPU needed): where there is no CUDA, says so and measures nothing;
with CUDA, the RIFE part.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data

from models.neural_upscale import NeuralUpscale
from models.rife import RifeInterpolator
from models.sr_models import sr_model

# One wheel per part: the device tool carries at most 64 MiB per call.
UPSCALERS = {
    "span": ("span-x2", "clearreality-x4"),
    "waifu2x": ("waifu2x-photo-noise3-x2",),
    "srmd": ("srmd-x2",),
    "realesrgan": ("realesr-animevideov3-x2", "realesrgan-x4plus"),
}


CALL_FRAMES = 12


def _pair(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A natural photo and the same shifted by 6 px: real content, known motion."""
    image = cv2.resize(data.astronaut(), size, interpolation=cv2.INTER_CUBIC)
    return image, np.roll(image, 6, axis=1)


def _fps(
    rife: RifeInterpolator, a: np.ndarray, b: np.ndarray, batch: int, seconds: float = 5.0
) -> float:
    ts = [(i + 1) / (batch + 1) for i in range(batch)]
    for _ in range(3):
        rife.interpolate(a, b, ts)  # warm-up (and compilation)
    torch.cuda.synchronize()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        rife.interpolate(a, b, ts)
        count += batch
    torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


def _call_frames(frame: np.ndarray) -> np.ndarray:
    """Several frames a call, as a chunk brings them: the operator copies one batch out
    while the next computes, which one frame a call would not show."""
    return np.stack([np.roll(frame, 9 * k, axis=1) for k in range(CALL_FRAMES)])


def _upscale_fps(op: NeuralUpscale, frame: np.ndarray, seconds: float = 5.0) -> float:
    frames = _call_frames(frame)
    for _ in range(2):
        op(frames)
    torch.cuda.synchronize()
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        op(frames)
        count += len(frames)
    torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


def upscalers(names: tuple[str, ...]) -> None:
    small, _ = _pair((256, 256))
    full, _ = _pair((1920, 1080))
    for name in names:
        # SRMD at a noise level the plans use, so fp16 meets a non-zero noise map.
        sigma = 15.0 if sr_model(name).noise_map else None
        cpu, gpu = (
            NeuralUpscale(name, factor=2, tile=0, device=device, noise_sigma=sigma)(small[None])[0]
            for device in ("cpu", "cuda")
        )
        diff = np.abs(cpu.astype(np.int16) - gpu)
        line = f"{name}: fp16 vs fp32 max |Δ| {diff.max()}, mean {diff.mean():.3f};"
        for runtime in ("torch", "compile", "tensorrt"):
            op = NeuralUpscale(
                name,
                factor=2,
                tile=512,
                device="cuda",
                runtime=runtime,  # type: ignore[arg-type]
                noise_sigma=sigma,
            )
            line += f" {runtime} {_upscale_fps(op, full):.1f} fps"
        print(line + " (1080p → ×2)", flush=True)


def staged_copies(names: tuple[str, ...] = ("span-x2", "waifu2x-photo-noise3-x2")) -> None:
    from models.host_staging import HostStaging

    full, _ = _pair((1920, 1080))
    frames = _call_frames(full)
    for name in names:
        op = NeuralUpscale(name, factor=2, tile=512, device="cuda", runtime="torch")
        staged = op.staging
        synchronous = HostStaging(op.device, pinned=False)
        op.staging = synchronous
        before = op(frames)
        op.staging = staged
        diff = np.abs(before.astype(np.int16) - op(frames)).max()
        print(f"{name}: staged vs synchronous copies, max |Δ| {diff}", flush=True)
        for _ in range(3):
            op.staging = synchronous
            old = _upscale_fps(op, full, seconds=4.0)
            op.staging = staged
            new = _upscale_fps(op, full, seconds=4.0)
            print(
                f"  {name} 1080p → ×2, {CALL_FRAMES} frames a call, batch {op.batch}: "
                f"synchronous {old:.1f} fps, staged {new:.1f} fps ({new / old:.2f}×)",
                flush=True,
            )


def _decoded(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def end_to_end(work: Path, *, small: bool = False) -> None:
    """One job through the whole pipeline on this machine's GPU, per runtime.  ``small``
    (``e2e-cpu``): a tiny clip, to rehearse this code where there is no GPU."""
    import logging

    import ray

    from models.runtime import ModelOptions, runtime_report
    from pipelines.enhance import PipelineConfig, enhance_video
    from pipelines.job_plan import EnhanceRequest
    from pipelines.sample_video import SampleSpec, write_sample_video

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("ray", "ray.data", "ray.serve"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cache = work / "model-cache"
    for line in runtime_report(ModelOptions("auto", cache)):
        print(line, flush=True)
    spec = (
        SampleSpec(width=64, height=48, seconds=0.5)
        if small
        else SampleSpec(width=640, height=360, seconds=4.0, grain=4.0)
    )
    source = write_sample_video(work / "source.mp4", spec)
    # log_to_driver: each stage's "span-x2: runtime … (why)" line is printed here.
    if not ray.is_initialized():
        ray.init(logging_level=logging.WARNING, include_dashboard=False, log_to_driver=True)
    print(f"Ray {ray.__version__}: {ray.cluster_resources()}", flush=True)
    request = EnhanceRequest(preset="general", upscale_factor=2)
    classical = enhance_video(
        source,
        work / "classical.mp4",
        EnhanceRequest(preset="general", upscale_factor=2, engine="classical"),
        PipelineConfig(),
    )
    print(
        f"e2e classical: {classical.width}×{classical.height}, {classical.frame_count} "
        f"frames in {classical.seconds:.1f} s",
        flush=True,
    )
    reference = _decoded(work / "classical.mp4")
    for runtime in ("auto", "compile"):
        # Twice: the first run pays for conversion, compilation or an engine build.
        for attempt in ("cold", "warm"):
            out = work / f"{runtime}-{attempt}.mp4"
            result = enhance_video(
                source, out, request, PipelineConfig(model_runtime=runtime, model_cache=cache)
            )
            frames = _decoded(out)
            print(
                f"e2e {runtime} ({attempt}): {result.width}×{result.height}, "
                f"{result.frame_count} frames ({len(frames)} decoded) in "
                f"{result.seconds:.1f} s = {result.frame_count / result.seconds:.1f} fps; "
                f"PSNR vs classical {_psnr(frames, reference):.1f} dB",
                flush=True,
            )
            assert (result.width, result.height) == (2 * spec.width, 2 * spec.height)
            assert len(frames) == result.frame_count == spec.frame_count
    engines = (
        sorted(p.name for p in (cache / "tensorrt").glob("*.engine"))
        if (cache / "tensorrt").is_dir()
        else []
    )
    print(f"TensorRT engines in the cache: {engines or 'none'}")
    ray.shutdown()


def main() -> None:
    part = sys.argv[1] if len(sys.argv) > 1 else "rife"
    if part == "--quick":
        part = "rife"
    if part == "e2e-cpu":
        with tempfile.TemporaryDirectory() as work:
            end_to_end(Path(work), small=True)
        return
    if not torch.cuda.is_available():
        print(
            f"no CUDA: nothing measured; the GPU part {part!r} is skipped "
            f"(torch {torch.__version__})"
        )
        return
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    if part == "e2e":
        with tempfile.TemporaryDirectory() as work:
            end_to_end(Path(work))
        return
    if part == "staging":
        staged_copies()
        return
    if part != "rife":
        upscalers(UPSCALERS[part])
        return
    a, b = _pair((960, 544))
    cpu = RifeInterpolator(device="cpu").interpolate(a, b, [0.5])[0].astype(np.int16)
    gpu_rife = RifeInterpolator(device="cuda", runtime="torch")
    gpu = gpu_rife.interpolate(a, b, [0.5])[0].astype(np.int16)
    diff = np.abs(cpu - gpu)
    print(
        f"RIFE fp16 CUDA vs fp32 CPU, 960×544: max |Δ| {diff.max()}, mean |Δ| "
        f"{diff.mean():.3f} (0–255)"
    )
    a, b = _pair((1920, 1080))
    for batch in (1, 4):
        print(f"RIFE 1080p fp16 eager, batch {batch}: {_fps(gpu_rife, a, b, batch):.1f} fps")
    gpu_rife = RifeInterpolator(device="cuda", runtime="compile")
    for batch in (1, 4):
        print(
            f"RIFE 1080p fp16 torch.compile, batch {batch}: {_fps(gpu_rife, a, b, batch):.1f} fps"
        )


if __name__ == "__main__":
    main()
