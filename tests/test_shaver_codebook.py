"""The field-aware codebook: the frequency-weighted mean of each field's embeddings.

Equation numbers refer to Tran et al., "Shaver" (WWW 2025): Eq. 15 is the closed form, Eq. 14 the
expected imputation error it minimises, and Eq. 26 the weighted squared error that Eq. 14 reduces to.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from fedshaver.shaver.placeholders import (
    codebook_placeholder,
    make_placeholder,
    solve_codebook,
    zero_placeholder,
)


def minimize_numerically(objective, size: int) -> np.ndarray:
    """Minimize a torch objective of a flat float64 vector with BFGS, using autograd gradients."""

    def value_and_gradient(flat: np.ndarray) -> tuple[float, np.ndarray]:
        point = torch.tensor(flat, dtype=torch.float64, requires_grad=True)
        value = objective(point)
        value.backward()
        return float(value.detach()), point.grad.numpy()

    result = minimize(value_and_gradient, np.zeros(size), jac=True, method="BFGS", options={"gtol": 1e-10})
    # BFGS may report precision loss near the optimum, so the check is that the gradient vanishes.
    assert np.abs(value_and_gradient(result.x)[1]).max() < 1e-8, result.message
    return result.x


def test_codebook_minimizes_weighted_squared_error():
    rng = np.random.default_rng(0)
    field = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    table = rng.normal(size=(9, 3)).astype(np.float32)
    frequencies = np.array([5, 1, 0, 2, 7, 1, 1, 3, 9])
    table64 = torch.tensor(table, dtype=torch.float64)
    weights = torch.tensor(frequencies, dtype=torch.float64)

    def objective(flat: torch.Tensor) -> torch.Tensor:
        """Eq. 26: sum_i p_i ||V_j[i] - C_j||^2 over all features i of all fields j."""
        residual = table64 - flat.view(3, 3)[torch.as_tensor(field)]
        return (weights[:, None] * residual**2).sum()

    codebook = solve_codebook(table, field, frequencies).numpy().astype(np.float64)
    np.testing.assert_allclose(codebook, minimize_numerically(objective, 9).reshape(3, 3), atol=1e-6)

    # The gradient -2 sum_i p_i (V_j[i] - C_j) vanishes at the solution (up to float32 rounding).
    gradient = np.zeros((3, 3))
    np.add.at(gradient, field, -2.0 * frequencies[:, None] * (table.astype(np.float64) - codebook[field]))
    assert np.abs(gradient).max() < 1e-4

    # Field 1 by hand: (2 * V[3] + 7 * V[4]) / 9.
    np.testing.assert_allclose(codebook[1], (2.0 * table[3] + 7.0 * table[4]) / 9.0, atol=1e-6)


def test_codebook_minimizes_expected_imputation_error():
    """Enumerate Eq. 14: rows x of a dataset and every pruned set Q of size B, all equally likely."""
    field = np.array([0, 0, 1, 1])
    table = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-0.7, 0.1], [1.5, 1.1]], dtype=torch.float64)
    rows = torch.tensor([[0, 2], [0, 3], [1, 2], [0, 2], [1, 3], [0, 3], [0, 2]])
    num_parameters, budget = table.numel(), 3
    frequencies = np.bincount(rows.reshape(-1).numpy(), minlength=4)
    pruned_sets = list(itertools.combinations(range(num_parameters), budget))
    assert len(pruned_sets) == 56
    masks = torch.zeros(len(pruned_sets), num_parameters, dtype=torch.bool)
    for index, pruned in enumerate(pruned_sets):
        masks[index, list(pruned)] = True
    masks = masks.view(-1, *table.shape)

    def expected_error(flat: torch.Tensor) -> torch.Tensor:
        """Mean over Q and x of ||E^T x - E_{Q,C}^T x||^2, where E^T x sums the row's embeddings."""
        imputed = torch.where(masks, flat.view(2, 2)[torch.as_tensor(field)], table)
        difference = table[rows].sum(dim=1) - imputed[:, rows].sum(dim=2)
        return difference.pow(2).sum(dim=-1).mean()

    codebook = solve_codebook(table.numpy(), field, frequencies).numpy().astype(np.float64)
    np.testing.assert_allclose(codebook.reshape(-1), minimize_numerically(expected_error, 4), atol=1e-6)

    # Every perturbation of the solved codebook increases the expected error.
    rng = np.random.default_rng(1)
    best = float(expected_error(torch.tensor(codebook.reshape(-1))))
    for _ in range(20):
        perturbed = torch.tensor(codebook.reshape(-1) + rng.normal(scale=0.05, size=4))
        assert float(expected_error(perturbed)) > best

    # By hand: field 0 has counts (5, 2), field 1 has counts (4, 3).
    np.testing.assert_allclose(codebook[0], (5 * table[0].numpy() + 2 * table[1].numpy()) / 7, atol=1e-6)
    np.testing.assert_allclose(codebook[1], (4 * table[2].numpy() + 3 * table[3].numpy()) / 7, atol=1e-6)


