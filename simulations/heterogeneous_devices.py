"""The main job: federated training, Shaver once on the server, one pruned variant per device tier.

A Flower server trains the global CTR model with FedAvg over simulated clients, estimates Shapley values
of every embedding parameter once on its validation data, builds from that single ranking the variant
that fits each device tier's memory budget, sends every client its variant (and the unpruned model as
reference) and gathers per-device, per-tier and pooled AUC / LogLoss.

    python simulations/heterogeneous_devices.py
    python simulations/heterogeneous_devices.py --experiment criteo_deepfm_dirichlet
    python simulations/heterogeneous_devices.py --experiment criteo_137k_deepfm --set federation.device_profile=devices/criteo_137k.yaml

Writes into the run folder: config.yaml, feature_map.json, partitions.csv, history.csv, devices.csv,
tiers.csv / tiers.json, failures.csv, attribution_<placeholder>.npz, devices_auc.png and history.png.
"""

import sys

from fedshaver.cli import run_script, script_arguments
from fedshaver.federated.run import run_federated


def main(config, args) -> None:
    result = run_federated(config, run_dir=args.run_dir, progress=not args.no_progress)
    print(result.summary_text())


if __name__ == "__main__":
    sys.exit(run_script(script_arguments(__doc__, "criteo_deepfm"), main))
