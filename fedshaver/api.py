"""Python API: prepare, train, evaluate, attribute and prune, each returning data.

Every function takes an :class:`~fedshaver.config.ExperimentConfig` (see :func:`load_config`) or a run
folder written by :func:`train`, returns DataFrames or result objects, and writes the same tables into
the run folder. The federated main job is :func:`fedshaver.federated.run.run_federated`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from fedshaver.config import ExperimentConfig, build_config, load_config, resolve_paths
from fedshaver.data.dataset import EncodedSplit, PreparedDataset
from fedshaver.data.preprocess import prepare_dataset
from fedshaver.errors import CheckpointError, ConfigError
from fedshaver.metrics import Metrics
from fedshaver.models import CTRModel, build_model
from fedshaver.results import (
    CONFIG_FILE,
    HISTORY_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SWEEP_FILE,
    attribution_file,
    staged_folder,
    unique_run_path,
    write_config,
    write_csv,
    write_json,
)
from fedshaver.shaver.attribution import Attribution, table_digest
from fedshaver.shaver.methods import SHAVER_PLACEHOLDERS, AttributionOptions, attribute as attribute_model, build_ranking
from fedshaver.shaver.pruning import Budget
from fedshaver.sweep import evaluate_variants
from fedshaver.training import FitResult, Trainer, TrainOptions, evaluate_model, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

__all__ = [
    "TrainRun",
    "attribute",
    "attribution_data",
    "configure_torch",
    "evaluate",
    "load_config",
    "load_run",
    "new_model",
    "prepare",
    "prune_sweep",
    "train",
]


def configure_torch(config: ExperimentConfig) -> None:
    """Set torch's CPU thread count from the config."""
    torch.set_num_threads(config.train.num_threads)


def prepare(config: ExperimentConfig, force: bool = False, progress: bool = True) -> PreparedDataset:
    """Prepare (or load from the cache) the dataset described by ``config.data``."""
    paths = resolve_paths(config)
    data = config.data
    return prepare_dataset(
        paths["files"],
        data.format,
        paths["cache_dir"],
        min_count=data.min_count,
        split_fractions=data.split_fractions,
        seed=data.seed,
        chunk_rows=data.chunk_rows,
        on_bad_rows=data.on_bad_rows,
        key_fields=data.key_fields,
        force=force,
        progress=progress,
    )


def model_options(config: ExperimentConfig) -> dict:
    """Return the backbone keyword arguments of ``config.model``."""
    options = dataclasses.asdict(config.model)
    options.pop("name")
    return options


def new_model(config: ExperimentConfig, num_features: int, num_fields: int) -> CTRModel:
    """Build a freshly initialised backbone, seeded with ``config.seed``."""
    torch.manual_seed(config.seed)
    return build_model(config.model.name, num_features, num_fields, **model_options(config))


def train_options(config: ExperimentConfig) -> TrainOptions:
    """Return the trainer settings of ``config.train``."""
    train = config.train
    return TrainOptions(
        batch_size=train.batch_size,
        epochs=train.epochs,
        learning_rate=train.learning_rate,
        weight_decay=train.weight_decay,
        patience=train.patience,
        seed=train.seed,
    )


def attribution_options(config: ExperimentConfig, progress: bool = True) -> AttributionOptions:
    """Return the estimator settings of ``config.shaver``."""
    shaver = config.shaver
    return AttributionOptions(
        batch_size=shaver.batch_size,
        max_samples=shaver.max_samples,
        threshold=shaver.threshold,
        passes=shaver.passes,
        seed=shaver.seed,
        progress=progress,
    )


def attribution_data(config: ExperimentConfig, split: EncodedSplit) -> EncodedSplit:
    """Return the seeded ``shaver.data_fraction`` subsample of ``split`` used for attribution."""
    fraction = config.shaver.data_fraction
    if fraction >= 1.0:
        return split
    count = max(1, int(round(fraction * len(split))))
    rows = np.sort(np.random.default_rng(config.shaver.seed).choice(len(split), size=count, replace=False))
    return split.subset(rows)


def metrics_table(rows: dict[str, Metrics]) -> pd.DataFrame:
    """Return one row per named metrics object, with its name in column ``split``."""
    return pd.DataFrame([{"split": name, **metrics.to_dict()} for name, metrics in rows.items()])


