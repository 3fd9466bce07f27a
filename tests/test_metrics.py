"""AUC and LogLoss against scikit-learn and hand-computed values, undefined AUC and pooling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from fedshaver.metrics import Metrics, evaluate_logits, logloss_from_logits, pool_predictions
from fedshaver.models import build_model
from fedshaver.training import Trainer, TrainOptions


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Return click probabilities in float64, the input scikit-learn's metrics expect."""
    return torch.sigmoid(torch.as_tensor(np.asarray(logits), dtype=torch.float64)).numpy()


@pytest.fixture(scope="module")
def real_predictions(criteo_dataset):
    """Labels and logits of a one-epoch DeepFM on the validation and test rows of the Criteo sample."""
    fm = criteo_dataset.feature_map
    torch.manual_seed(0)
    model = build_model("deepfm", fm.num_features, fm.num_fields, embed_dim=8, hidden_units=[16])
    trainer = Trainer(model, TrainOptions(batch_size=256, epochs=1, patience=0))
    trainer.fit(criteo_dataset.train, progress=False)
    return {
        name: (np.asarray(criteo_dataset.splits[name].y), trainer.predict(criteo_dataset.splits[name]))
        for name in ("valid", "test")
    }


@pytest.mark.parametrize("split", ["valid", "test"])
def test_real_predictions_match_sklearn(real_predictions, split):
    labels, logits = real_predictions[split]
    probabilities = sigmoid(logits)

    metrics = evaluate_logits(labels, logits)

    assert metrics.examples == len(labels)
    assert metrics.positives == int(labels.sum())
    assert metrics.auc_defined
    assert metrics.auc == pytest.approx(roc_auc_score(labels, probabilities), abs=1e-12)
    assert metrics.logloss == pytest.approx(log_loss(labels, probabilities), rel=1e-6)
    # A model trained for one epoch ranks better than chance. The exact value is not checked here.
    assert metrics.auc > 0.55


@pytest.mark.parametrize(
    ("labels", "logits", "expected_auc"),
    [
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75),
        # Ties count one half: pairs (1 vs 1) = 0.5, the other three pairs = 1, so 3.5 / 4.
        ([0, 1, 0, 1], [1.0, 1.0, 0.0, 2.0], 0.875),
        ([1, 1, 0], [-3.0, -2.0, 5.0], 0.0),
        ([0, 1, 0, 1, 0], [-1.0, 2.0, 0.5, 0.3, -4.0], 5 / 6),
    ],
)
def test_auc_hand_cases(labels, logits, expected_auc):
    labels = np.asarray(labels, dtype=np.float32)
    logits = np.asarray(logits, dtype=np.float32)

    metrics = evaluate_logits(labels, logits)

    assert metrics.auc_defined
    assert metrics.auc == pytest.approx(expected_auc, abs=1e-12)
    assert metrics.auc == pytest.approx(roc_auc_score(labels, sigmoid(logits)), abs=1e-12)
    assert metrics.logloss == pytest.approx(log_loss(labels, sigmoid(logits)), rel=1e-9)


def test_logloss_hand_case():
    # Labels 1 and 0 at logits 0 and ln 3: losses -ln(1/2) and -ln(1 - 3/4), mean 1.5 ln 2.
    labels = np.array([1.0, 0.0])
    logits = np.array([0.0, math.log(3.0)])

    assert logloss_from_logits(labels, logits) == pytest.approx(1.5 * math.log(2.0), rel=1e-12)
    assert evaluate_logits(labels, logits).logloss == pytest.approx(1.5 * math.log(2.0), rel=1e-12)


def test_logloss_matches_direct_formula():
    generator = np.random.default_rng(1)
    logits = generator.normal(scale=3.0, size=200)
    labels = (generator.random(200) < 0.4).astype(np.float64)
    probabilities = 1.0 / (1.0 + np.exp(-logits))

    expected = -np.mean(labels * np.log(probabilities) + (1 - labels) * np.log(1 - probabilities))

    assert logloss_from_logits(labels, logits) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("magnitude", [100.0, 1000.0])
