"""Command line interface: ``fedshaver <command>`` (also ``python -m fedshaver``).

Commands
--------
prepare    parse raw logs into the cached, encoded dataset of a config
train      train a backbone centrally and print validation and test AUC / LogLoss
evaluate   evaluate the model of a run folder
attribute  estimate Shapley values of a run's embedding parameters
prune      evaluate pruning methods across budgets and write sweep.csv
simulate   run the federated main job (training, Shaver, per-device variants and evaluation)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import pandas as pd
import yaml

from fedshaver import __version__
from fedshaver.config import deep_merge, load_config
from fedshaver.errors import ConfigError, FedShaverError

logger = logging.getLogger("fedshaver")


def parse_overrides(assignments: list[str]) -> dict:
    """Turn ``section.key=value`` strings into a nested dict; values are parsed as YAML scalars or lists."""
    overrides: dict = {}
    for assignment in assignments:
        key, separator, raw = assignment.partition("=")
        if not separator or not key:
            raise ConfigError(f"invalid --set {assignment!r}; expected section.key=value, e.g. federation.rounds=2")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            problem = str(error).splitlines()[0]
            raise ConfigError(f"invalid --set {assignment!r}: the value is not valid YAML ({problem})") from None
        nested: dict = value
        for part in reversed(key.split(".")):
            nested = {part: nested}
        overrides = deep_merge(overrides, nested)
    return overrides


def _config(args: argparse.Namespace):
    return load_config(args.config, args.experiment, parse_overrides(args.set or []))


def _print_table(frame: pd.DataFrame, columns: list[str] | None = None) -> None:
    shown = frame if columns is None else frame[[c for c in columns if c in frame.columns]]
    with pd.option_context("display.max_rows", 500, "display.width", 200, "display.float_format", "{:.5f}".format):
        print(shown.to_string(index=False))


def command_prepare(args: argparse.Namespace) -> None:
    from fedshaver.api import prepare

    config = _config(args)
    dataset = prepare(config, force=args.force, progress=not args.no_progress)
    fm = dataset.feature_map
    print(f"prepared dataset: {dataset.path}")
    print(f"fields: {fm.num_fields}, features: {fm.num_features}, min_count: {fm.min_count}")
    for name, split in dataset.splits.items():
        print(f"{name}: {len(split)} rows, {split.positives} clicks")
    skipped = dataset.report.get("bad_rows", {}).get("skipped_rows", 0)
    if skipped:
        print(f"skipped malformed rows: {skipped} (see {dataset.path / 'prepare_report.json'})")


def command_train(args: argparse.Namespace) -> None:
    from fedshaver.api import train

    run = train(_config(args), run_dir=args.run_dir, progress=not args.no_progress)
    _print_table(run.metrics, ["split", "examples", "positives", "auc", "logloss"])
    print(f"run folder: {run.run_dir}")


def command_evaluate(args: argparse.Namespace) -> None:
    from fedshaver.api import evaluate

    _print_table(evaluate(args.run_dir, progress=not args.no_progress), ["split", "examples", "positives", "auc", "logloss"])


def command_attribute(args: argparse.Namespace) -> None:
    from fedshaver.api import attribute, load_run
    from fedshaver.results import attribution_file

    run = load_run(args.run_dir, progress=not args.no_progress)
    placeholders = [args.placeholder] if args.placeholder else ["codebook", "zero"]
    for placeholder in placeholders:
        result = attribute(run, placeholder, progress=not args.no_progress)
        print(
            f"{placeholder}: {result.samples} samples, {result.samples_per_second:.1f} samples/s, "
            f"convergence ratio {result.convergence_ratio:.4f} -> {Path(args.run_dir) / attribution_file(placeholder)}"
        )


def command_prune(args: argparse.Namespace) -> None:
    from fedshaver.api import load_run, prune_sweep
    from fedshaver.config import validate
    from fedshaver.results import SWEEP_FILE

    for rate in args.sparsity or []:
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"--sparsity {rate:g} is outside [0, 1]; give fractions of the parameters to remove")
    for budget in args.bytes or []:
        if budget <= 0:
            raise ConfigError(f"--bytes {budget} is not a positive byte count")
    for bits in args.bits or []:
        if bits not in (2, 4, 8, 16):
            raise ConfigError(f"--bits {bits} is not supported; use 2, 4, 8 or 16")
    run = load_run(args.run_dir, progress=not args.no_progress)
    prune = run.config.prune
    changes = {}
    if args.methods:
        changes["methods"] = args.methods
    if args.sparsity is not None:
        changes["sparsity_rates"] = args.sparsity
    if args.bytes is not None:
        changes["byte_budgets"] = args.bytes
    if args.bits is not None:
        changes["ptq_bits"] = args.bits
    run.config.prune = dataclasses.replace(prune, **changes)
    validate(run.config)
    table = prune_sweep(run, progress=not args.no_progress)
    _print_table(table, ["method", "budget", "sparsity", "bytes", "layout", "auc", "logloss", "delta_auc", "status", "note"])
    print(f"table: {Path(args.run_dir) / SWEEP_FILE}")


def command_simulate(args: argparse.Namespace) -> None:
    from fedshaver.federated.run import run_federated

    result = run_federated(_config(args), run_dir=args.run_dir, progress=not args.no_progress)
    print(result.summary_text())


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``fedshaver`` command."""
    parser = argparse.ArgumentParser(prog="fedshaver", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fedshaver {__version__}")
    parser.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING); default INFO")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    commands = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, help="logging level (DEBUG, INFO, WARNING); default INFO")
    common.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS, help="hide progress bars")

    def with_config(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--config", required=True, help="YAML config file")
        sub.add_argument("--experiment", help="experiment name in the config file (optional if it defines one)")
        sub.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value; repeatable")

    sub = commands.add_parser("prepare", parents=[common], help="parse raw logs into the cached, encoded dataset")
    with_config(sub)
    sub.add_argument("--force", action="store_true", help="prepare again even if a cached result exists")
    sub.set_defaults(handler=command_prepare)

    sub = commands.add_parser("train", parents=[common], help="train centrally and print validation and test AUC / LogLoss")
    with_config(sub)
    sub.add_argument("--run-dir", type=Path, help="run folder (default: a new folder under output.run_dir)")
    sub.set_defaults(handler=command_train)

    sub = commands.add_parser("evaluate", parents=[common], help="evaluate the model of a run folder")
    sub.add_argument("--run-dir", type=Path, required=True, help="run folder written by `fedshaver train`")
    sub.set_defaults(handler=command_evaluate)

    sub = commands.add_parser("attribute", parents=[common], help="estimate Shapley values of a run's embedding parameters")
    sub.add_argument("--run-dir", type=Path, required=True, help="run folder written by `fedshaver train`")
    sub.add_argument("--placeholder", choices=["codebook", "zero"], help="placeholder (default: both)")
    sub.set_defaults(handler=command_attribute)

    sub = commands.add_parser("prune", parents=[common], help="evaluate pruning methods across budgets and write sweep.csv")
    sub.add_argument("--run-dir", type=Path, required=True, help="run folder written by `fedshaver train`")
    sub.add_argument("--methods", nargs="+", help="methods (default: prune.methods of the config)")
    sub.add_argument("--sparsity", nargs="*", type=float, help="sparsity rates in [0, 1]")
    sub.add_argument("--bytes", nargs="*", type=int, help="embedding byte budgets")
    sub.add_argument("--bits", nargs="*", type=int, help="bit widths for ptq")
    sub.set_defaults(handler=command_prune)

    sub = commands.add_parser("simulate", parents=[common], help="run the federated main job")
    with_config(sub)
    sub.add_argument("--run-dir", type=Path, help="run folder (default: a new folder under output.run_dir)")
    sub.set_defaults(handler=command_simulate)
    return parser


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr with timestamps; Flower keeps its own console handler, so its records do not propagate."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("flwr").propagate = False


def script_arguments(description: str, default_experiment: str) -> argparse.ArgumentParser:
    """Return the argument parser shared by the scripts under ``simulations/``."""
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=root / "configs" / "criteo.yaml", help="YAML config file")
    parser.add_argument("--experiment", default=default_experiment, help=f"experiment name (default: {default_experiment})")
    parser.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value; repeatable")
    parser.add_argument("--run-dir", type=Path, help="run folder (default: a new folder under output.run_dir)")
    parser.add_argument("--log-level", default="INFO", help="logging level; default INFO")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def run_script(parser: argparse.ArgumentParser, job, argv: list[str] | None = None) -> int:
    """Parse script arguments, load the config and call ``job(config, args)``; named errors exit with 2."""
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        job(_config(args), args)
    except FedShaverError as error:
        logger.error("%s", error)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        args.handler(args)
    except FedShaverError as error:
        logger.error("%s", error)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
