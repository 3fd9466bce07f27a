"""Shapley values of every embedding parameter, estimated with Algorithm 1 of Shaver.

The players of the game are the single parameters ``E[i, c]``; the value of a coalition is the increase
of the log loss when its parameters are replaced by a placeholder. Theorem 4.3 of Tran et al.,
"Shaver" (WWW 2025) shows that, for one sample, parameter ``(i, c)`` has the Shapley value of the
field-column player ``(j, c)``, where ``i`` is the sample's active feature in field ``j``, and that every
inactive parameter has value 0. So one random permutation of the ``num_fields * embed_dim`` field-column
players per sample gives an unbiased estimate for all ``num_features * embed_dim`` parameters:

    for each sample: draw an order of the players; remove them one by one from the full embedding;
    credit each step's loss increase to ``E[i, c]``.

The global value of a parameter is the mean of its per-sample values over all samples, zeros included
for samples where its feature is absent (the normalisation by ``|D|`` of Algorithm 1, line 14).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fedshaver.data.dataset import EncodedSplit
from fedshaver.errors import CheckpointError
from fedshaver.models.base import CTRModel
from fedshaver.shaver.paths import removal_path_logits
from fedshaver.shaver.placeholders import Placeholder

logger = logging.getLogger(__name__)


@dataclass
class Attribution:
    """Estimated Shapley values of the embedding parameters.

    Attributes
    ----------
    values : np.ndarray
        Mean Shapley value of every parameter, ``(num_features, embed_dim)``, float64.
    std_errors : np.ndarray
        Standard error of each mean, ``(num_features, embed_dim)``; 0 for parameters of features
        absent from the data, inf when fewer than two samples were used.
    samples : int
        Number of samples (one permutation each) the estimate averages over.
    feature_counts : np.ndarray
        Samples in which each feature was active, ``(num_features,)``; every column of a feature
        shares its feature's count.
    convergence_ratio : float
        Largest standard error divided by the range (max - min) of the values.
    placeholder : Placeholder
        Removal semantics used for the estimate.
    seconds : float
        Wall time of the estimation.
    stop_reason : str
        ``threshold``, ``max_samples`` or ``passes``.
    table_digest : str
        :func:`table_digest` of the embedding table the values were estimated for; empty when unknown.
    """

    values: np.ndarray
    std_errors: np.ndarray
    samples: int
    feature_counts: np.ndarray
    convergence_ratio: float
    placeholder: Placeholder
    seconds: float
    stop_reason: str
    table_digest: str = ""

    @property
    def samples_per_second(self) -> float:
        """Attribution throughput."""
        return self.samples / self.seconds if self.seconds > 0 else float("nan")

    def save(self, path: Path | str) -> None:
        """Write the attribution as an ``.npz`` archive of plain arrays (loadable without pickle)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {
            "samples": self.samples,
            "convergence_ratio": self.convergence_ratio,
            "placeholder": self.placeholder.name,
            "seconds": self.seconds,
            "stop_reason": self.stop_reason,
            "table_digest": self.table_digest,
        }
        temporary = path.with_name(f".{path.stem}.tmp.npz")
        np.savez(
            temporary,
            values=self.values,
            std_errors=self.std_errors,
            feature_counts=self.feature_counts,
            placeholder_values=self.placeholder.values.numpy(),
            metadata=np.array(json.dumps(metadata)),
        )
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path | str) -> Attribution:
        """Read an attribution written by :meth:`save` (``allow_pickle=False``)."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"attribution file not found: {path}")
        rerun = "run the attribution again (`fedshaver attribute` or the federated run) to rewrite it"
        try:
            archive = np.load(path, allow_pickle=False)
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as error:
            raise CheckpointError(f"{path} is not a valid attribution file ({error}); {rerun}") from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise CheckpointError(
                f"{path} is not a valid attribution file (it contains one array, not an .npz archive); {rerun}"
            )
        try:
            with archive:
                metadata = json.loads(str(archive["metadata"]))
                return cls(
                    values=archive["values"],
                    std_errors=archive["std_errors"],
                    samples=int(metadata["samples"]),
                    feature_counts=archive["feature_counts"],
                    convergence_ratio=float(metadata["convergence_ratio"]),
                    placeholder=Placeholder(metadata["placeholder"], torch.from_numpy(archive["placeholder_values"])),
                    seconds=float(metadata["seconds"]),
                    stop_reason=str(metadata["stop_reason"]),
                    table_digest=str(metadata.get("table_digest", "")),
                )
        except (KeyError, ValueError, TypeError, zipfile.BadZipFile) as error:
            raise CheckpointError(f"{path} is not a valid attribution file ({error}); {rerun}") from None


def table_digest(table: torch.Tensor | np.ndarray) -> str:
    """Return a short SHA-256 digest of an embedding table's float32 values, to match files to models."""
    if isinstance(table, torch.Tensor):
        table = table.detach().cpu().numpy()
    return hashlib.sha256(np.ascontiguousarray(table, dtype=np.float32).tobytes()).hexdigest()[:16]


