"""fedshaver: federated on-device CTR recommendation with Shapley-value embedding pruning (Shaver)."""

__version__ = "0.1.0"