def test_logloss_finite_for_extreme_logits(magnitude):
    labels = np.array([1.0, 0.0, 0.0, 1.0])
    logits = np.array([magnitude, -magnitude, magnitude, -magnitude])
    # Per row: -[y ln s(z) + (1-y) ln(1-s(z))] = ln(1 + e^z) - y z, which is about 0, 0, z, |z| here,
    # because the confident right rows lose ln(1 + e^-|z|) < 1e-43 and the wrong rows lose |z| plus that.
    expected = (0.0 + 0.0 + magnitude + magnitude) / 4

    value = logloss_from_logits(labels, logits)

    assert math.isfinite(value)
    assert value == pytest.approx(expected, rel=1e-12)
    assert logloss_from_logits(labels[:2], logits[:2]) == pytest.approx(0.0, abs=1e-40)
    assert math.isfinite(evaluate_logits(labels, logits).logloss)


def test_logloss_accepts_float32_logits():
    labels = np.array([1.0, 0.0], dtype=np.float32)
    logits = np.array([100.0, 100.0], dtype=np.float32)

    assert logloss_from_logits(labels, logits) == pytest.approx(50.0, rel=1e-12)


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_single_class_auc_is_undefined(label):
    labels = np.full(5, label)
    logits = np.array([-1.0, 0.0, 0.5, 2.0, 3.0])

    metrics = evaluate_logits(labels, logits)

    assert math.isnan(metrics.auc)
    assert metrics.auc_defined is False
    assert metrics.examples == 5
    assert metrics.positives == int(labels.sum())
    assert metrics.logloss == pytest.approx(logloss_from_logits(labels, logits), rel=1e-12)


def test_empty_set_metrics_are_nan():
    metrics = evaluate_logits(np.empty(0), np.empty(0))

    assert metrics.examples == 0
    assert metrics.positives == 0
    assert math.isnan(metrics.auc)
    assert metrics.auc_defined is False
    assert math.isnan(metrics.logloss)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="differ in length: 3 and 2"):
        evaluate_logits(np.array([0, 1, 0]), np.array([0.1, 0.2]))


def test_metrics_to_dict():
    metrics = evaluate_logits(np.array([0, 1]), np.array([-1.0, 1.0]))

    assert metrics.to_dict() == {
        "examples": 2,
        "positives": 1,
        "auc": 1.0,
        "auc_defined": True,
        "logloss": pytest.approx(math.log1p(math.exp(-1.0))),
    }


def test_pooled_auc_differs_from_mean_auc():
    # Each set ranks its own rows perfectly, but set B's negative outranks set A's positive.
    labels = [np.array([0.0, 1.0]), np.array([0.0, 1.0])]
    logits = [np.array([0.0, 1.0]), np.array([5.0, 6.0])]
    per_set = [evaluate_logits(y, z) for y, z in zip(labels, logits)]
    mean_auc = float(np.mean([metrics.auc for metrics in per_set]))

    pooled = pool_predictions(labels, logits)

    assert mean_auc == 1.0
    # Of the (positive, negative) pairs (1, 0), (1, 5), (6, 0) and (6, 5), three are ordered correctly.
    assert pooled.auc == pytest.approx(0.75, abs=1e-12)
    assert pooled.auc != pytest.approx(mean_auc)
    assert pooled == evaluate_logits(np.concatenate(labels), np.concatenate(logits))


def test_pooled_metrics_equal_concatenation(real_predictions):
    valid_labels, valid_logits = real_predictions["valid"]
    test_labels, test_logits = real_predictions["test"]
    # Uneven parts, one of them holding a single class, which has no AUC of its own.
    parts = [slice(0, 300), slice(300, 1000)]
    labels = [valid_labels[part] for part in parts] + [test_labels]
    logits = [valid_logits[part] for part in parts] + [test_logits]
    negatives_only = valid_labels == 0
    labels.append(valid_labels[negatives_only][:50])
    logits.append(valid_logits[negatives_only][:50])

    pooled = pool_predictions(labels, logits)
    concatenated = evaluate_logits(np.concatenate(labels), np.concatenate(logits))

    assert pooled == concatenated
    assert pooled.examples == sum(len(part) for part in labels)
    assert pooled.auc == pytest.approx(
        roc_auc_score(np.concatenate(labels), sigmoid(np.concatenate(logits))), abs=1e-12
    )
    assert not evaluate_logits(labels[-1], logits[-1]).auc_defined


def test_pool_of_no_sets_is_empty():
    pooled = pool_predictions([], [])

    assert isinstance(pooled, Metrics)
    assert pooled.examples == 0
    assert math.isnan(pooled.auc)
    assert pooled.auc_defined is False


def test_non_finite_logits_are_rejected():
    with pytest.raises(ValueError, match="1 of 3 logits are NaN or infinite"):
        evaluate_logits(np.array([0.0, 1.0, 1.0]), np.array([0.1, np.nan, 2.0]))
