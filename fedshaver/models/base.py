"""Shared parts of the CTR backbones: the embedding interface and the MLP block.

Every backbone splits its forward pass in two, so that attribution and pruning can replace embeddings
without knowing the architecture::

    embeddings = model.embed(x)          # (batch, num_fields, embed_dim)
    logits = model.head(embeddings, x)   # (batch,)

``x`` contains global feature ids ``(batch, num_fields)``. The embedding table is ``model.embedding``, an
``nn.Embedding`` of shape ``(num_features, embed_dim)`` during training; pruning swaps in a module with
the same call signature.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Fully connected ReLU layers with optional dropout, followed by a linear output of one unit.

    Parameters
    ----------
    input_dim : int
        Width of the input.
    hidden_units : sequence of int
        Width of each hidden layer.
    dropout : float
        Dropout rate after each hidden activation.
    """

    def __init__(self, input_dim: int, hidden_units: Sequence[int], dropout: float = 0.0):
        super().__init__()
        widths = [input_dim, *hidden_units]
        self.hidden = nn.ModuleList(nn.Linear(widths[i], widths[i + 1]) for i in range(len(hidden_units)))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.output = nn.Linear(widths[-1], 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Return the output unit ``(batch,)`` for inputs ``(batch, input_dim)``."""
        if not self.hidden:
            return self.output(inputs).squeeze(-1)
        return self.forward_from_first_preactivation(self.hidden[0](inputs))

    def forward_from_first_preactivation(self, preactivation: torch.Tensor) -> torch.Tensor:
        """Finish the forward pass from the first hidden layer's pre-activation ``(..., hidden_units[0])``.

        The activations are applied in place, so ``preactivation`` is overwritten; pass a copy to keep it.
        """
        hidden = self.dropout(torch.relu_(preactivation))
        for layer in self.hidden[1:]:
            hidden = self.dropout(torch.relu_(layer(hidden)))
        return self.output(hidden).squeeze(-1)


class CTRModel(nn.Module):
    """Base class of the backbones: one shared embedding table plus an architecture-specific head.

    Parameters
    ----------
    num_features : int
        Rows ``n`` of the embedding table (all fields together).
    num_fields : int
        Fields ``m`` per sample.
    embed_dim : int
        Embedding dimension ``d``.
    """

    def __init__(self, num_features: int, num_fields: int, embed_dim: int):
        super().__init__()
        self.num_features = num_features
        self.num_fields = num_fields
        self.embed_dim = embed_dim
        self.embedding = nn.Embedding(num_features, embed_dim)
        nn.init.normal_(self.embedding.weight, std=1e-2)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Look up the embeddings ``(batch, num_fields, embed_dim)`` of feature ids ``(batch, num_fields)``."""
        return self.embedding(x)

    def head(self, embeddings: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(batch,)`` from embeddings ``(batch, num_fields, embed_dim)`` and ids ``x``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return click logits ``(batch,)`` for feature ids ``(batch, num_fields)``."""
        return self.head(self.embed(x), x)

    def embedding_table(self) -> torch.Tensor:
        """Return the dense embedding table ``(num_features, embed_dim)`` (a view, not a copy)."""
        return self.embedding.weight

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Return every parameter and buffer except the embedding table: what a device needs besides it."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("embedding.")}
