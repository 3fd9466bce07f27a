"""The pruning methods by name: how each one scores parameters and what a pruned parameter becomes.

| method            | scores                                | pruned parameter becomes |
|-------------------|---------------------------------------|--------------------------|
| ``shaver_codebook`` | Shapley values, codebook placeholder | its field's codebook row |
| ``shaver_zero``     | Shapley values, zero placeholder     | 0                        |
| ``magnitude``       | ``|E[i, c]|``                          | 0                        |
| ``taylor``          | ``sum |g * E[i, c]|``                  | 0                        |
| ``random``          | seeded uniform                        | 0                        |
| ``ptq``             | none: every row quantized to b bits   | dequantized value        |
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from fedshaver.data.dataset import EncodedSplit
from fedshaver.data.feature_map import FeatureMap
from fedshaver.models.base import CTRModel
from fedshaver.shaver.attribution import Attribution, estimate_shapley
from fedshaver.shaver.baselines import magnitude_scores, random_scores, taylor_scores
from fedshaver.shaver.placeholders import make_placeholder
from fedshaver.shaver.pruning import Ranking

METHODS = ("shaver_codebook", "shaver_zero", "magnitude", "taylor", "random", "ptq")
SHAVER_PLACEHOLDERS = {"shaver_codebook": "codebook", "shaver_zero": "zero"}


@dataclass
class AttributionOptions:
    """Settings of :func:`fedshaver.shaver.attribution.estimate_shapley`; see its parameters."""

    batch_size: int = 8
    max_samples: int | None = None
    threshold: float | None = None
    passes: int = 1
    seed: int = 2025
    progress: bool = True


def attribute(
    model: CTRModel,
    feature_map: FeatureMap,
    data: EncodedSplit,
    placeholder: str,
    options: AttributionOptions | None = None,
    frequencies: np.ndarray | None = None,
) -> Attribution:
    """Solve the placeholder (``zero`` or ``codebook``) and estimate Shapley values on ``data``.

    The codebook uses ``frequencies`` when given, else the training-split frequencies of the feature map.
    """
    options = options or AttributionOptions()
    counts = feature_map.frequencies() if frequencies is None else np.asarray(frequencies)
    values = make_placeholder(placeholder, model.embedding_table().detach(), feature_map.feature_field, counts)
    return estimate_shapley(
        model,
        data,
        values,
        batch_size=options.batch_size,
        max_samples=options.max_samples,
        threshold=options.threshold,
        passes=options.passes,
        seed=options.seed,
        progress=options.progress,
    )


def build_ranking(
    method: str,
    model: CTRModel,
    feature_map: FeatureMap,
    data: EncodedSplit | None = None,
    attribution: Attribution | None = None,
    options: AttributionOptions | None = None,
    seed: int = 2025,
) -> Ranking:
    """Return the :class:`Ranking` of ``method`` for ``model``.

    Shaver methods use ``attribution`` when given (its placeholder must match the method) and
    otherwise estimate it on ``data``; Taylor needs ``data`` too.
    """
    table = model.embedding_table().detach()
    offsets = feature_map.offsets
    zeros = torch.zeros(feature_map.num_fields, model.embed_dim)
    if method in SHAVER_PLACEHOLDERS:
        name = SHAVER_PLACEHOLDERS[method]
        if attribution is None:
            if data is None:
                raise ValueError(f"{method} needs attribution data or a precomputed attribution")
            attribution = attribute(model, feature_map, data, name, options)
        if attribution.placeholder.name != name:
            raise ValueError(f"{method} needs an attribution with the {name} placeholder, got {attribution.placeholder.name}")
        return Ranking(method, attribution.values, table, attribution.placeholder.values, offsets, codebook=name == "codebook")
    if method == "magnitude":
        return Ranking(method, magnitude_scores(table), table, zeros, offsets, codebook=False)
    if method == "taylor":
        if data is None:
            raise ValueError("taylor needs attribution data")
        return Ranking(method, taylor_scores(model, data), table, zeros, offsets, codebook=False)
    if method == "random":
        return Ranking(method, random_scores(tuple(table.shape), seed), table, zeros, offsets, codebook=False)
    if method == "ptq":
        raise ValueError("ptq quantizes every parameter and has no ranking; use quantized_variant")
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
