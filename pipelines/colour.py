"""Exact RGB ↔ Y'CbCr conversion, and the colour tags an output inherits from its input.

Why not swscale: its default YUV ↔ RGB path (what ``VideoFrame.to_ndarray("rgb24")`` and
``from_ndarray(..., "rgb24")`` use) rounds and resamples chroma in ways that darken every
round trip by about 1.4 levels per channel (``shared/notes/colour-roundtrip.md``), and it
takes the matrix from tags it often doesn't get.  Here the matrix and range come from
the input (with the usual defaults by resolution where it is untagged), arithmetic is
float32 and every conversion rounds.

Chroma is resampled with centred siting: bilinear up (``cv2.resize`` ×2 is exactly the
¾/¼ kernel), box down.  Up then down blurs chroma by ``[⅛, ¾, ⅛]`` per axis, so the
down path pre-compensates with the second-order inverse of that kernel; a frame that
went through no operator comes back within rounding of its source planes
(``tests/test_colour.py``: > 50 dB, mean shift < 0.1).

Pixels in the pipeline are RGB ``uint8`` for 8-bit inputs and RGB ``uint16`` (full
0–65535 scale) for inputs deeper than 8 bits, whose outputs are 10-bit.
When every operator of a job can work on Y'CbCr planes (a resize alone, or none), the
pipeline carries the decoded 4:2:0 planes instead (:func:`frame_to_yuv420`,
:func:`yuv420_to_frame`) and converts nothing: the output's codes are the input's,
resampled, as with ffmpeg's own ``scale``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction
from typing import cast

import av
import cv2
import numpy as np
from av.sidedata.sidedata import SideDataContainer

__all__ = [
    "YUV420_FORMATS",
    "ColourSpec",
    "colour_spec",
    "frame_to_rgb",
    "frame_to_yuv420",
    "rgb_to_frame",
    "yuv420_to_frame",
]

# FFmpeg's enum values (libavutil/pixfmt.h), as PyAV reports and accepts them.
SPC_BT709, SPC_UNSPECIFIED, SPC_BT470BG, SPC_SMPTE170M = 1, 2, 5, 6
SPC_BT2020_NCL, SPC_BT2020_CL = 9, 10
RANGE_UNSPECIFIED, RANGE_FULL = 0, 2
UNSPECIFIED = 2  # primaries and transfer
TRC_PQ, TRC_HLG = 16, 18

# Decoded formats whose planes are already what a planar 4:2:0 pipeline carries, by
# the output pixel format (yuvj420p is yuv420p whose full range is told by its name).
YUV420_FORMATS: dict[str, tuple[str, ...]] = {
    "yuv420p": ("yuv420p", "yuvj420p"),
    "yuv420p10le": ("yuv420p10le",),
}

# Luma coefficients (Kr, Kb) per matrix.
_MATRICES: dict[str, tuple[float, float]] = {
    "bt601": (0.299, 0.114),
    "bt709": (0.2126, 0.0722),
    "bt2020": (0.2627, 0.0593),
}
_MATRIX_OF_SPACE = {
    SPC_BT709: "bt709",
    SPC_BT470BG: "bt601",
    SPC_SMPTE170M: "bt601",
    # Constant-luminance BT.2020 is all but unused; decoded as NCL.
    SPC_BT2020_NCL: "bt2020",
    SPC_BT2020_CL: "bt2020",
}

# Up-then-down chroma blurs by [1/8, 3/4, 1/8]; this is (I - aL + a²L²) with a = 1/8,
# L = [1, -2, 1]: its inverse to second order.
_CHROMA_COMPENSATION = np.array([1 / 64, -12 / 64, 86 / 64, -12 / 64, 1 / 64], np.float32)


@dataclass(frozen=True)
class ColourSpec:
    """How an input's pixels map to RGB, and the tags its output carries."""

    matrix: str = "bt709"  # "bt601" | "bt709" | "bt2020"
    full_range: bool = False
    bit_depth: int = 8  # of the encoded output: 8 or 10
    # Tags, passed through as the input had them: an untagged input gives an untagged
    # output, so players (and ffmpeg, which decodes untagged video as BT.601) guess for
    # the output exactly what they guessed for the input.
    space_tag: int = SPC_UNSPECIFIED  # FFmpeg AVColorSpace
    range_tag: int = RANGE_UNSPECIFIED  # FFmpeg AVColorRange
    primaries: int = UNSPECIFIED  # FFmpeg AVColorPrimaries
    transfer: int = UNSPECIFIED  # FFmpeg AVColorTransferCharacteristic
    mastering_display: str | None = None  # x265 syntax: G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)
    content_light: str | None = None  # "MaxCLL,MaxFALL"

    @property
    def hdr(self) -> bool:
        return self.transfer in (TRC_PQ, TRC_HLG)

    @property
    def pixel_format(self) -> str:
        return "yuv420p10le" if self.bit_depth > 8 else "yuv420p"

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        """The dtype of pipeline frames for this input."""
        return np.uint16 if self.bit_depth > 8 else np.uint8


