"""Client-side handlers of the simulated devices; the ClientApp only routes messages here.

A client learns its partition from ``context.node_config["partition-id"]`` and reads its rows from the
prepared dataset named in the message's job context. It keeps small counters in ``context.state`` (the
per-node state Flower carries between messages) and nothing in module globals.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedshaver.api import new_model, train_options
from fedshaver.data.dataset import EncodedSplit, load_prepared
from fedshaver.data.partition import Partitions
from fedshaver.errors import PartitionError
from fedshaver.federated import messages
from fedshaver.metrics import evaluate_logits
from fedshaver.shaver.storage import CompactEmbedding, QuantizedEmbedding, QuantizedTable
from fedshaver.training import Trainer, predict_logits

logger = logging.getLogger(__name__)

STATE = "client-state"


class InjectedClientFault(RuntimeError):
    """Failure raised on purpose by a client listed in ``federation.fail_clients`` (fault-injection tests)."""


def partition_id(context: Context, num_clients: int) -> int:
    """Return this node's partition id, checked against the configured number of clients.

    Raises
    ------
    PartitionError
        When the node config has no ``partition-id`` or it is outside ``[0, num_clients)``.
    """
    if "partition-id" not in context.node_config:
        raise PartitionError(f"node config has no 'partition-id' (keys: {sorted(context.node_config)}); "
                             "run the app in Flower's simulation engine, or set partition-id in the node config")
    value = context.node_config["partition-id"]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_clients:
        raise PartitionError(
            f"partition-id {value!r} is outside 0..{num_clients - 1} (federation.num_clients = {num_clients}); "
            "start the federation with as many SuperNodes as clients"
        )
    return value


def _maybe_fail(job: messages.JobContext, client: int, phase: str, server_round: int) -> None:
    for entry in job.config.federation.fail_clients:
        if entry["partition_id"] != client:
            continue
        if entry.get("phase", "train") not in (phase, "any"):
            continue
        if "round" in entry and entry["round"] != server_round:
            continue
        raise InjectedClientFault(f"injected failure of client {client} in {phase} (round {server_round})")


def _client_data(job: messages.JobContext, client: int):
    dataset = load_prepared(job.dataset_path)
    partition = Partitions.load(job.partitions_path).clients[client]
    return dataset, dataset.train.subset(partition.train_rows), dataset.test.subset(partition.test_rows)


def _update_state(context: Context, **values: float) -> None:
    state = context.state.metric_records.get(STATE, MetricRecord({"rounds-trained": 0, "evaluations": 0}))
    for key, value in values.items():
        state[key] = value
    context.state[STATE] = state


def _counter(context: Context, key: str) -> int:
    state = context.state.metric_records.get(STATE)
    return int(state[key]) if state is not None and key in state else 0


def handle_query(msg: Message, context: Context) -> Message:
    """Reply with the partition id, partition sizes and the training-row count of every feature."""
    job = messages.read_job(msg.content.config_records[messages.JOB])
    client = partition_id(context, job.config.federation.num_clients)
    dataset, train, test = _client_data(job, client)
    counts = np.bincount(np.asarray(train.x).reshape(-1), minlength=dataset.feature_map.num_features).astype(np.int64)
    metrics = MetricRecord(
        {
            "partition-id": client,
            "num-partitions": int(context.node_config.get("num-partitions", -1)),
            "train-rows": len(train),
            "test-rows": len(test),
            "train-clicks": train.positives,
            "test-clicks": test.positives,
        }
    )
    return Message(RecordDict({messages.METRICS: metrics, messages.COUNTS: ArrayRecord({"feature-counts": Array(counts)})}), reply_to=msg)


def handle_train(msg: Message, context: Context) -> Message:
    """Train the received global model on the local training rows for the configured local epochs."""
    job = messages.read_job(msg.content.config_records[messages.JOB])
    server_round = int(msg.content.config_records["config"]["server-round"])
    client = partition_id(context, job.config.federation.num_clients)
    _maybe_fail(job, client, "train", server_round)
    torch.set_num_threads(1)

    dataset, train, _ = _client_data(job, client)
    fm = dataset.feature_map
    model = new_model(job.config, fm.num_features, fm.num_fields)
    messages.load_model_record(model, msg.content.array_records[messages.ARRAYS])
    options = train_options(job.config)
    options.seed = job.config.seed + 10_007 * server_round + client
    torch.manual_seed(options.seed)
    started = time.perf_counter()
    fit = Trainer(model, options).fit(train, None, epochs=job.config.federation.local_epochs, progress=False)
    train_logloss = float(fit.history["train_logloss"].iloc[-1])
    _update_state(context, **{"rounds-trained": _counter(context, "rounds-trained") + 1, "last-train-logloss": train_logloss})

    metrics = MetricRecord(
        {
            "num-examples": len(train),
            "partition-id": client,
            "train-logloss": train_logloss,
            "seconds": time.perf_counter() - started,
        }
    )
    return Message(RecordDict({messages.ARRAYS: messages.model_record(model), messages.METRICS: metrics}), reply_to=msg)


def _evaluate(model, test: EncodedSplit) -> tuple[dict, np.ndarray]:
    logits = predict_logits(model, test)
    result = evaluate_logits(np.asarray(test.y), logits)
    return {
        "examples": result.examples,
        "positives": result.positives,
        "auc": result.auc,
        "auc-defined": int(result.auc_defined),
        "logloss": result.logloss,
    }, logits


def handle_evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on the local test rows.

    The ``deploy`` config record names what arrived: ``reference`` (the full global model) or
    ``variant`` (the head plus the tier's stored embedding table). With ``federation.finetune_epochs``
    above 0, a variant is then fine-tuned on the local training rows with its pruning fixed (pruned
    entries keep their placeholder, the codebook frozen) and evaluated again.
    """
    job = messages.read_job(msg.content.config_records[messages.JOB])
    deploy = msg.content.config_records[messages.DEPLOY]
    client = partition_id(context, job.config.federation.num_clients)
    _maybe_fail(job, client, "evaluate", 0)
    torch.set_num_threads(1)

    dataset, train, test = _client_data(job, client)
    fm = dataset.feature_map
    model = new_model(job.config, fm.num_features, fm.num_fields)
    received_bytes = 0
    if deploy["kind"] == "reference":
        record = msg.content.array_records[messages.ARRAYS]
        messages.load_model_record(model, record)
        received_bytes = record.count_bytes()
    else:
        head = msg.content.array_records[messages.HEAD]
        embedding = msg.content.array_records[messages.EMBEDDING]
        messages.load_model_record(model, head, strict=False)
        storage = messages.storage_from_records(embedding, msg.content.config_records[messages.LAYOUT], fm.offsets)
        model.embedding = QuantizedEmbedding(storage) if isinstance(storage, QuantizedTable) else CompactEmbedding(storage)
        received_bytes = head.count_bytes() + embedding.count_bytes()

    values, logits = _evaluate(model, test)
    values.update({"partition-id": client, "received-bytes": int(received_bytes)})
    records = {messages.PREDICTIONS: messages.predictions_record(np.asarray(test.y), logits)}

    finetune_epochs = job.config.federation.finetune_epochs
    if deploy["kind"] == "variant" and finetune_epochs > 0:
        from fedshaver.finetune import finetune_variant  # noqa: PLC0415 (kept out of the training path)

        options = train_options(job.config)
        options.seed = job.config.seed + client
        if job.config.federation.finetune_learning_rate is not None:
            options.learning_rate = job.config.federation.finetune_learning_rate
        torch.manual_seed(options.seed)
        tuned = finetune_variant(model, storage, train, options, finetune_epochs)
        tuned_values, tuned_logits = _evaluate(tuned, test)
        values.update({f"tuned-{key}": value for key, value in tuned_values.items()})
        records["tuned-predictions"] = messages.predictions_record(np.asarray(test.y), tuned_logits)

    _update_state(context, evaluations=_counter(context, "evaluations") + 1)
    records[messages.METRICS] = MetricRecord(values)
    records["tier"] = ConfigRecord({"tier": str(deploy.get("tier", ""))})
    return Message(RecordDict(records), reply_to=msg)
