"""The research scripts under simulations/ at tiny scale: output files, their structure and value ranges."""

from __future__ import annotations

import json
import runpy
import sys

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

from conftest import CONFIGS, ROOT

METHODS = {"shaver_codebook", "shaver_zero", "magnitude", "taylor", "random"}


def run_script(name: str, run_dir, cache_dir, *settings: str) -> int:
    """Run simulations/<name>.py as ``python`` would, in this process, with the tiny study config.

    Returns the exit status.
    """
    argv = [str(ROOT / "simulations" / f"{name}.py"), "--config", str(CONFIGS / "criteo.yaml"),
            "--experiment", "criteo_tiny_study", "--no-progress", "--run-dir", str(run_dir),
            "--set", f"data.cache_dir={cache_dir}"]  # fmt: skip
    for setting in settings:
        argv += ["--set", setting]
    saved = sys.argv
    sys.argv = argv
    try:
        with pytest.raises(SystemExit) as finished:
            runpy.run_path(argv[0], run_name="__main__")
    finally:
        sys.argv = saved
    return finished.value.code


def execute_notebook(name: str, run_dir, monkeypatch) -> list[dict]:
    monkeypatch.setenv("FEDSHAVER_RUN_DIR", str(run_dir))
    notebook = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return outputs


def images(outputs: list[dict]) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


def check_summary(run_dir, study: str) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["study"] == study
    assert summary["seed"] == 2025
    assert summary["fedshaver_version"] == "0.1.0"
    assert all(seconds >= 0 for seconds in summary["timings_seconds"].values())
    assert (run_dir / "config.yaml").is_file()
    return summary


def test_budget_sweep_centralized(tmp_path, cache_dir, monkeypatch, capsys):
    assert run_script("budget_sweep", tmp_path, cache_dir, "study.modes=[centralized]") == 0
    sweep = pd.read_csv(tmp_path / "sweep.csv")
    assert "deepfm" in capsys.readouterr().out
    assert set(sweep["backbone"]) == {"deepfm", "dcn_mix"}
    for backbone in ("deepfm", "dcn_mix"):
        rows = sweep[sweep["backbone"] == backbone]
        # 5 ranked methods x 2 rates + PTQ at 8 bits + the unpruned model.
        assert len(rows) == 12
        assert set(rows["method"]) == METHODS | {"unpruned", "ptq"}
    assert sweep["auc"].between(0.0, 1.0).all()
    assert (sweep["logloss"] > 0).all()
    ranked = sweep[sweep["budget_kind"] == "sparsity"]
    assert (ranked["sparsity"] >= ranked["budget_value"]).all()
    assert (ranked["sparsity"] - ranked["budget_value"] < 1e-3).all()
    assert sweep.loc[sweep["method"] == "ptq", "sparsity"].tolist() == [0.75, 0.75]
    summary = check_summary(tmp_path, "budget_sweep")
    assert "deepfm/centralized/rank/shaver_codebook" in summary["timings_seconds"]
    assert (tmp_path / "sweep_auc.png").is_file()
    assert (tmp_path / "deepfm-centralized" / "attribution_codebook.npz").is_file()
    assert images(execute_notebook("budget_sweep", tmp_path, monkeypatch)) == 2


def test_budget_sweep_federated(tmp_path, cache_dir):
    assert run_script("budget_sweep", tmp_path, cache_dir, "study.modes=[federated]", "study.backbones=[deepfm]") == 0
    sweep = pd.read_csv(tmp_path / "sweep.csv")
    assert set(sweep["mode"]) == {"federated"}
    assert len(sweep) == 12
    assert (tmp_path / "deepfm-federated" / "history.csv").is_file()
    history = pd.read_csv(tmp_path / "deepfm-federated" / "history.csv")
    assert history["round"].tolist() == [0, 1]


def test_finetune_reports_before_and_after(tmp_path, cache_dir, monkeypatch):
    assert run_script("finetune_on_device", tmp_path, cache_dir) == 0
    devices = pd.read_csv(tmp_path / "devices.csv")
    tiers = pd.read_csv(tmp_path / "tiers.csv")
    assert len(devices) == 4
    assert devices[["auc", "tuned_auc", "ref_auc"]].stack().between(0.0, 1.0).all()
    assert (devices["auc_gain"] == devices["tuned_auc"] - devices["auc"]).all()
    assert tiers["tier"].tolist() == ["watch", "phone", "tablet", "laptop", "all"]
    assert tiers["tuned_pooled_auc"].between(0.0, 1.0).all()
    check_summary(tmp_path, "finetune")
    assert (tmp_path / "finetune_tiers.png").is_file()
    assert images(execute_notebook("finetune", tmp_path, monkeypatch)) == 1


def test_data_fraction_records_time(tmp_path, cache_dir, monkeypatch):
    assert run_script("data_fraction", tmp_path, cache_dir, "shaver.max_samples=null") == 0
    table = pd.read_csv(tmp_path / "data_fraction.csv")
    assert table["fraction"].tolist() == [0.1, 1.0]
    # 10% and 100% of the 1,000 validation rows.
    assert table["samples"].tolist() == [100, 1000]
    assert (table["attribution_seconds"] > 0).all()
    assert table["auc"].between(0.0, 1.0).all()
    check_summary(tmp_path, "data_fraction")
    assert images(execute_notebook("data_fraction", tmp_path, monkeypatch)) == 1


def test_frequency_bins_split_features(tmp_path, cache_dir, monkeypatch):
    assert run_script("frequency_analysis", tmp_path, cache_dir) == 0
    table = pd.read_csv(tmp_path / "frequency.csv")
    assert table["method"].tolist() == ["shaver_zero"] * 3 + ["shaver_codebook"] * 3
    assert table["bin"].tolist() == ["low", "mid", "high"] * 2
    # 1,747 features in three bins of equal size: 583, 582, 582.
    assert table["features"].tolist() == [583, 582, 582] * 2
    assert table["mean_kept_dims"].between(0.0, 16.0).all()
    # At t = 0.5 half of the 1,747 x 16 parameters are kept: the bin means average to 8.
    for method, rows in table.groupby("method"):
        assert abs((rows["mean_kept_dims"] * rows["features"]).sum() - 1747 * 8) < 1, method
    check_summary(tmp_path, "frequency")
    assert images(execute_notebook("frequency_analysis", tmp_path, monkeypatch)) == 1


def test_scripts_reject_bad_settings(tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    assert run_script("data_fraction", run_dir, cache_dir, "study.data_fractions=[0.0]") == 2
    assert not run_dir.exists()
