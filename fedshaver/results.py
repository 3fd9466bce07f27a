"""Run folders and the tables written into them.

Every command writes into one run folder: the resolved config, the feature map, tables as CSV (and JSON
where a nested summary reads better), checkpoints, attribution files and plots. Files are written to a
temporary name and renamed into place, so a crash never leaves a half-written file behind.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path

import pandas as pd
import yaml

from fedshaver.config import ExperimentConfig

CONFIG_FILE = "config.yaml"
MODEL_FILE = "model.pt"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
SWEEP_FILE = "sweep.csv"


def attribution_file(placeholder: str) -> str:
    """File name of the attribution computed with ``placeholder``."""
    return f"attribution_{placeholder}.npz"


def new_run_dir(base: Path | str, name: str) -> Path:
    """Create and return ``<base>/<name>-<timestamp>``, adding a counter if that folder exists."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for counter in range(1000):
        suffix = f"-{counter}" if counter else ""
        path = base / f"{name}-{stamp}{suffix}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a new run folder under {base}")


def _replace_atomically(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_csv(frame: pd.DataFrame, path: Path | str) -> Path:
    """Write ``frame`` as CSV without its index."""
    path = Path(path)
    _replace_atomically(path, lambda target: frame.to_csv(target, index=False))
    return path


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return _plain(value.item())
    return value


def write_json(data, path: Path | str) -> Path:
    """Write ``data`` as indented JSON; NaN and infinities become null."""
    path = Path(path)
    text = json.dumps(_plain(data), indent=1)
    _replace_atomically(path, lambda target: target.write_text(text, encoding="utf-8"))
    return path


def write_config(config: ExperimentConfig, run_dir: Path | str, extra: dict | None = None) -> Path:
    """Write the resolved config (every default filled in) as YAML, plus ``extra`` metadata."""
    from fedshaver import __version__

    data = config.to_dict()
    data["fedshaver_version"] = __version__
    if extra:
        data.update(extra)
    path = Path(run_dir) / CONFIG_FILE
    text = yaml.safe_dump(_plain(data), sort_keys=False)
    _replace_atomically(path, lambda target: target.write_text(text, encoding="utf-8"))
    return path
