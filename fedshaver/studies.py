"""The research workflows of the Shaver paper's section 5, each returning tables and writing a run folder.

- :func:`budget_sweep`: every method at every sparsity rate, for each backbone, on a centrally trained
  model and/or the global model of a federated run (RQ2, Figure 2).
- :func:`finetune_study`: the federated main job with on-device fine-tuning of each received variant,
  before and after per device and per tier (RQ3, Table 3).
- :func:`data_fraction_study`: attribution on a fraction of the server's data and the resulting AUC at
  fixed budgets, with the attribution time (RQ4, Figure 3).
- :func:`frequency_study`: retained embedding size per feature in equal-size frequency bins, Shaver-Zero
  against Shaver-Codebook (RQ5, Figure 4).

Every run folder contains the resolved config (with seed and package version), CSV tables, PNG plots and a
``summary.json`` with the seconds each phase took.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fedshaver import __version__, plots
from fedshaver.api import (
    TrainRun,
    attribution_data,
    attribution_options,
    budgets_of,
    prepare,
    rankings_for,
    train,
)
from fedshaver.config import ExperimentConfig, resolve_paths
from fedshaver.results import StagedFolder, staged_folder, unique_run_path, write_config, write_csv, write_json
from fedshaver.shaver.methods import SHAVER_PLACEHOLDERS, attribute, build_ranking
from fedshaver.shaver.pruning import Budget
from fedshaver.sweep import evaluate_variants
from fedshaver.training import evaluate_model

logger = logging.getLogger(__name__)


@dataclass
class StudyResult:
    """Tables of one study run.

    Attributes
    ----------
    run_dir : Path
        Folder with the CSV tables, plots, config and ``summary.json``.
    tables : dict of str to pandas.DataFrame
        The study's tables by name (also written as ``<name>.csv``).
    timings : dict of str to float
        Seconds spent in each phase.
    """

    run_dir: Path
    tables: dict[str, pd.DataFrame]
    timings: dict[str, float] = field(default_factory=dict)


class _Timer:
    """Collects the wall time of named phases."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the enclosed block as phase ``name``, logging its start and end."""
        started = time.perf_counter()
        logger.info("Phase %s started", name)
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - started, 3)
            logger.info("Phase %s finished in %.1fs", name, self.seconds[name])


def _study_folder(config: ExperimentConfig, study: str, run_dir: Path | str | None):
    """Return the staged run folder of a study: it appears only if the study succeeds."""
    final = Path(run_dir) if run_dir is not None else unique_run_path(resolve_paths(config)["run_dir"], f"{study}-{config.name}")
    return staged_folder(final)


def _finish(study: str, config: ExperimentConfig, folder: StagedFolder, tables: dict, timer: _Timer) -> StudyResult:
    run_dir = folder.path
    for name, table in tables.items():
        write_csv(table, run_dir / f"{name}.csv")
    write_config(config, run_dir, {"study": study})
    write_json(
        {"study": study, "experiment": config.name, "seed": config.seed, "fedshaver_version": __version__, "timings_seconds": timer.seconds},
        run_dir / "summary.json",
    )
    return StudyResult(folder.final, tables, dict(timer.seconds))


def _with_backbone(config: ExperimentConfig, backbone: str) -> ExperimentConfig:
    return dataclasses.replace(config, model=dataclasses.replace(config.model, name=backbone))


def _federated_model(config: ExperimentConfig, run_dir: Path, progress: bool) -> TrainRun:
    from fedshaver.federated.run import run_federated  # noqa: PLC0415 (Flower loads only when needed)

    result = run_federated(config, run_dir=run_dir, progress=progress, train_only=True)
    return TrainRun(run_dir, config, result.model, prepare(config, progress=progress), None, pd.DataFrame())


