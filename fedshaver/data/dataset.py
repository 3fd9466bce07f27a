"""Encoded datasets: global feature ids and labels of each split, loaded from the preparation cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedshaver.data.feature_map import FeatureMap
from fedshaver.data.splits import SPLIT_NAMES
from fedshaver.errors import DataNotFoundError, FeatureMapError

FEATURE_MAP_FILE = "feature_map.json"
REPORT_FILE = "prepare_report.json"


@dataclass
class EncodedSplit:
    """Rows of one split.

    Attributes
    ----------
    x : np.ndarray
        Global feature ids, shape ``(num_rows, num_fields)``, int32.
    y : np.ndarray
        Click labels 0/1, shape ``(num_rows,)``, float32.
    keys : np.ndarray or None
        64-bit hashes of the raw values of the key columns, shape ``(num_rows, num_keys)``, used to
        partition clients by a natural id such as Avazu's ``device_ip``.
    """

    x: np.ndarray
    y: np.ndarray
    keys: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray) -> EncodedSplit:
        """Return the rows at ``indices`` as an in-memory split."""
        indices = np.asarray(indices, dtype=np.int64)
        keys = None if self.keys is None else np.asarray(self.keys[indices])
        return EncodedSplit(x=np.asarray(self.x[indices]), y=np.asarray(self.y[indices]), keys=keys)

    @property
    def positives(self) -> int:
        """Number of clicked rows."""
        return int(np.asarray(self.y).sum())


@dataclass
class PreparedDataset:
    """A prepared dataset: feature map plus the encoded train, valid and test splits.

    Attributes
    ----------
    path : Path
        Cache folder holding ``feature_map.json`` and the ``.npy`` arrays.
    feature_map : FeatureMap
        Fields and vocabularies, built on the training split.
    splits : dict
        ``train``, ``valid`` and ``test`` :class:`EncodedSplit` objects.
    key_fields : list of str
        Raw columns whose hashes are stored in ``EncodedSplit.keys``, in column order.
    report : dict
        Row counts, skipped rows and timings of the preparation.
    """

    path: Path
    feature_map: FeatureMap
    splits: dict[str, EncodedSplit]
    key_fields: list[str]
    report: dict

    @property
    def train(self) -> EncodedSplit:
        """Training split."""
        return self.splits["train"]

    @property
    def valid(self) -> EncodedSplit:
        """Validation split."""
        return self.splits["valid"]

    @property
    def test(self) -> EncodedSplit:
        """Test split."""
        return self.splits["test"]


def load_prepared(path: Path | str) -> PreparedDataset:
    """Load a prepared dataset from its cache folder, memory-mapping the arrays.

    Raises
    ------
    DataNotFoundError
        When the folder or one of its arrays is missing.
    FeatureMapError
        When the arrays do not match the feature map.
    """
    path = Path(path)
    if not (path / FEATURE_MAP_FILE).is_file():
        raise DataNotFoundError(f"no prepared dataset in {path} (missing {FEATURE_MAP_FILE}); run `fedshaver prepare`")
    feature_map = FeatureMap.load(path / FEATURE_MAP_FILE)
    report = json.loads((path / REPORT_FILE).read_text(encoding="utf-8")) if (path / REPORT_FILE).is_file() else {}
    key_fields = list(report.get("key_fields", []))
    splits = {}
    for name in SPLIT_NAMES:
        try:
            x = np.load(path / f"{name}_x.npy", mmap_mode="r", allow_pickle=False)
            y = np.load(path / f"{name}_y.npy", mmap_mode="r", allow_pickle=False)
            keys = np.load(path / f"{name}_keys.npy", mmap_mode="r", allow_pickle=False) if key_fields else None
        except FileNotFoundError as error:
            raise DataNotFoundError(f"prepared dataset {path} is incomplete: {error.filename} is missing") from None
        if x.ndim != 2 or x.shape[1] != feature_map.num_fields or len(y) != len(x):
            raise FeatureMapError(
                f"{path}: {name} arrays have shapes {x.shape} and {y.shape}, "
                f"expected (rows, {feature_map.num_fields}) and (rows,)"
            )
        splits[name] = EncodedSplit(x=x, y=y, keys=keys)
    return PreparedDataset(path=path, feature_map=feature_map, splits=splits, key_fields=key_fields, report=report)


def iterate_batches(
    split: EncodedSplit,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` tensor batches: ids ``(batch, num_fields)`` int64 and labels ``(batch,)`` float32."""
    num_rows = len(split)
    if shuffle:
        order = torch.randperm(num_rows, generator=generator).numpy()
    else:
        order = None
    for start in range(0, num_rows, batch_size):
        if order is None:
            x = np.asarray(split.x[start : start + batch_size])
            y = np.asarray(split.y[start : start + batch_size])
        else:
            rows = np.sort(order[start : start + batch_size])
            x = np.asarray(split.x[rows])
            y = np.asarray(split.y[rows])
        yield torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.float32))
