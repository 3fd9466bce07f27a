"""Compact storage of pruned and quantized embedding tables, with exact byte counts.

A pruned table keeps ``kept`` of its ``n * d`` parameters; every other parameter reads its field's
placeholder (the codebook value, or 0). Three layouts are considered and the smallest is used:

- ``dense``: the full imputed table, ``n * d`` float32 values, no index and no codebook;
- ``bitmap``: one bit per parameter (row-major, ``ceil(n * d / 8)`` bytes) plus the kept values;
- ``csr``: per-row offsets (``n + 1`` unsigned integers of the smallest width that fits ``kept``)
  plus one column index per kept value (uint8 when ``d <= 256``) plus the kept values.

The sparse layouts also store the codebook (``num_fields * d`` float32) when the placeholder is not
zero. The byte count of a table is the sum of the ``nbytes`` of exactly the arrays it stores, which are
also the arrays sent to a device. Field offsets are not counted: they are part of the feature map a
device needs to encode its inputs whatever the pruning.

Quantized tables (post-training quantization) store ``bits``-wide unsigned codes packed into bytes plus
one float32 scale and one float32 minimum per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

VALUE_BYTES = 4
_OFFSET_DTYPES = (np.uint8, np.uint16, np.uint32, np.uint64)
FORMATS = ("dense", "bitmap", "csr")


def offset_dtype(max_value: int) -> np.dtype:
    """Return the narrowest unsigned integer dtype that fits ``max_value``."""
    for dtype in _OFFSET_DTYPES:
        if max_value <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"{max_value} does not fit in 64 bits")


def column_dtype(embed_dim: int) -> np.dtype:
    """Return the dtype of CSR column indices: uint8 up to 256 columns, else uint16."""
    return np.dtype(np.uint8) if embed_dim <= 256 else np.dtype(np.uint16)


def format_bytes(num_features: int, embed_dim: int, num_fields: int, kept: int, codebook: bool) -> dict[str, int]:
    """Return the exact stored bytes of each layout for a table keeping ``kept`` parameters.

    Parameters
    ----------
    num_features, embed_dim, num_fields : int
        Shape of the table and number of fields (codebook rows).
    kept : int
        Parameters kept, in ``[0, num_features * embed_dim]``.
    codebook : bool
        Whether the placeholder is a stored codebook (Shaver-Codebook) rather than zero.
    """
    total = num_features * embed_dim
    if not 0 <= kept <= total:
        raise ValueError(f"kept must be in [0, {total}], got {kept}")
    values = kept * VALUE_BYTES
    codebook_bytes = num_fields * embed_dim * VALUE_BYTES if codebook else 0
    return {
        "dense": total * VALUE_BYTES,
        "bitmap": math.ceil(total / 8) + values + codebook_bytes,
        "csr": (num_features + 1) * offset_dtype(kept).itemsize
        + kept * column_dtype(embed_dim).itemsize
        + values
        + codebook_bytes,
    }


def smallest_format(num_features: int, embed_dim: int, num_fields: int, kept: int, codebook: bool) -> tuple[str, int]:
    """Return ``(layout, bytes)`` of the smallest layout; ties go to the earlier of dense, bitmap, csr."""
    sizes = format_bytes(num_features, embed_dim, num_fields, kept, codebook)
    name = min(FORMATS, key=lambda f: (sizes[f], FORMATS.index(f)))
    return name, sizes[name]


@dataclass
class CompactTable:
    """A pruned embedding table in its stored form.

    Attributes
    ----------
    num_features, embed_dim : int
        Shape of the logical table.
    layout : str
        ``dense``, ``bitmap`` or ``csr``.
    kept : int
        Number of parameters kept (not replaced by the placeholder).
    arrays : dict of str to np.ndarray
        The stored arrays: ``values`` always; ``bitmap`` or ``row_offsets`` + ``columns`` for the sparse
        layouts; ``codebook`` ``(num_fields, embed_dim)`` when the placeholder is a codebook.
    field_offsets : np.ndarray
        First feature of every field plus ``num_features``, ``(num_fields + 1,)``; feature map
        metadata, not counted in :attr:`nbytes`.
    """

    num_features: int
    embed_dim: int
    layout: str
    kept: int
    arrays: dict[str, np.ndarray]
    field_offsets: np.ndarray

    @property
    def nbytes(self) -> int:
        """Exact bytes of the stored arrays."""
        return int(sum(array.nbytes for array in self.arrays.values()))

    @property
    def num_fields(self) -> int:
        """Number of fields."""
        return len(self.field_offsets) - 1

    def feature_field(self) -> np.ndarray:
        """Field index of every feature, ``(num_features,)``."""
        return np.repeat(np.arange(self.num_fields), np.diff(self.field_offsets))

    def placeholder_values(self) -> np.ndarray:
        """Placeholder of each field and column, ``(num_fields, embed_dim)``: the codebook or zeros."""
        if "codebook" in self.arrays:
            return self.arrays["codebook"]
        return np.zeros((self.num_fields, self.embed_dim), dtype=np.float32)

    def keep_mask(self) -> np.ndarray:
        """Return which parameters are stored, ``(num_features, embed_dim)`` bool (all True for dense)."""
        total = self.num_features * self.embed_dim
        if self.layout == "dense":
            return np.ones((self.num_features, self.embed_dim), dtype=bool)
        if self.layout == "bitmap":
            return np.unpackbits(self.arrays["bitmap"], count=total).astype(bool).reshape(self.num_features, -1)
        mask = np.zeros((self.num_features, self.embed_dim), dtype=bool)
        rows = np.repeat(np.arange(self.num_features), np.diff(self.arrays["row_offsets"].astype(np.int64)))
        mask[rows, self.arrays["columns"].astype(np.int64)] = True
        return mask

    def to_dense(self) -> np.ndarray:
        """Return the imputed table ``(num_features, embed_dim)``: kept values, placeholders elsewhere."""
        if self.layout == "dense":
            return self.arrays["values"].reshape(self.num_features, self.embed_dim).copy()
        table = self.placeholder_values()[self.feature_field()].astype(np.float32)
        table[self.keep_mask()] = self.arrays["values"]
        return table


def compress(table: np.ndarray, keep: np.ndarray, placeholder: np.ndarray, field_offsets: np.ndarray, codebook: bool) -> CompactTable:
    """Store a pruned table in its smallest layout.

    Parameters
    ----------
    table : np.ndarray
        Original embedding table ``(num_features, embed_dim)``.
    keep : np.ndarray
        Parameters kept, ``(num_features, embed_dim)`` bool.
    placeholder : np.ndarray
        Value of pruned parameters per field and column, ``(num_fields, embed_dim)``.
    field_offsets : np.ndarray
        First feature of every field plus ``num_features``.
    codebook : bool
        Whether ``placeholder`` must be stored (a codebook) or is all zero.
    """
    table = np.asarray(table, dtype=np.float32)
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != table.shape:
        raise ValueError(f"keep mask has shape {keep.shape}, table has {table.shape}")
    num_features, embed_dim = table.shape
    field_offsets = np.asarray(field_offsets, dtype=np.int64)
    kept = int(keep.sum())
    layout, _ = smallest_format(num_features, embed_dim, len(field_offsets) - 1, kept, codebook)
    placeholder = np.asarray(placeholder, dtype=np.float32)

    if layout == "dense":
        feature_field = np.repeat(np.arange(len(field_offsets) - 1), np.diff(field_offsets))
        imputed = np.where(keep, table, placeholder[feature_field])
        arrays = {"values": imputed.reshape(-1).astype(np.float32)}
    else:
        arrays = {"values": table[keep].astype(np.float32)}
        if layout == "bitmap":
            arrays["bitmap"] = np.packbits(keep.reshape(-1))
        else:
            arrays["row_offsets"] = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(offset_dtype(kept))
            arrays["columns"] = np.nonzero(keep)[1].astype(column_dtype(embed_dim))
        if codebook:
            arrays["codebook"] = placeholder.copy()
    return CompactTable(num_features, embed_dim, layout, kept, arrays, field_offsets)


class CompactEmbedding(nn.Module):
    """Embedding lookup over a :class:`CompactTable` that rebuilds the requested rows.

    A lookup of ids ``(batch, num_fields)`` starts from the placeholder of each position's field (the
    codebook row, or 0) and writes the stored values of the requested rows over it, so backbones run
    unchanged. Sparse layouts keep their per-row offsets as int64 at run time (decoded from the bitmap
    for the bitmap layout). That run-time index is not part of the stored bytes.
    """

    def __init__(self, table: CompactTable):
        super().__init__()
        self.layout = table.layout
        self.embed_dim = table.embed_dim
        if table.layout == "dense":
            self.register_buffer("weight", torch.from_numpy(table.arrays["values"].reshape(table.num_features, -1).copy()))
            return
        mask = table.keep_mask()
        row_offsets = np.concatenate([[0], np.cumsum(mask.sum(axis=1))])
        self.register_buffer("values", torch.from_numpy(table.arrays["values"].copy()))
        self.register_buffer("row_offsets", torch.from_numpy(row_offsets.astype(np.int64)))
        self.register_buffer("columns", torch.from_numpy(np.nonzero(mask)[1].astype(np.int64)))
        self.register_buffer("placeholder", torch.from_numpy(table.placeholder_values().astype(np.float32).copy()))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Return embeddings ``(batch, num_fields, embed_dim)`` of ids ``(batch, num_fields)``."""
        if self.layout == "dense":
            return F.embedding(ids, self.weight)
        batch, num_fields = ids.shape
        out = self.placeholder.unsqueeze(0).expand(batch, num_fields, self.embed_dim).clone()
        flat_ids = ids.reshape(-1)
        starts = self.row_offsets[flat_ids]
        counts = self.row_offsets[flat_ids + 1] - starts
        slots = torch.repeat_interleave(torch.arange(flat_ids.numel()), counts)
        first_entry = torch.cumsum(counts, 0) - counts
        entries = starts[slots] + torch.arange(slots.numel()) - first_entry[slots]
        out.view(-1, self.embed_dim)[slots, self.columns[entries]] = self.values[entries]
        return out