def budget_sweep(config: ExperimentConfig, run_dir: Path | str | None = None, progress: bool = True) -> StudyResult:
    """Evaluate every configured method at every budget, for each backbone and training mode.

    In federated mode the model is the global model after FedAvg. Its evaluation pooled over the clients
    equals its evaluation on the union of the clients' test rows, which is the test split, so the sweep
    evaluates there on the server instead of sending every variant to every client.

    Returns
    -------
    StudyResult
        Table ``sweep``: :data:`fedshaver.sweep.SWEEP_COLUMNS` plus ``backbone`` and ``mode``.
    """
    with _study_folder(config, "budget_sweep", run_dir) as folder:
        run_dir = folder.path
        timer = _Timer()
        tables = []
        for backbone in config.study.backbones:
            backbone_config = _with_backbone(config, backbone)
            for mode in config.study.modes:
                label = f"{backbone}/{mode}"
                subfolder = run_dir / f"{backbone}-{mode}"
                with timer.phase(f"{label}/train"):
                    if mode == "centralized":
                        run = train(backbone_config, run_dir=subfolder, progress=progress)
                    else:
                        run = _federated_model(backbone_config, subfolder, progress)
                rankings = {}
                for method in config.prune.methods:
                    if method == "ptq":
                        continue
                    with timer.phase(f"{label}/rank/{method}"):
                        rankings.update(rankings_for(run, [method], progress=progress))
                with timer.phase(f"{label}/evaluate"):
                    ptq_bits = config.prune.ptq_bits if "ptq" in config.prune.methods else []
                    table = evaluate_variants(run.model, run.dataset.test, rankings, budgets_of(config), ptq_bits, progress)
                table.insert(0, "backbone", backbone)
                table.insert(1, "mode", mode)
                tables.append(table)
        sweep = pd.concat(tables, ignore_index=True)
        plots.plot_sweep(sweep, "auc", run_dir / "sweep_auc.png")
        plots.plot_sweep(sweep, "logloss", run_dir / "sweep_logloss.png")
        return _finish("budget_sweep", config, folder, {"sweep": sweep}, timer)


def finetune_study(config: ExperimentConfig, run_dir: Path | str | None = None, progress: bool = True) -> StudyResult:
    """Run the federated main job with on-device fine-tuning and compare each variant before and after.

    ``federation.finetune_epochs`` sets the local epochs (1 when the config has 0). Each client trains its
    received variant on its own training rows with the pruning mask fixed and the codebook frozen.

    Returns
    -------
    StudyResult
        Tables ``devices`` (``auc`` before, ``tuned_auc`` after) and ``tiers`` (pooled before and after).
    """
    from fedshaver.federated.run import run_federated  # noqa: PLC0415

    epochs = max(config.federation.finetune_epochs, 1)
    config = dataclasses.replace(config, federation=dataclasses.replace(config.federation, finetune_epochs=epochs))
    with _study_folder(config, "finetune", run_dir) as folder:
        run_dir = folder.path
        timer = _Timer()
        with timer.phase("federated run with fine-tuning"):
            result = run_federated(config, run_dir=run_dir / "federated", progress=progress)
        columns = ["device", "tier", "budget", "bytes", "sparsity", "examples", "ref_auc", "auc", "tuned_auc", "logloss", "tuned_logloss", "status"]
        devices = result.devices[[c for c in columns if c in result.devices.columns]].copy()
        devices["auc_gain"] = devices["tuned_auc"] - devices["auc"]
        tiers = result.tiers[["tier", "budget", "devices", "failed", "bytes", "sparsity", "ref_pooled_auc", "pooled_auc",
                              "tuned_pooled_auc", "pooled_logloss", "tuned_pooled_logloss"]].copy()  # fmt: skip
        tiers["auc_gain"] = tiers["tuned_pooled_auc"] - tiers["pooled_auc"]
        plots.plot_finetune(tiers, run_dir / "finetune_tiers.png")
        for phase, seconds in result.timings.items():
            timer.seconds[f"federated/{phase}"] = round(seconds, 3)
        return _finish("finetune", config, folder, {"devices": devices, "tiers": tiers}, timer)