@dataclass
class TrainRun:
    """A trained model with its data and results.

    Attributes
    ----------
    run_dir : Path
        Folder holding ``model.pt``, ``history.csv``, ``metrics.json`` and the config.
    config : ExperimentConfig
    model : CTRModel
    dataset : PreparedDataset
    fit : FitResult or None
        Training history; None when the run was loaded from disk.
    metrics : pandas.DataFrame
        AUC and LogLoss on the validation and test splits.
    """

    run_dir: Path
    config: ExperimentConfig
    model: CTRModel
    dataset: PreparedDataset
    fit: FitResult | None
    metrics: pd.DataFrame


def train(config: ExperimentConfig, run_dir: Path | str | None = None, progress: bool = True) -> TrainRun:
    """Train the configured backbone centrally with early stopping and evaluate it on valid and test.

    Writes ``config.yaml``, ``feature_map.json``, ``model.pt``, ``history.csv`` and ``metrics.json``
    into ``run_dir`` (a new folder under ``output.run_dir`` by default). The folder appears only when
    training succeeds. Retraining into an existing folder removes its attribution files and
    ``sweep.csv``, which belong to the previous model.
    """
    configure_torch(config)
    dataset = prepare(config, progress=progress)
    final = Path(run_dir) if run_dir is not None else unique_run_path(resolve_paths(config)["run_dir"], config.name)
    fm = dataset.feature_map
    with staged_folder(final) as folder:
        write_config(config, folder.path, {"prepared_dataset": str(dataset.path)})
        fm.save(folder.path / "feature_map.json")
        model = new_model(config, fm.num_features, fm.num_fields)
        logger.info(
            "Training %s on %d rows (%d features, %d fields)", config.model.name, len(dataset.train), fm.num_features, fm.num_fields
        )
        fit = Trainer(model, train_options(config)).fit(dataset.train, dataset.valid, progress=progress)
        save_checkpoint(model, folder.path / MODEL_FILE, checkpoint_metadata(config, fm.num_features, fm.num_fields))

        metrics = metrics_table({"valid": evaluate_model(model, dataset.valid), "test": evaluate_model(model, dataset.test)})
        write_csv(fit.history, folder.path / HISTORY_FILE)
        summary = {"best_epoch": fit.best_epoch, "stopped_early": fit.stopped_early, "splits": metrics.to_dict("records")}
        write_json(summary, folder.path / METRICS_FILE)
        remove_results_of_previous_model(final)
    test = metrics.set_index("split").loc["test"]
    logger.info("Test AUC %.5f, LogLoss %.5f (best epoch %d)", test["auc"], test["logloss"], fit.best_epoch)
    return TrainRun(final, config, model, dataset, fit, metrics)


def remove_results_of_previous_model(run_dir: Path) -> None:
    """Delete attribution files and the sweep table that a previous model left in ``run_dir``."""
    if not run_dir.is_dir():
        return
    stale = [*run_dir.glob("attribution_*.npz"), run_dir / SWEEP_FILE]
    for path in stale:
        if path.is_file():
            logger.info("Removing %s, computed for the previous model in this folder", path)
            path.unlink()


def checkpoint_metadata(config: ExperimentConfig, num_features: int, num_fields: int) -> dict:
    """Return the plain-data metadata stored next to the weights in ``model.pt``."""
    return {"model": dataclasses.asdict(config.model), "num_features": num_features, "num_fields": num_fields}


def load_run_config(run_dir: Path | str) -> ExperimentConfig:
    """Read the resolved config a run folder was made with."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a run folder: {CONFIG_FILE} is missing")
    values = yaml.safe_load(path.read_text(encoding="utf-8"))
    name = values.pop("name", "default")
    source = values.pop("source", "")
    for key in ("fedshaver_version", "prepared_dataset", "run_kind"):
        values.pop(key, None)
    return build_config(values, name=name, origin=source or str(path))


def load_model(run_dir: Path | str, config: ExperimentConfig, num_features: int, num_fields: int) -> CTRModel:
    """Rebuild the backbone of a run folder and load ``model.pt`` into it (``weights_only=True``).

    Raises
    ------
    CheckpointError
        When the checkpoint was made for another table shape or architecture.
    """
    state, metadata = load_checkpoint(Path(run_dir) / MODEL_FILE)
    if (metadata.get("num_features"), metadata.get("num_fields")) != (num_features, num_fields):
        raise CheckpointError(
            f"{run_dir}: checkpoint is for {metadata.get('num_features')} features and {metadata.get('num_fields')} "
            f"fields, the dataset has {num_features} and {num_fields}"
        )
    model = new_model(config, num_features, num_fields)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{run_dir}: checkpoint does not match the {config.model.name} config: {error}") from None
    model.eval()
    return model


def load_run(run_dir: Path | str, progress: bool = True) -> TrainRun:
    """Load a run folder with a ``model.pt`` (from :func:`train` or a federated run): config, dataset, model."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    configure_torch(config)
    dataset = prepare(config, progress=progress)
    fm = dataset.feature_map
    model = load_model(run_dir, config, fm.num_features, fm.num_fields)
    return TrainRun(run_dir, config, model, dataset, None, pd.DataFrame())


