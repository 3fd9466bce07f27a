"""The command line on the committed Criteo sample: prepare, train, evaluate, attribute, prune."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from fedshaver.cli import main, parse_overrides
from conftest import CONFIGS, ROOT


@pytest.fixture(scope="module")
def trained_run(cache_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli-run")
    status = main(["--no-progress", "train", "--config", str(CONFIGS / "criteo.yaml"), "--experiment", "criteo_tiny",
                   "--set", f"data.cache_dir={cache_dir}", "--run-dir", str(run_dir)])  # fmt: skip
    assert status == 0
    return run_dir


def test_prepare_prints_split_sizes(cache_dir, capsys):
    status = main(["--no-progress", "prepare", "--config", str(CONFIGS / "criteo.yaml"), "--experiment", "criteo_tiny",
                   "--set", f"data.cache_dir={cache_dir}"])  # fmt: skip
    output = capsys.readouterr().out
    assert status == 0
    assert "train: 8000 rows" in output
    assert "fields: 39, features: 1747" in output


def test_train_writes_checkpoint_and_metrics(trained_run):
    assert (trained_run / "model.pt").is_file()
    history = pd.read_csv(trained_run / "history.csv")
    assert history["epoch"].tolist() == [1, 2]


def test_evaluate_prints_auc_and_logloss(trained_run, capsys):
    assert main(["--no-progress", "evaluate", "--run-dir", str(trained_run)]) == 0
    output = capsys.readouterr().out
    assert "auc" in output
    assert "logloss" in output
    assert "test" in output


def test_prune_prints_every_method(trained_run, capsys):
    status = main(["--no-progress", "prune", "--run-dir", str(trained_run), "--sparsity", "0.5", "0.8", "0.95",
                   "--bytes", "4000", "20000", "--bits", "8", "4"])  # fmt: skip
    output = capsys.readouterr().out
    assert status == 0
    sweep = pd.read_csv(trained_run / "sweep.csv")
    methods = set(sweep["method"])
    assert methods == {"unpruned", "shaver_codebook", "shaver_zero", "magnitude", "taylor", "random", "ptq"}
    # 5 ranked methods x (3 rates + 2 byte budgets) + 2 bit widths + the unpruned row.
    assert len(sweep) == 5 * 5 + 2 + 1
    infeasible = sweep[sweep["status"] == "infeasible"]
    assert set(infeasible["method"]) == {"shaver_codebook"}  # 4,000 B is below its 4,244 B minimum
    assert (infeasible["budget"] == "4000 B").all()
    ok = sweep[sweep["budget_kind"] == "bytes"].query("status == 'ok'")
    assert (ok["bytes"] <= ok["budget_value"]).all()
    assert "shaver_codebook" in output
    assert (trained_run / "attribution_codebook.npz").is_file()
    assert (trained_run / "attribution_zero.npz").is_file()


def test_attribute_writes_both_placeholders(trained_run, capsys):
    assert main(["--no-progress", "attribute", "--run-dir", str(trained_run), "--placeholder", "zero"]) == 0
    assert "zero: 100 samples" in capsys.readouterr().out


def test_bad_config_exits_with_named_error(tmp_path, caplog):
    broken = tmp_path / "broken.yaml"
    broken.write_text("base:\n  train: {epochz: 1}\n")
    assert main(["prepare", "--config", str(broken)]) == 2
    assert "train.epochz" in caplog.text


def test_set_parses_yaml_values():
    assert parse_overrides(["federation.rounds=3", "prune.sparsity_rates=[0.5, 0.9]", "model.name=dcn_mix"]) == {
        "federation": {"rounds": 3},
        "prune": {"sparsity_rates": [0.5, 0.9]},
        "model": {"name": "dcn_mix"},
    }


def test_module_entry_point_prints_version():
    completed = subprocess.run([sys.executable, "-m", "fedshaver", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert completed.returncode == 0
    assert completed.stdout.startswith("fedshaver 0.1.0")


def test_retraining_removes_old_attributions(cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    common = ["--no-progress", "train", "--config", str(CONFIGS / "criteo.yaml"), "--experiment", "criteo_tiny",
              "--set", f"data.cache_dir={cache_dir}", "--run-dir", str(run_dir)]  # fmt: skip
    assert main(common) == 0
    assert main(["attribute", "--run-dir", str(run_dir), "--placeholder", "codebook", "--no-progress"]) == 0
    assert (run_dir / "attribution_codebook.npz").is_file()
    assert main([*common, "--set", "seed=7"]) == 0
    assert not (run_dir / "attribution_codebook.npz").exists()
    assert (run_dir / "model.pt").is_file()


def test_foreign_attribution_is_estimated_again(trained_run, cache_dir, tmp_path, caplog):
    from fedshaver.api import load_run, rankings_for
    from fedshaver.shaver.attribution import Attribution, table_digest

    other = tmp_path / "other"
    assert main(["--no-progress", "train", "--config", str(CONFIGS / "criteo.yaml"), "--experiment", "criteo_tiny",
                 "--set", f"data.cache_dir={cache_dir}", "--set", "seed=11", "--run-dir", str(other)]) == 0  # fmt: skip
    run = load_run(other, progress=False)
    rankings_for(run, ["shaver_zero"], progress=False)
    foreign = Attribution.load(other / "attribution_zero.npz")
    (trained_run / "attribution_zero.npz").write_bytes((other / "attribution_zero.npz").read_bytes())

    target = load_run(trained_run, progress=False)
    rankings_for(target, ["shaver_zero"], progress=False)
    assert "computed for another embedding table" in caplog.text
    rewritten = Attribution.load(trained_run / "attribution_zero.npz")
    assert rewritten.table_digest == table_digest(target.model.embedding_table())
    assert rewritten.table_digest != foreign.table_digest


def test_bad_set_value_is_a_named_error(caplog):
    status = main(["prepare", "--config", str(CONFIGS / "criteo.yaml"), "--experiment", "criteo_tiny", "--set", "federation.rounds=[1"])
    assert status == 2
    assert "invalid --set 'federation.rounds=[1'" in caplog.text


def test_prune_options_are_checked(trained_run, caplog):
    assert main(["prune", "--run-dir", str(trained_run), "--sparsity", "1.5"]) == 2
    assert "--sparsity 1.5 is outside [0, 1]" in caplog.text


def test_options_after_the_command(cache_dir, capsys):
    status = main(["prepare", "--config", str(CONFIGS / "criteo.yaml"), "--experiment", "criteo_tiny",
                   "--set", f"data.cache_dir={cache_dir}", "--no-progress", "--log-level", "WARNING"])  # fmt: skip
    assert status == 0
    assert "train: 8000 rows" in capsys.readouterr().out