def data_fraction_study(config: ExperimentConfig, run_dir: Path | str | None = None, progress: bool = True) -> StudyResult:
    """Attribute on fractions of the server's validation split and evaluate fixed sparsity rates.

    Returns
    -------
    StudyResult
        Table ``data_fraction``: fraction, samples, attribution seconds, sparsity, AUC, LogLoss and the
        change against the unpruned model.
    """
    with _study_folder(config, "data_fraction", run_dir) as folder:
        run_dir = folder.path
        timer = _Timer()
        with timer.phase("train"):
            run = train(config, run_dir=run_dir / "model", progress=progress)
        reference = evaluate_model(run.model, run.dataset.test)
        placeholder = config.shaver.placeholder
        method = next(m for m, p in SHAVER_PLACEHOLDERS.items() if p == placeholder)
        rows = []
        for fraction in config.study.data_fractions:
            fraction_config = dataclasses.replace(config, shaver=dataclasses.replace(config.shaver, data_fraction=fraction))
            data = attribution_data(fraction_config, run.dataset.valid)
            with timer.phase(f"attribution/p={fraction:g}"):
                attribution = attribute(run.model, run.dataset.feature_map, data, placeholder, attribution_options(config, progress))
            ranking = build_ranking(method, run.model, run.dataset.feature_map, attribution=attribution)
            for sparsity in config.study.fixed_sparsity:
                metrics = evaluate_model(ranking.variant(Budget(sparsity=sparsity)).apply(run.model), run.dataset.test)
                rows.append(
                    {
                        "fraction": fraction,
                        "samples": attribution.samples,
                        "attribution_seconds": attribution.seconds,
                        "method": method,
                        "sparsity": sparsity,
                        "auc": metrics.auc,
                        "logloss": metrics.logloss,
                        "delta_auc": metrics.auc - reference.auc,
                        "delta_logloss": metrics.logloss - reference.logloss,
                    }
                )
        table = pd.DataFrame(rows)
        plots.plot_data_fraction(table, run_dir / "data_fraction.png")
        return _finish("data_fraction", config, folder, {"data_fraction": table}, timer)


def frequency_bins(frequencies: np.ndarray, bins: int) -> np.ndarray:
    """Return the bin (0 = rarest) of every feature: features sorted by frequency, cut into equal-size bins."""
    order = np.lexsort((np.arange(len(frequencies)), frequencies))
    labels = np.empty(len(frequencies), dtype=np.int64)
    for index, members in enumerate(np.array_split(order, bins)):
        labels[members] = index
    return labels


def frequency_study(config: ExperimentConfig, run_dir: Path | str | None = None, progress: bool = True) -> StudyResult:
    """Compare how Shaver-Zero and Shaver-Codebook spread the kept parameters over frequency bins.

    Returns
    -------
    StudyResult
        Table ``frequency``: method, bin, number of features, frequency range and the mean number of
        kept embedding columns per feature at ``study.frequency_sparsity``.
    """
    with _study_folder(config, "frequency", run_dir) as folder:
        run_dir = folder.path
        timer = _Timer()
        with timer.phase("train"):
            run = train(config, run_dir=run_dir / "model", progress=progress)
        fm = run.dataset.feature_map
        frequencies = fm.frequencies()
        labels = frequency_bins(frequencies, config.study.frequency_bins)
        names = ["low", "mid", "high"] if config.study.frequency_bins == 3 else [f"bin {i}" for i in range(config.study.frequency_bins)]
        budget = Budget(sparsity=config.study.frequency_sparsity)
        rows = []
        for method in ("shaver_zero", "shaver_codebook"):
            with timer.phase(f"rank/{method}"):
                ranking = rankings_for(run, [method], progress=progress)[method]
            kept_per_feature = ranking.keep_mask(ranking.kept_for(budget)).sum(axis=1)
            for index, name in enumerate(names):
                members = labels == index
                rows.append(
                    {
                        "method": method,
                        "bin": name,
                        "features": int(members.sum()),
                        "min_frequency": int(frequencies[members].min()),
                        "max_frequency": int(frequencies[members].max()),
                        "sparsity": budget.sparsity,
                        "mean_kept_dims": float(kept_per_feature[members].mean()),
                    }
                )
        table = pd.DataFrame(rows)
        plots.plot_frequency(table, run_dir / "frequency.png")
        return _finish("frequency", config, folder, {"frequency": table}, timer)
