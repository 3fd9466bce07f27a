"""FedAvg with seeded client sampling, a fixed aggregation order and a record of failed clients.

Flower's ``FedAvg`` samples nodes with the global ``random`` module and aggregates replies in arrival
order, so two runs with the same seed can differ in their last bits. This subclass samples from the
clients sorted by partition id with a generator seeded by (seed, round) and sorts replies by partition
id before averaging. It records every error reply and every sampled client that sent no reply within
the round timeout.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedshaver.federated import messages

logger = logging.getLogger(__name__)


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def plain_error(reason: str) -> str:
    """Return an error reason without terminal colour codes."""
    return _ANSI_ESCAPE.sub("", str(reason))


def short_error(reason: str) -> str:
    """Return the last line of a client error reason that names the exception, without Ray's wrapping."""
    lines = [line.strip() for line in plain_error(reason).splitlines() if line.strip()]
    for line in reversed(lines):
        if "Message:" in line:
            return line.split("Message:", 1)[1].strip(" '>")
        if "Error:" in line or "Exception:" in line or "Fault:" in line:
            return line.strip(" '>")
    return lines[-1] if lines else str(reason)


def _weighted_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    weights = [float(next(iter(r.metric_records.values()))[weight_key]) for r in records]
    losses = [float(next(iter(r.metric_records.values()))["train-logloss"]) for r in records]
    total = sum(weights)
    return MetricRecord({"train-logloss": sum(w * l for w, l in zip(weights, losses)) / total, "num-examples": total})


class OrderedFedAvg(FedAvg):
    """FedAvg over clients identified by partition id, reproducible for a given seed.

    Parameters
    ----------
    node_of_partition : dict of int to int
        Node id of every partition id, learned from the clients' first replies.
    job : ConfigRecord
        Job context sent with every message.
    seed : int
        Seed of the per-round client sampling.
    fraction_train : float
        Fraction of clients trained per round (at least one).
    """

    def __init__(self, node_of_partition: dict[int, int], job: ConfigRecord, seed: int, fraction_train: float):
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=0.0,
            min_train_nodes=1,
            min_available_nodes=1,
            train_metrics_aggr_fn=_weighted_train_metrics,
        )
        self.node_of_partition = dict(sorted(node_of_partition.items()))
        self.partition_of_node = {node: part for part, node in self.node_of_partition.items()}
        self.job = job
        self.seed = seed
        self.failures: list[dict] = []
        self.rounds: list[dict] = []
        self._round_started = 0.0
        self._sampled: list[int] = []

    def sample(self, server_round: int) -> list[int]:
        """Return the partition ids trained in ``server_round``, in increasing order."""
        partitions = list(self.node_of_partition)
        count = max(1, int(len(partitions) * self.fraction_train))
        return sorted(random.Random(self.seed * 1_000_003 + server_round).sample(partitions, count))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        """Send the global model and the job context to this round's sampled clients."""
        self._round_started = time.perf_counter()
        self._sampled = self.sample(server_round)
        config["server-round"] = server_round
        record = RecordDict({messages.ARRAYS: arrays, "config": config, messages.JOB: self.job})
        return self._construct_messages(record, [self.node_of_partition[p] for p in self._sampled], "train")

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        """Average the successful replies in partition-id order; record failures and missing replies."""
        replies = list(replies)
        answered = set()
        valid = []
        for reply in replies:
            partition = self.partition_of_node.get(reply.metadata.src_node_id, -1)
            answered.add(partition)
            if reply.has_error():
                self.record_failure(server_round, "train", partition, reply.metadata.src_node_id, reply.error.reason)
            else:
                valid.append(reply)
        for partition in self._sampled:
            if partition not in answered:
                self.record_failure(
                    server_round, "train", partition, self.node_of_partition[partition], "no reply within the round timeout"
                )
        valid.sort(key=lambda m: self.partition_of_node[m.metadata.src_node_id])
        arrays, metrics = super().aggregate_train(server_round, valid) if valid else (None, None)
        self.rounds.append(
            {
                "round": server_round,
                "sampled": len(self._sampled),
                "succeeded": len(valid),
                "failed": len(self._sampled) - len(valid),
                "train_logloss": float(metrics["train-logloss"]) if metrics is not None else float("nan"),
                "seconds": time.perf_counter() - self._round_started,
            }
        )
        return arrays, metrics

    def record_failure(self, server_round: int | None, phase: str, partition: int, node: int, reason: str) -> None:
        """Keep one failure row and log it; ``server_round`` is None for the deployment after training."""
        message = short_error(reason)
        self.failures.append(
            {
                "round": server_round,
                "phase": phase,
                "partition_id": partition,
                "node_id": node,
                "error": message,
                "detail": plain_error(reason)[-2000:],
            }
        )
        when = f"round {server_round}" if server_round is not None else "deployment"
        logger.warning("Client %d failed in %s (%s): %s", partition, phase, when, message)
