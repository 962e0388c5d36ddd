from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipelines.errors import InvalidInputError
from pipelines.probe import probe
from pipelines.sample_video import (
    SampleSpec,
    write_audio_only,
    write_sample_video,
    write_zero_frame_video,
)


def test_probe_reports_geometry_timing_and_streams(make_video):
    info = probe(make_video(seconds=2, fps=Fraction(24)))
    assert (info.width, info.height) == (96, 64)
    assert info.frame_count == 48
    assert info.fps == 24
    assert not info.is_vfr
    assert info.duration == pytest.approx(2.0)
    assert info.codec == "h264"
    assert (info.pixel_format, info.bit_depth) == ("yuv420p", 8)
    assert info.rotation == 0
    assert [a.codec for a in info.audio] == ["aac"]
    assert info.audio[0].sample_rate == 48000
    assert info.keyframe_pts[0] == info.frame_pts[0]
    assert len(info.keyframe_pts) == 4  # gop 12


def test_probe_keeps_ntsc_rate_exact(make_video):
    info = probe(make_video(fps=Fraction(30000, 1001)))
    assert info.fps == Fraction(30000, 1001)
    assert info.duration == pytest.approx(30 * 1001 / 30000)


def test_probe_reads_rotation_and_display_size(make_video):
    info = probe(make_video(rotation=90, seconds=0.5))
    assert info.rotation == 90
    assert info.display_size == (64, 96)


def test_probe_reads_ten_bit(make_video):
    info = probe(make_video("ten.mkv", pixel_format="yuv420p10le", seconds=0.5))
    assert info.bit_depth == 10
    assert not info.is_vfr  # Matroska's 1 ms ticks must not look like VFR


def test_probe_detects_variable_frame_rate(tmp_path: Path):
    path = tmp_path / "vfr.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = Fraction(1, 1000)
        for pts in (0, 33, 66, 150, 183, 300, 333):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    info = probe(path)
    assert info.is_vfr
    assert info.frame_count == 7
    assert info.fps == pytest.approx(6 / 0.333, rel=0.01)


def _expect_invalid(path: Path, reason: str) -> InvalidInputError:
    with pytest.raises(InvalidInputError) as caught:
        probe(path)
    assert caught.value.reason == reason, str(caught.value)
    assert str(caught.value)  # a message a user can read
    return caught.value


def test_not_a_video(tmp_path: Path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 100)
    _expect_invalid(path, "not_a_video")


def test_empty_and_missing_files(tmp_path: Path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    _expect_invalid(tmp_path / "empty.mp4", "empty")
    _expect_invalid(tmp_path / "absent.mp4", "missing")


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_truncated_file(make_video, tmp_path: Path, suffix: str):
    data = make_video(f"whole{suffix}", seconds=2).read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) * 2 // 3])
    error = _expect_invalid(cut, "truncated" if suffix == ".mkv" else "not_a_video")
    assert "truncated" in str(error)


def test_truncated_faststart_mp4(make_video, tmp_path: Path):
    """With the index first, the frame count in the header reveals the truncation."""
    whole = tmp_path / "faststart.mp4"
    with (
        av.open(str(make_video(seconds=2))) as src,
        av.open(str(whole), "w", options={"movflags": "+faststart"}) as dst,
    ):
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                packet.stream = out
                dst.mux(packet)
    data = whole.read_bytes()
    cut = tmp_path / "cut_faststart.mp4"
    cut.write_bytes(data[: len(data) // 2])
    _expect_invalid(cut, "truncated")


def test_zero_frame_file(tmp_path: Path):
    """A video track with no frames beside a real audio track."""
    path = write_zero_frame_video(
        tmp_path / "zero.mkv", SampleSpec(width=64, height=48, seconds=0.5)
    )
    error = _expect_invalid(path, "no_frames")
    assert "no frames" in str(error)


def test_header_only_file(tmp_path: Path):
    path = tmp_path / "header.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()
    with pytest.raises(InvalidInputError, match="nothing to enhance"):
        probe(path)


def test_audio_only_file(tmp_path: Path):
    path = write_audio_only(tmp_path / "tone.m4a", SampleSpec(seconds=0.5))
    error = _expect_invalid(path, "no_video")
    assert "audio-only" in str(error)


def test_video_pipeline_errors_survive_pickling():
    """Ray ships errors between processes; the reason code must survive."""
    import pickle

    error = pickle.loads(pickle.dumps(InvalidInputError("bad", reason="truncated")))
    assert (type(error), error.reason, str(error)) == (InvalidInputError, "truncated", "bad")


def test_probe_agrees_with_ffprobe_when_available(make_video):
    ffprobe = subprocess.run(["which", "ffprobe"], capture_output=True, text=True).stdout.strip()
    if not ffprobe:
        pytest.skip("Debian's ffprobe is not installed; PyAV-only checks above still ran")
    path = make_video(seconds=2)
    counted = subprocess.run(
        [
            ffprobe,
            "-v",
            "error",
            "-count_packets",
            "-select_streams",
            "v:0",
            "-show_entries",
            "stream=nb_read_packets",
            "-of",
            "csv=p=0",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert probe(path).frame_count == int(counted)


def test_write_sample_video_roundtrip(tmp_path: Path):
    path = write_sample_video(tmp_path / "s.mp4", SampleSpec(seconds=0.5, audio=False))
    assert probe(path).audio == ()
