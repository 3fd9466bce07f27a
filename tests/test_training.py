"""The Trainer on the committed Criteo sample: AUC floors, early stopping, fixed epochs and checkpoints."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from fedshaver.data.dataset import EncodedSplit
from fedshaver.errors import CheckpointError
from fedshaver.models import build_model
from fedshaver.training import Trainer, TrainOptions, load_checkpoint, predict_logits, save_checkpoint

# Small heads keep each fit at a few seconds on two CPU threads.
BACKBONE_OPTIONS = {
    "deepfm": {"embed_dim": 16, "hidden_units": [32, 32]},
    "dcn_mix": {"embed_dim": 16, "hidden_units": [32, 32], "cross_layers": 2, "num_experts": 2, "rank": 16},
}

# Measured with this file's settings (3 epochs, batch 256, learning rate 1e-3, patience 2) on the
# committed 10,000-row Criteo sample prepared with `criteo_tiny`, for model and shuffle seeds 0-9:
#   DeepFM:   validation AUC 0.704-0.713, test AUC 0.726-0.741, log loss 0.436-0.448 / 0.462-0.476
#   DCN-Mix:  validation AUC 0.707-0.713, test AUC 0.718-0.736, log loss 0.437-0.443 / 0.470-0.495
# The AUC floors sit well above chance and about 0.04 below the lowest observed value. The log loss
# must beat the constant base-rate prediction (0.482 on validation, 0.532 on test) by LOGLOSS_MARGIN,
# where the observed margins were at least 0.034 and 0.037.
VALID_AUC_FLOOR = 0.66
TEST_AUC_FLOOR = 0.68
LOGLOSS_MARGIN = 0.01


def base_rate_logloss(split: EncodedSplit) -> float:
    """Return the log loss of predicting the split's click rate for every row."""
    rate = float(np.mean(split.y))
    return -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))


def new_model(dataset, name: str, seed: int = 0):
    torch.manual_seed(seed)
    fm = dataset.feature_map
    return build_model(name, fm.num_features, fm.num_fields, **BACKBONE_OPTIONS[name])


@pytest.mark.parametrize("name", ["deepfm", "dcn_mix"])
def test_trainer_beats_auc_floor(criteo_dataset, name):
    model = new_model(criteo_dataset, name, seed=3)
    trainer = Trainer(model, TrainOptions(batch_size=256, epochs=3, learning_rate=1e-3, patience=2, seed=3))

    result = trainer.fit(criteo_dataset.train, criteo_dataset.valid, progress=False)
    valid = trainer.evaluate(criteo_dataset.valid)
    test = trainer.evaluate(criteo_dataset.test)

    assert valid.auc > VALID_AUC_FLOOR
    assert test.auc > TEST_AUC_FLOOR
    assert valid.logloss < base_rate_logloss(criteo_dataset.valid) - LOGLOSS_MARGIN
    assert test.logloss < base_rate_logloss(criteo_dataset.test) - LOGLOSS_MARGIN
    assert result.best_valid.auc == valid.auc
    assert result.train_examples == len(criteo_dataset.train)
    assert result.history["train_logloss"].iloc[-1] < result.history["train_logloss"].iloc[0]


def test_early_stopping_restores_best_epoch(criteo_dataset):
    # A learning rate of 3e-3 overfits the 8,000 training rows after one or two epochs.
    options = TrainOptions(batch_size=256, epochs=10, learning_rate=3e-3, patience=2, seed=11)
    model = new_model(criteo_dataset, "deepfm", seed=11)
    trainer = Trainer(model, options)

    result = trainer.fit(criteo_dataset.train, criteo_dataset.valid, progress=False)
    history = result.history
    valid_aucs = history["valid_auc"].to_numpy()
    best_index = int(np.argmax(valid_aucs))

    assert result.stopped_early
    assert list(history["epoch"]) == list(range(1, len(history) + 1))
    assert len(history) == result.best_epoch + options.patience
    assert result.best_epoch == best_index + 1
    assert np.all(valid_aucs[best_index + 1 :] <= valid_aucs[best_index])
    assert valid_aucs[-1] != valid_aucs[best_index]
    assert result.best_valid.auc == valid_aucs[best_index]

    # After fitting, the model has the best epoch's validation AUC ...
    assert trainer.evaluate(criteo_dataset.valid).auc == valid_aucs[best_index]

    # ... and the same weights as a fresh run of exactly best_epoch epochs with the same seeds.
    replay = new_model(criteo_dataset, "deepfm", seed=11)
    Trainer(replay, options).fit(criteo_dataset.train, epochs=result.best_epoch, progress=False)
    for key, value in replay.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_patience_zero_runs_all_epochs_keeps_best(criteo_dataset):
    options = TrainOptions(batch_size=256, epochs=4, learning_rate=3e-3, patience=0, seed=11)
    trainer = Trainer(new_model(criteo_dataset, "deepfm", seed=11), options)

    result = trainer.fit(criteo_dataset.train, criteo_dataset.valid, progress=False)
    valid_aucs = result.history["valid_auc"].to_numpy()

    assert len(result.history) == 4
    assert not result.stopped_early
    assert result.best_epoch == int(np.argmax(valid_aucs)) + 1
    assert trainer.evaluate(criteo_dataset.valid).auc == valid_aucs.max()


