"""Data fraction (Shaver paper, RQ4 / Figure 3): attribution on a fraction p of the server's data.

Trains the model once, then for each p estimates Shapley values on that fraction of the validation
split and evaluates the pruned model at fixed sparsity rates, recording the attribution time.

    python simulations/data_fraction.py
    python simulations/data_fraction.py --set "study.data_fractions=[0.01, 0.1, 1.0]"

Writes data_fraction.csv, data_fraction.png and summary.json.
"""

import sys

import pandas as pd

from fedshaver.cli import run_script, script_arguments
from fedshaver.studies import data_fraction_study


def main(config, args) -> None:
    result = data_fraction_study(config, run_dir=args.run_dir, progress=not args.no_progress)
    table = result.tables["data_fraction"]
    with pd.option_context("display.width", 200, "display.float_format", "{:.5f}".format):
        print(table[["fraction", "samples", "attribution_seconds", "sparsity", "auc", "delta_auc"]].to_string(index=False))
    print(f"run folder: {result.run_dir}")


if __name__ == "__main__":
    sys.exit(run_script(script_arguments(__doc__, "criteo_data_fraction"), main))
