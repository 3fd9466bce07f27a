"""On-device fine-tuning (Shaver paper, RQ3 / Table 3): each device fine-tunes its received variant.

The federated main job runs as usual; then every client trains its pruned variant on its own training
rows for federation.finetune_epochs local epochs with the pruning mask fixed (pruned entries keep their
placeholder, the codebook frozen) and evaluates again. Reports before / after per device and per tier.

    python simulations/finetune_on_device.py
    python simulations/finetune_on_device.py --set federation.finetune_epochs=3

Writes devices.csv, tiers.csv, finetune_tiers.png, summary.json and the full federated run folder.
"""

import sys

import pandas as pd

from fedshaver.cli import run_script, script_arguments
from fedshaver.studies import finetune_study


def main(config, args) -> None:
    result = finetune_study(config, run_dir=args.run_dir, progress=not args.no_progress)
    columns = ["tier", "budget", "ref_pooled_auc", "pooled_auc", "tuned_pooled_auc", "auc_gain"]
    with pd.option_context("display.width", 200, "display.float_format", "{:.5f}".format):
        print(result.tables["tiers"][columns].to_string(index=False))
    print(f"run folder: {result.run_dir}")


if __name__ == "__main__":
    sys.exit(run_script(script_arguments(__doc__, "criteo_finetune"), main))
