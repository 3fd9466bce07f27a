"""Plots of run results, drawn with matplotlib (Agg backend, files only)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def plot_device_auc(devices: pd.DataFrame, path: Path | str) -> Path:
    """Plot each device's AUC against its embedding bytes, one colour per tier, reference AUC in grey.

    Devices whose AUC is undefined (single-class test rows) or that failed are left out of the plot;
    their rows stay in the table.
    """
    path = Path(path)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    usable = devices[np.isfinite(devices["auc"].astype(float))]
    for index, (tier, group) in enumerate(usable.groupby("tier", sort=False)):
        color = f"C{index}"
        axis.scatter(group["bytes"], group["auc"], color=color, label=f"{tier} ({group['budget'].iloc[0]})", zorder=3)
        axis.scatter(group["bytes"], group["ref_auc"], color="grey", marker="x", zorder=2)
    axis.scatter([], [], color="grey", marker="x", label="same device, unpruned model")
    axis.set_xscale("log")
    axis.set_xlabel("embedding table stored on the device (bytes, log scale)")
    axis.set_ylabel("AUC on the device's test rows")
    axis.set_title("Per-device AUC against embedding memory budget")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize="small", loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_history(history: pd.DataFrame, path: Path | str) -> Path:
    """Plot the server's validation AUC and LogLoss after each federated round."""
    path = Path(path)
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    left.plot(history["round"], history["valid_auc"], marker="o")
    left.set_xlabel("round")
    left.set_ylabel("validation AUC (server)")
    right.plot(history["round"], history["valid_logloss"], marker="o", color="C1")
    right.set_xlabel("round")
    right.set_ylabel("validation LogLoss (server)")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
    figure.suptitle("Global model after each FedAvg round (round 0: initial weights)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
