"""End to end: real files through the Ray Data pipeline, checked by decoding the output."""

from __future__ import annotations

import dataclasses
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import ray

from models.lanczos import LanczosUpscale
from pipelines.enhance import PipelineConfig, decode_placement, enhance_video
from pipelines.errors import InvalidInputError, InvalidOptionsError, PipelineCanceled
from pipelines.job_plan import EnhanceRequest
from pipelines.probe import probe
from pipelines.progress import CancelToken, Progress
from pipelines.sample_video import (
    SampleSpec,
    sample_frame,
    write_audio_only,
    write_sample_video,
    write_zero_frame_video,
)

from media import audio_timing, decode_frames, luma_psnr, psnr

pytestmark = pytest.mark.usefixtures("ray_session")


def _check_audio_in_sync(source: Path, output: Path, video_seconds: float, fps: float) -> None:
    before, after = audio_timing(source), audio_timing(output)
    assert after is not None, "audio track lost"
    assert after.start == pytest.approx(before.start, abs=1e-3)
    assert after.duration == pytest.approx(before.duration, abs=1e-3)
    assert abs(after.duration - video_seconds) <= 1 / fps + 0.025  # one frame + AAC padding


@pytest.mark.parametrize("preset", ["general", "cinematic", "social", "archive"])
@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_geometry_timing_and_audio(make_video, tmp_path: Path, preset: str, factor: int):
    source = make_video(seconds=1, fps=Fraction(24))
    output = tmp_path / "out.mp4"
    result = enhance_video(source, output, EnhanceRequest(preset=preset, upscale_factor=factor))
    info = probe(output)
    expected_fps = 60 if preset == "social" else 24
    assert (info.width, info.height) == (96 * factor, 64 * factor)
    assert info.fps == expected_fps
    assert info.frame_count == expected_fps == result.frame_count
    assert info.duration == pytest.approx(1.0, abs=1 / expected_fps)
    assert info.codec == "h264" and info.pixel_format == "yuv420p"
    _check_audio_in_sync(source, output, info.duration, expected_fps)


def test_odd_output_sizes_are_cropped_to_even(make_video, tmp_path: Path):
    source = make_video("odd.mp4", width=50, height=38, seconds=0.5, audio=False)
    result = enhance_video(source, tmp_path / "out.mp4", EnhanceRequest(upscale_factor=3))
    info = probe(result.output)
    assert (info.width, info.height) == (150, 114) == (result.width, result.height)


def test_jobs_of_a_process_share_one_signal_actor_and_leave_no_state_in_it(
    make_video, tmp_path: Path
):
    """Cancel flags and work reports go through one JobSignals actor per process, not
    an actor (and its process start) per job; each ended job, finished or failed,
    leaves nothing in it."""
    from pipelines.stages import CancelSignal

    def shared_actor() -> ray.actor.ActorHandle:
        signal = CancelSignal.for_new_job()
        signal.forget()
        return signal.actor

    source = make_video(seconds=0.5, audio=False)
    request = EnhanceRequest(preset="general", engine="classical", upscale_factor=2)
    before = shared_actor()
    seen: list[int] = []  # jobs the shared actor holds, seen while job a runs
    enhance_video(
        source,
        tmp_path / "a.mp4",
        request,
        on_progress=lambda _: seen.append(ray.get(before.jobs.remote())),
    )
    assert seen and max(seen) == 1  # job a itself
    with pytest.raises(InvalidOptionsError):
        enhance_video(source, tmp_path / "b.mp4", dataclasses.replace(request, crf=99))
    canceled = CancelToken()
    canceled.cancel()
    with pytest.raises(PipelineCanceled):
        enhance_video(source, tmp_path / "c.mp4", request, cancel=canceled)
    signal = CancelSignal.for_new_job()
    assert signal.actor._actor_id == before._actor_id
    assert ray.get(before.jobs.remote()) == 1  # the one just made here, no ended job's
    assert not ray.get(signal.ask_is_set())
    signal.forget()
    # An ended job reads as canceled: a straggler task of it stops at its next check.
    assert ray.get(signal.ask_is_set())
    assert ray.get(before.jobs.remote()) == 0


