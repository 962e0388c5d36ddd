"""Outcome, time and peak memory of every hostile input (tests/hostile_media.py).

Peak memory is the PSS of this process and all its descendants (the local Ray),
sampled every 0.25 s while the one input runs.

    .venv/bin/python -m benchmarks.hostile_media [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.measure import MemorySampler
from pipelines.enhance import PipelineConfig, enhance_video, ensure_ray
from pipelines.errors import PipelineError
from pipelines.job_plan import EnhanceRequest
from tests.hostile_media import CORPUS, write_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="the first input only: proves it runs (CI)"
    )
    args = parser.parse_args()
    entries = CORPUS[:1] if args.quick else CORPUS
    work = Path(tempfile.mkdtemp(prefix="retroiva-hostile-"))
    corpus = write_corpus(work / "corpus")
    ensure_ray()
    print(f"{'input':20s} {'outcome':16s} {'seconds':>7s} {'peak MiB':>9s}  message")
    for entry in entries:
        started = time.monotonic()
        message = ""
        with MemorySampler() as memory:
            try:
                enhance_video(
                    corpus[entry.name],
                    work / f"{entry.name}.mp4",
                    EnhanceRequest(),
                    PipelineConfig(scratch_dir=work),
                )
                outcome = "completed"
            except PipelineError as exc:
                outcome, message = exc.type, str(exc)
        print(
            f"{entry.name:20s} {outcome:16s} {time.monotonic() - started:7.1f} "
            f"{memory.peak_bytes / 2**20:9.0f}  {message[:70]}"
        )


if __name__ == "__main__":
    main()