def evaluate(run_dir: Path | str, progress: bool = True) -> pd.DataFrame:
    """Evaluate a trained run on its validation and test splits; writes ``metrics.json``."""
    run = load_run(run_dir, progress=progress)
    metrics = metrics_table({"valid": evaluate_model(run.model, run.dataset.valid), "test": evaluate_model(run.model, run.dataset.test)})
    write_json({"splits": metrics.to_dict("records")}, Path(run_dir) / METRICS_FILE)
    return metrics


def attribute(run: TrainRun, placeholder: str | None = None, progress: bool = True) -> Attribution:
    """Estimate Shapley values of ``run``'s model on its validation split; writes the attribution file."""
    placeholder = placeholder or run.config.shaver.placeholder
    data = attribution_data(run.config, run.dataset.valid)
    attribution = attribute_model(run.model, run.dataset.feature_map, data, placeholder, attribution_options(run.config, progress))
    attribution.save(run.run_dir / attribution_file(placeholder))
    return attribution


def budgets_of(config: ExperimentConfig) -> list[Budget]:
    """Return the sparsity and byte budgets of ``config.prune``."""
    return [Budget(sparsity=t) for t in config.prune.sparsity_rates] + [Budget(bytes=b) for b in config.prune.byte_budgets]


def stored_attribution(run: TrainRun, placeholder: str) -> Attribution | None:
    """Return the run folder's attribution file for ``placeholder`` if it belongs to ``run.model``.

    A file computed for another model (another embedding table) is ignored with a warning, so it is
    estimated again instead of silently ranking the wrong parameters.
    """
    path = run.run_dir / attribution_file(placeholder)
    if not path.is_file():
        return None
    try:
        attribution = Attribution.load(path)
    except CheckpointError as error:
        logger.warning("Ignoring %s: %s", path, error)
        return None
    expected = table_digest(run.model.embedding_table())
    if attribution.table_digest != expected:
        logger.warning(
            "Ignoring %s: it was computed for another embedding table (digest %s, this model %s); estimating again",
            path, attribution.table_digest or "missing", expected,
        )
        return None
    return attribution


def rankings_for(run: TrainRun, methods: list[str], progress: bool = True) -> dict:
    """Build the ranking of each method (except ``ptq``), reusing the run folder's matching attribution files."""
    data = attribution_data(run.config, run.dataset.valid)
    rankings = {}
    for method in methods:
        if method == "ptq":
            continue
        attribution = None
        if method in SHAVER_PLACEHOLDERS:
            placeholder = SHAVER_PLACEHOLDERS[method]
            attribution = stored_attribution(run, placeholder) or attribute(run, placeholder, progress=progress)
        rankings[method] = build_ranking(
            method, run.model, run.dataset.feature_map, data, attribution, attribution_options(run.config, progress), seed=run.config.seed
        )
    return rankings


def prune_sweep(run: TrainRun, split: str = "test", progress: bool = True) -> pd.DataFrame:
    """Evaluate every configured method at every configured budget; writes ``sweep.csv``.

    Returns
    -------
    pandas.DataFrame
        One row per method and budget (see :data:`fedshaver.sweep.SWEEP_COLUMNS`), the unpruned model first.
    """
    prune = run.config.prune
    rankings = rankings_for(run, prune.methods, progress=progress)
    ptq_bits = prune.ptq_bits if "ptq" in prune.methods else []
    table = evaluate_variants(run.model, run.dataset.splits[split], rankings, budgets_of(run.config), ptq_bits, progress)
    if (run.run_dir / SWEEP_FILE).is_file():
        logger.info("Replacing %s with the new sweep", run.run_dir / SWEEP_FILE)
    write_csv(table, run.run_dir / SWEEP_FILE)
    return table