def test_streamed_chunks_equal_separate_stages(make_video, tmp_path: Path):
    """A chain of filters on one CPU node runs each chunk as one streaming task; the
    frames are exactly those of the same chain run stage by stage (in actors)."""
    source = make_video(seconds=1)
    request = EnhanceRequest(preset="general", engine="classical", upscale_factor=2, crf=0)
    streamed = enhance_video(source, tmp_path / "streamed.mp4", request)
    staged = enhance_video(
        source, tmp_path / "staged.mp4", request, PipelineConfig(operator_compute="actors")
    )
    assert streamed.streamed and not staged.streamed
    assert [name for name, _ in streamed.placement] == [name for name, _ in staged.placement]
    a, b = decode_frames(streamed.output), decode_frames(staged.output)
    assert a.shape == b.shape == (24, 128, 192, 3)
    assert np.array_equal(a, b)


def test_jobs_with_an_interpolator_or_a_pinned_decode_are_not_streamed(make_video, tmp_path: Path):
    source = make_video(seconds=0.5)
    request = EnhanceRequest(preset="general", engine="classical", upscale_factor=2)
    interpolated = dataclasses.replace(request, interpolate=2)
    assert not enhance_video(source, tmp_path / "a.mp4", interpolated).streamed
    pinned = PipelineConfig(decode_on_driver_node=True)
    assert not enhance_video(source, tmp_path / "b.mp4", request, pinned).streamed


@pytest.mark.parametrize("interpolate", [2, None])
def test_chunk_boundaries_are_invisible(make_video, tmp_path: Path, interpolate: int | None):
    """Same frames whatever the chunking; lossless encoding so a seam would show."""
    source = make_video(seconds=2)
    request = EnhanceRequest(upscale_factor=2, interpolate=interpolate, crf=0)
    count = 96 if interpolate else 48
    one = enhance_video(
        source, tmp_path / "one.mp4", request, PipelineConfig(max_chunk_frames=1000)
    )
    many = enhance_video(
        source, tmp_path / "many.mp4", request, PipelineConfig(max_chunk_frames=5)
    )  # also splits mid-GOP
    assert one.chunks == 1
    assert many.chunks == 12  # 5, 5, then up to the keyframe at 12, per GOP
    a, b = decode_frames(one.output), decode_frames(many.output)
    assert a.shape == b.shape == (count, 128, 192, 3)
    worst = min(psnr(x, y) for x, y in zip(a, b, strict=True))
    assert worst > 40, f"worst frame PSNR {worst:.1f} dB"


def test_interpolation_to_a_target_fps(make_video, tmp_path: Path):
    source = make_video(seconds=1)
    result = enhance_video(
        source, tmp_path / "out.mp4", EnhanceRequest(upscale_factor=1, target_fps=Fraction(60))
    )
    info = probe(result.output)
    assert (info.fps, info.frame_count) == (60, 60)
    assert info.duration == pytest.approx(1.0)


def test_interpolated_frames_track_the_motion(tmp_path: Path):
    """Synthesised frames beat blending against the true mid-frames (luma: 4:2:0 chroma
    loss would otherwise dominate), and come close to the real frames' own quality."""
    spec = SampleSpec(seconds=1, speed=3.0, audio=False, crf=2)
    source = write_sample_video(tmp_path / "in.mp4", spec)
    result = enhance_video(
        source,
        tmp_path / "out.mp4",
        EnhanceRequest(preset="cinematic", upscale_factor=1, interpolate=2, crf=8),
    )
    frames = decode_frames(result.output)
    assert len(frames) == 48
    real = np.mean([luma_psnr(frames[2 * i], sample_frame(spec, i)) for i in range(24)])
    synthesised = np.mean(
        [luma_psnr(frames[2 * i + 1], sample_frame(spec, i + 0.5)) for i in range(23)]
    )
    blended = np.mean(
        [
            luma_psnr(
                ((frames[2 * i].astype(np.float64) + frames[2 * i + 2]) / 2).astype(np.uint8),
                sample_frame(spec, i + 0.5),
            )
            for i in range(23)
        ]
    )
    assert synthesised > blended + 1.5, (synthesised, blended)
    # The real frames of this clean clip no longer pass a fixed-strength denoiser (the
    # adaptive one leaves them alone), so they measure 43.9 dB against 39.1 for the
    # synthesised ones: the margin is measured against untouched frames now.
    assert synthesised > real - 5, (synthesised, real)


