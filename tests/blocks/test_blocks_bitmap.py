"""Zero bitmaps against a list-of-booleans model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from standby.blocks import bit_runs, count_bits, get_bit, new_bitmap, set_bits


def model_runs(bits: list[bool], start: int, stop: int, value: bool) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for index in range(start, stop):
        if bits[index] != value:
            continue
        if runs and runs[-1][1] == index:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs


@st.composite
def bitmaps(draw: st.DrawFn) -> tuple[int, list[tuple[int, int]]]:
    size = draw(st.integers(0, 300))
    spans = draw(
        st.lists(st.tuples(st.integers(0, size), st.integers(0, size)).map(sorted), max_size=8)
    )
    return size, [(a, b) for a, b in spans]


@given(bitmaps(), st.data())
def test_set_bits_test_bit_count_and_runs_match_the_model(
    case: tuple[int, list[tuple[int, int]]], data: st.DataObject
) -> None:
    size, spans = case
    bitmap = new_bitmap(size)
    assert len(bitmap) == (size + 7) // 8
    model = [False] * size
    for start, stop in spans:
        set_bits(bitmap, start, stop)
        model[start:stop] = [True] * (stop - start)
    assert [get_bit(bitmap, i) for i in range(size)] == model
    assert count_bits(bitmap) == sum(model)
    start = data.draw(st.integers(0, size))
    stop = data.draw(st.integers(start, size))
    for value in (False, True):
        assert list(bit_runs(bitmap, start, stop, value)) == model_runs(model, start, stop, value)
        assert list(bit_runs(bytes(bitmap), start, stop, value)) == model_runs(
            model, start, stop, value
        )


def test_long_runs_are_found_across_many_whole_bytes() -> None:
    bitmap = new_bitmap(100_000)
    set_bits(bitmap, 3, 99_990)
    assert list(bit_runs(bitmap, 0, 100_000, True)) == [(3, 99_990)]
    assert list(bit_runs(bitmap, 0, 100_000, False)) == [(0, 3), (99_990, 100_000)]
    # the padding bits of the last byte are clear but lie past stop
    assert list(bit_runs(bitmap, 99_990, 99_995, False)) == [(99_990, 99_995)]


def test_bitmaps_refuse_bits_outside() -> None:
    with pytest.raises(ValueError, match="bits"):
        new_bitmap(-1)
    bitmap = new_bitmap(10)
    with pytest.raises(IndexError):
        set_bits(bitmap, 0, 17)
    with pytest.raises(IndexError):
        set_bits(bitmap, -1, 3)
    with pytest.raises(IndexError):
        list(bit_runs(bitmap, 0, 17, True))
    with pytest.raises(IndexError):
        list(bit_runs(bitmap, -1, 3, True))
