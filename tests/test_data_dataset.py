"""Prepared datasets on disk: loading, incomplete folders, batches, subsets and the .npy writers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from fedshaver.data.dataset import FEATURE_MAP_FILE, iterate_batches, load_prepared
from fedshaver.data.preprocess import prepare_dataset
from fedshaver.data.staging import NpyWriter, StagedRows
from fedshaver.errors import DataNotFoundError, FeatureMapError

from conftest import CRITEO_SAMPLE


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The first 300 lines of the committed Criteo sample, all in the training split."""
    folder = tmp_path_factory.mktemp("dataset")
    path = folder / "criteo_head300.txt"
    with CRITEO_SAMPLE.open("rb") as source:
        path.write_bytes(b"".join(source.readline() for _ in range(300)))
    return prepare_dataset([path], "criteo", folder / "cache", min_count=2, split_fractions=(1.0, 0.0, 0.0), progress=False)


def copy_of(prepared, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(prepared.path, target)
    return target


# --- loading -------------------------------------------------------------------------------------


def test_load_prepared_round_trip(prepared):
    loaded = load_prepared(prepared.path)
    assert loaded.feature_map == prepared.feature_map
    assert np.array_equal(loaded.train.x, prepared.train.x)


def test_load_prepared_empty_splits(prepared):
    assert prepared.valid.x.shape == (0, 39)
    assert len(prepared.test) == 0


def test_load_prepared_no_folder(tmp_path):
    with pytest.raises(DataNotFoundError, match="no prepared dataset"):
        load_prepared(tmp_path / "absent")


def test_load_prepared_missing_array(prepared, tmp_path):
    folder = copy_of(prepared, tmp_path)
    (folder / "valid_y.npy").unlink()
    with pytest.raises(DataNotFoundError, match="valid_y.npy is missing"):
        load_prepared(folder)


def test_load_prepared_wrong_width(prepared, tmp_path):
    folder = copy_of(prepared, tmp_path)
    np.save(folder / "train_x.npy", np.zeros((300, 5), dtype=np.int32))
    with pytest.raises(FeatureMapError, match=r"expected \(rows, 39\)"):
        load_prepared(folder)


def test_load_prepared_bad_feature_map(prepared, tmp_path):
    folder = copy_of(prepared, tmp_path)
    data = json.loads((folder / FEATURE_MAP_FILE).read_text(encoding="utf-8"))
    data["fields"][3]["offset"] += 1
    (folder / FEATURE_MAP_FILE).write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(FeatureMapError, match="has offset"):
        load_prepared(folder)


def test_prepared_folder_contents(prepared):
    # The staging files of the parse pass are removed before the folder is renamed into place.
    names = sorted(p.name for p in prepared.path.iterdir())
    expected = sorted(
        [FEATURE_MAP_FILE, "prepare_report.json"] + [f"{s}_{a}.npy" for s in ("train", "valid", "test") for a in ("x", "y")]
    )
    assert names == expected


# --- batches and subsets -------------------------------------------------------------------------


def test_batches_in_order(prepared):
    batches = list(iterate_batches(prepared.train, batch_size=128))
    assert [len(y) for _, y in batches] == [128, 128, 44]
    assert torch.equal(torch.cat([x for x, _ in batches]), torch.from_numpy(np.asarray(prepared.train.x, dtype=np.int64)))


def test_batches_dtypes(prepared):
    x, y = next(iterate_batches(prepared.train, batch_size=16))
    assert x.dtype == torch.int64
    assert y.dtype == torch.float32
    assert tuple(x.shape) == (16, 39)


def test_batches_shuffled_cover_rows(prepared):
    generator = torch.Generator().manual_seed(0)
    labels = torch.cat([y for _, y in iterate_batches(prepared.train, batch_size=64, shuffle=True, generator=generator)])
    assert len(labels) == 300
    assert labels.sum().item() == float(np.asarray(prepared.train.y).sum())


def test_subset_rows(prepared):
    subset = prepared.train.subset(np.array([5, 0, 7]))
    assert np.array_equal(subset.x, np.asarray(prepared.train.x)[[5, 0, 7]])
    assert subset.keys is None


# --- writers -------------------------------------------------------------------------------------


def test_npy_writer_round_trip(tmp_path):
    values = np.arange(12, dtype=np.int32).reshape(4, 3)
    with NpyWriter(tmp_path / "a.npy", np.int32, (4, 3)) as writer:
        writer.append(values[:1])
        writer.append(values[1:])
    assert np.array_equal(np.load(tmp_path / "a.npy"), values)


def test_npy_writer_too_few_rows(tmp_path):
    with pytest.raises(RuntimeError, match="wrote 1 rows, but the header declares 4"):
        with NpyWriter(tmp_path / "a.npy", np.int32, (4, 3)) as writer:
            writer.append(np.zeros((1, 3), dtype=np.int32))


def test_npy_writer_wrong_width(tmp_path):
    writer = NpyWriter(tmp_path / "a.npy", np.int32, (4, 3))
    with pytest.raises(ValueError, match="expected \\(3,\\)"):
        writer.append(np.zeros((4, 2), dtype=np.int32))


def test_staged_rows_blocks(tmp_path):
    staged = StagedRows(tmp_path / "staging", num_fields=2, num_keys=1)
    staged.append(np.array([0, 2]), np.array([[1, 2], [3, 4]]), np.array([0.0, 1.0]), np.array([[7], [8]]))
    staged.append(np.array([3]), np.array([[5, 6]]), np.array([1.0]), np.array([[9]]))
    staged.close()
    blocks = list(staged.iter_blocks(2))
    assert [block[0].tolist() for block in blocks] == [[0, 2], [3]]
    assert blocks[0][1].tolist() == [[1, 2], [3, 4]]
    assert blocks[1][3].tolist() == [[9]]