def test_no_blending_across_a_scene_cut(make_video, tmp_path: Path):
    source = make_video("cut.mp4", seconds=1, cut_at_frame=12, audio=False)
    result = enhance_video(
        source, tmp_path / "out.mp4", EnhanceRequest(upscale_factor=1, interpolate=2)
    )
    frames = decode_frames(result.output)
    before, mid, after = frames[22], frames[23], frames[24]
    # The frame between the last of shot 1 and the first of shot 2 repeats one of them
    # (up to encoder noise) instead of mixing the two shots.
    blend = ((before.astype(np.float64) + after) / 2).astype(np.uint8)
    nearest = max(psnr(mid, before), psnr(mid, after))
    assert nearest > 28
    assert nearest > psnr(mid, blend) + 10


def test_rotation_is_applied_to_the_pixels(make_video, tmp_path: Path):
    source = make_video("rot.mp4", rotation=90, seconds=0.5, audio=False)
    result = enhance_video(
        source, tmp_path / "out.mp4", EnhanceRequest(preset="cinematic", upscale_factor=2)
    )
    info = probe(result.output)
    assert (info.width, info.height, info.rotation) == (128, 192, 0)
    upright = decode_frames(make_video("upright.mp4", seconds=0.5, audio=False))
    expected = LanczosUpscale(2)(np.ascontiguousarray(np.rot90(upright, k=-1, axes=(1, 2))))
    assert psnr(decode_frames(result.output)[0], expected[0]) > 28


def test_ten_bit_input(make_video, tmp_path: Path):
    source = make_video("ten.mkv", pixel_format="yuv420p10le", seconds=0.5)
    info = probe(enhance_video(source, tmp_path / "out.mp4").output)
    assert (info.pixel_format, info.bit_depth, info.frame_count) == ("yuv420p10le", 10, 12)


def test_pcm_audio_is_transcoded_to_aac_for_mp4(make_video, tmp_path: Path):
    source = make_video("pcm.mkv", audio_codec="pcm_s16le", seconds=1)
    output = enhance_video(source, tmp_path / "out.mp4", EnhanceRequest(upscale_factor=1)).output
    timing = audio_timing(output)
    assert timing is not None and timing.codec == "aac"
    assert timing.duration == pytest.approx(1.0, abs=0.03)


def test_hevc_in_matroska_copies_audio(make_video, tmp_path: Path):
    source = make_video(seconds=1)
    output = enhance_video(
        source, tmp_path / "out.mkv", EnhanceRequest(upscale_factor=2, codec="hevc")
    ).output
    info = probe(output)
    assert (info.codec, info.width, info.frame_count) == ("hevc", 192, 24)
    _check_audio_in_sync(source, output, info.duration, 24)


def test_progress_reports_reach_the_total(make_video, tmp_path: Path):
    reports: list[Progress] = []
    enhance_video(
        make_video(seconds=2),
        tmp_path / "out.mp4",
        EnhanceRequest(upscale_factor=1),
        PipelineConfig(max_chunk_frames=12),
        on_progress=reports.append,
    )
    done = [r.frames_done for r in reports]
    assert done == sorted(done) and done[-1] == 48
    assert all(r.frames_total == 48 for r in reports)
    assert reports[-1].phase == "assembling" and reports[-1].fps > 0


