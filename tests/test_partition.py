"""Client partitions built with flwr-datasets partitioners on the committed samples."""

from __future__ import annotations

import numpy as np
import pytest

from fedshaver.config import load_config
from fedshaver.data.partition import Partitions, partition_clients
from fedshaver.errors import PartitionError, UnknownFieldError
from conftest import CONFIGS


@pytest.fixture(scope="module")
def avazu_dataset(cache_dir):
    from fedshaver.api import prepare

    config = load_config(CONFIGS / "avazu.yaml", "avazu_deepfm", {"data": {"cache_dir": str(cache_dir)}})
    return prepare(config, progress=False)


def covered_rows(partitions: Partitions) -> tuple[np.ndarray, np.ndarray]:
    train = np.concatenate([c.train_rows for c in partitions.clients])
    test = np.concatenate([c.test_rows for c in partitions.clients])
    return np.sort(train), np.sort(test)


def test_iid_partitions_cover_pool_once(criteo_dataset):
    partitions = partition_clients(criteo_dataset, 4, "iid", seed=1)
    train, test = covered_rows(partitions)
    np.testing.assert_array_equal(train, np.arange(8000))
    np.testing.assert_array_equal(test, np.arange(1000))
    # 9,000 pool rows over 4 clients: 2,250 rows each.
    assert [len(c.train_rows) + len(c.test_rows) for c in partitions.clients] == [2250] * 4


def test_iid_partitions_follow_seed(criteo_dataset):
    first = partition_clients(criteo_dataset, 4, "iid", seed=1)
    again = partition_clients(criteo_dataset, 4, "iid", seed=1)
    other = partition_clients(criteo_dataset, 4, "iid", seed=2)
    np.testing.assert_array_equal(first.clients[0].train_rows, again.clients[0].train_rows)
    assert not np.array_equal(first.clients[0].train_rows, other.clients[0].train_rows)


def test_dirichlet_partitions_skew_labels(criteo_dataset):
    partitions = partition_clients(criteo_dataset, 4, "dirichlet", seed=3, alpha=0.1)
    train, test = covered_rows(partitions)
    assert len(train) == 8000
    assert len(test) == 1000
    rates = partitions.table(criteo_dataset).eval("(train_clicks + test_clicks) / (train_rows + test_rows)")
    # The sample's click rate is 21.8%; a Dirichlet(0.1) label split moves clients far from it.
    assert rates.max() - rates.min() > 0.2


def test_natural_partitions_group_device_ips(avazu_dataset):
    partitions = partition_clients(avazu_dataset, 10, "natural", partition_by="device_ip", seed=0)
    column = avazu_dataset.key_fields.index("device_ip")
    buckets = []
    for client in partitions.clients:
        keys = np.concatenate([avazu_dataset.train.keys[client.train_rows, column], avazu_dataset.test.keys[client.test_rows, column]])
        client_buckets = np.unique(keys % np.uint64(10))
        assert len(client_buckets) == 1
        buckets.append(int(client_buckets[0]))
    assert sorted(buckets) == list(range(10))
    train, test = covered_rows(partitions)
    assert len(train) + len(test) == len(avazu_dataset.train) + len(avazu_dataset.test)


def test_natural_partitions_need_key_hashes(criteo_dataset):
    with pytest.raises(UnknownFieldError, match="data.key_fields"):
        partition_clients(criteo_dataset, 4, "natural", partition_by="C5")


def test_natural_partitions_with_empty_buckets(avazu_dataset):
    # site_id has 381 distinct values in the sample, so 2,000 hash buckets cannot all hold rows.
    with pytest.raises(PartitionError, match="non-empty groups for 2000 clients"):
        partition_clients(avazu_dataset, 2000, "natural", partition_by="site_id", min_train_rows=1)


def test_too_many_clients_for_the_rows(criteo_dataset):
    with pytest.raises(PartitionError, match="cannot give 5000 clients 2 training rows"):
        partition_clients(criteo_dataset, 5000, "iid")


def test_clients_below_min_rows_are_listed(criteo_dataset):
    # 9,000 rows over 1,000 IID clients: 9 rows each, so any client holding a test row has fewer
    # than 9 training rows.
    with pytest.raises(PartitionError, match="fewer than 9 training rows \\(client \\d+: [0-8] training rows"):
        partition_clients(criteo_dataset, 1000, "iid", min_train_rows=9, seed=0)


def test_partitions_save_and_load(criteo_dataset, tmp_path):
    partitions = partition_clients(criteo_dataset, 3, "iid", seed=5)
    partitions.save(tmp_path / "partitions.npz")
    loaded = Partitions.load(tmp_path / "partitions.npz")
    assert loaded.method == "iid"
    assert loaded.num_clients == 3
    for original, restored in zip(partitions.clients, loaded.clients):
        np.testing.assert_array_equal(original.train_rows, restored.train_rows)
        np.testing.assert_array_equal(original.test_rows, restored.test_rows)