def default_matrix(width: int, height: int) -> str:
    """What players assume for untagged video: BT.709 from 720p up, BT.601 below."""
    return "bt709" if width >= 1280 or height >= 720 else "bt601"


def _mastering_display(raw: bytes) -> str | None:
    """x265's master-display string from FFmpeg's AVMasteringDisplayMetadata.

    The struct is 10 rationals (R, G, B primaries x/y, white point x/y, min and max
    luminance) and two flags; x265 wants chromaticity in 1/50000 and luminance in
    1/10000 cd/m².
    """
    if len(raw) < 88:
        return None
    ints = struct.unpack_from("<22i", raw)
    if not (ints[20] and ints[21]):
        return None
    value = [
        Fraction(ints[2 * i], ints[2 * i + 1]) if ints[2 * i + 1] else Fraction(0)
        for i in range(10)
    ]
    xy = [round(v * 50000) for v in value[:8]]
    lum_min, lum_max = (round(v * 10000) for v in value[8:])
    return (
        f"G({xy[2]},{xy[3]})B({xy[4]},{xy[5]})R({xy[0]},{xy[1]})"
        f"WP({xy[6]},{xy[7]})L({lum_max},{lum_min})"
    )


def colour_spec(frame: av.VideoFrame, bit_depth: int) -> ColourSpec:
    """The conversion and tags for a stream whose first decoded frame is ``frame``."""
    space = frame.colorspace
    matrix = _MATRIX_OF_SPACE.get(space) or default_matrix(frame.width, frame.height)
    full = frame.color_range == RANGE_FULL or frame.format.name.startswith("yuvj")
    # yuvj formats say "full range" by their name; our yuv420p output must say it in a tag.
    range_tag = RANGE_FULL if full else frame.color_range
    mastering = light = None
    # PyAV's Frame stub types side_data as one item; it is the container of them.
    for side in cast(SideDataContainer, frame.side_data):
        name = side.type.name
        if name == "MASTERING_DISPLAY_METADATA":
            mastering = _mastering_display(bytes(side))
        elif name == "CONTENT_LIGHT_LEVEL":
            max_cll, max_fall = struct.unpack_from("<2I", bytes(side))
            light = f"{max_cll},{max_fall}"
    return ColourSpec(
        matrix=matrix,
        full_range=full,
        bit_depth=10 if bit_depth > 8 else 8,
        space_tag=space if space in _MATRIX_OF_SPACE else SPC_UNSPECIFIED,
        range_tag=range_tag,
        primaries=frame.color_primaries,
        transfer=frame.color_trc,
        mastering_display=mastering,
        content_light=light,
    )


