"""DeepFM (Guo et al., IJCAI 2017): a factorization machine and a DNN that share one embedding table."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedshaver.models.base import MLP, CTRModel


def fm_second_order(embeddings: torch.Tensor) -> torch.Tensor:
    """Return the pairwise FM term ``sum_{j<k} <e_j, e_k>`` ``(batch,)`` of ``(batch, num_fields, embed_dim)``."""
    square_of_sum = embeddings.sum(dim=1).pow(2)
    sum_of_square = embeddings.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


class DeepFM(CTRModel):
    """DeepFM: ``logit = b + sum_j w[x_j] + FM(e) + DNN(flatten(e))``.

    Parameters
    ----------
    num_features, num_fields, embed_dim : int
        Shape of the embedding table and of a sample.
    hidden_units : sequence of int
        DNN hidden layer widths.
    dropout : float
        DNN dropout rate.
    first_order : bool
        Keep the per-feature first-order weights ``w`` of the FM. They form a dense ``(num_features,)``
        vector outside the embedding table, so they count as head parameters, not as pruned ones.
    """

    def __init__(
        self,
        num_features: int,
        num_fields: int,
        embed_dim: int = 16,
        hidden_units: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
        first_order: bool = True,
    ):
        super().__init__(num_features, num_fields, embed_dim)
        self.bias = nn.Parameter(torch.zeros(1))
        self.first_order = nn.Embedding(num_features, 1) if first_order else None
        if self.first_order is not None:
            nn.init.zeros_(self.first_order.weight)
        self.dnn = MLP(num_fields * embed_dim, hidden_units, dropout)

    def linear_term(self, x: torch.Tensor) -> torch.Tensor:
        """Return the bias plus first-order weights ``(batch,)``; it does not depend on the embeddings."""
        if self.first_order is None:
            return self.bias.expand(x.shape[0])
        return self.bias + self.first_order(x).sum(dim=(1, 2))

    def head(self, embeddings: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(batch,)`` from embeddings ``(batch, num_fields, embed_dim)`` and ids ``x``."""
        return self.linear_term(x) + fm_second_order(embeddings) + self.dnn(embeddings.flatten(1))