def _bad_inputs(tmp_path: Path, make_video) -> dict[str, Path]:
    text = tmp_path / "text.mp4"
    text.write_text("not a video")
    data = make_video("whole.mkv", seconds=2).read_bytes()
    truncated = tmp_path / "truncated.mkv"
    truncated.write_bytes(data[: len(data) // 2])
    return {"not_a_video": text, "truncated": truncated}


@pytest.mark.parametrize("reason", ["not_a_video", "truncated"])
def test_bad_input_is_a_typed_error_and_leaves_nothing(make_video, tmp_path: Path, reason: str):
    source = _bad_inputs(tmp_path, make_video)[reason]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    output = tmp_path / "out" / "result.mp4"
    output.parent.mkdir()
    with pytest.raises(InvalidInputError) as caught:
        enhance_video(source, output, config=PipelineConfig(scratch_dir=scratch))
    assert caught.value.reason == reason
    assert list(output.parent.iterdir()) == []
    assert list(scratch.iterdir()) == []


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (EnhanceRequest(upscale_factor=5), "upscale factor"),
        (EnhanceRequest(preset="vivid"), "preset must be one of"),
        (EnhanceRequest(interpolate=3), "interpolate must be 2 or 4"),
        (EnhanceRequest(interpolate=2, target_fps=Fraction(60)), "not both"),
        (EnhanceRequest(target_fps=Fraction(1000)), "fps must be in"),
        (EnhanceRequest(codec="vp8"), "codec must be one of"),
        (EnhanceRequest(crf=60), "crf must be in"),
    ],
)
def test_impossible_requests_fail_before_any_work(
    make_video, tmp_path: Path, request_: EnhanceRequest, message: str
):
    with pytest.raises(InvalidOptionsError, match=message):
        enhance_video(make_video(), tmp_path / "out.mp4", request_)
    assert not (tmp_path / "out.mp4").exists()


def test_unsupported_output_container(make_video, tmp_path: Path):
    with pytest.raises(InvalidOptionsError, match="output must end in"):
        enhance_video(make_video(), tmp_path / "out.avi")


def _alive_stage_actors() -> list[str]:
    import ray._private.state as state

    return [
        a["ActorClassName"]
        for a in state.actors().values()
        if a["State"] == "ALIVE" and "MapWorker" in a["ActorClassName"]
    ]


def test_cancel_stops_work_releases_actors_and_leaves_nothing(make_video, tmp_path: Path):
    source = make_video("long.mp4", width=160, height=120, seconds=8, audio=False)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    output = tmp_path / "out.mp4"
    cancel = CancelToken()
    first_chunk = threading.Event()

    def cancel_after_the_first_segment() -> None:
        # Progress now comes from every stage as it works, so it starts while the stage
        # actors are still being built; a cancel at that point can leave an actor that
        # Ray fails to kill mid-construction (README, Known limitations).  The test
        # cancels where it always did: once the first segment is written.
        deadline = time.monotonic() + 120
        while not list(scratch.glob("*/segment_*.mp4")) and time.monotonic() < deadline:
            time.sleep(0.05)
        first_chunk.set()
        cancel.cancel()

    threading.Thread(target=cancel_after_the_first_segment, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(PipelineCanceled):
        enhance_video(
            source,
            output,
            EnhanceRequest(upscale_factor=2, interpolate=2),
            PipelineConfig(scratch_dir=scratch, max_chunk_frames=6, operator_compute="actors"),
            cancel=cancel,
        )
    assert first_chunk.is_set()
    assert time.monotonic() - started < 60  # the whole job would take minutes
    assert not output.exists()
    assert list(scratch.iterdir()) == []
    deadline = time.monotonic() + 10
    while _alive_stage_actors() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _alive_stage_actors() == []


def test_cancel_stops_streamed_chunks_midway(make_video, tmp_path: Path):
    """A streamed chunk (decode, filters and encode in one task) stops at its next check
    once the job is canceled, instead of running to its end: here one chunk of 384
    frames, ×4 to 1280×960 (several seconds of encoding), canceled as soon as work is
    reported; the job ends well before the chunk could have, and leaves nothing."""
    source = make_video("long.mp4", width=320, height=240, seconds=16, audio=False)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    cancel = CancelToken()
    canceled_at: list[float] = []

    def cancel_once_working(progress: Progress) -> None:
        if progress.fraction > 0 and not canceled_at:
            canceled_at.append(time.monotonic())
            cancel.cancel()

    request = EnhanceRequest(preset="general", engine="classical", upscale_factor=4)
    with pytest.raises(PipelineCanceled):
        enhance_video(
            source,
            tmp_path / "out.mp4",
            request,
            PipelineConfig(scratch_dir=scratch, max_chunk_frames=384),
            on_progress=cancel_once_working,
            cancel=cancel,
        )
    stopped_after = time.monotonic() - canceled_at[0]
    # The chunk alone takes ~9 s on 2 cores; checks come every 0.25 s, a few frames apart.
    assert stopped_after < 4, stopped_after
    assert list(scratch.iterdir()) == []


def test_cancel_before_start(make_video, tmp_path: Path):
    cancel = CancelToken()
    cancel.cancel()
    with pytest.raises(PipelineCanceled):
        enhance_video(make_video(), tmp_path / "out.mp4", cancel=cancel)
    assert not (tmp_path / "out.mp4").exists()


def test_mp4_output_is_faststart(make_video, tmp_path: Path):
    data = enhance_video(
        make_video(), tmp_path / "out.mp4", EnhanceRequest(upscale_factor=1)
    ).output.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")  # index before the media data


def _zero_frame_and_audio_only(tmp_path: Path) -> dict[str, Path]:
    spec = SampleSpec(width=64, height=48, seconds=0.5)
    return {
        "no_frames": write_zero_frame_video(tmp_path / "zero.mkv", spec),
        "no_video": write_audio_only(tmp_path / "tone.m4a", spec),
    }


@pytest.mark.parametrize("reason", ["no_frames", "no_video"])
def test_frameless_inputs_fail_cleanly(tmp_path: Path, reason: str):
    source = _zero_frame_and_audio_only(tmp_path)[reason]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(InvalidInputError) as caught:
        enhance_video(source, tmp_path / "out.mp4", config=PipelineConfig(scratch_dir=scratch))
    assert caught.value.reason == reason
    assert not (tmp_path / "out.mp4").exists() and list(scratch.iterdir()) == []


def test_subtitles_are_copied_where_the_container_takes_them(make_video, tmp_path: Path):
    import shutil
    import subprocess

    import av

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("needs Debian's ffmpeg to author a subtitle track (apt-get install ffmpeg)")
    srt = tmp_path / "subs.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:00,900\nhéllo\n", encoding="utf-8")
    source = tmp_path / "subbed.mkv"
    subprocess.run(
        [
            ffmpeg,
            "-v",
            "error",
            "-i",
            str(make_video(seconds=1)),
            "-i",
            str(srt),
            "-map",
            "0",
            "-map",
            "1",
            "-c",
            "copy",
            "-c:s",
            "srt",
            str(source),
        ],
        check=True,
    )
    mkv = enhance_video(source, tmp_path / "out.mkv", EnhanceRequest(upscale_factor=1)).output
    with av.open(str(mkv)) as container:
        [subtitle] = container.streams.subtitles
        assert subtitle.codec_context.name in ("subrip", "srt")
        packets = [p for p in container.demux(subtitle) if p.size]
        assert len(packets) == 1 and "héllo".encode() in bytes(packets[0])
    mp4 = enhance_video(source, tmp_path / "out.mp4", EnhanceRequest(upscale_factor=1)).output
    with av.open(str(mp4)) as container:
        assert not container.streams.subtitles  # MP4 takes mov_text only: dropped, logged
        assert container.streams.audio


