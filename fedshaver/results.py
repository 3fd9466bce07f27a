"""Run folders and the tables written into them.

Every command writes into one run folder: the resolved config, the feature map, tables as CSV (and JSON
where a nested summary reads better), checkpoints, attribution files and plots. Files are written to a
temporary name and renamed into place. Whole runs are staged in a hidden sibling folder that is moved
into place only when the run succeeds, so a failure does not leave a half-written run behind.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import shutil
from collections.abc import Iterator
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


def unique_run_path(base: Path | str, name: str) -> Path:
    """Return ``<base>/<name>-<timestamp>`` (with a counter if taken); the folder is not created."""
    base = Path(base)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for counter in range(1000):
        suffix = f"-{counter}" if counter else ""
        path = base / f"{name}-{stamp}{suffix}"
        if not path.exists():
            return path
    raise FileExistsError(f"could not find a free run folder name under {base}")


class StagedFolder:
    """A run folder written in a hidden sibling and moved into place only when the run succeeds.

    A run that fails leaves nothing behind: :meth:`discard` removes the sibling. When the final folder
    already exists (a ``--run-dir`` given by the user), :meth:`commit` moves the new entries into it,
    replacing entries of the same name.

    Parameters
    ----------
    final : path
        Where the folder ends up.
    """

    def __init__(self, final: Path | str):
        self.final = Path(final)
        self.path = self.final.parent / f".{self.final.name}.partial-{os.getpid()}"
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)

    def commit(self) -> Path:
        """Move the staged entries to the final folder and return it."""
        if self.final.is_dir() and any(self.final.iterdir()):
            for entry in self.path.iterdir():
                target = self.final / entry.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(entry, target)
            self.path.rmdir()
        else:
            if self.final.is_dir():
                self.final.rmdir()
            os.replace(self.path, self.final)
        return self.final

    def discard(self) -> None:
        """Remove the staged entries."""
        shutil.rmtree(self.path, ignore_errors=True)


@contextlib.contextmanager
def staged_folder(final: Path | str) -> Iterator[StagedFolder]:
    """Yield a :class:`StagedFolder`; commit it when the block succeeds, discard it when it raises."""
    folder = StagedFolder(final)
    try:
        yield folder
    except BaseException:
        folder.discard()
        raise
    folder.commit()


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
