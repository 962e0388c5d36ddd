"""The one-pass (cv2.transform) colour conversions against the formulas written out
plane by plane, as pipelines/colour.py computed them before (numpy, ~10 passes):
every code value within 1, almost all equal, for each matrix, range and bit depth."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from pipelines.colour import (
    _MATRICES,
    ColourSpec,
    _downsample,
    _upsample,
    _yuv_scale,
    frame_to_rgb,
    rgb_to_frame,
)


def _reference_planes(rgb: np.ndarray, spec: ColourSpec) -> list[np.ndarray]:
    depth = spec.bit_depth
    code_max = float((1 << depth) - 1)
    y_off, y_span, c_off, c_span = _yuv_scale(spec, depth)
    kr, kb = _MATRICES[spec.matrix]
    pixels = rgb.astype(np.float32) * (1 / float(np.iinfo(rgb.dtype).max))
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    y = kr * r + (1 - kr - kb) * g + kb * b
    pb = _downsample((b - y) * (1 / (2 - 2 * kb)))
    pr = _downsample((r - y) * (1 / (2 - 2 * kr)))
    dtype = np.uint16 if depth > 8 else np.uint8

    def code(values: np.ndarray, offset: float, span: float) -> np.ndarray:
        values = values * span + (offset + 0.5)
        np.clip(values, 0, code_max, out=values)
        return values.astype(dtype)

    return [code(y, y_off, y_span), code(pb, c_off, c_span), code(pr, c_off, c_span)]


def _reference_rgb(planes: list[np.ndarray], spec: ColourSpec) -> np.ndarray:
    out_max = float(np.iinfo(spec.dtype).max)
    y_plane, u_plane, v_plane = planes
    height, width = y_plane.shape
    y_off, y_span, c_off, c_span = _yuv_scale(spec, spec.bit_depth)
    kr, kb = _MATRICES[spec.matrix]
    y = (y_plane.astype(np.float32) - y_off) * (1 / y_span)
    u = _upsample((u_plane.astype(np.float32) - c_off) * (1 / c_span), height, width)
    v = _upsample((v_plane.astype(np.float32) - c_off) * (1 / c_span), height, width)
    rgb = np.empty((height, width, 3), np.float32)
    rgb[..., 0] = y + (2 - 2 * kr) * v
    rgb[..., 2] = y + (2 - 2 * kb) * u
    rgb[..., 1] = (y - kr * rgb[..., 0] - kb * rgb[..., 2]) * (1 / (1 - kr - kb))
    rgb = rgb * out_max + 0.5
    np.clip(rgb, 0, out_max, out=rgb)
    return rgb.astype(spec.dtype)


def _planes(frame, depth: int) -> list[np.ndarray]:
    dtype = np.dtype("<u2") if depth > 8 else np.dtype(np.uint8)
    out = []
    for plane in frame.planes:
        row = plane.line_size // dtype.itemsize
        pixels = np.frombuffer(plane, dtype, count=row * plane.height)
        out.append(pixels.reshape(plane.height, row)[:, : plane.width])
    return out


@pytest.mark.parametrize("depth", [8, 10])
@pytest.mark.parametrize("full_range", [False, True])
@pytest.mark.parametrize("matrix", sorted(_MATRICES))
def test_one_pass_conversions_match_the_plane_formulas(
    matrix: str, full_range: bool, depth: int
) -> None:
    spec = ColourSpec(matrix=matrix, full_range=full_range, bit_depth=depth)
    photo = cv2.resize(data.astronaut(), (320, 180), interpolation=cv2.INTER_AREA)
    noise = np.random.default_rng(3).integers(0, 256, (180, 320, 3), dtype=np.uint8)
    for image in (photo, noise):
        rgb = image if depth == 8 else image.astype(np.uint16) * 257
        frame = rgb_to_frame(rgb, spec)
        ours = _planes(frame, depth)
        for got, want in zip(ours, _reference_planes(rgb, spec), strict=True):
            diff = np.abs(got.astype(int) - want.astype(int))
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
        back = frame_to_rgb(frame, spec).astype(int)
        diff = np.abs(back - _reference_rgb(ours, spec).astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-2
