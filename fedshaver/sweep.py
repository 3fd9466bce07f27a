"""Compare pruning methods across budgets: one table row per method and budget."""

from __future__ import annotations

import logging

import pandas as pd
from tqdm.auto import tqdm

from fedshaver.data.dataset import EncodedSplit
from fedshaver.errors import InfeasibleBudgetError
from fedshaver.metrics import Metrics
from fedshaver.models.base import CTRModel
from fedshaver.shaver.pruning import Budget, EmbeddingVariant, Ranking, quantized_variant
from fedshaver.training import evaluate_model

logger = logging.getLogger(__name__)

SWEEP_COLUMNS = [
    "method", "budget", "budget_kind", "budget_value", "sparsity", "bytes", "storage_ratio", "layout",
    "examples", "auc", "auc_defined", "logloss", "delta_auc", "delta_logloss", "status", "note",
]  # fmt: skip


def _row(method: str, budget_label: str, budget: Budget | None, variant: EmbeddingVariant | None, metrics: Metrics | None) -> dict:
    if budget is not None:
        budget_kind = budget.kind
    elif method == "ptq":
        budget_kind = "bits"
    else:
        budget_kind = "none"
    row = {
        "method": method,
        "budget": budget_label,
        "budget_kind": budget_kind,
        "budget_value": budget.value if budget is not None else float("nan"),
        "sparsity": variant.sparsity if variant is not None else float("nan"),
        "bytes": variant.nbytes if variant is not None else pd.NA,
        "layout": variant.layout if variant is not None else "",
        "status": "ok",
        "note": "",
    }
    if metrics is not None:
        row.update(examples=metrics.examples, auc=metrics.auc, auc_defined=metrics.auc_defined, logloss=metrics.logloss)
    return row


def evaluate_variants(
    model: CTRModel,
    split: EncodedSplit,
    rankings: dict[str, Ranking],
    budgets: list[Budget],
    ptq_bits: list[int] = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Evaluate every method at every budget on ``split`` and return one row per variant.

    The first row is the unpruned model. A byte budget that a method cannot meet (it is below the
    method's index and codebook overhead) gives a row with ``status = infeasible`` and the smallest
    feasible size in ``note``, instead of stopping the sweep.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`SWEEP_COLUMNS`. ``storage_ratio`` is the stored bytes over the dense table's;
        ``delta_auc`` and ``delta_logloss`` are relative to the unpruned model.
    """
    full_table = model.embedding_table().detach()
    reference = evaluate_model(model, split)
    rows = [
        {
            **_row("unpruned", "full", None, None, reference),
            "budget_kind": "none",
            "sparsity": 0.0,
            "bytes": full_table.numel() * full_table.element_size(),
            "layout": "dense",
        }
    ]
    jobs = [(method, budget) for method in rankings for budget in budgets] + [("ptq", bits) for bits in ptq_bits]
    for method, budget in tqdm(jobs, desc="evaluate variants", unit="variant", disable=not progress):
        if method == "ptq":
            variant = quantized_variant(full_table, budget)
            rows.append(_row("ptq", variant.label, None, variant, evaluate_model(variant.apply(model), split)))
            continue
        try:
            variant = rankings[method].variant(budget)
        except InfeasibleBudgetError as error:
            row = _row(method, budget.label, budget, None, None)
            row.update(status="infeasible", note=f"smallest feasible size is {int(error.minimum)} bytes")
            rows.append(row)
            continue
        rows.append(_row(method, budget.label, budget, variant, evaluate_model(variant.apply(model), split)))
    table = pd.DataFrame(rows).reindex(columns=SWEEP_COLUMNS)
    # For PTQ, "sparsity" is the Shaver paper's nominal 1 - bits / 32; storage_ratio is the real size ratio,
    # which includes the per-row scale and minimum.
    table["storage_ratio"] = pd.to_numeric(table["bytes"], errors="coerce") / float(rows[0]["bytes"])
    table["delta_auc"] = table["auc"] - reference.auc
    table["delta_logloss"] = table["logloss"] - reference.logloss
    logger.info("Evaluated %d variants of %d methods", len(rows) - 1, len(rankings) + bool(ptq_bits))
    return table