@dataclass
class QuantizedTable:
    """An embedding table after per-row affine post-training quantization.

    Row ``i`` is stored as unsigned ``bits``-wide codes ``q`` with ``E[i, c] ≈ minimum[i] + q[i, c] * scale[i]``.

    Attributes
    ----------
    num_features, embed_dim, bits : int
        Shape and code width.
    arrays : dict of str to np.ndarray
        ``codes`` (packed bytes, or uint16 for 16 bits), ``scale`` and ``minimum`` (float32, one per row).
    """

    num_features: int
    embed_dim: int
    bits: int
    arrays: dict[str, np.ndarray]

    @property
    def nbytes(self) -> int:
        """Exact bytes of the stored arrays."""
        return int(sum(array.nbytes for array in self.arrays.values()))

    def codes(self) -> np.ndarray:
        """Return the unpacked codes ``(num_features, embed_dim)``."""
        total = self.num_features * self.embed_dim
        packed = self.arrays["codes"]
        if self.bits == 16:
            codes = packed
        elif self.bits == 8:
            codes = packed
        else:
            per_byte = 8 // self.bits
            shifts = np.arange(per_byte, dtype=np.uint8) * self.bits
            codes = ((packed[:, None] >> shifts) & ((1 << self.bits) - 1)).reshape(-1)[:total]
        return codes.reshape(self.num_features, self.embed_dim)

    def to_dense(self) -> np.ndarray:
        """Return the dequantized table ``(num_features, embed_dim)``, float32."""
        codes = self.codes().astype(np.float32)
        return self.arrays["minimum"][:, None] + codes * self.arrays["scale"][:, None]


