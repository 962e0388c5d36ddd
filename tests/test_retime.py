from __future__ import annotations

from fractions import Fraction

import numpy as np

from models.flow_interpolation import FlowInterpolator
from pipelines.retime import output_positions, retime_chunk
from pipelines.sample_video import SampleSpec, sample_frame

SPEC = SampleSpec(width=96, height=64)


def test_positions_for_doubling():
    assert output_positions(10, 20, 24, Fraction(2)) == [
        (0, 0),
        (0, Fraction(1, 2)),
        (1, 0),
        (1, Fraction(1, 2)),
    ]


def test_positions_for_24_to_60():
    positions = output_positions(0, 0, 5, Fraction(5, 2))
    assert positions == [
        (0, 0),
        (0, Fraction(2, 5)),
        (0, Fraction(4, 5)),
        (1, Fraction(1, 5)),
        (1, Fraction(3, 5)),
    ]


def test_retime_duplicates_across_a_scene_cut():
    frames = np.stack([sample_frame(SPEC, 0), sample_frame(SPEC, 1, scene=1)])
    out = retime_chunk(frames, 1, 0, 0, 2, Fraction(2), FlowInterpolator())
    assert len(out) == 2
    assert np.array_equal(out[0], frames[0])
    assert np.array_equal(out[1], frames[1])  # t = 0.5 rounds to the new shot, no blend


def test_retime_repeats_the_last_frame_of_the_video():
    frames = np.stack([sample_frame(SPEC, 0), sample_frame(SPEC, 1)])
    out = retime_chunk(frames, 2, 0, 0, 4, Fraction(2), FlowInterpolator())
    assert len(out) == 4
    assert np.array_equal(out[3], frames[1])
    assert not np.array_equal(out[1], frames[0])  # synthesised between 0 and 1


def test_retime_uses_lookahead_for_the_chunk_end():
    frames = np.stack([sample_frame(SPEC, p) for p in (0, 1, 2)])
    out = retime_chunk(frames, 2, 0, 0, 4, Fraction(2), FlowInterpolator())
    assert not np.array_equal(out[3], frames[1])  # interpolated towards look-ahead
