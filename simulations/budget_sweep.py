"""Budget sweep (Shaver paper, RQ2 / Figure 2): every pruning method at every sparsity rate.

One attribution per backbone and training mode, then Shaver-Codebook, Shaver-Zero, magnitude, Taylor,
random and PTQ (16/8/4 bits) at t = 0.2 ... 0.999, evaluated on the test rows. Federated mode uses the
global model of a FedAvg run.

    python simulations/budget_sweep.py
    python simulations/budget_sweep.py --experiment criteo_137k_budget_sweep   # needs FEDSHAVER_DATA_DIR

Writes sweep.csv, sweep_auc.png, sweep_logloss.png, summary.json (phase timings) and one sub-folder per
backbone and mode with the model, its attribution files and history.
"""

import sys

import pandas as pd

from fedshaver.cli import run_script, script_arguments
from fedshaver.studies import budget_sweep


def main(config, args) -> None:
    result = budget_sweep(config, run_dir=args.run_dir, progress=not args.no_progress)
    sweep = result.tables["sweep"]
    table = sweep.pivot_table(index=["backbone", "mode", "method"], columns="budget", values="auc", sort=False)
    with pd.option_context("display.width", 250, "display.float_format", "{:.4f}".format):
        print(table.to_string())
    print(f"run folder: {result.run_dir}")


if __name__ == "__main__":
    sys.exit(run_script(script_arguments(__doc__, "criteo_budget_sweep"), main))
