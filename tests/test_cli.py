from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.probe import probe
from serve_app.cli import app

pytestmark = pytest.mark.usefixtures("ray_session")


def test_enhance_writes_the_requested_video(make_video, tmp_path: Path):
    output = tmp_path / "out.mp4"
    result = CliRunner().invoke(
        app,
        [
            "enhance",
            str(make_video(seconds=1)),
            str(output),
            "--preset",
            "archive",
            "--upscale-factor",
            "3",
            "--interpolate",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    info = probe(output)
    assert (info.width, info.height, info.fps, info.frame_count) == (288, 192, 48, 48)


def test_enhance_to_a_target_fps(make_video, tmp_path: Path):
    output = tmp_path / "out.mp4"
    result = CliRunner().invoke(
        app,
        [
            "enhance",
            str(make_video(seconds=1)),
            str(output),
            "--upscale-factor",
            "1",
            "--fps",
            "60",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (probe(output).fps, probe(output).frame_count) == (60, 60)


def test_bad_input_exits_2_with_the_reason(tmp_path: Path):
    text = tmp_path / "notes.mp4"
    text.write_text("hello")
    result = CliRunner().invoke(app, ["enhance", str(text), str(tmp_path / "out.mp4")])
    assert result.exit_code == 2
    assert "invalid_input" in result.output
    assert "not a video" in result.output
    assert not (tmp_path / "out.mp4").exists()


def test_bad_options_exit_with_a_usage_error(make_video, tmp_path: Path):
    result = CliRunner().invoke(
        app, ["enhance", str(make_video()), str(tmp_path / "o.mp4"), "--upscale-factor", "7"]
    )
    assert result.exit_code == 2
    result = CliRunner().invoke(
        app, ["enhance", str(make_video()), str(tmp_path / "o.mp4"), "--preset", "vivid"]
    )
    assert result.exit_code == 2
    assert "preset must be one of" in result.output
