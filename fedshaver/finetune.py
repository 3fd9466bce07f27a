"""On-device fine-tuning of a pruned variant with its pruning mask fixed.

Kept embedding parameters and the head are trained; pruned parameters keep their placeholder (the
codebook stays frozen, as in the Shaver paper's fine-tuning experiments). A variant stored in the dense
layout carries no mask on the device, so all its entries are trained. Quantized variants are fine-tuned
on their dequantized values with every entry trainable.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedshaver.data.dataset import EncodedSplit
from fedshaver.models.base import CTRModel
from fedshaver.shaver.storage import CompactTable, QuantizedTable
from fedshaver.training import Trainer, TrainOptions


class MaskedEmbedding(nn.Module):
    """Embedding whose kept entries are trainable and whose pruned entries stay at fixed values.

    Parameters
    ----------
    table : torch.Tensor
        Imputed table ``(num_features, embed_dim)``: kept values and placeholders.
    keep : torch.Tensor
        Which entries are trainable, ``(num_features, embed_dim)`` bool.
    """

    def __init__(self, table: torch.Tensor, keep: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(table.clone())
        self.register_buffer("keep", keep.clone())
        self.register_buffer("fixed", table.clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Return embeddings ``(batch, num_fields, embed_dim)``; pruned entries read their fixed value."""
        return torch.where(self.keep[ids], F.embedding(ids, self.weight), self.fixed[ids])


def finetune_variant(
    model: CTRModel, storage: CompactTable | QuantizedTable, train: EncodedSplit, options: TrainOptions, epochs: int
) -> CTRModel:
    """Return a copy of ``model`` fine-tuned on ``train`` for ``epochs`` epochs with the variant's mask fixed."""
    tuned = copy.deepcopy(model)
    table = torch.from_numpy(np.ascontiguousarray(storage.to_dense(), dtype=np.float32))
    if isinstance(storage, CompactTable):
        keep = torch.from_numpy(storage.keep_mask())
    else:
        keep = torch.ones_like(table, dtype=torch.bool)
    tuned.embedding = MaskedEmbedding(table, keep)
    Trainer(tuned, options).fit(train, None, epochs=epochs, progress=False)
    tuned.eval()
    return tuned
