"""Click-prediction metrics: AUC and LogLoss, per set and pooled over several sets.

AUC comes from scikit-learn. LogLoss is computed from logits with the log-sum-exp form, so it stays
finite for confident predictions where ``log(sigmoid(z))`` would underflow. AUC is undefined on a set
with only one class: it is reported as NaN with ``auc_defined = False``, never as 0.5 and never as an
exception.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import roc_auc_score


@dataclass(frozen=True)
class Metrics:
    """Evaluation of one set of predictions.

    Attributes
    ----------
    examples : int
        Number of rows.
    positives : int
        Number of clicked rows.
    auc : float
        Area under the ROC curve; NaN when the set has a single class or no rows.
    auc_defined : bool
        False when ``auc`` is NaN because the set has a single class or no rows.
    logloss : float
        Mean binary cross-entropy; NaN when the set has no rows.
    """

    examples: int
    positives: int
    auc: float
    auc_defined: bool
    logloss: float

    def to_dict(self) -> dict:
        """Return the fields as a plain dict."""
        return asdict(self)


def logloss_from_logits(labels: np.ndarray, logits: np.ndarray) -> float:
    """Return the mean binary cross-entropy of labels 0/1 ``(n,)`` against logits ``(n,)``."""
    labels = np.asarray(labels, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    # -[y log s(z) + (1-y) log(1-s(z))] = max(z, 0) - y z + log(1 + exp(-|z|))
    losses = np.maximum(logits, 0.0) - labels * logits + np.log1p(np.exp(-np.abs(logits)))
    return float(losses.mean())


def evaluate_logits(labels: np.ndarray, logits: np.ndarray) -> Metrics:
    """Return AUC and LogLoss of logits ``(n,)`` against labels 0/1 ``(n,)``."""
    labels = np.asarray(labels).reshape(-1)
    logits = np.asarray(logits).reshape(-1)
    if labels.shape != logits.shape:
        raise ValueError(f"labels and logits differ in length: {labels.shape[0]} and {logits.shape[0]}")
    non_finite = int((~np.isfinite(logits.astype(np.float64))).sum())
    if non_finite:
        raise ValueError(f"{non_finite} of {logits.shape[0]} logits are NaN or infinite; the model has diverged or its inputs are invalid")
    examples = int(labels.shape[0])
    positives = int(labels.sum())
    if examples == 0:
        return Metrics(0, 0, float("nan"), False, float("nan"))
    logloss = logloss_from_logits(labels, logits)
    if positives == 0 or positives == examples:
        return Metrics(examples, positives, float("nan"), False, logloss)
    return Metrics(examples, positives, float(roc_auc_score(labels, logits)), True, logloss)


def pool_predictions(labels: Sequence[np.ndarray], logits: Sequence[np.ndarray]) -> Metrics:
    """Evaluate several sets as one: AUC over the concatenated predictions, not a mean of AUCs."""
    if not labels:
        return evaluate_logits(np.empty(0), np.empty(0))
    return evaluate_logits(np.concatenate([np.ravel(a) for a in labels]), np.concatenate([np.ravel(a) for a in logits]))