class _RunningMoments:
    """Per-parameter sums of contributions and of their squares, plus feature counts."""

    def __init__(self, num_features: int, embed_dim: int):
        self.embed_dim = embed_dim
        self.sums = torch.zeros(num_features * embed_dim, dtype=torch.float64)
        self.squares = torch.zeros(num_features * embed_dim, dtype=torch.float64)
        self.counts = torch.zeros(num_features, dtype=torch.int64)
        self.samples = 0

    def add(self, x: torch.Tensor, order: torch.Tensor, contributions: torch.Tensor) -> None:
        """Credit ``contributions[b, k]`` (player ``order[b, k]`` of sample ``b``) to its parameter."""
        fields = torch.div(order, self.embed_dim, rounding_mode="floor")
        columns = order % self.embed_dim
        parameters = (x.gather(1, fields) * self.embed_dim + columns).flatten()
        values = contributions.to(torch.float64).flatten()
        self.sums.index_add_(0, parameters, values)
        self.squares.index_add_(0, parameters, values * values)
        # index_add_ touches only the batch's ids; a bincount would allocate a full-size array per batch.
        ids = x.flatten()
        self.counts.index_add_(0, ids, torch.ones_like(ids))
        self.samples += x.shape[0]

    def mean(self) -> torch.Tensor:
        return self.sums / max(self.samples, 1)

    def variance_of_mean(self, mean: torch.Tensor) -> torch.Tensor:
        """Return the squared standard error of each mean (sample variance over ``samples``)."""
        variance = (self.squares - self.samples * mean * mean).clamp_min(0.0) / (self.samples - 1)
        return variance / self.samples

    def std_error(self, mean: torch.Tensor) -> torch.Tensor:
        if self.samples < 2:
            return torch.where(self.counts.repeat_interleave(self.embed_dim) > 0, math.inf, 0.0).to(torch.float64)
        return torch.sqrt(self.variance_of_mean(mean))

    def convergence_ratio(self, mean: torch.Tensor) -> float:
        spread = float(mean.max() - mean.min())
        if self.samples < 2:
            largest = math.inf if bool((self.counts > 0).any()) else 0.0
        else:
            # The square root is monotonic, so one root of the largest variance gives the largest error.
            largest = math.sqrt(float(self.variance_of_mean(mean).max()))
        if spread <= 0.0:
            return 0.0 if largest == 0.0 else math.inf
        return largest / spread


