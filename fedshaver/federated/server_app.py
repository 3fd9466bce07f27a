"""Flower ServerApp of fedshaver, for ``flwr run .``: reads the run config and runs the federated job.

Run-config keys (defaults in ``pyproject.toml``): ``project-dir`` (folder against which ``config-file``
is resolved; ``.`` is the folder ``flwr run`` was started in), ``config-file``, ``experiment``,
``overrides`` (``section.key=value`` pairs separated by spaces) and ``run-dir`` (empty: a new folder
under ``output.run_dir``).
"""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedshaver.federated.run import config_from_run_config
from fedshaver.federated.server import FederatedJob

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Set up and run the federated job described by the run config."""
    config, run_dir = config_from_run_config(context.run_config)
    job = FederatedJob(config, run_dir, progress=False)
    job.setup()
    job.run(grid)
    print(job.result.summary_text())