@pytest.mark.parametrize("valid", ["none", "empty"])
def test_without_validation_trains_all_epochs(criteo_dataset, valid):
    train = criteo_dataset.train.subset(np.arange(2000))
    valid_split = None if valid == "none" else criteo_dataset.valid.subset(np.arange(0))
    trainer = Trainer(new_model(criteo_dataset, "deepfm"), TrainOptions(batch_size=256, epochs=9, patience=1))

    result = trainer.fit(train, valid_split, epochs=3, progress=False)

    assert len(result.history) == 3
    assert list(result.history["epoch"]) == [1, 2, 3]
    assert result.best_epoch == 3
    assert not result.stopped_early
    assert result.best_valid is None
    assert result.train_examples == 2000
    assert result.history["valid_auc"].isna().all()
    assert result.history["valid_logloss"].isna().all()
    assert np.isfinite(result.history["train_logloss"]).all()


def test_fit_empty_split_raises(criteo_dataset):
    num_fields = criteo_dataset.feature_map.num_fields
    empty = EncodedSplit(x=np.empty((0, num_fields), dtype=np.int32), y=np.empty(0, dtype=np.float32))
    trainer = Trainer(new_model(criteo_dataset, "deepfm"))

    with pytest.raises(ValueError, match="empty training split"):
        trainer.fit(empty, criteo_dataset.valid, progress=False)


def test_predict_matches_forward_in_order(criteo_dataset):
    model = new_model(criteo_dataset, "dcn_mix")
    model.train()
    split = criteo_dataset.test.subset(np.arange(300))

    logits = predict_logits(model, split, batch_size=128)

    assert model.training
    assert logits.shape == (300,)
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(split.x.astype(np.int64))).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_checkpoint_round_trip(criteo_dataset, tmp_path):
    model = new_model(criteo_dataset, "dcn_mix", seed=4)
    metadata = {"model": "dcn_mix", "epoch": 3, "valid_auc": 0.7125, "hidden_units": [32, 32], "extra": {"seed": 4}}
    path = tmp_path / "nested" / "model.pt"

    save_checkpoint(model, path, metadata)
    state, loaded_metadata = load_checkpoint(path)
    raw = torch.load(path, map_location="cpu", weights_only=True)

    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]
    assert loaded_metadata == metadata
    assert raw["metadata"] == metadata
    assert set(state) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(state[key], value), key
        assert torch.equal(raw["state_dict"][key], value), key

    restored = new_model(criteo_dataset, "dcn_mix", seed=5)
    restored.load_state_dict(state)
    x = torch.from_numpy(np.asarray(criteo_dataset.test.x[:64]).astype(np.int64))
    with torch.no_grad():
        assert torch.equal(restored.eval()(x), model.eval()(x))


def test_checkpoint_without_metadata(criteo_dataset, tmp_path):
    model = new_model(criteo_dataset, "deepfm")
    save_checkpoint(model, tmp_path / "model.pt")

    state, metadata = load_checkpoint(tmp_path / "model.pt")

    assert metadata == {}
    assert torch.equal(state["embedding.weight"], model.embedding.weight.detach())


def test_load_missing_checkpoint_raises(tmp_path):
    missing = tmp_path / "absent.pt"

    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(missing)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path)


class _Opaque:
    """A plain class, which loading with weights_only=True must reject."""


@pytest.mark.parametrize(
    "kind", ["text", "empty", "pickle", "no_state_dict", "tensor", "state_dict_not_dict", "non_tensor_weight", "metadata_list"]
)
def test_load_non_checkpoint_raises(tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_text("label,I1,I2\n1,2,3\n", encoding="utf-8")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"state_dict": _Opaque()}, protocol=2))
    elif kind == "no_state_dict":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "state_dict_not_dict":
        torch.save({"state_dict": torch.zeros(3), "metadata": {}}, path)
    elif kind == "non_tensor_weight":
        torch.save({"state_dict": {"embedding.weight": [0.0, 1.0]}, "metadata": {}}, path)
    else:
        torch.save({"state_dict": {"embedding.weight": torch.zeros(2, 2)}, "metadata": [1, 2]}, path)

    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value)


def test_train_logloss_is_mean_bce(criteo_dataset):
    # One epoch at learning rate 0 leaves the weights unchanged, so the reported training log loss
    # must equal the log loss of the untouched model on the same rows.
    train = criteo_dataset.train.subset(np.arange(1500))
    model = new_model(criteo_dataset, "deepfm")
    expected = Trainer(model).evaluate(train).logloss
    trainer = Trainer(model, TrainOptions(batch_size=256, epochs=1, learning_rate=0.0, patience=0))

    result = trainer.fit(train, progress=False)

    assert result.history["train_logloss"].iloc[0] == pytest.approx(expected, rel=1e-5)
    assert not math.isnan(expected)
