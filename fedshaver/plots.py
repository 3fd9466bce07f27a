"""Plots of run results, drawn with matplotlib.

Every function builds a :class:`matplotlib.figure.Figure` without pyplot, so it neither needs nor
changes a GUI backend. It writes a PNG when given a path and returns the figure, which notebooks
display inline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def _finish(figure: Figure, path: Path | str | None) -> Figure:
    figure.tight_layout()
    if path is not None:
        figure.savefig(Path(path), dpi=120)
    return figure


def plot_device_auc(devices: pd.DataFrame, path: Path | str | None = None) -> Figure:
    """Plot each device's AUC against its embedding bytes, one colour per tier, reference AUC in grey.

    Devices whose AUC is undefined (single-class test rows) or that failed are left out of the plot;
    their rows stay in the table.
    """
    figure = Figure(figsize=(7, 4.5))
    axis = figure.subplots()
    usable = devices[np.isfinite(devices["auc"].astype(float))].sort_values(["bytes", "device"])
    for index, (tier, group) in enumerate(usable.groupby("tier", sort=False)):
        color = f"C{index}"
        axis.scatter(group["bytes"], group["auc"], color=color, label=f"{tier} ({group['budget'].iloc[0]})", zorder=3)
        axis.scatter(group["bytes"], group["ref_auc"], color="grey", marker="x", zorder=2)
    axis.scatter([], [], color="grey", marker="x", label="same device, unpruned model")
    axis.set_xscale("log")
    axis.set_xlabel("embedding table stored on the device (bytes, log scale)")
    axis.set_ylabel("AUC on the device's test rows")
    axis.set_title("Per-device AUC against embedding memory budget")
    omitted = len(devices) - len(usable)
    if omitted:
        axis.text(0.01, 0.01, f"{omitted} device(s) without an AUC (failed or single-class test rows) not shown",
                  transform=axis.transAxes, fontsize="small", color="dimgrey")  # fmt: skip
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize="small", loc="best")
    return _finish(figure, path)


def plot_history(history: pd.DataFrame, path: Path | str | None = None) -> Figure:
    """Plot the server's validation AUC and LogLoss after each federated round."""
    figure = Figure(figsize=(9, 3.5))
    left, right = figure.subplots(1, 2)
    left.plot(history["round"], history["valid_auc"], marker="o")
    left.set_xlabel("round")
    left.set_ylabel("validation AUC (server)")
    right.plot(history["round"], history["valid_logloss"], marker="o", color="C1")
    right.set_xlabel("round")
    right.set_ylabel("validation LogLoss (server)")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
    figure.suptitle("Global model after each FedAvg round (round 0: initial weights)")
    return _finish(figure, path)


METHOD_LABELS = {
    "shaver_codebook": "Shaver-Codebook",
    "shaver_zero": "Shaver-Zero",
    "magnitude": "Magnitude",
    "taylor": "Taylor",
    "random": "Random",
    "ptq": "PTQ",
}
METRIC_LABELS = {"auc": "test AUC", "logloss": "test LogLoss"}


def plot_sweep(sweep: pd.DataFrame, metric: str, path: Path | str | None = None) -> Figure:
    """Plot ``metric`` against sparsity rate, one line per method; one panel per backbone (rows) and mode (columns).

    Requested sparsity rates are placed at equal spacing (0.2 ... 0.999), as in the Shaver paper's
    figures; PTQ points sit at their nominal sparsity ``1 - bits / 32`` between them. The dashed line
    is the unpruned model.
    """
    if "backbone" not in sweep:
        sweep = sweep.assign(backbone="", mode="")
    backbones = list(dict.fromkeys(sweep["backbone"]))
    modes = list(dict.fromkeys(sweep["mode"]))
    figure = Figure(figsize=(6 * len(modes), 4.2 * len(backbones)))
    axes = figure.subplots(len(backbones), len(modes), squeeze=False)
    for row, backbone in enumerate(backbones):
        for column, mode in enumerate(modes):
            axis = axes[row][column]
            table = sweep[(sweep["backbone"] == backbone) & (sweep["mode"] == mode)]
            _draw_sweep_panel(axis, table, metric)
            axis.set_title(" / ".join(p for p in (backbone, mode) if p) or "budget sweep")
    axes[0][0].legend(fontsize="small")
    return _finish(figure, path)


