"""Encoding of what travels between the server and the clients in Flower records.

- The job context (resolved config, prepared-dataset folder, partition file) is a ``ConfigRecord``
  sent with every message, so a ClientApp needs nothing else to find its data.
- Model weights are an ``ArrayRecord`` built from the state dict.
- A device variant is the head's weights plus the embedding table in its stored form (the arrays of a
  :class:`~fedshaver.shaver.storage.CompactTable` or :class:`~fedshaver.shaver.storage.QuantizedTable`)
  plus a ``ConfigRecord`` describing the layout, so the message size follows the budget.
- Evaluation replies carry labels and logits of the client's test rows, which the server pools for
  exact pooled AUC. This is a simulation shortcut: a deployment would send score histograms instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import yaml
from flwr.app import Array, ArrayRecord, ConfigRecord

from fedshaver.config import ExperimentConfig, build_config
from fedshaver.errors import CheckpointError
from fedshaver.models.base import CTRModel
from fedshaver.shaver.pruning import EmbeddingVariant
from fedshaver.shaver.storage import CompactTable, QuantizedTable

JOB = "job"
ARRAYS = "arrays"
METRICS = "metrics"
HEAD = "head"
EMBEDDING = "embedding"
LAYOUT = "embedding-layout"
DEPLOY = "deploy"
PREDICTIONS = "predictions"
COUNTS = "counts"


@dataclass
class JobContext:
    """Everything a client needs to find its data and rebuild the model.

    Attributes
    ----------
    config : ExperimentConfig
        The resolved experiment config.
    dataset_path : str
        Folder of the prepared dataset.
    partitions_path : str
        ``.npz`` file of the client partitions.
    """

    config: ExperimentConfig
    dataset_path: str
    partitions_path: str


def job_record(config: ExperimentConfig, dataset_path: str, partitions_path: str) -> ConfigRecord:
    """Return the job context as a ``ConfigRecord``."""
    return ConfigRecord(
        {
            "config-yaml": yaml.safe_dump(config.to_dict(), sort_keys=False),
            "dataset-path": str(dataset_path),
            "partitions-path": str(partitions_path),
        }
    )


def read_job(record: ConfigRecord) -> JobContext:
    """Rebuild the job context from :func:`job_record` output."""
    values = yaml.safe_load(str(record["config-yaml"]))
    name = values.pop("name", "default")
    source = values.pop("source", "")
    return JobContext(build_config(values, name=name, origin=source), str(record["dataset-path"]), str(record["partitions-path"]))


def model_record(model: torch.nn.Module) -> ArrayRecord:
    """Return the model's full state dict as an ``ArrayRecord``."""
    return ArrayRecord({k: v.detach().cpu() for k, v in model.state_dict().items()})


def load_model_record(model: torch.nn.Module, record: ArrayRecord, strict: bool = True) -> None:
    """Load weights from an ``ArrayRecord`` into ``model``.

    Raises
    ------
    CheckpointError
        When the record does not match the model's parameters.
    """
    try:
        model.load_state_dict(record.to_torch_state_dict(), strict=strict)
    except RuntimeError as error:
        raise CheckpointError(f"received weights do not match the model: {error}") from None


def head_record(model: CTRModel) -> ArrayRecord:
    """Return every weight except the embedding table as an ``ArrayRecord``."""
    return ArrayRecord({k: v.detach().cpu() for k, v in model.head_state_dict().items()})


def variant_records(variant: EmbeddingVariant, tier: str) -> tuple[ArrayRecord, ConfigRecord]:
    """Return the stored arrays of a variant and the description a client needs to rebuild it."""
    arrays = ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in variant.storage.arrays.items()})
    description = {
        "tier": tier,
        "method": variant.method,
        "budget": variant.label,
        "budget-kind": variant.budget.kind if variant.budget is not None else "bits",
        "budget-value": float(variant.budget.value) if variant.budget is not None else float(variant.storage.bits),
        "sparsity": float(variant.sparsity),
        "layout": variant.layout,
        "variant-bytes": int(variant.nbytes),
        "num-features": int(variant.storage.num_features),
        "embed-dim": int(variant.storage.embed_dim),
    }
    if isinstance(variant.storage, CompactTable):
        description["kept"] = int(variant.storage.kept)
    else:
        description["bits"] = int(variant.storage.bits)
    return arrays, ConfigRecord(description)


def storage_from_records(arrays: ArrayRecord, description: ConfigRecord, field_offsets: np.ndarray) -> CompactTable | QuantizedTable:
    """Rebuild the stored table of a variant from :func:`variant_records` output."""
    values = {name: arrays[name].numpy() for name in arrays.keys()}
    num_features = int(description["num-features"])
    embed_dim = int(description["embed-dim"])
    layout = str(description["layout"])
    if layout.startswith("ptq"):
        return QuantizedTable(num_features, embed_dim, int(description["bits"]), values)
    return CompactTable(num_features, embed_dim, layout, int(description["kept"]), values, np.asarray(field_offsets, dtype=np.int64))


def predictions_record(labels: np.ndarray, logits: np.ndarray) -> ArrayRecord:
    """Return test labels and logits ``(rows,)`` as an ``ArrayRecord``."""
    return ArrayRecord(
        {
            "labels": Array(np.ascontiguousarray(labels, dtype=np.float32)),
            "logits": Array(np.ascontiguousarray(logits, dtype=np.float32)),
        }
    )
