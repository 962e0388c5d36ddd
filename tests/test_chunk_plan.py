from __future__ import annotations

import itertools
from fractions import Fraction

import pytest

from pipelines.chunk_plan import Chunk, chunk_plan, max_chunk_frames
from pipelines.probe import probe


def _covers_every_frame_once(chunks: list[Chunk], n: int) -> None:
    assert chunks[0].start_frame == 0
    assert chunks[-1].end_frame == n
    for a, b in itertools.pairwise(chunks):
        assert a.end_frame == b.start_frame
        assert a.end_pts == b.start_pts
        assert a.out_end == b.out_start
    assert chunks[-1].end_pts is None


def test_chunks_end_on_keyframes_when_gops_fit(make_video):
    info = probe(make_video(seconds=2, gop=12))  # 48 frames, keyframes every 12
    chunks = chunk_plan(info, max_frames=30)
    _covers_every_frame_once(chunks, 48)
    assert [c.frame_count for c in chunks] == [24, 24]
    assert all(c.seek_pts == c.start_pts for c in chunks)  # each starts on a keyframe


def test_long_gops_are_split_mid_gop_with_a_seek_to_the_keyframe(make_video):
    info = probe(make_video(seconds=2, gop=48))  # one keyframe
    chunks = chunk_plan(info, max_frames=10)
    _covers_every_frame_once(chunks, 48)
    assert max(c.frame_count for c in chunks) <= 10
    assert all(c.seek_pts == info.frame_pts[0] for c in chunks)


def test_output_ranges_follow_the_frame_ratio(make_video):
    info = probe(make_video(seconds=2))
    chunks = chunk_plan(info, max_frames=12, ratio=Fraction(5, 2), lookahead=True)
    _covers_every_frame_once(chunks, 48)
    assert chunks[-1].out_end == 120  # 48 frames at 24 fps → 2 s at 60 fps
    assert [c.lookahead for c in chunks] == [True, True, True, False]


def test_rows_roundtrip(make_video):
    for chunk in chunk_plan(probe(make_video(seconds=1)), max_frames=12):
        assert Chunk.from_row(chunk.as_row()) == chunk


def test_budget_bounds_chunk_size():
    assert max_chunk_frames(1920, 1080, Fraction(1), 96 * 2**20) == 16
    assert max_chunk_frames(1920, 1080, Fraction(2), 96 * 2**20) == 8
    assert max_chunk_frames(7680, 4320, Fraction(4), 2**20) == 4  # floor
    assert max_chunk_frames(96, 64, Fraction(1), 2**30) == 300  # ceiling


def test_rejects_empty_chunks(make_video):
    with pytest.raises(ValueError):
        chunk_plan(probe(make_video()), max_frames=0)
