"""Pruning order, sparsity and byte budgets, pruned variants and the baseline scores."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fedshaver.data.dataset import EncodedSplit
from fedshaver.errors import InfeasibleBudgetError
from fedshaver.models.deepfm import DeepFM
from fedshaver.shaver.baselines import magnitude_scores, random_scores, taylor_scores
from fedshaver.shaver.pruning import (
    Budget,
    Ranking,
    kept_for_bytes,
    kept_for_sparsity,
    prune_order,
    quantized_variant,
)
from fedshaver.shaver.storage import format_bytes, smallest_format

# --- pruning order and sparsity -------------------------------------------------------------------


def test_prune_order_ranks_by_magnitude_then_index():
    scores = np.array([[0.5, -0.1], [0.1, 0.0], [-0.5, 0.3]])
    # |scores| flattened: 0.5, 0.1, 0.1, 0.0, 0.5, 0.3
    np.testing.assert_array_equal(prune_order(scores), [3, 1, 2, 5, 0, 4])

    ranking = Ranking("hand", scores, np.ones((3, 2)), np.zeros((2, 2)), [0, 2, 3], codebook=False)
    expected_kept = {
        0: [],
        1: [4],
        2: [0, 4],
        3: [0, 4, 5],
        4: [0, 2, 4, 5],
        5: [0, 1, 2, 4, 5],
        6: [0, 1, 2, 3, 4, 5],
    }
    for kept, flat in expected_kept.items():
        np.testing.assert_array_equal(np.flatnonzero(ranking.keep_mask(kept)), flat, err_msg=f"kept={kept}")


def test_prune_order_with_all_scores_tied():
    np.testing.assert_array_equal(prune_order(np.full((2, 3), -2.0)), np.arange(6))


def test_prune_order_ties_on_large_table():
    # Few distinct magnitudes over 2000 parameters: an unstable sort would reorder equal scores.
    scores = np.random.default_rng(0).choice([-2.0, -1.0, 0.0, 1.0, 2.0, 0.5], size=(125, 16))
    flat = scores.reshape(-1).tolist()
    expected = sorted(range(len(flat)), key=lambda index: (abs(flat[index]), index))
    np.testing.assert_array_equal(prune_order(scores), expected)


@pytest.mark.parametrize(
    ("sparsity", "total", "kept"),
    [
        (0.5, 10, 5),
        (0.9, 27952, 2795),  # ceil(0.9 * 27952) = ceil(25156.8) = 25157 pruned
        (0.0, 7, 7),
        (1.0, 7, 0),
        (0.33, 10, 6),  # ceil(3.3) = 4 pruned
        (0.7, 10, 3),  # 0.7 * 10 is 7.000000000000001 in floating point, still 7 pruned
        (0.95, 100, 5),  # 0.95 * 100 is 95.00000000000001 in floating point
        (0.8, 1086810 * 16, 3477792),  # exactly 0.8 * 17388960 = 13911168 pruned
        (0.5, 1, 0),  # ceil(0.5) = 1 pruned
    ],
)
def test_kept_for_sparsity_by_hand(sparsity, total, kept):
    assert kept_for_sparsity(sparsity, total) == kept


def test_budget_validation():
    with pytest.raises(ValueError, match="exactly one"):
        Budget()
    with pytest.raises(ValueError, match="exactly one"):
        Budget(sparsity=0.5, bytes=100)
    with pytest.raises(InfeasibleBudgetError):
        Budget(sparsity=1.5)
    with pytest.raises(InfeasibleBudgetError):
        Budget(sparsity=-0.1)
    with pytest.raises(InfeasibleBudgetError):
        Budget(bytes=-1)

    assert Budget(sparsity=0.8).label == "t=0.8"
    assert Budget(sparsity=0.8).kind == "sparsity"
    assert Budget(bytes=8192).label == "8192 B"
    assert Budget(bytes=8192).kind == "bytes"
    assert Budget(bytes=8192).value == 8192.0


# --- byte counts of the layouts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "kept", "codebook", "expected"),
    [
        # n = 6, d = 32, m = 2: bitmap = 192 / 8 + 4k, csr = 7 * 1 + k * 1 + 4k
        ((6, 32, 2), 0, False, {"dense": 768, "bitmap": 24, "csr": 7}),
        ((6, 32, 2), 16, False, {"dense": 768, "bitmap": 88, "csr": 87}),
        ((6, 32, 2), 17, False, {"dense": 768, "bitmap": 92, "csr": 92}),
        ((6, 32, 2), 186, False, {"dense": 768, "bitmap": 768, "csr": 7 + 186 * 5}),
        # the codebook adds 2 * 32 * 4 = 256 bytes to the sparse layouts only
        ((6, 32, 2), 0, True, {"dense": 768, "bitmap": 280, "csr": 263}),
        ((6, 32, 2), 20, True, {"dense": 768, "bitmap": 360, "csr": 363}),
        # row offsets widen to uint16 once kept > 255 and to uint32 once kept > 65535
        ((100, 4, 3), 255, False, {"dense": 1600, "bitmap": 50 + 1020, "csr": 101 + 255 + 1020}),
        ((100, 4, 3), 256, False, {"dense": 1600, "bitmap": 50 + 1024, "csr": 202 + 256 + 1024}),
        ((5000, 16, 3), 65535, False, {"dense": 320000, "bitmap": 10000 + 262140, "csr": 10002 + 65535 + 262140}),
        ((5000, 16, 3), 65536, False, {"dense": 320000, "bitmap": 10000 + 262144, "csr": 20004 + 65536 + 262144}),
        # more than 256 columns need uint16 column indices
        ((2, 300, 1), 10, False, {"dense": 2400, "bitmap": 75 + 40, "csr": 3 + 20 + 40}),
        # 9 bits round up to 2 bytes of bitmap
        ((3, 3, 3), 1, True, {"dense": 36, "bitmap": 2 + 4 + 36, "csr": 4 + 1 + 4 + 36}),
    ],
)
def test_format_bytes_by_hand(shape, kept, codebook, expected):
    num_features, embed_dim, num_fields = shape
    assert format_bytes(num_features, embed_dim, num_fields, kept, codebook) == expected


def test_smallest_format_breaks_ties_toward_dense_then_bitmap():
    assert smallest_format(6, 32, 2, 16, False) == ("csr", 87)
    assert smallest_format(6, 32, 2, 17, False) == ("bitmap", 92)
    assert smallest_format(6, 32, 2, 185, False) == ("bitmap", 764)
    assert smallest_format(6, 32, 2, 186, False) == ("dense", 768)
    with pytest.raises(ValueError, match="kept"):
        format_bytes(6, 32, 2, 193, False)


# --- byte budgets ---------------------------------------------------------------------------------


HAND_SCORES = np.random.default_rng(0).normal(size=(6, 32))


def hand_ranking(codebook: bool) -> Ranking:
    rng = np.random.default_rng(1)
    table = rng.normal(size=(6, 32)).astype(np.float32)
    placeholder = rng.normal(size=(2, 32)).astype(np.float32) if codebook else np.zeros((2, 32), np.float32)
    return Ranking("test", HAND_SCORES, table, placeholder, [0, 3, 6], codebook=codebook)


@pytest.mark.parametrize(
    ("codebook", "budget", "kept", "layout", "nbytes"),
    [
        (False, 7, 0, "csr", 7),
        (False, 90, 16, "csr", 87),  # csr 7 + 5k <= 90 and bitmap 24 + 4k <= 90 both give k = 16
        (False, 100, 19, "bitmap", 100),  # bitmap 24 + 4 * 19 = 100
        (False, 767, 185, "bitmap", 764),
        (False, 768, 192, "dense", 768),
        (True, 263, 0, "csr", 263),
        (True, 363, 20, "bitmap", 360),  # kept 21 needs min(364, 368) bytes
        (True, 10_000, 192, "dense", 768),
    ],
)
def test_byte_budget_by_hand(codebook, budget, kept, layout, nbytes):
    ranking = hand_ranking(codebook)
    variant = ranking.variant(Budget(bytes=budget))
    assert ranking.kept_for(Budget(bytes=budget)) == kept
    assert variant.storage.kept == kept
    assert variant.layout == layout
    assert variant.nbytes == nbytes
    assert variant.sparsity == pytest.approx(1.0 - kept / 192)


def smallest_size(shape: tuple[int, int, int], kept: int, codebook: bool) -> int:
    return min(format_bytes(*shape, kept, codebook).values())


@pytest.mark.parametrize("codebook", [False, True])
def test_byte_budget_is_tight_and_monotone(codebook):
    ranking = hand_ranking(codebook)
    shape = (6, 32, 2)
    minimum = smallest_size(shape, 0, codebook)
    assert minimum == (263 if codebook else 7)

    previous_kept, previous_bytes = -1, -1
    for budget in range(minimum, 900):
        variant = ranking.variant(Budget(bytes=budget))
        kept = variant.storage.kept
        assert variant.nbytes <= budget
        assert variant.nbytes == smallest_size(shape, kept, codebook)
        if kept < 192:
            assert smallest_size(shape, kept + 1, codebook) > budget, f"budget {budget} could keep {kept + 1}"
        assert kept >= previous_kept
        assert variant.nbytes >= previous_bytes
        previous_kept, previous_bytes = kept, variant.nbytes

    for budget in [0, 1, minimum - 1]:
        with pytest.raises(InfeasibleBudgetError) as raised:
            ranking.variant(Budget(bytes=budget))
        assert raised.value.minimum == minimum
        assert raised.value.requested == budget
        assert str(minimum) in str(raised.value)


def test_kept_for_bytes_on_large_table():
    # n = 1000, d = 16, m = 10: bitmap 2000 + 4k, csr (1001 * w) + 5k, dense 64000.
    assert kept_for_bytes(2000, 1000, 16, 10, False) == 199  # csr 1001 + 5 * 199 = 1996
    # uint8 offsets allow up to 255 kept (csr 2276 bytes), and 256 kept need min(bitmap 3024, csr 3282).
    assert kept_for_bytes(3001, 1000, 16, 10, False) == 255
    assert kept_for_bytes(64000, 1000, 16, 10, False) == 16000
    assert kept_for_bytes(63999, 1000, 16, 10, False) == 15499  # bitmap 2000 + 4 * 15499 = 63996
    with pytest.raises(InfeasibleBudgetError) as raised:
        kept_for_bytes(1000, 1000, 16, 10, False)
    assert raised.value.minimum == 1001


# --- pruned variants ------------------------------------------------------------------------------


@pytest.mark.parametrize("codebook", [False, True])
def test_sparsity_variant_keeps_top_parameters(codebook):
    ranking = hand_ranking(codebook)
    variant = ranking.variant(Budget(sparsity=0.5))
    magnitude = np.abs(HAND_SCORES).reshape(-1)
    assert len(np.unique(magnitude)) == magnitude.size
    keep = (magnitude > np.sort(magnitude)[95]).reshape(6, 32)

    field = np.repeat([0, 1], 3)
    expected = np.where(keep, ranking.table, ranking.placeholder[field])
    assert variant.storage.kept == 96
    assert variant.sparsity == 0.5
    assert variant.label == "t=0.5"
    np.testing.assert_array_equal(variant.dense_table().numpy(), expected)
    np.testing.assert_array_equal(ranking.keep_mask(96), keep)


def test_variant_apply_dense_and_compact_agree():
    torch.manual_seed(0)
    model = DeepFM(6, 2, embed_dim=32, hidden_units=(8,)).eval()
    scores = np.random.default_rng(1).normal(size=(6, 32))
    ranking = Ranking("test", scores, model.embedding_table(), torch.randn(2, 32), [0, 3, 6], codebook=True)
    x = torch.tensor([[0, 3], [1, 4], [2, 5], [0, 5]])
    for budget in [Budget(sparsity=0.9), Budget(bytes=400), Budget(sparsity=0.0)]:
        variant = ranking.variant(budget)
        dense, compact = variant.apply(model), variant.apply(model, compact=True)
        with torch.no_grad():
            expected = model.head(torch.from_numpy(variant.storage.to_dense())[x], x)
            np.testing.assert_array_equal(dense(x).numpy(), expected.numpy())
            np.testing.assert_array_equal(compact(x).numpy(), expected.numpy())
    # The original model keeps its table.
    assert isinstance(model.embedding, nn.Embedding)
    assert model.embedding.weight.requires_grad


def test_quantized_variant_metadata():
    table = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    variant = quantized_variant(table, 8)
    assert variant.method == "ptq"
    assert variant.budget is None
    assert variant.sparsity == 0.75
    assert variant.layout == "ptq8"
    assert variant.label == "8-bit"
    assert variant.nbytes == 20 + 8 * 5


def test_quantized_variant_apply_dense_and_compact_agree():
    torch.manual_seed(1)
    model = DeepFM(6, 2, embed_dim=5, hidden_units=(8,)).eval()
    variant = quantized_variant(model.embedding_table(), 4)
    x = torch.tensor([[0, 3], [1, 4], [2, 5]])
    with torch.no_grad():
        expected = model.head(torch.from_numpy(variant.storage.to_dense())[x], x)
        np.testing.assert_array_equal(variant.apply(model)(x).numpy(), expected.numpy())
        np.testing.assert_array_equal(variant.apply(model, compact=True)(x).numpy(), expected.numpy())
        assert not torch.equal(expected, model(x))


def test_ranking_rejects_mismatched_scores():
    with pytest.raises(ValueError, match="shape"):
        Ranking("test", np.zeros((3, 2)), np.zeros((3, 3)), np.zeros((1, 3)), [0, 3], codebook=False)


# --- baseline scores ------------------------------------------------------------------------------


def test_magnitude_scores_are_absolute_values():
    table = torch.tensor([[-1.5, 0.0], [2.0, -0.25]])
    scores = magnitude_scores(table)
    assert scores.dtype == np.float64
    np.testing.assert_array_equal(scores, [[1.5, 0.0], [2.0, 0.25]])
    np.testing.assert_array_equal(magnitude_scores(table.numpy()), scores)
    np.testing.assert_array_equal(magnitude_scores(nn.Parameter(table)), scores)


def test_taylor_scores_sum_batch_gradients():
    torch.manual_seed(3)
    model = DeepFM(6, 2, embed_dim=3, hidden_units=(5,), dropout=0.5)
    with torch.no_grad():
        model.embedding.weight.normal_()
        model.first_order.weight.normal_()
    model.train()
    before = copy.deepcopy(model.state_dict())
    x = np.array([[0, 3], [1, 4], [2, 5], [0, 4], [1, 3], [2, 3], [0, 5]], dtype=np.int32)
    y = np.array([1, 0, 0, 1, 1, 0, 1], dtype=np.float32)

    scores = taylor_scores(model, EncodedSplit(x=x, y=y), batch_size=3)

    # Reference in float64: the gradient of each batch's summed log loss with respect to the table.
    reference_model = copy.deepcopy(model).double().eval()
    table = reference_model.embedding.weight.detach().clone().requires_grad_(True)
    expected = torch.zeros(6, 3, dtype=torch.float64)
    for start in range(0, 7, 3):
        ids = torch.as_tensor(x[start : start + 3], dtype=torch.long)
        labels = torch.as_tensor(y[start : start + 3], dtype=torch.float64)
        logits = reference_model.head(table[ids], ids)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, table)
        expected += (gradient * table.detach()).abs()

    assert scores.shape == (6, 3)
    assert expected.abs().max() > 1e-3
    np.testing.assert_allclose(scores, expected.numpy(), rtol=1e-5, atol=1e-7)
    # One batch sums the gradients before the absolute value, so it differs from three batches.
    assert not np.allclose(taylor_scores(model, EncodedSplit(x=x, y=y), batch_size=7), scores)

    assert model.training
    assert all(parameter.grad is None for parameter in model.parameters())
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_taylor_scores_reject_empty_data():
    model = DeepFM(6, 2, embed_dim=3, hidden_units=(5,))
    with pytest.raises(ValueError, match="at least one sample"):
        taylor_scores(model, EncodedSplit(x=np.zeros((0, 2), np.int32), y=np.zeros(0, np.float32)))


def test_random_scores_are_seeded():
    first = random_scores((4, 3), seed=5)
    assert first.shape == (4, 3)
    assert np.all((first >= 0.0) & (first < 1.0))
    np.testing.assert_array_equal(random_scores((4, 3), seed=5), first)
    assert not np.array_equal(random_scores((4, 3), seed=6), first)