def estimate_shapley(
    model: CTRModel,
    data: EncodedSplit,
    placeholder: Placeholder,
    batch_size: int = 16,
    max_samples: int | None = None,
    threshold: float | None = None,
    passes: int = 1,
    seed: int = 0,
    check_every: int = 512,
    progress: bool = True,
    structured: bool = True,
) -> Attribution:
    """Estimate the Shapley value of every embedding parameter of ``model`` on ``data`` (Algorithm 1).

    Parameters
    ----------
    model : CTRModel
        Trained backbone; it is put in eval mode.
    data : EncodedSplit
        Attribution samples (ids and labels).
    placeholder : Placeholder
        Value a removed parameter takes (zero or codebook).
    batch_size : int
        Samples whose ``num_fields * embed_dim + 1`` path steps are evaluated in one head call.
    max_samples : int, optional
        Stop after this many samples.
    threshold : float, optional
        Stop once the convergence ratio is below this value (checked every ``check_every`` samples).
    passes : int
        Maximum passes over ``data``, each with fresh permutations; one pass is the Shaver paper's setting.
    seed : int
        Seed of the sample order and of the permutations.
    progress : bool
        Show a tqdm bar; with a threshold, its postfix shows the current convergence ratio.
    structured : bool
        Use the backbone's incremental path evaluator when it has one.

    Returns
    -------
    Attribution
    """
    num_rows = len(data)
    if num_rows == 0:
        raise ValueError("cannot estimate Shapley values on an empty dataset")
    if batch_size < 1 or passes < 1:
        raise ValueError(f"batch_size and passes must be positive, got {batch_size} and {passes}")
    limit = num_rows * passes if max_samples is None else min(int(max_samples), num_rows * passes)
    num_fields, embed_dim = model.num_fields, model.embed_dim
    num_players = num_fields * embed_dim
    placeholder_values = placeholder.values.to(torch.float32)
    if tuple(placeholder_values.shape) != (num_fields, embed_dim):
        raise ValueError(f"placeholder has shape {tuple(placeholder_values.shape)}, expected ({num_fields}, {embed_dim})")

    generator = torch.Generator().manual_seed(seed)
    moments = _RunningMoments(model.num_features, embed_dim)
    started = time.perf_counter()
    stop_reason = "passes" if max_samples is None or limit == num_rows * passes else "max_samples"
    ratio = math.inf
    next_check = check_every
    was_training = model.training
    model.eval()
    bar = tqdm(total=limit, unit="sample", desc=f"shapley ({placeholder.name})", disable=not progress)
    try:
        with torch.no_grad():
            for _ in range(passes):
                sample_order = torch.randperm(num_rows, generator=generator).numpy()
                for start in range(0, num_rows, batch_size):
                    take = min(batch_size, num_rows - start, limit - moments.samples)
                    if take <= 0:
                        break
                    rows = np.sort(sample_order[start : start + take])
                    x = torch.from_numpy(np.asarray(data.x[rows]).astype(np.int64))
                    y = torch.from_numpy(np.asarray(data.y[rows]).astype(np.float32))
                    order = torch.rand(take, num_players, generator=generator).argsort(dim=1)

                    logits = removal_path_logits(model, model.embed(x), placeholder_values, order, x, structured)
                    losses = F.binary_cross_entropy_with_logits(
                        logits, y.unsqueeze(1).expand_as(logits), reduction="none"
                    )
                    moments.add(x, order, losses[:, 1:] - losses[:, :-1])
                    bar.update(take)

                    if threshold is not None and moments.samples >= next_check:
                        next_check += check_every
                        ratio = moments.convergence_ratio(moments.mean())
                        bar.set_postfix(ratio=f"{ratio:.4f}", target=threshold)
                        if ratio < threshold:
                            stop_reason = "threshold"
                            break
                if stop_reason == "threshold" or moments.samples >= limit:
                    break
    finally:
        bar.close()
        model.train(was_training)

    seconds = time.perf_counter() - started
    mean = moments.mean()
    ratio = moments.convergence_ratio(mean)
    shape = (model.num_features, embed_dim)
    attribution = Attribution(
        values=mean.view(shape).numpy(),
        std_errors=moments.std_error(mean).view(shape).numpy(),
        samples=moments.samples,
        feature_counts=moments.counts.numpy(),
        convergence_ratio=ratio,
        placeholder=Placeholder(placeholder.name, placeholder_values.clone()),
        seconds=seconds,
        stop_reason=stop_reason,
        table_digest=table_digest(model.embedding_table()),
    )
    logger.info(
        "Shapley values (%s placeholder): %d samples in %.1fs (%.1f samples/s), convergence ratio %.4f, stopped by %s",
        placeholder.name, attribution.samples, seconds, attribution.samples_per_second, ratio, stop_reason,
    )
    return attribution
