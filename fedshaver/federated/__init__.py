"""Federated simulation with Flower: thin ServerApp and ClientApp over the library's phases."""
