"""Config files: base block plus overrides, validation errors that quote the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fedshaver.config import available_experiments, deep_merge, load_config, resolve_paths
from fedshaver.errors import ConfigError, DataNotFoundError
from conftest import CONFIGS, CRITEO_SAMPLE


def write_config(tmp_path, document) -> Path:
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_experiment_overrides_base():
    config = load_config(CONFIGS / "criteo.yaml", "criteo_tiny")
    assert config.name == "criteo_tiny"
    assert config.model.hidden_units == [32, 32]
    assert config.model.embed_dim == 16  # from the base block
    assert config.federation.num_clients == 4
    assert config.train.learning_rate == 0.001


def test_relative_paths_follow_the_config_file():
    config = load_config(CONFIGS / "criteo.yaml", "criteo_deepfm")
    paths = resolve_paths(config)
    assert paths["files"] == [CRITEO_SAMPLE]
    assert paths["device_profile"] == CONFIGS / "devices" / "default.yaml"


def test_data_dir_variable_expands(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDSHAVER_DATA_DIR", str(tmp_path))
    config = load_config(CONFIGS / "criteo.yaml", "criteo_137k_deepfm")
    assert resolve_paths(config)["files"] == [tmp_path / "criteo" / "criteo_kaggle_sample137k.tsv.gz"]


def test_missing_data_dir_variable(monkeypatch):
    monkeypatch.delenv("FEDSHAVER_DATA_DIR", raising=False)
    config = load_config(CONFIGS / "criteo.yaml", "criteo_137k_deepfm")
    with pytest.raises(DataNotFoundError, match="FEDSHAVER_DATA_DIR"):
        resolve_paths(config)


def test_unknown_key_quotes_key_and_file(tmp_path):
    path = write_config(tmp_path, {"base": {"train": {"epochz": 3}}})
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert "train.epochz" in str(raised.value)
    assert str(path) in str(raised.value)


def test_wrong_type_quotes_value(tmp_path):
    path = write_config(tmp_path, {"base": {"train": {"epochs": "ten"}}})
    with pytest.raises(ConfigError, match="train.epochs must be int, got 'ten' \\(str\\)"):
        load_config(path)


def test_bool_is_not_an_int(tmp_path):
    path = write_config(tmp_path, {"base": {"federation": {"rounds": True}}})
    with pytest.raises(ConfigError, match="federation.rounds must be int"):
        load_config(path)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"model": {"name": "wide_deep"}}, "model.name must be one of deepfm, dcn_mix"),
        ({"train": {"batch_size": 0}}, "train.batch_size must be positive"),
        ({"prune": {"sparsity_rates": [0.5, 1.5]}}, "prune.sparsity_rates must be a list of rates"),
        ({"prune": {"methods": ["shaver"]}}, "prune.methods must be one of"),
        ({"prune": {"ptq_bits": [3]}}, "prune.ptq_bits"),
        ({"shaver": {"data_fraction": 0.0}}, "shaver.data_fraction must be in \\(0, 1\\]"),
        ({"federation": {"partitioner": "natural"}}, "federation.partition_by"),
        ({"federation": {"partitioner": "natural", "partition_by": "C5"}}, "listed in data.key_fields"),
        ({"federation": {"fail_clients": [{"client": 1}]}}, "federation.fail_clients"),
    ],
)
def test_out_of_range_values_are_rejected(tmp_path, section, message):
    path = write_config(tmp_path, {"base": section})
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_unknown_experiment_lists_available():
    with pytest.raises(ConfigError, match="unknown experiment 'criteo_huge'.*criteo_tiny"):
        load_config(CONFIGS / "criteo.yaml", "criteo_huge")


def test_several_experiments_need_a_name():
    with pytest.raises(ConfigError, match="choose one"):
        load_config(CONFIGS / "criteo.yaml")


def test_unknown_section_and_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown section 'optimizer'"):
        load_config(write_config(tmp_path, {"base": {"optimizer": {}}}))
    with pytest.raises(ConfigError, match="unknown top-level key"):
        load_config(write_config(tmp_path, {"defaults": {}}))


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("base: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(broken)


def test_overrides_merge_last():
    config = load_config(CONFIGS / "criteo.yaml", "criteo_tiny", {"federation": {"rounds": 7}})
    assert config.federation.rounds == 7
    assert config.federation.num_clients == 4


def test_deep_merge_keeps_untouched_keys():
    merged = deep_merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"c": 5}})
    assert merged == {"a": {"b": 1, "c": 5}, "d": 3}


def test_every_shipped_experiment_loads(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDSHAVER_DATA_DIR", str(tmp_path))
    for name in ("criteo.yaml", "avazu.yaml"):
        for experiment in available_experiments(CONFIGS / name):
            config = load_config(CONFIGS / name, experiment)
            assert resolve_paths(config)["device_profile"].is_file(), (name, experiment)


def test_duplicate_keys_are_rejected(tmp_path):
    path = tmp_path / "duplicate.yaml"
    path.write_text("base:\n  train: {epochs: 1}\n  train: {epochs: 2}\n")
    with pytest.raises(ConfigError, match="duplicate key 'train'"):
        load_config(path)


def test_empty_data_dir_variable(monkeypatch):
    monkeypatch.setenv("FEDSHAVER_DATA_DIR", "")
    config = load_config(CONFIGS / "criteo.yaml", "criteo_137k_deepfm")
    with pytest.raises(DataNotFoundError, match="FEDSHAVER_DATA_DIR.*which is empty"):
        resolve_paths(config)


def test_split_fractions_quote_the_key(tmp_path):
    path = write_config(tmp_path, {"base": {"data": {"split_fractions": [0.8, 0.3, 0.1]}}})
    with pytest.raises(ConfigError, match="data.split_fractions must be three non-negative fractions"):
        load_config(path)
