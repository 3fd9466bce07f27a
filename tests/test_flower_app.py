"""The Flower app as Flower users run it: run-config parsing, the partition-id check and `flwr run .`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from flwr.app import Context, RecordDict

from fedshaver.errors import ConfigError, PartitionError
from fedshaver.federated.client import partition_id
from fedshaver.federated.run import config_from_run_config, parse_override_string
from conftest import ROOT


def make_context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def test_partition_id_in_range():
    assert partition_id(make_context({"partition-id": 3, "num-partitions": 4}), 4) == 3


@pytest.mark.parametrize("node_config", [{"partition-id": 4}, {"partition-id": -1}, {"partition-id": "2"}, {}])
def test_partition_id_rejected(node_config):
    with pytest.raises(PartitionError, match="partition-id|partition"):
        partition_id(make_context(node_config), 4)


def test_run_config_defaults_load_main_experiment():
    config, run_dir = config_from_run_config(
        {"project-dir": str(ROOT), "config-file": "configs/criteo.yaml", "experiment": "criteo_deepfm", "overrides": "", "run-dir": ""}
    )
    assert config.name == "criteo_deepfm"
    assert config.federation.num_clients == 10
    assert run_dir is None


def test_run_config_overrides_are_applied():
    config, run_dir = config_from_run_config(
        {
            "project-dir": str(ROOT),
            "config-file": "configs/criteo.yaml",
            "experiment": "criteo_tiny",
            "overrides": "federation.rounds=1 'prune.sparsity_rates=[0.5, 0.7]'",
            "run-dir": "/tmp/somewhere",
        }
    )
    assert config.federation.rounds == 1
    assert config.prune.sparsity_rates == [0.5, 0.7]
    assert run_dir == Path("/tmp/somewhere")


def test_run_config_without_config_file():
    with pytest.raises(ConfigError, match="config-file"):
        config_from_run_config({"experiment": "criteo_tiny"})


def test_override_string_rejects_missing_value():
    with pytest.raises(Exception, match="section.key=value"):
        parse_override_string("federation.rounds")


def _stop_local_superlink(flwr_home: Path) -> None:
    """Stop the SuperLink that `flwr run` started for this test (its log file lies under flwr_home).

    It gets SIGTERM and, if it is still alive 10 seconds later, SIGKILL.
    """
    listing = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    pids = []
    for line in listing.splitlines()[1:]:
        pid, _, args = line.strip().partition(" ")
        if "flower-superlink" in args and str(flwr_home) in args:
            pids.append(int(pid))
            os.kill(int(pid), signal.SIGTERM)
    deadline = time.monotonic() + 10
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        time.sleep(0.2)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)


def test_flwr_run_starts_the_app(cache_dir, tmp_path):
    flwr_home = tmp_path / "flwr-home"
    run_dir = tmp_path / "run"
    # `flwr run` starts `flower-superlink` from PATH, so the environment's bin folder must be on it.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = dict(os.environ, PATH=path, FLWR_HOME=str(flwr_home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    run_config = f"experiment='criteo_tiny' overrides='data.cache_dir={cache_dir} federation.rounds=1' run-dir='{run_dir}'"
    command = [str(Path(sys.executable).parent / "flwr"), "run", ".", "--stream", "--run-config", run_config,
               "--federation-config", "num-supernodes=4"]  # fmt: skip
    try:
        completed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    finally:
        _stop_local_superlink(flwr_home)
    assert (run_dir / "devices.csv").is_file(), completed.stdout[-3000:] + completed.stderr[-3000:]
    devices = pd.read_csv(run_dir / "devices.csv")
    assert len(devices) == 4
    assert "run folder:" in completed.stdout
