"""The one trainer: fit with Adam and early stopping on validation AUC, predict, evaluate, checkpoints.

The centralized path and every federated client call the same :class:`Trainer`. The loss is binary
cross-entropy computed from logits (``BCEWithLogitsLoss``), never the log of a probability.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from fedshaver.data.dataset import EncodedSplit, iterate_batches
from fedshaver.errors import CheckpointError
from fedshaver.metrics import Metrics, evaluate_logits

logger = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    """Optimisation settings of :class:`Trainer`.

    Attributes
    ----------
    batch_size : int
        Rows per gradient step.
    epochs : int
        Maximum number of passes over the training rows.
    learning_rate : float
        Adam learning rate.
    weight_decay : float
        Adam L2 penalty on all parameters.
    patience : int
        Epochs without a better validation AUC before stopping; 0 disables early stopping.
    seed : int
        Seed of the row shuffling.
    """

    batch_size: int = 1024
    epochs: int = 10
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 2
    seed: int = 2025


@dataclass
class FitResult:
    """Outcome of :meth:`Trainer.fit`.

    Attributes
    ----------
    history : pandas.DataFrame
        One row per epoch: ``epoch``, ``train_logloss``, ``valid_auc``, ``valid_logloss``, ``seconds``.
    best_epoch : int
        Epoch whose weights the model has after fitting (the last one without validation data).
    stopped_early : bool
        Whether training stopped before ``epochs`` because validation AUC stopped improving.
    train_examples : int
        Rows seen per epoch.
    best_valid : Metrics or None
        Validation metrics of the kept epoch; None without validation data.
    """

    history: pd.DataFrame
    best_epoch: int
    stopped_early: bool
    train_examples: int
    best_valid: Metrics | None = field(default=None)


class Trainer:
    """Train and evaluate a CTR model on encoded splits.

    Parameters
    ----------
    model : nn.Module
        A backbone with ``forward(x) -> logits``.
    options : TrainOptions
        Optimisation settings.
    """

    def __init__(self, model: nn.Module, options: TrainOptions | None = None):
        self.model = model
        self.options = options or TrainOptions()
        self.loss_fn = nn.BCEWithLogitsLoss()

    def make_optimizer(self) -> torch.optim.Optimizer:
        """Return an Adam optimizer over the trainable parameters."""
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.Adam(parameters, lr=self.options.learning_rate, weight_decay=self.options.weight_decay)

    def train_epoch(self, split: EncodedSplit, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> float:
        """Run one shuffled pass over ``split`` and return the mean training log loss."""
        self.model.train()
        total, rows = 0.0, 0
        for x, y in iterate_batches(split, self.options.batch_size, shuffle=True, generator=generator):
            optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(x), y)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(y)
            rows += len(y)
        return total / max(rows, 1)

    def fit(
        self,
        train: EncodedSplit,
        valid: EncodedSplit | None = None,
        epochs: int | None = None,
        progress: bool = True,
    ) -> FitResult:
        """Train on ``train``; with ``valid``, stop early on validation AUC and keep the best weights.

        Parameters
        ----------
        train : EncodedSplit
            Training rows; must not be empty.
        valid : EncodedSplit, optional
            Validation rows for early stopping. Without them the model trains for ``epochs`` epochs.
        epochs : int, optional
            Overrides ``options.epochs``.
        progress : bool
            Show a tqdm bar over epochs.
        """
        if len(train) == 0:
            raise ValueError("cannot train on an empty training split")
        epochs = self.options.epochs if epochs is None else epochs
        generator = torch.Generator().manual_seed(self.options.seed)
        optimizer = self.make_optimizer()
        rows = []
        best_auc, best_epoch, best_state, best_metrics = -math.inf, 0, None, None
        stale = 0
        stopped_early = False
        for epoch in tqdm(range(1, epochs + 1), desc="train", unit="epoch", disable=not progress, leave=False):
            started = time.perf_counter()
            train_logloss = self.train_epoch(train, optimizer, generator)
            record = {"epoch": epoch, "train_logloss": train_logloss, "valid_auc": float("nan"), "valid_logloss": float("nan")}
            if valid is not None and len(valid) > 0:
                metrics = self.evaluate(valid)
                record["valid_auc"] = metrics.auc
                record["valid_logloss"] = metrics.logloss
                score = metrics.auc if metrics.auc_defined else -metrics.logloss
                if score > best_auc:
                    best_auc, best_epoch, stale, best_metrics = score, epoch, 0, metrics
                    best_state = copy.deepcopy(self.model.state_dict())
                else:
                    stale += 1
            else:
                best_epoch = epoch
            record["seconds"] = time.perf_counter() - started
            rows.append(record)
            logger.info(
                "epoch %d/%d: train logloss %.5f, valid AUC %.5f, valid logloss %.5f",
                epoch, epochs, train_logloss, record["valid_auc"], record["valid_logloss"],
            )
            if self.options.patience > 0 and stale >= self.options.patience:
                stopped_early = epoch < epochs
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return FitResult(
            history=pd.DataFrame(rows),
            best_epoch=best_epoch,
            stopped_early=stopped_early,
            train_examples=len(train),
            best_valid=best_metrics,
        )

    def predict(self, split: EncodedSplit) -> np.ndarray:
        """Return the logits ``(rows,)`` of every row of ``split``, in order."""
        return predict_logits(self.model, split)

    def evaluate(self, split: EncodedSplit) -> Metrics:
        """Return AUC and LogLoss of the model on ``split``."""
        return evaluate_model(self.model, split)


@torch.no_grad()
def predict_logits(model: nn.Module, split: EncodedSplit, batch_size: int = 4096) -> np.ndarray:
    """Return the logits ``(rows,)`` of ``model`` on every row of ``split``, in order, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        outputs = [model(x).float().numpy() for x, _ in iterate_batches(split, batch_size)]
    finally:
        model.train(was_training)
    return np.concatenate(outputs) if outputs else np.empty(0, dtype=np.float32)


def evaluate_model(model: nn.Module, split: EncodedSplit) -> Metrics:
    """Return AUC and LogLoss of ``model`` on ``split``."""
    return evaluate_logits(np.asarray(split.y), predict_logits(model, split))


def save_checkpoint(model: nn.Module, path: Path | str, metadata: dict | None = None) -> None:
    """Write the model weights plus plain-data metadata with ``torch.save``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save({"state_dict": model.state_dict(), "metadata": metadata or {}}, temporary)
    temporary.replace(path)


def load_checkpoint(path: Path | str) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True`` (no unpickling).

    Returns
    -------
    tuple
        ``(state_dict, metadata)``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"cannot load checkpoint {path} with weights_only=True: {error}") from error
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise CheckpointError(f"{path} is not a fedshaver checkpoint (no 'state_dict' key)")
    state_dict = payload["state_dict"]
    if not isinstance(state_dict, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state_dict.items()
    ):
        raise CheckpointError(f"{path} is not a fedshaver checkpoint: 'state_dict' must map parameter names to tensors")
    metadata = payload.get("metadata", {})
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path} is not a fedshaver checkpoint: 'metadata' is a {type(metadata).__name__}, not a dict")
    return state_dict, dict(metadata)
