"""The colour path end to end: what comes out looks like what went in, tags and all.

Every comparison decodes with the ffmpeg CLI, as a user's player or tool would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from benchmarks.fidelity import clip_path, decode_rgb
from pipelines.colour import ColourSpec, frame_to_rgb, rgb_to_frame
from pipelines.enhance import enhance_video
from pipelines.job_plan import EnhanceRequest, plan_job
from pipelines.noise_probe import measure_noise
from pipelines.probe import probe
from vocabulary import FrameLayout

FFMPEG = shutil.which("ffmpeg")
pytestmark = pytest.mark.skipif(
    FFMPEG is None, reason="needs Debian's ffmpeg (make test installs it)"
)
# Clean in, identity out: no upscale, no interpolation, and the adaptive denoiser leaves
# clean footage alone, so the chain is empty and only the colour path remains.
IDENTITY = EnhanceRequest(
    preset="general", engine="classical", upscale_factor=1, interpolate=1, crf=0
)


@pytest.fixture(params=list(FrameLayout))
def layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> FrameLayout:
    """Each colour test runs both ways frames can travel: the planner's own choice for
    these inputs is planar 4:2:0 (no conversion at all), and RGB is what every job with
    a model or a denoiser takes, so the exact RGB path is held to the same bar."""
    if request.param == FrameLayout.RGB:
        monkeypatch.setattr("pipelines.job_plan.frame_layout", lambda *_: FrameLayout.RGB)
    return FrameLayout(request.param)


def _planned(source: Path, request: EnhanceRequest, layout: FrameLayout) -> None:
    """The layout under test is the one the job runs with (the planner's own, for yuv420)."""
    info = probe(source)
    plan = plan_job(info, request, noise=measure_noise(info), chunk_budget_bytes=2**26)
    assert plan.layout == layout


def _ffprobe(path: Path, *args: str) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-of", "json", *args, str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def _stream(path: Path) -> dict:
    return _ffprobe(path, "-select_streams", "v:0", "-show_streams")["streams"][0]


def _tags(path: Path) -> tuple:
    s = _stream(path)
    # FFmpeg's H.264 decoder names full-range 4:2:0 "yuvj420p": the same thing.
    return (
        s.get("pix_fmt", "").replace("yuvj", "yuv"),
        s.get("color_range"),
        s.get("color_space"),
        s.get("color_primaries"),
        s.get("color_transfer"),
    )


def _compare(a: np.ndarray, b: np.ndarray) -> tuple[float, np.ndarray]:
    diff = a.astype(np.float64) - b.astype(np.float64)
    mse = float(np.mean(diff**2))
    return (float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse), diff.mean(axis=(0, 1, 2)))


def _make(tmp_path: Path, name: str, *args: str, matrix: str = "bt601", full: bool = False) -> Path:
    """12 frames of real footage converted (not just tagged) to ``matrix`` and range."""
    out = tmp_path / name
    convert = (
        f"scale=in_color_matrix=bt601:in_range=tv:out_color_matrix={matrix}:"
        f"out_range={'pc' if full else 'tv'}:flags=bicubic+accurate_rnd"
    )
    subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-y",
            "-i",
            str(clip_path("carphone_pristine.mp4")),
            "-frames:v",
            "12",
            "-vf",
            convert,
            *args,
            str(out),
        ],
        check=True,
    )
    return out


@pytest.mark.parametrize("clip", ["carphone_pristine.mp4", "bigbuckbunny.mp4"])
def test_identity_round_trip_has_no_shift(
    clip: str, layout: FrameLayout, tmp_path: Path, ray_session: None
):
    source = tmp_path / "in.mp4"
    subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-i",
            str(clip_path(clip)),
            "-frames:v",
            "10",
            "-c",
            "copy",
            str(source),
        ],
        check=True,
    )
    _planned(source, IDENTITY, layout)
    output = enhance_video(source, tmp_path / "out.mp4", IDENTITY).output
    original, ours = decode_rgb(source, 10), decode_rgb(output, 10)
    psnr, shift = _compare(ours, original)
    assert psnr > 50, psnr
    assert np.all(np.abs(shift) < 0.1), shift