def _yuv_scale(spec: ColourSpec, depth: int) -> tuple[float, float, float, float]:
    """(luma offset, luma span, chroma offset, chroma span) in code values at ``depth``."""
    unit = float(1 << (depth - 8))
    if spec.full_range:
        full = float((1 << depth) - 1)
        return 0.0, full, 128.0 * unit, full
    return 16.0 * unit, 219.0 * unit, 128.0 * unit, 224.0 * unit


def _planes(frame: av.VideoFrame) -> tuple[list[np.ndarray], int] | None:
    """The Y, U, V planes of a planar little-endian YUV frame, and its bit depth."""
    fmt = frame.format
    name = fmt.name
    if not name.startswith(("yuv", "yuvj")) or len(frame.planes) != 3 or name.endswith("be"):
        return None
    depth = max(c.bits for c in fmt.components)
    dtype = np.dtype("<u2") if depth > 8 else np.dtype(np.uint8)
    planes = []
    for plane in frame.planes:
        row = plane.line_size // dtype.itemsize
        pixels = np.frombuffer(memoryview(plane), dtype, count=row * plane.height)
        planes.append(pixels.reshape(plane.height, row)[:, : plane.width])
    return planes, depth


def _upsample(chroma: np.ndarray, height: int, width: int) -> np.ndarray:
    ch, cw = chroma.shape
    if (ch, cw) == (height, width):
        return chroma
    sy, sx = round(height / ch), round(width / cw)
    up = cv2.resize(chroma, (cw * sx, ch * sy), interpolation=cv2.INTER_LINEAR)
    return up[:height, :width]


def frame_to_rgb(frame: av.VideoFrame, spec: ColourSpec) -> np.ndarray:
    """RGB pixels of ``frame`` (``spec.dtype``, full scale), converted as ``spec`` says."""
    out_max = float(np.iinfo(spec.dtype).max)
    found = _planes(frame)
    if found is None:
        if frame.format.is_rgb or frame.format.name.startswith(("gray", "pal", "ya")):
            # No matrix involved: swscale only repacks (or replicates grey).
            return frame.to_ndarray(format="rgb48le" if spec.bit_depth > 8 else "rgb24")
        # Semi-planar and packed YUV (nv12, p010, yuyv422): repacked without conversion.
        frame = frame.reformat(
            format="yuv420p10le"
            if spec.bit_depth > 8
            else ("yuvj420p" if spec.full_range else "yuv420p")
        )
        found = _planes(frame)
        assert found is not None
    (y_plane, u_plane, v_plane), depth = found
    height, width = y_plane.shape
    y_off, y_span, c_off, c_span = _yuv_scale(spec, depth)
    kr, kb = _MATRICES[spec.matrix]
    # Code values in, one affine map (cv2.transform: one threaded pass) to rounded RGB.
    # Bilinear chroma upsampling commutes with the affine code → value map (its
    # weights sum to 1), so the raw codes are upsampled.
    y = y_plane.astype(np.float32)
    u = _upsample(u_plane.astype(np.float32), height, width)
    v = _upsample(v_plane.astype(np.float32), height, width)
    # R = Y + (2 - 2Kr) V, B = Y + (2 - 2Kb) U, G = (Y - Kr R - Kb B) / (1 - Kr - Kb),
    # with Y = (y - y_off) / y_span and U, V = (code - c_off) / c_span.
    kg = 1 - kr - kb
    cr, cb = (2 - 2 * kr), (2 - 2 * kb)
    rows = np.array([[1.0, 0.0, cr], [1.0, -kb * cb / kg, -kr * cr / kg], [1.0, cb, 0.0]])
    scale = np.array([1 / y_span, 1 / c_span, 1 / c_span])
    offset = np.array([y_off, c_off, c_off])
    matrix = rows * scale * out_max
    affine = np.hstack([matrix, (0.5 - matrix @ offset)[:, None]]).astype(np.float32)
    rgb = cv2.transform(cv2.merge([y, u, v]), affine)
    np.clip(rgb, 0, out_max, out=rgb)
    return rgb.astype(spec.dtype)


