"""Client partitions for federated simulation, built with flwr-datasets partitioners.

The server keeps the validation split (central evaluation and attribution). The training and test rows
together form the client pool, which a partitioner splits into ``num_clients`` partitions. Each client's
rows from the training split are its local training data and its rows from the test split its local
test data, so the vocabulary (built on the training split) never saw any client's test rows.

- ``iid``: rows shuffled with the seed, then cut into equal contiguous shards (``IidPartitioner``).
- ``dirichlet``: label proportions per client drawn from a Dirichlet distribution
  (``DirichletPartitioner`` over the label).
- ``natural``: rows grouped by a raw column (e.g. Avazu ``device_ip``); the 64-bit hash of the value is
  bucketed into ``num_clients`` groups (``NaturalIdPartitioner`` over the bucket).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, NaturalIdPartitioner

from fedshaver.data.dataset import PreparedDataset
from fedshaver.errors import ConfigError, PartitionError, UnknownFieldError

logger = logging.getLogger(__name__)

PARTITIONERS = ("iid", "dirichlet", "natural")


@dataclass
class ClientPartition:
    """Rows of one client.

    Attributes
    ----------
    partition_id : int
        Client index in ``[0, num_clients)``.
    train_rows : np.ndarray
        Indices into the training split.
    test_rows : np.ndarray
        Indices into the test split.
    """

    partition_id: int
    train_rows: np.ndarray
    test_rows: np.ndarray


@dataclass
class Partitions:
    """All client partitions of a run.

    Attributes
    ----------
    method : str
        Partitioner name.
    clients : list of ClientPartition
        One entry per client, ordered by partition id.
    """

    method: str
    clients: list[ClientPartition]

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self.clients)

    def table(self, dataset: PreparedDataset) -> pd.DataFrame:
        """Return one row per client with its training and test row and click counts."""
        train_labels = np.asarray(dataset.train.y)
        test_labels = np.asarray(dataset.test.y)
        return pd.DataFrame(
            [
                {
                    "partition_id": c.partition_id,
                    "train_rows": len(c.train_rows),
                    "train_clicks": int(train_labels[c.train_rows].sum()),
                    "test_rows": len(c.test_rows),
                    "test_clicks": int(test_labels[c.test_rows].sum()),
                }
                for c in self.clients
            ]
        )

    def save(self, path: Path | str) -> None:
        """Write the partitions as an ``.npz`` of index arrays."""
        arrays = {"method": np.array(self.method)}
        for client in self.clients:
            arrays[f"train_{client.partition_id}"] = client.train_rows
            arrays[f"test_{client.partition_id}"] = client.test_rows
        path = Path(path)
        temporary = path.with_name(f".{path.stem}.tmp.npz")
        np.savez(temporary, **arrays)
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path | str) -> Partitions:
        """Read partitions written by :meth:`save` (``allow_pickle=False``)."""
        with np.load(path, allow_pickle=False) as archive:
            count = sum(1 for key in archive.files if key.startswith("train_"))
            clients = [ClientPartition(i, archive[f"train_{i}"], archive[f"test_{i}"]) for i in range(count)]
            return cls(str(archive["method"]), clients)


def _pool_dataset(dataset: PreparedDataset, method: str, num_clients: int, partition_by: str | None, seed: int):
    train_labels = np.asarray(dataset.train.y, dtype=np.int64)
    test_labels = np.asarray(dataset.test.y, dtype=np.int64)
    labels = np.concatenate([train_labels, test_labels])
    rows = np.arange(len(labels), dtype=np.int64)
    columns = {"row": rows, "label": labels}
    if method == "natural":
        if partition_by not in dataset.key_fields:
            raise UnknownFieldError(
                f"natural partitions by {partition_by!r} need its value hashes, but the prepared dataset stores "
                f"hashes of {dataset.key_fields}; add it to data.key_fields"
            )
        column = dataset.key_fields.index(partition_by)
        keys = np.concatenate([np.asarray(dataset.train.keys[:, column]), np.asarray(dataset.test.keys[:, column])])
        columns["key"] = (keys % np.uint64(num_clients)).astype(np.int64)
    if method == "iid":
        order = np.random.default_rng(seed).permutation(len(rows))
        columns = {name: values[order] for name, values in columns.items()}
    return datasets.Dataset.from_dict(columns)


def partition_clients(
    dataset: PreparedDataset,
    num_clients: int,
    method: str = "iid",
    seed: int = 2025,
    alpha: float = 0.5,
    partition_by: str | None = None,
    min_train_rows: int = 2,
) -> Partitions:
    """Split the training and test rows of ``dataset`` into ``num_clients`` client partitions.

    Raises
    ------
    PartitionError
        When the partitioner cannot build ``num_clients`` partitions, or a client gets fewer than
        ``min_train_rows`` training rows. The message lists every offending client and its row counts.
    """
    if method not in PARTITIONERS:
        raise ConfigError(f"unknown partitioner {method!r}; expected one of {', '.join(PARTITIONERS)}")
    if num_clients < 1:
        raise PartitionError(f"num_clients must be at least 1, got {num_clients}")
    pool_size = len(dataset.train) + len(dataset.test)
    if pool_size < num_clients * min_train_rows:
        raise PartitionError(
            f"{pool_size} training and test rows cannot give {num_clients} clients {min_train_rows} training rows "
            "each; use fewer clients or more data"
        )
    pool = _pool_dataset(dataset, method, num_clients, partition_by, seed)
    if method == "iid":
        partitioner = IidPartitioner(num_partitions=num_clients)
    elif method == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=alpha,
            min_partition_size=min_train_rows,
            self_balancing=True,
            shuffle=True,
            seed=seed,
        )
    else:
        partitioner = NaturalIdPartitioner(partition_by="key")
    partitioner.dataset = pool
    settings = f"{num_clients} clients" + (f", alpha {alpha:g}, at least {min_train_rows} rows each" if method == "dirichlet" else "")
    try:
        available = partitioner.num_partitions
    except ValueError as error:
        raise PartitionError(f"the {method} partitioner failed for {settings}: {error}") from None
    if available != num_clients:
        raise PartitionError(
            f"natural partitions by {partition_by!r} gave {available} non-empty groups for {num_clients} clients; "
            "some hash buckets hold no rows, so use fewer clients or another column"
        )

    boundary = len(dataset.train)
    clients = []
    for partition_id in range(num_clients):
        try:
            rows = np.sort(np.asarray(partitioner.load_partition(partition_id)["row"], dtype=np.int64))
        except ValueError as error:
            raise PartitionError(f"the {method} partitioner failed for {settings}: {error}") from None
        clients.append(ClientPartition(partition_id, rows[rows < boundary], rows[rows >= boundary] - boundary))

    too_small = [c for c in clients if len(c.train_rows) < min_train_rows]
    if too_small:
        listing = ", ".join(f"client {c.partition_id}: {len(c.train_rows)} training rows" for c in too_small)
        raise PartitionError(
            f"{len(too_small)} client partition(s) have fewer than {min_train_rows} training rows ({listing}); "
            "use fewer clients, a larger Dirichlet alpha, or more data"
        )
    without_test = [c.partition_id for c in clients if len(c.test_rows) == 0]
    if without_test:
        logger.warning("Clients %s have no test rows; their evaluation will report no examples", without_test)
    return Partitions(method, clients)
