"""Every hostile input ends as a completed job or a typed failure: no hang, no leftovers,
bounded memory."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from benchmarks.measure import MemorySampler
from pipelines.enhance import PipelineConfig, enhance_video
from pipelines.errors import PipelineError
from pipelines.job_plan import EnhanceRequest
from tests.hostile_media import CORPUS, HostileInput, write_corpus

from media import decode_frames

pytestmark = pytest.mark.usefixtures("ray_session")

PEAK_LIMIT = 6 * 1024**3  # whole process tree (driver, raylet, workers), PSS


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("hostile"))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("entry", CORPUS, ids=[e.name for e in CORPUS])
def test_hostile_input_ends_cleanly(entry: HostileInput, corpus: dict[str, Path], tmp_path: Path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    output = tmp_path / "out.mp4"
    started = time.monotonic()
    outcome = "completed"
    with MemorySampler() as memory:
        try:
            result = enhance_video(
                corpus[entry.name], output, EnhanceRequest(), PipelineConfig(scratch_dir=scratch)
            )
        except PipelineError as exc:
            outcome = exc.type
            message = str(exc)
            assert message and "\n" not in message and len(message) < 300, message
            assert "Traceback" not in message
    assert outcome == entry.outcome, f"{entry.name}: {outcome} ({entry.note})"
    if outcome == "completed":
        assert len(decode_frames(output)) == result.frame_count > 0
    else:
        assert not output.exists()
    assert list(scratch.iterdir()) == [], "scratch left behind"
    assert list(tmp_path.glob(".*partial*")) == []
    assert time.monotonic() - started < 150
    assert memory.peak_bytes < PEAK_LIMIT, f"peak {memory.peak_bytes / 2**20:.0f} MiB"
