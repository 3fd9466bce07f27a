"""Compact storage of pruned tables and post-training quantization: exact bytes and exact lookups."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedshaver.shaver.storage import (
    CompactEmbedding,
    QuantizedEmbedding,
    compress,
    format_bytes,
    quantize_table,
)


def random_mask(shape: tuple[int, int], kept: int, seed: int) -> np.ndarray:
    """Boolean mask of ``shape`` with exactly ``kept`` True entries at random positions."""
    mask = np.zeros(shape[0] * shape[1], dtype=bool)
    mask[np.random.default_rng(seed).choice(mask.size, size=kept, replace=False)] = True
    return mask.reshape(shape)


def all_ids(field_offsets: np.ndarray, rows: int, seed: int) -> torch.Tensor:
    """Ids ``(rows, num_fields)`` that visit every feature of every field, plus random repeats."""
    rng = np.random.default_rng(seed)
    sizes = np.diff(field_offsets)
    columns = []
    for field, size in enumerate(sizes):
        local = np.concatenate([np.arange(size), rng.integers(0, size, rows - size)])
        columns.append(rng.permutation(local) + field_offsets[field])
    return torch.as_tensor(np.stack(columns, axis=1))


def imputed_table(table: np.ndarray, keep: np.ndarray, placeholder: np.ndarray, field_offsets) -> np.ndarray:
    field = np.repeat(np.arange(len(field_offsets) - 1), np.diff(field_offsets))
    return np.where(keep, table, placeholder[field]).astype(np.float32)


# (name, num_features, embed_dim, field_offsets, kept, expected layout)
LAYOUT_CASES = [
    ("csr", 6, 32, [0, 3, 6], 10, "csr"),  # csr 7 + 5 * 10 = 57 < bitmap 24 + 40 = 64
    ("csr-empty", 6, 32, [0, 3, 6], 0, "csr"),
    ("bitmap", 6, 32, [0, 3, 6], 50, "bitmap"),  # bitmap 224 < csr 257
    ("dense", 6, 32, [0, 3, 6], 190, "dense"),  # bitmap 784 > dense 768
    ("dense-full", 6, 32, [0, 3, 6], 192, "dense"),
    ("csr-uint16-offsets", 20, 256, [0, 5, 12, 20], 400, "csr"),  # csr 42 + 2000 < bitmap 640 + 1600
    ("csr-uint16-columns", 4, 300, [0, 1, 4], 50, "csr"),  # csr 5 + 6 * 50 < bitmap 150 + 200
    ("bitmap-odd-bits", 7, 3, [0, 2, 7], 5, "bitmap"),  # 21 bits in 3 bytes
]


@pytest.mark.parametrize("codebook", [False, True], ids=["zero", "codebook"])
@pytest.mark.parametrize(("name", "num_features", "embed_dim", "offsets", "kept", "layout"), LAYOUT_CASES)
def test_compact_table_round_trip(name, num_features, embed_dim, offsets, kept, layout, codebook):
    rng = np.random.default_rng(len(name))
    offsets = np.array(offsets)
    num_fields = len(offsets) - 1
    table = rng.normal(size=(num_features, embed_dim)).astype(np.float32)
    if codebook:
        placeholder = rng.normal(size=(num_fields, embed_dim)).astype(np.float32)
    else:
        placeholder = np.zeros((num_fields, embed_dim), np.float32)
    keep = random_mask(table.shape, kept, seed=kept)
    expected = imputed_table(table, keep, placeholder, offsets)

    stored = compress(table, keep, placeholder, offsets, codebook)

    # A codebook adds the same bytes to both sparse layouts, and these cases stay below the dense size.
    assert stored.layout == layout
    assert stored.kept == kept
    assert stored.nbytes == sum(array.nbytes for array in stored.arrays.values())
    assert stored.nbytes == format_bytes(num_features, embed_dim, num_fields, kept, codebook)[layout]
    if codebook and layout != "dense":
        np.testing.assert_array_equal(stored.arrays["codebook"], placeholder)
    else:
        assert "codebook" not in stored.arrays
    np.testing.assert_array_equal(stored.to_dense(), expected)
    if layout != "dense":
        np.testing.assert_array_equal(stored.keep_mask(), keep)

    ids = all_ids(offsets, rows=max(40, num_features), seed=1)
    looked_up = CompactEmbedding(stored)(ids)
    assert looked_up.dtype == torch.float32
    np.testing.assert_array_equal(looked_up.numpy(), expected[ids.numpy()])
    np.testing.assert_array_equal(looked_up.numpy(), stored.to_dense()[ids.numpy()])


def test_csr_arrays_by_hand():
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    keep = np.array([[True, False, True], [False, False, False], [False, True, False], [False, False, False]])
    placeholder = np.array([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]], dtype=np.float32)
    offsets = np.array([0, 2, 4])

    # csr needs 5 offsets + 3 columns + 12 value bytes + 24 codebook bytes = 44, bitmap 2 + 12 + 24 = 38.
    stored = compress(table, keep, placeholder, offsets, codebook=True)
    assert stored.layout == "bitmap"
    assert stored.nbytes == 38
    np.testing.assert_array_equal(stored.arrays["values"], [0.0, 2.0, 7.0])
    # Flat positions 0, 2 and 7 (row 2, column 1) are kept. Bits are packed most significant first.
    np.testing.assert_array_equal(stored.arrays["bitmap"], [0b10100001, 0b00000000])
    np.testing.assert_array_equal(stored.arrays["codebook"], placeholder)

    wide = np.zeros((4, 40), dtype=np.float32)
    wide_keep = np.zeros((4, 40), dtype=bool)
    wide_keep[0, [1, 39]] = True
    wide_keep[2, 5] = True
    stored = compress(wide, wide_keep, np.zeros((2, 40), np.float32), offsets, codebook=False)
    assert stored.layout == "csr"
    np.testing.assert_array_equal(stored.arrays["row_offsets"], [0, 2, 2, 3, 3])
    assert stored.arrays["row_offsets"].dtype == np.uint8
    np.testing.assert_array_equal(stored.arrays["columns"], [1, 39, 5])
    assert stored.arrays["columns"].dtype == np.uint8
    assert stored.nbytes == 5 + 3 + 12


def test_compress_rejects_mismatched_mask():
    with pytest.raises(ValueError, match="keep mask"):
        compress(np.zeros((3, 2)), np.zeros((2, 3), dtype=bool), np.zeros((1, 2)), [0, 3], codebook=False)


# --- post-training quantization -----------------------------------------------------------------


def quantization_table() -> np.ndarray:
    rng = np.random.default_rng(0)
    table = rng.normal(size=(7, 5)).astype(np.float32)
    table[1] = 3.5  # constant row
    table[2] = 0.0  # all-zero row
    table[3] *= 1000.0  # wide range
    table[4] = [-1e-3, 2e-3, 0.0, 5e-4, -7e-4]  # narrow range
    return table


@pytest.mark.parametrize("bits", [16, 8, 4, 2])
def test_quantize_table_round_trip(bits):
    table = quantization_table()
    quantized = quantize_table(table, bits)
    dense = quantized.to_dense()
    levels = 2**bits - 1
    scale = quantized.arrays["scale"]

    assert dense.shape == table.shape
    assert dense.dtype == np.float32
    assert not np.isnan(dense).any()
    np.testing.assert_array_equal(dense[1], table[1])
    np.testing.assert_array_equal(dense[2], table[2])
    assert scale[1] == 0.0
    assert scale[2] == 0.0
    np.testing.assert_allclose(scale, (table.max(axis=1) - table.min(axis=1)) / levels, rtol=1e-6)
    np.testing.assert_array_equal(quantized.arrays["minimum"], table.min(axis=1))

    codes = quantized.codes()
    assert codes.shape == table.shape
    assert codes.min() >= 0
    assert codes.max() <= levels
    # Rounding to the nearest level: at most half a step, plus float32 rounding of the arithmetic.
    eps = np.finfo(np.float32).eps
    magnitude = np.abs(table).max(axis=1) + (table.max(axis=1) - table.min(axis=1))
    allowed = 0.5 * scale + 4 * eps * magnitude
    error = np.abs(dense.astype(np.float64) - table.astype(np.float64))
    assert np.all(error <= allowed[:, None]), f"largest excess {np.max(error - allowed[:, None]):.3e}"

    code_bytes = 2 * table.size if bits == 16 else math.ceil(table.size * bits / 8)
    assert quantized.nbytes == code_bytes + 8 * table.shape[0]
    assert quantized.nbytes == sum(array.nbytes for array in quantized.arrays.values())

    ids = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 6, 0], [2, 1, 4]])
    np.testing.assert_array_equal(QuantizedEmbedding(quantized)(ids).numpy(), dense[ids.numpy()])


@pytest.mark.parametrize(("bits", "code_bytes"), [(2, 3), (4, 5), (8, 9), (16, 18)])
def test_quantized_bytes_with_partial_last_byte(bits, code_bytes):
    table = np.arange(9, dtype=np.float32).reshape(3, 3) * np.array([[1.0], [-2.0], [0.5]], dtype=np.float32)
    quantized = quantize_table(table, bits)
    assert quantized.arrays["codes"].nbytes == code_bytes
    assert quantized.nbytes == code_bytes + 24
    # Every row is an arithmetic sequence with 3 values, so its end points are exact at any width.
    dense = quantized.to_dense()
    np.testing.assert_array_equal(dense[:, [0, 2]], table[:, [0, 2]])
    levels = 2**bits - 1
    np.testing.assert_array_equal(quantized.codes()[:, [0, 2]], [[0, levels], [levels, 0], [0, levels]])


def test_quantize_table_rejects_unsupported_bits():
    with pytest.raises(ValueError, match="bits"):
        quantize_table(np.zeros((2, 2)), 3)