def quantize_table(table: np.ndarray, bits: int) -> QuantizedTable:
    """Quantize each row to ``bits``-wide codes with its own scale and minimum.

    ``scale = (max - min) / (2**bits - 1)``; a constant row (all-zero included) gets scale 0 and code 0
    and round-trips exactly to its constant, with no division by zero.
    """
    if bits not in (2, 4, 8, 16):
        raise ValueError(f"bits must be 2, 4, 8 or 16, got {bits}")
    table = np.asarray(table, dtype=np.float32)
    num_features, embed_dim = table.shape
    levels = (1 << bits) - 1
    minimum = table.min(axis=1)
    scale = (table.max(axis=1) - minimum) / np.float32(levels)
    safe_scale = np.where(scale > 0, scale, np.float32(1.0))
    codes = np.where(scale[:, None] > 0, np.rint((table - minimum[:, None]) / safe_scale[:, None]), 0)
    codes = np.clip(codes, 0, levels).reshape(-1)
    if bits == 16:
        packed = codes.astype(np.uint16)
    elif bits == 8:
        packed = codes.astype(np.uint8)
    else:
        per_byte = 8 // bits
        padded = np.zeros(math.ceil(codes.size / per_byte) * per_byte, dtype=np.uint8)
        padded[: codes.size] = codes.astype(np.uint8)
        shifts = np.arange(per_byte, dtype=np.uint8) * bits
        packed = np.bitwise_or.reduce(padded.reshape(-1, per_byte) << shifts, axis=1).astype(np.uint8)
    arrays = {"codes": packed, "scale": scale.astype(np.float32), "minimum": minimum.astype(np.float32)}
    return QuantizedTable(num_features, embed_dim, bits, arrays)


class QuantizedEmbedding(nn.Module):
    """Embedding lookup over a :class:`QuantizedTable` that dequantizes the requested rows."""

    def __init__(self, table: QuantizedTable):
        super().__init__()
        dtype = torch.int32 if table.bits == 16 else torch.uint8
        self.register_buffer("codes", torch.from_numpy(table.codes().astype(np.int32)).to(dtype))
        self.register_buffer("scale", torch.from_numpy(table.arrays["scale"].copy()))
        self.register_buffer("minimum", torch.from_numpy(table.arrays["minimum"].copy()))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Return dequantized embeddings ``(batch, num_fields, embed_dim)`` of ids ``(batch, num_fields)``."""
        codes = self.codes[ids].to(torch.float32)
        return self.minimum[ids].unsqueeze(-1) + codes * self.scale[ids].unsqueeze(-1)
