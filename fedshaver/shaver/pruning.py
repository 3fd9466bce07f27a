"""One-shot pruning: one ranking of the embedding parameters serves every budget.

Parameters are ranked by the absolute value of their score, smallest first, ties broken by flat index
``i * embed_dim + c``. For Shapley scores the absolute value is used because a parameter whose removal
changes the log loss little in either direction matters least. A large negative value (removal lowers
the loss on the attribution data) is kept, because it still changes the model's predictions.

A budget is a sparsity rate ``t`` (the fraction of the ``n * d`` parameters replaced by their placeholder)
or a byte budget for the stored table, index and codebook included (see :mod:`fedshaver.shaver.storage`).
A byte budget keeps the largest number of parameters whose smallest layout fits, so the stored bytes
never exceed the budget.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedshaver.errors import InfeasibleBudgetError
from fedshaver.models.base import CTRModel
from fedshaver.shaver.storage import (
    CompactEmbedding,
    CompactTable,
    QuantizedEmbedding,
    QuantizedTable,
    compress,
    quantize_table,
    smallest_format,
)


@dataclass(frozen=True)
class Budget:
    """An embedding memory budget: exactly one of a sparsity rate or a byte count.

    Attributes
    ----------
    sparsity : float or None
        Fraction of the ``n * d`` parameters to remove, in [0, 1].
    bytes : int or None
        Maximum stored bytes of the embedding table.
    """

    sparsity: float | None = None
    bytes: int | None = None

    def __post_init__(self):
        if (self.sparsity is None) == (self.bytes is None):
            raise ValueError("a budget needs exactly one of sparsity or bytes")
        if self.sparsity is not None and not 0.0 <= self.sparsity <= 1.0:
            raise InfeasibleBudgetError(
                f"sparsity rate must be in [0, 1], got {self.sparsity}", requested=self.sparsity, minimum=0.0
            )
        if self.bytes is not None and self.bytes < 0:
            raise InfeasibleBudgetError(f"byte budget must be non-negative, got {self.bytes}", requested=self.bytes, minimum=0)

    @property
    def kind(self) -> str:
        """``sparsity`` or ``bytes``."""
        return "sparsity" if self.sparsity is not None else "bytes"

    @property
    def value(self) -> float:
        """The sparsity rate or the byte count."""
        return float(self.sparsity) if self.sparsity is not None else float(self.bytes)

    @property
    def label(self) -> str:
        """Short description, e.g. ``t=0.8`` or ``8192 B``."""
        return f"t={self.sparsity:g}" if self.sparsity is not None else f"{self.bytes} B"


def prune_order(scores: np.ndarray) -> np.ndarray:
    """Return flat parameter indices in pruning order: smallest ``|score|`` first, ties by flat index."""
    magnitude = np.abs(np.asarray(scores, dtype=np.float64)).reshape(-1)
    return np.argsort(magnitude, kind="stable")


def kept_for_sparsity(sparsity: float, total: int) -> int:
    """Return how many of ``total`` parameters remain at sparsity ``t``: ``total - ceil(t * total)``."""
    pruned = min(total, math.ceil(sparsity * total - 1e-9))
    return total - max(pruned, 0)


def kept_for_bytes(budget: int, num_features: int, embed_dim: int, num_fields: int, codebook: bool) -> int:
    """Return the most parameters a table can keep within ``budget`` bytes.

    Raises
    ------
    InfeasibleBudgetError
        When even an empty table (index and codebook only) exceeds the budget; the error carries
        the smallest feasible byte count.
    """
    total = num_features * embed_dim
    minimum = smallest_format(num_features, embed_dim, num_fields, 0, codebook)[1]
    if budget < minimum:
        what = "index and codebook" if codebook else "index"
        raise InfeasibleBudgetError(
            f"embedding budget of {budget} bytes is below the smallest feasible size of {minimum} bytes "
            f"(the {what} of a {num_features} x {embed_dim} table with every parameter pruned); "
            f"use a budget of at least {minimum} bytes",
            requested=budget,
            minimum=minimum,
        )
    low, high = 0, total
    while low < high:
        middle = (low + high + 1) // 2
        if smallest_format(num_features, embed_dim, num_fields, middle, codebook)[1] <= budget:
            low = middle
        else:
            high = middle - 1
    return low


@dataclass
class EmbeddingVariant:
    """The embedding table a device receives for one method and budget.

    Attributes
    ----------
    method : str
        Method that produced it, e.g. ``shaver_codebook`` or ``ptq``.
    budget : Budget or None
        Budget it was built for; None for quantization, whose size follows from ``bits``.
    sparsity : float
        Fraction of parameters removed; for quantization the nominal ``1 - bits / 32`` of the Shaver paper.
    storage : CompactTable or QuantizedTable
        Stored form, whose :attr:`nbytes` is exact.
    """

    method: str
    budget: Budget | None
    sparsity: float
    storage: CompactTable | QuantizedTable

    @property
    def nbytes(self) -> int:
        """Stored bytes of the embedding table."""
        return self.storage.nbytes

    @property
    def layout(self) -> str:
        """Storage layout: ``dense``, ``bitmap``, ``csr`` or ``ptq<bits>``."""
        if isinstance(self.storage, QuantizedTable):
            return f"ptq{self.storage.bits}"
        return self.storage.layout

    @property
    def label(self) -> str:
        """Budget description, e.g. ``t=0.8``, ``8192 B`` or ``8-bit``."""
        if isinstance(self.storage, QuantizedTable):
            return f"{self.storage.bits}-bit"
        return self.budget.label if self.budget is not None else "full"

    def dense_table(self) -> torch.Tensor:
        """Return the table a lookup reads, ``(num_features, embed_dim)``: imputed or dequantized."""
        return torch.from_numpy(np.ascontiguousarray(self.storage.to_dense(), dtype=np.float32))

    def embedding_module(self) -> nn.Module:
        """Return a lookup module over the stored form (rebuilds rows on each lookup)."""
        if isinstance(self.storage, QuantizedTable):
            return QuantizedEmbedding(self.storage)
        return CompactEmbedding(self.storage)

    def apply(self, model: CTRModel, compact: bool = False) -> CTRModel:
        """Return a copy of ``model`` whose embedding table is this variant.

        With ``compact=False`` (default) the copy contains the imputed dense table, which evaluates fastest;
        with ``compact=True`` it contains the :meth:`embedding_module`, as a device would. Both give the
        same embeddings.
        """
        pruned = copy.deepcopy(model)
        if compact:
            pruned.embedding = self.embedding_module()
        else:
            pruned.embedding = nn.Embedding.from_pretrained(self.dense_table(), freeze=True)
        return pruned


class Ranking:
    """Scores of every embedding parameter turned into one pruning order.

    Parameters
    ----------
    method : str
        Name recorded in the variants.
    scores : np.ndarray
        Importance of each parameter ``(num_features, embed_dim)``; the smallest ``|score|`` goes first.
    table : np.ndarray or torch.Tensor
        Trained embedding table ``(num_features, embed_dim)``.
    placeholder : np.ndarray or torch.Tensor
        Value of pruned parameters per field and column ``(num_fields, embed_dim)``.
    field_offsets : np.ndarray
        First feature of every field plus ``num_features``.
    codebook : bool
        Whether the placeholder is stored with the table (Shaver-Codebook) or all zero.
    """

    def __init__(self, method: str, scores, table, placeholder, field_offsets, codebook: bool):
        self.method = method
        self.table = _to_numpy(table)
        scores = _to_numpy(scores)
        if scores.shape != self.table.shape:
            raise ValueError(f"scores have shape {scores.shape}, the embedding table {self.table.shape}")
        self.order = prune_order(scores)
        self.placeholder = _to_numpy(placeholder)
        self.field_offsets = np.asarray(field_offsets, dtype=np.int64)
        self.codebook = codebook

    @property
    def num_parameters(self) -> int:
        """``n * d``."""
        return self.table.size

    def keep_mask(self, kept: int) -> np.ndarray:
        """Return the mask ``(num_features, embed_dim)`` keeping the ``kept`` highest-ranked parameters."""
        mask = np.zeros(self.num_parameters, dtype=bool)
        if kept > 0:
            mask[self.order[self.num_parameters - kept :]] = True
        return mask.reshape(self.table.shape)

    def kept_for(self, budget: Budget) -> int:
        """Return the number of parameters kept under ``budget``."""
        if budget.sparsity is not None:
            return kept_for_sparsity(budget.sparsity, self.num_parameters)
        num_features, embed_dim = self.table.shape
        return kept_for_bytes(budget.bytes, num_features, embed_dim, len(self.field_offsets) - 1, self.codebook)

    def variant(self, budget: Budget) -> EmbeddingVariant:
        """Return the pruned table for ``budget``."""
        kept = self.kept_for(budget)
        storage = compress(self.table, self.keep_mask(kept), self.placeholder, self.field_offsets, self.codebook)
        return EmbeddingVariant(self.method, budget, 1.0 - kept / self.num_parameters, storage)


def quantized_variant(table, bits: int) -> EmbeddingVariant:
    """Return the post-training quantization variant of ``table`` at ``bits`` bits."""
    return EmbeddingVariant("ptq", None, 1.0 - bits / 32.0, quantize_table(_to_numpy(table), bits))


def _to_numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy().astype(np.float32, copy=False)
    return np.asarray(array)
