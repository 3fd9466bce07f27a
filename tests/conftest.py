"""Shared fixtures: paths of the committed samples, the tiny Criteo experiment and its prepared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fedshaver.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
CRITEO_SAMPLE = ROOT / "data" / "criteo" / "criteo_train_head10k.txt"
AVAZU_SAMPLES = [
    ROOT / "data" / "avazu" / "avazu_train_head_part1.csv",
    ROOT / "data" / "avazu" / "avazu_train_head_part2_noheader.csv",
]


def external_data(relative: str) -> Path:
    """Return a file under FEDSHAVER_DATA_DIR, or skip the test with the reason when it is absent."""
    folder = os.environ.get("FEDSHAVER_DATA_DIR")
    if not folder:
        pytest.skip("FEDSHAVER_DATA_DIR is not set; it names the folder of the larger real samples")
    path = Path(folder) / relative
    if not path.is_file():
        pytest.skip(f"{path} is missing from FEDSHAVER_DATA_DIR")
    return path


# Two CPU threads, as on the project's CI machines; set at import so module-scoped fixtures use it too.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """A session-wide preparation cache, so each sample is parsed once per test run."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def tiny_config(cache_dir, tmp_path_factory):
    """The ``criteo_tiny`` experiment with its cache and run folders under pytest's temporary folder."""
    runs = tmp_path_factory.mktemp("runs")
    return load_config(
        CONFIGS / "criteo.yaml",
        "criteo_tiny",
        {"data": {"cache_dir": str(cache_dir)}, "output": {"run_dir": str(runs)}},
    )


@pytest.fixture(scope="session")
def criteo_dataset(tiny_config):
    """The committed Criteo head sample, prepared with the tiny experiment's settings."""
    from fedshaver.api import prepare

    return prepare(tiny_config, progress=False)
