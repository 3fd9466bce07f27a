"""Method registry and the budget sweep on the prepared Criteo head sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from fedshaver.models.deepfm import DeepFM
from fedshaver.shaver.methods import AttributionOptions, attribute, build_ranking
from fedshaver.shaver.placeholders import solve_codebook
from fedshaver.shaver.pruning import Budget, prune_order
from fedshaver.sweep import SWEEP_COLUMNS, evaluate_variants

EMBED_DIM = 4
METHODS = ["shaver_codebook", "shaver_zero", "magnitude", "taylor", "random"]


@pytest.fixture(scope="module")
def trained_model(criteo_dataset):
    """A small DeepFM trained for one epoch on the training split."""
    feature_map = criteo_dataset.feature_map
    torch.manual_seed(0)
    model = DeepFM(feature_map.num_features, feature_map.num_fields, embed_dim=EMBED_DIM, hidden_units=(16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    x = torch.from_numpy(np.array(criteo_dataset.train.x, dtype=np.int64))
    y = torch.from_numpy(np.array(criteo_dataset.train.y, dtype=np.float32))
    generator = torch.Generator().manual_seed(0)
    for batch in torch.randperm(len(y), generator=generator).split(512):
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(model(x[batch]), y[batch]).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def rankings(criteo_dataset, trained_model):
    attribution_data = criteo_dataset.valid.subset(np.arange(64))
    options = AttributionOptions(batch_size=16, max_samples=64, progress=False)
    feature_map = criteo_dataset.feature_map
    return {
        method: build_ranking(method, trained_model, feature_map, attribution_data, options=options, seed=1)
        for method in METHODS
    }


def test_attribute_codebook_uses_training_frequencies(criteo_dataset, trained_model):
    feature_map = criteo_dataset.feature_map
    data = criteo_dataset.valid.subset(np.arange(16))
    options = AttributionOptions(batch_size=8, progress=False)

    attribution = attribute(trained_model, feature_map, data, "codebook", options)

    expected = solve_codebook(trained_model.embedding_table(), feature_map.feature_field, feature_map.frequencies())
    assert attribution.placeholder.name == "codebook"
    assert torch.equal(attribution.placeholder.values, expected)
    assert attribution.samples == 16
    np.testing.assert_array_equal(
        attribution.feature_counts, np.bincount(np.asarray(data.x).reshape(-1), minlength=feature_map.num_features)
    )


def test_build_ranking_uses_given_attribution(criteo_dataset, trained_model):
    feature_map = criteo_dataset.feature_map
    data = criteo_dataset.valid.subset(np.arange(8))
    attribution = attribute(trained_model, feature_map, data, "zero", AttributionOptions(progress=False))

    ranking = build_ranking("shaver_zero", trained_model, feature_map, attribution=attribution)

    np.testing.assert_array_equal(ranking.order, prune_order(attribution.values))
    assert not ranking.codebook
    with pytest.raises(ValueError, match="codebook placeholder"):
        build_ranking("shaver_codebook", trained_model, feature_map, attribution=attribution)


def test_build_ranking_rejects_invalid_requests(criteo_dataset, trained_model):
    feature_map = criteo_dataset.feature_map
    with pytest.raises(ValueError, match="no ranking"):
        build_ranking("ptq", trained_model, feature_map)
    with pytest.raises(ValueError, match="unknown method"):
        build_ranking("lottery", trained_model, feature_map)
    with pytest.raises(ValueError, match="attribution data"):
        build_ranking("shaver_zero", trained_model, feature_map)
    with pytest.raises(ValueError, match="attribution data"):
        build_ranking("taylor", trained_model, feature_map)


def test_sweep_rows_bytes_and_metrics(criteo_dataset, trained_model, rankings):
    feature_map = criteo_dataset.feature_map
    num_features, num_fields = feature_map.num_features, feature_map.num_fields
    total = num_features * EMBED_DIM
    # Empty tables: bitmap ceil(n * d / 8) bytes, plus the m * d * 4 codebook bytes for Shaver-Codebook.
    bitmap_bytes = -(-total // 8)
    codebook_bytes = num_fields * EMBED_DIM * 4
    assert bitmap_bytes < (num_features + 1)
    tight = bitmap_bytes + codebook_bytes - 1  # feasible without a codebook only
    budgets = [Budget(sparsity=0.5), Budget(bytes=tight), Budget(bytes=5000)]
    split = criteo_dataset.test

    table = evaluate_variants(trained_model, split, rankings, budgets, ptq_bits=[8, 4], progress=False)

    assert list(table.columns) == SWEEP_COLUMNS
    assert len(table) == 1 + len(METHODS) * len(budgets) + 2
    unpruned = table.iloc[0]
    assert unpruned["method"] == "unpruned"
    assert unpruned["bytes"] == total * 4
    assert unpruned["sparsity"] == 0.0
    assert 0.0 < unpruned["auc"] < 1.0

    expected_jobs = [(method, budget.label) for method in METHODS for budget in budgets]
    expected_jobs += [("ptq", "8-bit"), ("ptq", "4-bit")]
    assert list(zip(table["method"][1:], table["budget"][1:])) == expected_jobs

    infeasible = table[table["status"] == "infeasible"]
    assert list(infeasible["method"]) == ["shaver_codebook"]
    assert infeasible.iloc[0]["budget"] == f"{tight} B"
    assert str(bitmap_bytes + codebook_bytes) in infeasible.iloc[0]["note"]
    assert pd.isna(infeasible.iloc[0]["auc"])

    ok = table[table["status"] == "ok"]
    assert len(ok) == len(table) - 1
    assert ok["auc"].between(0.0, 1.0, inclusive="neither").all()
    assert ok["auc_defined"].all()
    assert np.isfinite(ok["logloss"].astype(float)).all()
    np.testing.assert_allclose(ok["delta_auc"], ok["auc"] - unpruned["auc"])
    np.testing.assert_allclose(ok["delta_logloss"], ok["logloss"] - unpruned["logloss"])
    by_bytes = ok[ok["budget_kind"] == "bytes"]
    assert len(by_bytes) == 2 * len(METHODS) - 1
    assert (by_bytes["bytes"].astype(int) <= by_bytes["budget_value"]).all()
    assert (ok[ok["budget"] == "t=0.5"]["sparsity"] == 0.5).all()

    ptq8 = table[table["budget"] == "8-bit"].iloc[0]
    assert ptq8["bytes"] == total + 8 * num_features
    assert ptq8["layout"] == "ptq8"
    assert ptq8["sparsity"] == 0.75

    # Magnitude pruning at t = 0.5, evaluated by hand: zero the smaller half of |E|.
    weights = trained_model.embedding_table().detach()
    keep = torch.zeros(total, dtype=torch.bool)
    keep[np.argsort(np.abs(weights.numpy()).reshape(-1), kind="stable")[total // 2 :]] = True
    pruned = torch.where(keep.view_as(weights), weights, torch.zeros(()))
    x = torch.from_numpy(np.array(split.x, dtype=np.int64))
    labels = torch.from_numpy(np.array(split.y, dtype=np.float64))
    with torch.no_grad():
        logits = trained_model.head(pruned[x], x).double()
    expected_logloss = float(F.binary_cross_entropy_with_logits(logits, labels))
    magnitude_row = table[(table["method"] == "magnitude") & (table["budget"] == "t=0.5")].iloc[0]
    assert magnitude_row["logloss"] == pytest.approx(expected_logloss, abs=1e-6)
    assert magnitude_row["logloss"] != unpruned["logloss"]