def test_swscale_default_path_would_have_failed(tmp_path: Path):
    """The old path (PyAV rgb24 both ways) on the same frames: the bias this fixes."""
    source = clip_path("carphone_pristine.mp4")
    with av.open(str(source)) as container:
        frames = [f for _, f in zip(range(5), container.decode(video=0), strict=False)]
    spec = ColourSpec(matrix="bt601")
    old = np.stack(
        [
            av.VideoFrame.from_ndarray(f.to_ndarray(format="rgb24"), format="rgb24")
            .reformat(format="yuv420p")
            .to_ndarray(format="rgb24")
            for f in frames
        ]
    )
    new = np.stack(
        [rgb_to_frame(frame_to_rgb(f, spec), spec).to_ndarray(format="rgb24") for f in frames]
    )
    reference = np.stack([f.to_ndarray(format="rgb24") for f in frames])
    assert np.all(np.abs(_compare(old, reference)[1]) > 0.5)
    assert np.all(np.abs(_compare(new, reference)[1]) < 0.1)


@pytest.mark.parametrize(
    ("name", "args", "matrix", "tags"),
    [
        (
            "bt709.mp4",
            [
                "-pix_fmt",
                "yuv420p",
                "-colorspace",
                "bt709",
                "-color_primaries",
                "bt709",
                "-color_trc",
                "bt709",
            ],
            "bt709",
            ("yuv420p", "tv", "bt709", "bt709", "bt709"),
        ),
        (
            "bt601.mp4",
            [
                "-pix_fmt",
                "yuv420p",
                "-colorspace",
                "smpte170m",
                "-color_primaries",
                "smpte170m",
                "-color_trc",
                "smpte170m",
            ],
            "smpte170m",
            ("yuv420p", "tv", "smpte170m", "smpte170m", "smpte170m"),
        ),
        (
            "full.mp4",
            ["-pix_fmt", "yuv420p", "-color_range", "pc", "-colorspace", "bt709"],
            "bt709",
            ("yuv420p", "pc", "bt709", None, None),
        ),
    ],
)
def test_tagged_inputs_keep_tags_and_colours(
    name: str,
    args: list[str],
    matrix: str,
    tags: tuple,
    layout: FrameLayout,
    tmp_path: Path,
    ray_session: None,
):
    source = _make(
        tmp_path,
        name,
        "-c:v",
        "libx264",
        "-crf",
        "0",
        *args,
        matrix="bt709" if matrix == "bt709" else "bt601",
        full=tags[1] == "pc",
    )
    _planned(source, IDENTITY, layout)
    output = enhance_video(source, tmp_path / "out.mp4", IDENTITY).output
    assert _tags(output) == _tags(source) == tags
    psnr, shift = _compare(decode_rgb(output, 12), decode_rgb(source, 12))
    assert psnr > 45 and np.all(np.abs(shift) < 0.2), (psnr, shift)
    # Our RGB means what ffmpeg's accurate conversion with the tagged matrix means; the
    # other matrix would be several levels off on these saturated bars.
    full = "pc" if tags[1] == "pc" else "tv"
    reference = subprocess.run(
        [
            FFMPEG,
            "-v",
            "error",
            "-i",
            str(source),
            "-frames:v",
            "1",
            "-vf",
            f"scale=in_color_matrix={'bt709' if matrix == 'bt709' else 'bt601'}:in_range={full}"
            ":flags=bicubic+accurate_rnd+full_chroma_int",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    info = probe(source)
    with av.open(str(source)) as container:
        ours = frame_to_rgb(next(container.decode(video=0)), info.colour)
    theirs = np.frombuffer(reference, np.uint8).reshape(ours.shape)
    assert np.all(np.abs(_compare(ours, theirs)[1]) < 0.5)


def test_ten_bit_hevc_stays_ten_bit(layout: FrameLayout, tmp_path: Path, ray_session: None):
    source = _make(
        tmp_path,
        "ten.mp4",
        "-pix_fmt",
        "yuv420p10le",
        "-c:v",
        "libx265",
        "-x265-params",
        "log-level=error:lossless=1",
    )
    _planned(source, IDENTITY, layout)
    output = enhance_video(source, tmp_path / "out.mp4", IDENTITY).output
    assert _stream(output)["pix_fmt"] == "yuv420p10le"
    decode = ["-frames:v", "12", "-f", "rawvideo", "-pix_fmt", "rgb48le", "-"]
    a, b = (
        np.frombuffer(
            subprocess.run(
                [FFMPEG, "-v", "error", "-i", str(p), *decode], capture_output=True, check=True
            ).stdout,
            "<u2",
        )
        for p in (source, output)
    )
    # PSNR at 16-bit scale: 10 bits kept means far better than 8-bit rounding (~59 dB);
    # planar frames pass through untouched, so that path is exact.
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    if layout == FrameLayout.YUV420:
        assert mse == 0, mse
    else:
        assert 10 * np.log10(65535.0**2 / mse) > 62


HDR10 = ("G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)", "1000,400")


def test_hdr10_keeps_tags_and_side_data(layout: FrameLayout, tmp_path: Path, ray_session: None):
    source = _make(
        tmp_path,
        "hdr.mp4",
        "-pix_fmt",
        "yuv420p10le",
        "-c:v",
        "libx265",
        "-x265-params",
        f"log-level=error:hdr10=1:master-display={HDR10[0]}:max-cll={HDR10[1]}",
        "-color_primaries",
        "bt2020",
        "-color_trc",
        "smpte2084",
        "-colorspace",
        "bt2020nc",
    )
    assert probe(source).colour.mastering_display == HDR10[0]
    request = EnhanceRequest(engine="classical", upscale_factor=2)
    _planned(source, request, layout)
    output = enhance_video(source, tmp_path / "out.mp4", request).output
    assert _tags(output) == ("yuv420p10le", "tv", "bt2020nc", "bt2020", "smpte2084")
    assert _stream(output)["codec_name"] == "hevc"

    def side_data(path: Path) -> dict[str, dict]:
        frame = _ffprobe(path, "-select_streams", "v:0", "-show_frames", "-read_intervals", "%+#1")[
            "frames"
        ][0]
        return {
            d["side_data_type"]: d
            for d in frame.get("side_data_list", [])
            if "User Data" not in d["side_data_type"]
        }

    assert side_data(output) == side_data(source)
    assert set(side_data(output)) == {"Mastering display metadata", "Content light level metadata"}


def test_hdr_input_refuses_h264(tmp_path: Path):
    from pipelines.errors import InvalidOptionsError
    from pipelines.job_plan import plan_job
    from pipelines.noise_probe import NoiseLevel

    CLEAN = NoiseLevel(0.5, 0.05)

    source = _make(
        tmp_path,
        "hlg.mp4",
        "-pix_fmt",
        "yuv420p10le",
        "-c:v",
        "libx265",
        "-x265-params",
        "log-level=error",
        "-color_primaries",
        "bt2020",
        "-color_trc",
        "arib-std-b67",
        "-colorspace",
        "bt2020nc",
    )
    info = probe(source)
    assert info.colour.hdr
    with pytest.raises(InvalidOptionsError, match="HDR input needs codec hevc"):
        plan_job(info, EnhanceRequest(codec="h264"), noise=CLEAN, chunk_budget_bytes=1 << 26)
    assert (
        plan_job(info, EnhanceRequest(), noise=CLEAN, chunk_budget_bytes=1 << 26).encoder.codec
        == "hevc"
    )