def _draw_sweep_panel(axis, table: pd.DataFrame, metric: str) -> None:
    ok = table[table["status"] == "ok"]
    by_rate = ok[ok["budget_kind"] == "sparsity"]
    rates = sorted(by_rate["budget_value"].unique())

    def position(value: float) -> float:
        return float(np.interp(value, rates, range(len(rates)))) if len(rates) > 1 else 0.0

    for index, method in enumerate(m for m in METHOD_LABELS if m in set(ok["method"])):
        label = METHOD_LABELS[method]
        if method == "ptq":
            rows = ok[ok["method"] == "ptq"].sort_values("sparsity")
            x = [position(s) for s in rows["sparsity"]]
            label = f"PTQ ({'/'.join(b.split('-')[0] for b in rows.sort_values('sparsity')['budget'])} bits)"
        else:
            rows = by_rate[by_rate["method"] == method].sort_values("budget_value")
            x = [position(v) for v in rows["budget_value"]]
        axis.plot(x, rows[metric], marker="o", color=f"C{index}", label=label)
    reference = table.loc[table["method"] == "unpruned", metric]
    if len(reference):
        axis.axhline(float(reference.iloc[0]), color="black", linestyle="--", linewidth=1, label="unpruned")
    axis.set_xticks(range(len(rates)), [f"{r:g}" for r in rates])
    axis.set_xlabel("sparsity rate t (fraction of embedding parameters removed)")
    axis.set_ylabel(METRIC_LABELS.get(metric, metric))
    axis.grid(True, alpha=0.3)


def plot_finetune(tiers: pd.DataFrame, path: Path | str | None = None) -> Figure:
    """Plot pooled AUC per tier: unpruned model, received variant, and variant after fine-tuning."""
    table = tiers[tiers["tier"] != "all"]
    positions = np.arange(len(table))
    figure = Figure(figsize=(7, 4))
    axis = figure.subplots()
    axis.bar(positions - 0.27, table["ref_pooled_auc"], width=0.27, color="grey", label="unpruned model")
    axis.bar(positions, table["pooled_auc"], width=0.27, label="received variant")
    axis.bar(positions + 0.27, table["tuned_pooled_auc"], width=0.27, label="after on-device fine-tuning")
    values = pd.concat([table["ref_pooled_auc"], table["pooled_auc"], table["tuned_pooled_auc"]])
    axis.set_ylim(float(values.min()) - 0.02, float(values.max()) + 0.01)
    axis.set_xticks(positions, [f"{t}\n{b}" for t, b in zip(table["tier"], table["budget"])])
    axis.set_ylabel("pooled test AUC of the tier's devices")
    axis.set_title("On-device fine-tuning with the pruning mask fixed")
    axis.legend(fontsize="small")
    return _finish(figure, path)


def plot_data_fraction(table: pd.DataFrame, path: Path | str | None = None) -> Figure:
    """Plot AUC against the attribution data fraction per sparsity rate, and attribution time."""
    figure = Figure(figsize=(10, 3.8))
    left, right = figure.subplots(1, 2)
    for index, (sparsity, rows) in enumerate(table.groupby("sparsity")):
        left.plot(rows["fraction"], rows["auc"], marker="o", color=f"C{index}", label=f"t={sparsity:g}")
    left.set_xscale("log")
    left.set_xlabel("fraction p of the server's data used for attribution (log scale)")
    left.set_ylabel("test AUC after pruning")
    left.legend(fontsize="small")
    timing = table.drop_duplicates("fraction")
    right.plot(timing["fraction"], timing["attribution_seconds"], marker="o", color="C3")
    right.set_xscale("log")
    right.set_xlabel("fraction p of the server's data (log scale)")
    right.set_ylabel("attribution time (seconds)")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
    return _finish(figure, path)


def plot_frequency(table: pd.DataFrame, path: Path | str | None = None) -> Figure:
    """Plot the mean kept embedding columns per feature in each frequency bin, one bar per method."""
    bins = list(dict.fromkeys(table["bin"]))
    methods = list(dict.fromkeys(table["method"]))
    width = 0.8 / len(methods)
    positions = np.arange(len(bins))
    figure = Figure(figsize=(6.5, 4))
    axis = figure.subplots()
    for index, method in enumerate(methods):
        rows = table[table["method"] == method].set_index("bin").loc[bins]
        axis.bar(positions + (index - (len(methods) - 1) / 2) * width, rows["mean_kept_dims"], width=width,
                 label=METHOD_LABELS.get(method, method))  # fmt: skip
    axis.set_xticks(positions, [f"{b} frequency" for b in bins])
    axis.set_ylabel("mean kept embedding columns per feature")
    axis.set_title(f"Retained embedding size by feature frequency (t={table['sparsity'].iloc[0]:g})")
    axis.legend(fontsize="small")
    return _finish(figure, path)
