"""DCN-Mix (Wang et al., WWW 2021, "DCN V2"): low-rank mixture-of-experts cross layers, then a DNN."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedshaver.models.base import MLP, CTRModel


class CrossLayerMix(nn.Module):
    """One low-rank mixture-of-experts cross layer.

    ``x_{l+1} = sum_i G_i(x_l) * x_0 ⊙ (U_i tanh(C_i tanh(V_i^T x_l)) + b) + x_l``, with the gates ``G``
    a softmax over one linear score per expert. Because the gates sum to 1, the layer equals
    ``x_0 ⊙ (sum_i G_i U_i h_i + b) + x_l`` with ``h_i = tanh(C_i tanh(V_i^T x_l))``, which this module
    computes with two dense matrix products over all experts instead of one product per expert.

    Parameters
    ----------
    dim : int
        Width of ``x_0`` (all embeddings concatenated).
    num_experts : int
        Experts per layer.
    rank : int
        Rank of each expert's low-rank projection.
    """

    def __init__(self, dim: int, num_experts: int = 4, rank: int = 64):
        super().__init__()
        self.num_experts = num_experts
        self.rank = rank
        # V[:, i, :] is expert i's down-projection and U[i] its up-projection, stored so that all
        # experts together form one (dim, experts * rank) and one (experts * rank, dim) matrix.
        self.V = nn.Parameter(torch.empty(dim, num_experts, rank))
        self.C = nn.Parameter(torch.empty(num_experts, rank, rank))
        self.U = nn.Parameter(torch.empty(num_experts, rank, dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.gate = nn.Linear(dim, num_experts, bias=False)
        for index in range(num_experts):
            nn.init.xavier_normal_(self.V[:, index, :])
            nn.init.xavier_normal_(self.C[index])
            nn.init.xavier_normal_(self.U[index])

    def project(self, xl: torch.Tensor) -> torch.Tensor:
        """Return ``V_i^T x_l`` of all experts, ``(batch, experts * rank)``; it is linear in ``x_l``."""
        return xl @ self.V.reshape(self.V.shape[0], -1)

    def forward(self, x0: torch.Tensor, xl: torch.Tensor) -> torch.Tensor:
        """Return ``x_{l+1}`` ``(batch, dim)`` from ``x_0`` and ``x_l``, both ``(batch, dim)``."""
        return self.forward_from_projection(x0, xl, self.project(xl), self.gate(xl))

    def forward_from_projection(
        self, x0: torch.Tensor, xl: torch.Tensor, projected: torch.Tensor, gate_scores: torch.Tensor
    ) -> torch.Tensor:
        """Finish the layer from ``V_i^T x_l`` ``(batch, experts * rank)`` and gate scores ``(batch, experts)``.

        Both inputs are linear in ``x_l``, which lets attribution update them incrementally.
        """
        batch = projected.shape[0]
        hidden = torch.tanh(projected).view(batch, self.num_experts, self.rank).transpose(0, 1)
        hidden = torch.tanh(torch.bmm(hidden, self.C)).transpose(0, 1)
        gates = torch.softmax(gate_scores, dim=1).unsqueeze(-1)
        mixed = (hidden * gates).reshape(batch, -1) @ self.U.reshape(-1, self.U.shape[-1])
        return x0 * (mixed + self.bias) + xl


class DCNMix(CTRModel):
    """DCN-Mix: stacked :class:`CrossLayerMix` layers over the concatenated embeddings, then a DNN.

    Parameters
    ----------
    num_features, num_fields, embed_dim : int
        Shape of the embedding table and of a sample.
    cross_layers : int
        Number of stacked cross layers.
    num_experts : int
        Experts per cross layer.
    rank : int
        Low rank of each expert.
    hidden_units : sequence of int
        DNN hidden layer widths.
    dropout : float
        DNN dropout rate.
    """

    def __init__(
        self,
        num_features: int,
        num_fields: int,
        embed_dim: int = 16,
        cross_layers: int = 3,
        num_experts: int = 4,
        rank: int = 64,
        hidden_units: Sequence[int] = (400, 400, 400),
        dropout: float = 0.0,
    ):
        super().__init__(num_features, num_fields, embed_dim)
        dim = num_fields * embed_dim
        self.cross = nn.ModuleList(CrossLayerMix(dim, num_experts, rank) for _ in range(cross_layers))
        self.dnn = MLP(dim, hidden_units, dropout)

    def head(self, embeddings: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(batch,)`` from embeddings ``(batch, num_fields, embed_dim)``; ``x`` is unused."""
        x0 = embeddings.flatten(1)
        return self.head_from_cross(x0, x0)

    def head_from_cross(self, x0: torch.Tensor, xl: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Run cross layers ``start, start+1, ...`` from ``x_l`` and then the DNN; return logits ``(batch,)``."""
        for layer in self.cross[start:]:
            xl = layer(x0, xl)
        return self.dnn(xl)
