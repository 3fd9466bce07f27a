"""End-to-end federated simulations on the committed Criteo sample (4 clients, 2 rounds, 4 tiers)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import yaml

from fedshaver.config import load_config
from fedshaver.federated.run import run_federated
from conftest import CONFIGS

DEVICE_COLUMNS = {
    "device", "tier", "budget", "budget_kind", "budget_value", "bytes", "layout", "sparsity", "examples",
    "auc", "auc_defined", "logloss", "ref_auc", "ref_logloss", "status", "error",
}  # fmt: skip
TIER_COLUMNS = {"tier", "budget", "devices", "failed", "bytes", "sparsity", "examples", "pooled_auc", "pooled_logloss", "ref_pooled_auc"}


def federated_config(cache_dir, overrides=None):
    base = {"data": {"cache_dir": str(cache_dir)}}
    if overrides:
        base.update(overrides)
    return load_config(CONFIGS / "criteo.yaml", "criteo_tiny", base)


@pytest.fixture(scope="module")
def first_run(cache_dir, tmp_path_factory):
    config = federated_config(cache_dir)
    return run_federated(config, run_dir=tmp_path_factory.mktemp("federated-a"), progress=False)


def test_run_writes_every_table(first_run):
    names = {p.name for p in first_run.run_dir.iterdir()}
    expected = {
        "config.yaml", "feature_map.json", "partitions.csv", "history.csv", "devices.csv", "tiers.csv", "model.pt",
        "tiers.json", "failures.csv", "attribution_codebook.npz", "devices_auc.png", "history.png",
    }  # fmt: skip
    assert expected <= names
    assert pd.read_csv(first_run.run_dir / "devices.csv").shape[0] == 4
    assert json.loads((first_run.run_dir / "tiers.json").read_text())[0]["tier"] == "watch"


def test_device_table_columns_and_values(first_run):
    devices = first_run.devices
    assert DEVICE_COLUMNS <= set(devices.columns)
    assert devices["device"].tolist() == [0, 1, 2, 3]
    assert sorted(devices["tier"]) == ["laptop", "phone", "tablet", "watch"]
    assert (devices["status"] == "ok").all()
    assert devices["examples"].sum() == 1000  # the 1,000 test rows of the sample, split over the clients
    assert devices["ref_auc"].between(0.0, 1.0).all()
    assert (devices["logloss"] > 0).all()


def test_unpruned_pooled_auc_is_informative(first_run):
    overall = first_run.tiers.set_index("tier").loc["all"]
    assert 0.5 < overall["ref_pooled_auc"] < 1.0
    assert 0.5 < overall["pooled_auc"] < 1.0


def test_bytes_stay_within_byte_budgets(first_run):
    byte_tiers = first_run.devices[first_run.devices["budget_kind"] == "bytes"]
    assert len(byte_tiers) == 1
    assert (byte_tiers["bytes"] <= byte_tiers["budget_value"]).all()


def test_sparser_tiers_never_store_more(first_run):
    tiers = first_run.tiers[first_run.tiers["tier"] != "all"].sort_values("sparsity")
    assert TIER_COLUMNS <= set(first_run.tiers.columns)
    assert tiers["bytes"].is_monotonic_decreasing
    assert tiers.set_index("tier").loc["laptop", "sparsity"] == 0.0
    # The full-table tier receives the same embeddings as the reference model.
    laptop = first_run.devices.set_index("tier").loc["laptop"]
    assert laptop["auc"] == laptop["ref_auc"]


def test_history_has_one_row_per_round(first_run):
    history = first_run.history
    assert history["round"].tolist() == [0, 1, 2]
    assert history.loc[history["round"] > 0, "succeeded"].tolist() == [4, 4]
    assert history["valid_auc"].between(0.0, 1.0).all()
    assert first_run.failures.empty


def test_attribution_covers_every_parameter(first_run):
    attribution = first_run.attribution
    feature_map = yaml.safe_load((first_run.run_dir / "config.yaml").read_text())
    assert attribution.values.shape == (1747, 16)
    assert attribution.samples == feature_map["shaver"]["max_samples"]


def test_same_seed_same_device_results(first_run, cache_dir, tmp_path):
    second = run_federated(federated_config(cache_dir), run_dir=tmp_path, progress=False)
    compared = ["device", "tier", "bytes", "sparsity", "examples", "auc", "logloss", "ref_auc", "ref_logloss"]
    pd.testing.assert_frame_equal(first_run.devices[compared], second.devices[compared])
    pd.testing.assert_frame_equal(first_run.history[["round", "valid_auc", "valid_logloss"]], second.history[["round", "valid_auc", "valid_logloss"]])
    np.testing.assert_array_equal(first_run.attribution.values, second.attribution.values)


def test_failing_clients_are_recorded(cache_dir, tmp_path, caplog):
    faults = [{"partition_id": 1, "phase": "train", "round": 1}, {"partition_id": 2, "phase": "evaluate"}]
    config = federated_config(cache_dir, {"federation": {"fail_clients": faults}})
    with caplog.at_level(logging.INFO, logger="fedshaver"):
        result = run_federated(config, run_dir=tmp_path, progress=False)

    failures = result.failures
    train_failures = failures[failures["phase"] == "train"]
    assert train_failures[["round", "partition_id"]].values.tolist() == [[1, 1]]
    assert "injected failure of client 1" in train_failures["error"].iloc[0]
    evaluate_failures = failures[failures["phase"].str.startswith("evaluate")]
    assert sorted(evaluate_failures["phase"]) == ["evaluate-reference", "evaluate-variant"]
    assert set(evaluate_failures["partition_id"]) == {2}
    assert result.history.set_index("round").loc[1, "succeeded"] == 3
    assert result.history.set_index("round").loc[2, "succeeded"] == 4

    devices = result.devices.set_index("device")
    assert devices.loc[2, "status"] == "failed"
    assert np.isnan(devices.loc[2, "auc"])
    assert (devices.drop(index=2)["status"] == "ok").all()
    assert result.tiers.set_index("tier").loc["all", "failed"] == 1
    assert pd.read_csv(tmp_path / "failures.csv").shape[0] == 3
    round_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Round ")]
    assert len(round_lines) == 2
    assert "3 of 4 sampled clients trained" in round_lines[0]


def test_infeasible_tier_budget_fails_before_training(cache_dir, tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text(yaml.safe_dump({"tiers": [{"name": "ring", "budget_bytes": 100, "share": 1.0}]}))
    config = federated_config(cache_dir, {"federation": {"device_profile": str(profile)}})
    from fedshaver.errors import InfeasibleBudgetError

    with pytest.raises(InfeasibleBudgetError, match="tier 'ring'.*at least 4244 bytes"):
        run_federated(config, run_dir=tmp_path / "run", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["profile.yaml"]



def test_per_device_notebook_runs(first_run, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    from conftest import ROOT

    monkeypatch.setenv("FEDSHAVER_RUN_DIR", str(first_run.run_dir))
    notebook = nbformat.read(ROOT / "notebooks" / "per_device_accuracy.ipynb", as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()

    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert str(first_run.run_dir) in printed


def test_federated_run_folder_can_be_evaluated(first_run, capsys):
    from fedshaver.cli import main

    assert main(["--no-progress", "evaluate", "--run-dir", str(first_run.run_dir)]) == 0
    output = capsys.readouterr().out
    # The saved global model is the one the server evaluated after the last round.
    valid_auc = first_run.history["valid_auc"].iloc[-1]
    assert f"{valid_auc:.5f}" in output