def test_decode_pinned_to_the_driver_node(make_video, tmp_path: Path):
    """What a multi-node cluster gets: decode tasks held to the node with the input."""
    assert decode_placement(PipelineConfig()) == {}  # one node: nothing to pin
    pinned = PipelineConfig(decode_on_driver_node=True, max_chunk_frames=12)
    strategy = decode_placement(pinned)["scheduling_strategy"]
    assert strategy.node_id == ray.get_runtime_context().get_node_id()
    assert strategy.soft is False
    result = enhance_video(make_video(seconds=1), tmp_path / "out.mp4", config=pinned)
    assert decode_frames(result.output).shape == (24, 128, 192, 3)


def test_stage_log_lines_carry_the_job_id(caplog: pytest.LogCaptureFixture):
    """Worker log lines from our packages name the job (the dataset's name), so an
    operator can grep any Ray worker's log for a job id."""
    import logging

    from pipelines import stages

    levels = {name: logging.getLogger(name).level for name in ("models", "pipelines")}
    stages._log_here("job_abc")
    try:
        with caplog.at_level(logging.INFO):
            logging.getLogger("pipelines.stages").info("chunk %d encoded", 3)
            logging.getLogger("models.runtime").info("runtime %s", "ncnn")
            logging.getLogger("elsewhere").info("untouched")
    finally:
        stages._log_here(None)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    assert [r.getMessage() for r in caplog.records] == [
        "job job_abc: chunk 3 encoded",
        "job job_abc: runtime ncnn",
        "untouched",
    ]