def test_zero_frequency_field_falls_back_to_mean(caplog):
    field = np.array([0, 0, 1, 1, 1])
    table = torch.tensor([[1.0, 2.0], [3.0, 6.0], [1.0, 1.0], [2.0, 4.0], [6.0, 7.0]])
    frequencies = np.array([1, 3, 0, 0, 0])

    with caplog.at_level(logging.WARNING, logger="fedshaver.shaver.placeholders"):
        codebook = solve_codebook(table, field, frequencies)

    assert not torch.isnan(codebook).any()
    np.testing.assert_allclose(codebook[0].numpy(), [2.5, 5.0])
    np.testing.assert_allclose(codebook[1].numpy(), [3.0, 4.0])
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "[1]" in warnings[0].getMessage()


def test_codebook_accepts_table_requiring_grad():
    table = torch.nn.Embedding(4, 2).weight
    field = np.array([0, 0, 1, 1])
    codebook = solve_codebook(table, field, np.array([1, 1, 1, 3]))

    expected = torch.stack([table[:2].mean(dim=0), (table[2] + 3 * table[3]) / 4]).detach()
    assert codebook.dtype == torch.float32
    assert not codebook.requires_grad
    np.testing.assert_allclose(codebook.numpy(), expected.numpy(), rtol=1e-6)


def test_codebook_rejects_invalid_frequencies():
    table = np.ones((3, 2))
    with pytest.raises(ValueError, match="non-negative"):
        solve_codebook(table, np.array([0, 0, 1]), np.array([1, -1, 2]))
    with pytest.raises(ValueError, match="rows"):
        solve_codebook(table, np.array([0, 0, 1]), np.array([1, 2]))
    with pytest.raises(ValueError, match="rows"):
        solve_codebook(table, np.array([0, 1]), np.array([1, 2, 3]))


def test_make_placeholder_by_name():
    table = torch.arange(12, dtype=torch.float32).view(6, 2)
    field = np.array([0, 0, 1, 1, 2, 2])
    frequencies = np.array([1, 0, 1, 1, 0, 2])

    zero = make_placeholder("zero", table, field, frequencies)
    assert zero.name == "zero"
    assert not zero.stored
    assert torch.equal(zero.values, torch.zeros(3, 2))

    codebook = make_placeholder("codebook", table, field, frequencies)
    assert codebook.name == "codebook"
    assert codebook.stored
    np.testing.assert_allclose(codebook.values.numpy(), [[0.0, 1.0], [5.0, 6.0], [10.0, 11.0]])
    assert torch.equal(codebook.values, codebook_placeholder(table, field, frequencies).values)
    assert torch.equal(codebook.expand(field), codebook.values[torch.as_tensor(field)])

    assert torch.equal(zero_placeholder(3, 2).expand(field), torch.zeros(6, 2))
    with pytest.raises(ValueError, match="unknown placeholder"):
        make_placeholder("mean", table, field, frequencies)
