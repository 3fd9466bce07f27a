"""Frequency analysis (Shaver paper, RQ5 / Figure 4): where each placeholder keeps its parameters.

Features are split into equal-size bins by training frequency; at a fixed sparsity rate the script
reports the mean number of kept embedding columns per feature in each bin, Shaver-Zero against
Shaver-Codebook.

    python simulations/frequency_analysis.py

Writes frequency.csv, frequency.png and summary.json.
"""

import sys

import pandas as pd

from fedshaver.cli import run_script, script_arguments
from fedshaver.studies import frequency_study


def main(config, args) -> None:
    result = frequency_study(config, run_dir=args.run_dir, progress=not args.no_progress)
    with pd.option_context("display.width", 200, "display.float_format", "{:.3f}".format):
        print(result.tables["frequency"].to_string(index=False))
    print(f"run folder: {result.run_dir}")


if __name__ == "__main__":
    sys.exit(run_script(script_arguments(__doc__, "criteo_frequency"), main))