def _downsample(chroma: np.ndarray) -> np.ndarray:
    """4:2:0 chroma from full-resolution chroma (even size): box, then compensated."""
    height, width = chroma.shape
    box = cv2.resize(chroma, (width // 2, height // 2), interpolation=cv2.INTER_AREA)
    return cv2.sepFilter2D(
        box, -1, _CHROMA_COMPENSATION, _CHROMA_COMPENSATION, borderType=cv2.BORDER_REPLICATE
    )


def rgb_to_frame(rgb: np.ndarray, spec: ColourSpec) -> av.VideoFrame:
    """A ``spec.pixel_format`` frame of ``rgb`` (H, W, 3; even H and W), tagged per ``spec``."""
    height, width = rgb.shape[:2]
    depth = spec.bit_depth
    code_max = float((1 << depth) - 1)
    y_off, y_span, c_off, c_span = _yuv_scale(spec, depth)
    kr, kb = _MATRICES[spec.matrix]
    kg = 1 - kr - kb
    # RGB straight to code values (+ 0.5, so truncation rounds) in one affine map
    # (cv2.transform: one threaded pass instead of ~10 numpy passes over 4K planes).
    # Chroma is coded before it is downsampled: box and compensation filters have
    # weights summing to 1, so they commute with the affine map.
    rows = np.array(
        [
            [kr, kg, kb],
            [-kr / (2 - 2 * kb), -kg / (2 - 2 * kb), 0.5],
            [0.5, -kg / (2 - 2 * kr), -kb / (2 - 2 * kr)],
        ]
    )
    spans = np.array([y_span, c_span, c_span])[:, None]
    offsets = np.array([y_off, c_off, c_off]) + 0.5
    matrix = rows * spans / float(np.iinfo(rgb.dtype).max)
    affine = np.hstack([matrix, offsets[:, None]]).astype(np.float32)
    y, pb, pr = cv2.split(cv2.transform(rgb.astype(np.float32), affine))
    dtype = np.uint16 if depth > 8 else np.uint8

    def code(values: np.ndarray) -> np.ndarray:
        np.clip(values, 0, code_max, out=values)
        return values.astype(dtype).ravel()

    flat = np.concatenate([code(y), code(_downsample(pb)), code(_downsample(pr))])
    return yuv420_to_frame(flat.reshape(height * 3 // 2, width), spec)


def frame_to_yuv420(frame: av.VideoFrame, spec: ColourSpec, rotation: int = 0) -> np.ndarray:
    """``frame``'s own Y, Cb and Cr codes, packed ``(H * 3 // 2, W)`` as
    ``spec.pixel_format`` lays them out (:mod:`models.operator`), rotated clockwise by
    ``rotation`` degrees.  No conversion: the planner chooses this layout only for inputs
    decoded in one of :data:`YUV420_FORMATS`; a stray frame in another format is
    converted to it by swscale (which changes no matrix or range, only the sampling)."""
    if frame.format.name not in YUV420_FORMATS[spec.pixel_format]:
        frame = frame.reformat(format=spec.pixel_format)
    found = _planes(frame)
    assert found is not None  # every format in YUV420_FORMATS is planar YUV
    planes = found[0]
    if rotation:
        planes = [np.rot90(plane, k=-(rotation // 90)) for plane in planes]
    height, width = planes[0].shape
    return np.concatenate([plane.ravel() for plane in planes]).reshape(height * 3 // 2, width)


def yuv420_to_frame(planes: np.ndarray, spec: ColourSpec) -> av.VideoFrame:
    """A ``spec.pixel_format`` frame of packed planes ``(H * 3 // 2, W)``, tagged per ``spec``."""
    frame = av.VideoFrame.from_ndarray(planes, format=spec.pixel_format)
    frame.colorspace = spec.space_tag
    frame.color_range = spec.range_tag
    frame.color_primaries = spec.primaries
    frame.color_trc = spec.transfer
    return frame
