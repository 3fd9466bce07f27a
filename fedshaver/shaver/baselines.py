"""Single-shot baseline scores on the same pruning API as Shaver.

- Magnitude pruning: ``|E[i, c]|``.
- Taylor pruning (Molchanov et al., CVPR 2019): the first-order Taylor estimate of the loss change when
  a parameter is zeroed, ``|g * E[i, c]|`` with ``g`` the gradient of a batch's summed log loss,
  accumulated as a sum of absolute values over the batches of the attribution data.
- Random pruning: seeded uniform scores.

Post-training quantization is not a ranking; see :func:`fedshaver.shaver.pruning.quantized_variant`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedshaver.data.dataset import EncodedSplit, iterate_batches
from fedshaver.models.base import CTRModel


def magnitude_scores(table: torch.Tensor | np.ndarray) -> np.ndarray:
    """Return ``|E|`` ``(num_features, embed_dim)``."""
    if isinstance(table, torch.Tensor):
        table = table.detach().cpu().numpy()
    return np.abs(np.asarray(table, dtype=np.float64))


def taylor_scores(model: CTRModel, data: EncodedSplit, batch_size: int = 256) -> np.ndarray:
    """Return ``sum over batches of |dL_batch/dE * E|`` ``(num_features, embed_dim)``.

    The model runs in eval mode (no dropout); its parameters are left unchanged.
    """
    if len(data) == 0:
        raise ValueError("Taylor scores need at least one sample")
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    weight = model.embedding.weight
    scores = torch.zeros_like(weight, dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        for x, y in iterate_batches(data, batch_size):
            model.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            scores += (weight.grad.detach() * weight.detach()).abs().to(torch.float64)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return scores.numpy()


def random_scores(shape: tuple[int, int], seed: int) -> np.ndarray:
    """Return seeded uniform scores of ``shape``."""
    return np.random.default_rng(seed).random(shape)
