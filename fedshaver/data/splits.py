"""Seeded train/validation/test assignment of a row stream, with exact split sizes.

The assignment is a uniformly random split of ``num_rows`` rows into parts of exact sizes, drawn
block by block: each block of :data:`BLOCK_ROWS` rows takes a multivariate hypergeometric share of
the remaining quota of every part, then shuffles it. The same seed yields the same labels in every
pass over the data, and memory stays at one block whatever the number of rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedshaver.errors import ConfigError

BLOCK_ROWS = 1 << 16
SPLIT_NAMES = ("train", "valid", "test")


def split_sizes(num_rows: int, fractions: Sequence[float]) -> list[int]:
    """Return the exact row count of each part: ``floor(f * num_rows)`` for all but the last part."""
    if len(fractions) != len(SPLIT_NAMES):
        raise ConfigError(f"split fractions need {len(SPLIT_NAMES)} values (train, valid, test), got {list(fractions)}")
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ConfigError(f"split fractions must be non-negative and sum to 1, got {list(fractions)}")
    sizes = [int(np.floor(f * num_rows + 1e-9)) for f in fractions[:-1]]
    sizes.append(num_rows - sum(sizes))
    return sizes


class SplitAssigner:
    """Stream of split labels (0 train, 1 valid, 2 test) for consecutive rows.

    Parameters
    ----------
    num_rows : int
        Total number of rows the stream will cover.
    fractions : sequence of float
        Train, validation and test fractions, e.g. ``(0.8, 0.1, 0.1)``.
    seed : int
        Seed of the assignment.
    """

    def __init__(self, num_rows: int, fractions: Sequence[float], seed: int):
        self.num_rows = num_rows
        self.sizes = split_sizes(num_rows, fractions)
        self._remaining = np.array(self.sizes, dtype=np.int64)
        self._rng = np.random.default_rng(seed)
        self._buffer = np.empty(0, dtype=np.int8)
        self._served = 0

    def take(self, count: int) -> np.ndarray:
        """Return the labels of the next ``count`` rows."""
        if self._served + count > self.num_rows:
            raise ValueError(f"requested labels for {self._served + count} rows, but the stream has {self.num_rows}")
        parts = []
        needed = count
        while needed > 0:
            if len(self._buffer) == 0:
                self._buffer = self._next_block()
            piece = self._buffer[:needed]
            self._buffer = self._buffer[needed:]
            parts.append(piece)
            needed -= len(piece)
        self._served += count
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int8)

    def _next_block(self) -> np.ndarray:
        block = int(min(BLOCK_ROWS, self._remaining.sum()))
        counts = self._rng.multivariate_hypergeometric(self._remaining, block)
        self._remaining -= counts
        labels = np.repeat(np.arange(len(SPLIT_NAMES), dtype=np.int8), counts)
        return self._rng.permutation(labels)
