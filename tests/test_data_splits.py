"""Seeded train/valid/test assignment: exact sizes, determinism and independence of read sizes."""

from __future__ import annotations

import numpy as np
import pytest

from fedshaver.data.splits import BLOCK_ROWS, SplitAssigner, split_sizes
from fedshaver.errors import ConfigError


def test_split_sizes_criteo_sample():
    assert split_sizes(10_000, (0.8, 0.1, 0.1)) == [8_000, 1_000, 1_000]


def test_split_sizes_137k_sample():
    # floor(0.8 * 137139) = 109711, floor(0.1 * 137139) = 13713, the rest: 137139 - 123424 = 13715.
    assert split_sizes(137_139, (0.8, 0.1, 0.1)) == [109_711, 13_713, 13_715]


def test_split_sizes_float_sum_below_one():
    # 0.7 + 0.2 + 0.1 is 0.9999999999999999 in floating point; floor(0.7 * 10) must still be 7.
    assert split_sizes(10, (0.7, 0.2, 0.1)) == [7, 2, 1]


@pytest.mark.parametrize("fractions", [(0.8, 0.2), (0.5, 0.5, 0.5), (1.2, -0.1, -0.1), (0.8, 0.1, 0.1, 0.0)])
def test_split_sizes_invalid_fractions(fractions):
    with pytest.raises(ConfigError):
        split_sizes(100, fractions)


def test_assigner_counts_are_exact():
    labels = SplitAssigner(1_000, (0.8, 0.1, 0.1), seed=3).take(1_000)
    assert np.bincount(labels, minlength=3).tolist() == [800, 100, 100]


def test_assigner_counts_span_blocks():
    num_rows = 2 * BLOCK_ROWS + 123
    labels = SplitAssigner(num_rows, (0.8, 0.1, 0.1), seed=3).take(num_rows)
    assert np.bincount(labels, minlength=3).tolist() == split_sizes(num_rows, (0.8, 0.1, 0.1))


def test_assigner_same_seed_same_labels():
    first = SplitAssigner(5_000, (0.8, 0.1, 0.1), seed=11).take(5_000)
    second = SplitAssigner(5_000, (0.8, 0.1, 0.1), seed=11).take(5_000)
    assert np.array_equal(first, second)


def test_assigner_other_seed_other_labels():
    first = SplitAssigner(5_000, (0.8, 0.1, 0.1), seed=11).take(5_000)
    second = SplitAssigner(5_000, (0.8, 0.1, 0.1), seed=12).take(5_000)
    assert not np.array_equal(first, second)


def test_assigner_piecewise_take_matches():
    num_rows = BLOCK_ROWS + 500
    whole = SplitAssigner(num_rows, (0.6, 0.2, 0.2), seed=5).take(num_rows)
    assigner = SplitAssigner(num_rows, (0.6, 0.2, 0.2), seed=5)
    pieces = [assigner.take(min(7_777, num_rows - start)) for start in range(0, num_rows, 7_777)]
    assert np.array_equal(np.concatenate(pieces), whole)


def test_assigner_all_train():
    labels = SplitAssigner(50, (1.0, 0.0, 0.0), seed=1).take(50)
    assert labels.tolist() == [0] * 50


def test_assigner_take_past_end():
    assigner = SplitAssigner(10, (0.8, 0.1, 0.1), seed=1)
    assigner.take(8)
    with pytest.raises(ValueError, match="requested labels for 11 rows, but the stream has 10"):
        assigner.take(3)


def test_assigner_take_zero():
    assert len(SplitAssigner(10, (0.8, 0.1, 0.1), seed=1).take(0)) == 0
