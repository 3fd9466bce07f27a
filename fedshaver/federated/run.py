"""Run the federated job in-process through Flower's simulation engine and return its tables."""

from __future__ import annotations

import logging
import os
import shlex
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from fedshaver.config import ExperimentConfig, load_config
from fedshaver.errors import ConfigError
from fedshaver.federated.client_app import app as client_app
from fedshaver.federated.server import FederatedJob, FederatedResult

logger = logging.getLogger(__name__)


def parse_override_string(text: str) -> dict:
    """Parse ``"section.key=value section.key=value"`` into nested overrides (values read as YAML)."""
    from fedshaver.cli import parse_overrides

    return parse_overrides(shlex.split(text)) if text.strip() else {}


def config_from_run_config(run_config) -> tuple[ExperimentConfig, Path | None]:
    """Load the experiment named by a Flower run config; return it and the requested run folder.

    Raises
    ------
    ConfigError
        When a key is missing or the config file cannot be loaded.
    """
    try:
        project = Path(str(run_config.get("project-dir", ".") or ".")).expanduser()
        config_file = Path(str(run_config["config-file"])).expanduser()
        experiment = str(run_config.get("experiment", "")) or None
    except KeyError as error:
        raise ConfigError(f"the Flower run config has no {error.args[0]!r} key; see [tool.flwr.app.config] in pyproject.toml") from None
    if not config_file.is_absolute():
        config_file = project.resolve() / config_file
    overrides = parse_override_string(str(run_config.get("overrides", "")))
    run_dir = str(run_config.get("run-dir", "") or "")
    return load_config(config_file, experiment, overrides), (Path(run_dir) if run_dir else None)


def run_federated(
    config: ExperimentConfig, run_dir: Path | str | None = None, progress: bool = True, train_only: bool = False
) -> FederatedResult:
    """Run the federated main job with Flower's simulation engine in this process.

    Setup errors (unusable partitions, invalid device profile, infeasible budgets) are raised before
    the simulation starts. The ServerApp and ClientApp are the same as for ``flwr run .``. With
    ``train_only`` the run stops after federated training (see :meth:`FederatedJob.run`).

    Returns
    -------
    FederatedResult
        History, per-device, per-tier, failure and partition tables; the same tables are written
        into the run folder.
    """
    job = FederatedJob(config, run_dir, progress=progress)
    job.setup()
    outcome: dict = {}
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            outcome["result"] = job.run(grid, train_only=train_only)
        except BaseException as error:  # re-raised below, in the caller's thread
            outcome["error"] = error

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    backend_config = {
        "client_resources": {"num_cpus": config.federation.client_cpus, "num_gpus": 0.0},
        "init_args": {"logging_level": "ERROR", "log_to_driver": False},
    }
    run_simulation(server_app, client_app, num_supernodes=config.federation.num_clients, backend_config=backend_config)
    if "error" in outcome:
        raise outcome["error"]
    if "result" not in outcome:
        raise RuntimeError(f"the simulation ended without a result; see the log and {job.run_dir}")
    return outcome["result"]
