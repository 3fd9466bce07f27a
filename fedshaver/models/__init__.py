"""CTR backbones behind one interface: ``embed(x)`` and ``head(embeddings, x)``."""

from __future__ import annotations

from fedshaver.models.base import CTRModel
from fedshaver.models.dcn_mix import DCNMix
from fedshaver.models.deepfm import DeepFM

__all__ = ["CTRModel", "DCNMix", "DeepFM", "build_model"]


def build_model(name: str, num_features: int, num_fields: int, **options) -> CTRModel:
    """Build the backbone ``name`` (``deepfm`` or ``dcn_mix``) for a feature map's shape.

    ``options`` are the backbone's keyword arguments (``embed_dim``, ``hidden_units``, ...); options
    that belong only to the other backbone are ignored, so one model config section serves both.
    """
    shared = {key: options[key] for key in ("embed_dim", "hidden_units", "dropout") if key in options}
    if name == "deepfm":
        extra = {key: options[key] for key in ("first_order",) if key in options}
        return DeepFM(num_features, num_fields, **shared, **extra)
    if name == "dcn_mix":
        extra = {key: options[key] for key in ("cross_layers", "num_experts", "rank") if key in options}
        return DCNMix(num_features, num_fields, **shared, **extra)
    raise ValueError(f"unknown model {name!r}; expected 'deepfm' or 'dcn_mix'")
