"""One job on an existing Ray cluster, driven from its own process: placement as JSON.

    python -m tests.two_node_job ADDRESS INPUT OUTPUT [--grace S]

Used by tests/test_two_node.py, whose pytest process already has a Ray session of its
own.  Prints ``progress <frames done>`` lines while the job runs, then one JSON line:
``{"placement": {stage: [node ids]}, "nodes": {node id: resources}, "frames": n,
"seconds": s, "error": null | {"type", "message"}}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import ray

from pipelines.enhance import PipelineConfig, enhance_video
from pipelines.errors import PipelineError
from pipelines.job_plan import EnhanceRequest

# Lanczos ×2 alone on a clean clip: one classical operator, forced into an actor pool
# that takes the stand-in accelerator resource, so it must run on the model node.
REQUEST = EnhanceRequest(preset="general", upscale_factor=2, engine="classical")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--grace", type=float, default=5.0)
    parser.add_argument("--chunk-frames", type=int, default=8)
    parser.add_argument("--wait-nodes", type=int, default=0, help="until this many are alive")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    deadline = time.monotonic() + 180
    while True:
        # A loaded machine can keep a just-started head's GCS from answering in time.
        try:
            ray.init(address=args.address, logging_level=logging.WARNING)
            break
        except (ConnectionError, RuntimeError):
            if time.monotonic() > deadline:
                raise
            ray.shutdown()
            time.sleep(2)
    while sum(n["Alive"] for n in ray.nodes()) < args.wait_nodes:
        if time.monotonic() > deadline:
            raise SystemExit(f"fewer than {args.wait_nodes} nodes joined in 180 s")
        time.sleep(0.5)
    nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
    config = PipelineConfig(
        max_chunk_frames=args.chunk_frames,
        operator_compute="actors",
        accelerator_resource="model_node",
        encode_resource="retroiva_encode",
        lost_resource_seconds=args.grace,
    )
    started = time.monotonic()
    report: dict[str, object] = {"nodes": nodes, "error": None}
    try:
        result = enhance_video(
            args.input,
            args.output,
            REQUEST,
            config,
            on_progress=lambda p: print(f"progress {p.frames_done}", flush=True),
        )
        report.update(placement=dict(result.placement), frames=result.frame_count)
    except PipelineError as exc:
        report["error"] = {"type": type(exc).__name__, "message": str(exc)}
    report["seconds"] = time.monotonic() - started
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
