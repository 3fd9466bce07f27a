"""Removal semantics: what an embedding parameter becomes when it is removed or pruned.

A placeholder gives one value per (field, column): removing parameter ``E[i, c]`` of a feature ``i`` of
field ``j`` replaces it by ``values[j, c]``. Shaver-Zero uses zeros; Shaver-Codebook uses the field-aware
codebook ``C*`` of Eq. 15 in Tran et al., "Shaver" (WWW 2025): row ``j`` is the frequency-weighted mean of
field ``j``'s embeddings, the minimiser of the expected squared error between the original and the
imputed embeddings under uniformly random pruning (their Eq. 14).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placeholder:
    """Per-field replacement values of removed embedding parameters.

    Attributes
    ----------
    name : str
        ``zero`` or ``codebook``.
    values : torch.Tensor
        Replacement value of column ``c`` in field ``j``, shape ``(num_fields, embed_dim)``.
    """

    name: str
    values: torch.Tensor

    @property
    def stored(self) -> bool:
        """Whether a device must store the values (a codebook) or can regenerate them (zeros)."""
        return self.name != "zero"

    def expand(self, feature_field: np.ndarray) -> torch.Tensor:
        """Return the placeholder of every parameter, ``(num_features, embed_dim)``, given each feature's field."""
        return self.values[torch.as_tensor(feature_field, dtype=torch.long)]


def zero_placeholder(num_fields: int, embed_dim: int) -> Placeholder:
    """Return the Shaver-Zero placeholder: every removed parameter becomes 0."""
    return Placeholder("zero", torch.zeros(num_fields, embed_dim))


def solve_codebook(table: torch.Tensor | np.ndarray, feature_field: np.ndarray, frequencies: np.ndarray) -> torch.Tensor:
    """Solve the field-aware codebook: row ``j`` is the frequency-weighted mean of field ``j``'s embeddings.

    Parameters
    ----------
    table : tensor or array
        Embedding table ``(num_features, embed_dim)``.
    feature_field : array
        Field index of every feature ``(num_features,)``.
    frequencies : array
        Occurrence count of every feature ``(num_features,)``, e.g. from the feature map.

    Returns
    -------
    torch.Tensor
        Codebook ``(num_fields, embed_dim)``, float32. A field whose frequencies are all zero gets the
        unweighted mean of its rows, with a warning, because the weighted mean is undefined there.
    """
    table = torch.as_tensor(np.asarray(table.detach() if isinstance(table, torch.Tensor) else table), dtype=torch.float64)
    field_index = torch.as_tensor(np.asarray(feature_field), dtype=torch.long)
    weights = torch.as_tensor(np.asarray(frequencies), dtype=torch.float64)
    if weights.shape[0] != table.shape[0] or field_index.shape[0] != table.shape[0]:
        raise ValueError(
            f"table has {table.shape[0]} rows but {field_index.shape[0]} field indices and {weights.shape[0]} frequencies"
        )
    if bool((weights < 0).any()):
        raise ValueError("feature frequencies must be non-negative")
    num_fields = int(field_index.max()) + 1
    weighted_sum = torch.zeros(num_fields, table.shape[1], dtype=torch.float64).index_add_(0, field_index, table * weights[:, None])
    total = torch.zeros(num_fields, dtype=torch.float64).index_add_(0, field_index, weights)
    codebook = weighted_sum / total.clamp_min(1e-300)[:, None]
    empty = torch.nonzero(total == 0).flatten()
    if len(empty):
        logger.warning("Fields %s have zero total frequency; their codebook rows are unweighted means", empty.tolist())
        row_sum = torch.zeros(num_fields, table.shape[1], dtype=torch.float64).index_add_(0, field_index, table)
        row_count = torch.bincount(field_index, minlength=num_fields).to(torch.float64)
        codebook[empty] = row_sum[empty] / row_count[empty, None].clamp_min(1.0)
    return codebook.to(torch.float32)


def codebook_placeholder(table: torch.Tensor, feature_field: np.ndarray, frequencies: np.ndarray) -> Placeholder:
    """Return the Shaver-Codebook placeholder solved from ``table`` and feature frequencies."""
    return Placeholder("codebook", solve_codebook(table, feature_field, frequencies))


def make_placeholder(name: str, table: torch.Tensor, feature_field: np.ndarray, frequencies: np.ndarray) -> Placeholder:
    """Return the placeholder called ``name`` (``zero`` or ``codebook``) for an embedding table."""
    if name == "zero":
        return zero_placeholder(int(np.max(feature_field)) + 1, table.shape[1])
    if name == "codebook":
        return codebook_placeholder(table, feature_field, frequencies)
    raise ValueError(f"unknown placeholder {name!r}; expected 'zero' or 'codebook'")
