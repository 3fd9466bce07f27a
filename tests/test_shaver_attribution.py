"""Shapley attribution of embedding parameters against brute-force references.

The references enumerate every coalition of a tiny model in float64. In the full game the players are
the single parameters ``E[i, c]``, and in the field-column game they are the columns ``(j, c)`` of a
sample's field embeddings. Removing a player replaces it by the placeholder of its field and column.
Theorem 4.3 of Tran et al., "Shaver" (WWW 2025) states that both games give parameter ``(i, c)`` the
value of player ``(j, c)`` when ``i`` is the sample's feature in field ``j``, and 0 to inactive features.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedshaver.data.dataset import EncodedSplit
from fedshaver.errors import CheckpointError
from fedshaver.models.dcn_mix import DCNMix
from fedshaver.models.deepfm import DeepFM
from fedshaver.shaver.attribution import Attribution, estimate_shapley
from fedshaver.shaver.paths import path_inputs, player_ranks, removal_path_logits
from fedshaver.shaver.placeholders import Placeholder, codebook_placeholder, zero_placeholder

# Tiny game: 3 fields of 2 features each, d = 2, so the full game has 12 players (4096 coalitions)
# and the field-column game 6 players (64 coalitions).
TINY_OFFSETS = np.array([0, 2, 4, 6])
TINY_FIELD = np.repeat(np.arange(3), np.diff(TINY_OFFSETS))
TINY_EMBED_DIM = 2
# Feature 5 (second feature of field 2) never occurs, so its parameters must get value 0.
TINY_X = np.array([[0, 2, 4], [1, 3, 4], [0, 3, 4], [1, 2, 4]], dtype=np.int32)
TINY_Y = np.array([1.0, 0.0, 0.0, 1.0], dtype=np.float32)
TINY_FREQUENCIES = np.array([3, 1, 2, 5, 4, 1])


def randomize_(model: torch.nn.Module, seed: int, scale: float = 0.7) -> torch.nn.Module:
    """Overwrite every parameter with seeded normal values, so no term of the head is trivial."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model.eval()


def tiny_model(backbone: str) -> torch.nn.Module:
    if backbone == "deepfm":
        model = DeepFM(6, 3, embed_dim=TINY_EMBED_DIM, hidden_units=(4,), first_order=True)
    else:
        model = DCNMix(6, 3, embed_dim=TINY_EMBED_DIM, cross_layers=2, num_experts=2, rank=2, hidden_units=(4,))
    return randomize_(model, seed=11 if backbone == "deepfm" else 12)


def tiny_placeholder(model: torch.nn.Module, kind: str) -> Placeholder:
    if kind == "zero":
        return zero_placeholder(3, TINY_EMBED_DIM)
    return codebook_placeholder(model.embedding_table().detach(), TINY_FIELD, TINY_FREQUENCIES)


def subset_masks(num_players: int) -> tuple[np.ndarray, np.ndarray]:
    """Return every coalition as a bit mask and as a boolean row ``(2**num_players, num_players)``."""
    masks = np.arange(2**num_players)
    members = ((masks[:, None] >> np.arange(num_players)) & 1).astype(bool)
    return masks, members


def shapley_from_game(values: np.ndarray, num_players: int) -> np.ndarray:
    """Return exact Shapley values by the subset formula from ``values[mask]`` of every coalition.

    Player ``p`` gets ``sum over S without p of (v(S + p) - v(S)) / (N * binom(N - 1, |S|))``.
    """
    masks, members = subset_masks(num_players)
    sizes = members.sum(axis=1)
    weights = np.array([1.0 / (num_players * math.comb(num_players - 1, int(k))) for k in range(num_players)])
    shapley = np.zeros(num_players)
    for player in range(num_players):
        without = masks[~members[:, player]]
        marginal = values[without | (1 << player)] - values[without]
        shapley[player] = np.sum(weights[sizes[without]] * marginal)
    return shapley


def losses_of_inputs(model64, embeddings: torch.Tensor, x_row: np.ndarray, label: float) -> np.ndarray:
    """Return the log loss of every input ``(count, num_fields, embed_dim)``.

    Identical inputs share one head call, so coalitions that give the same input get bit-identical losses.
    """
    flat = embeddings.reshape(embeddings.shape[0], -1)
    unique, inverse = torch.unique(flat, dim=0, return_inverse=True)
    ids = torch.as_tensor(x_row, dtype=torch.long).expand(unique.shape[0], -1)
    with torch.no_grad():
        logits = model64.head(unique.view(-1, *embeddings.shape[1:]), ids)
    losses = F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label), reduction="none")
    return losses[inverse].numpy()


def full_game_shapley(model64, placeholder64: torch.Tensor, x_row: np.ndarray, label: float) -> np.ndarray:
    """Return the exact local Shapley value of every parameter ``(n, d)``, each ``E[i, c]`` one player."""
    table = model64.embedding_table().detach()
    num_features, embed_dim = table.shape
    num_players = num_features * embed_dim
    _, members = subset_masks(num_players)
    removed = torch.from_numpy(members).view(-1, num_features, embed_dim)
    tables = torch.where(removed, placeholder64[torch.from_numpy(TINY_FIELD)], table)
    losses = losses_of_inputs(model64, tables[:, torch.as_tensor(x_row, dtype=torch.long)], x_row, label)
    return shapley_from_game(losses - losses[0], num_players).reshape(num_features, embed_dim)


def field_game_shapley(model64, placeholder64: torch.Tensor, x_row: np.ndarray, label: float) -> np.ndarray:
    """Return the exact local Shapley value of every field-column player ``(m, d)`` of one sample."""
    embeddings = model64.embed(torch.as_tensor(x_row, dtype=torch.long)[None]).detach()[0]
    num_fields, embed_dim = embeddings.shape
    num_players = num_fields * embed_dim
    _, members = subset_masks(num_players)
    removed = torch.from_numpy(members).view(-1, num_fields, embed_dim)
    inputs = torch.where(removed, placeholder64, embeddings)
    losses = losses_of_inputs(model64, inputs, x_row, label)
    return shapley_from_game(losses - losses[0], num_players).reshape(num_fields, embed_dim)


def float64_copy(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).double().eval()


def split_of(x: np.ndarray, y: np.ndarray) -> EncodedSplit:
    return EncodedSplit(x=np.asarray(x, dtype=np.int32), y=np.asarray(y, dtype=np.float32))


# --- the reference itself -----------------------------------------------------------------------


def test_reference_shapley_known_games():
    num_players = 4
    masks, members = subset_masks(num_players)

    weights = np.array([0.5, -1.0, 2.0, 3.5])
    additive = members.astype(float) @ weights
    np.testing.assert_allclose(shapley_from_game(additive, num_players), weights, atol=1e-12)

    # Unanimity game of players {1, 3}: each of them gets 1/2, the others 0.
    unanimity = (members[:, 1] & members[:, 3]).astype(float)
    np.testing.assert_allclose(shapley_from_game(unanimity, num_players), [0.0, 0.5, 0.0, 0.5], atol=1e-12)

    # Symmetric game |S|^2: by symmetry and efficiency every player gets 16 / 4.
    squares = members.sum(axis=1).astype(float) ** 2
    np.testing.assert_allclose(shapley_from_game(squares, num_players), [4.0] * 4, atol=1e-12)
    assert masks[-1] == 2**num_players - 1


# --- parameter game against field-column game, and convergence of the estimator ---------------------


@pytest.mark.parametrize("placeholder_kind", ["zero", "codebook"])
@pytest.mark.parametrize("backbone", ["deepfm", "dcn_mix"])
def test_parameter_game_equals_field_game(backbone, placeholder_kind):
    model = tiny_model(backbone)
    model64 = float64_copy(model)
    placeholder64 = tiny_placeholder(model, placeholder_kind).values.double()
    if placeholder_kind == "codebook":
        assert placeholder64.abs().min() > 0

    for x_row, label in zip(TINY_X, TINY_Y):
        full = full_game_shapley(model64, placeholder64, x_row, float(label))
        field = field_game_shapley(model64, placeholder64, x_row, float(label))
        assert np.abs(field).max() > 1e-3
        for feature in range(6):
            if feature in x_row:
                field_index = int(TINY_FIELD[feature])
                np.testing.assert_allclose(full[feature], field[field_index], rtol=1e-9, atol=1e-12)
            else:
                assert np.all(full[feature] == 0.0), f"inactive feature {feature} has values {full[feature]}"


@pytest.mark.parametrize("placeholder_kind", ["zero", "codebook"])
@pytest.mark.parametrize("backbone", ["deepfm", "dcn_mix"])
def test_estimator_converges_to_exact_values(backbone, placeholder_kind):
    model = tiny_model(backbone)
    placeholder = tiny_placeholder(model, placeholder_kind)
    model64 = float64_copy(model)
    placeholder64 = placeholder.values.double()
    exact = np.mean(
        [full_game_shapley(model64, placeholder64, x_row, float(label)) for x_row, label in zip(TINY_X, TINY_Y)],
        axis=0,
    )

    # 25 copies of each sample and 80 passes give 2000 permutations per sample in only 80 head calls.
    # Copies leave the global value (the mean over samples) unchanged.
    copies, passes = 25, 80
    data = split_of(np.repeat(TINY_X, copies, axis=0), np.repeat(TINY_Y, copies))
    attribution = estimate_shapley(
        model, data, placeholder, batch_size=len(data), passes=passes, seed=3, progress=False
    )

    assert attribution.samples == len(TINY_X) * copies * passes
    assert attribution.stop_reason == "passes"
    assert np.abs(exact).max() > 0.01
    active = attribution.feature_counts > 0
    # The standard errors must be small next to the values, or the comparison below proves nothing.
    assert attribution.std_errors[active].max() < 0.1 * np.abs(exact).max()
    error = np.abs(attribution.values - exact)
    # 5 standard errors plus a float32 floor: the estimator evaluates the model in float32.
    allowed = 5.0 * attribution.std_errors + 1e-5
    worst = np.unravel_index(np.argmax(error - allowed), error.shape)
    assert np.all(error <= allowed), (
        f"parameter {worst}: estimate {attribution.values[worst]:.6f}, exact {exact[worst]:.6f}, "
        f"standard error {attribution.std_errors[worst]:.2e}"
    )
    assert np.all(attribution.values[5] == 0.0)
    assert np.all(attribution.std_errors[5] == 0.0)


# --- efficiency, zero values, counts and seeding -------------------------------------------------------


@pytest.mark.parametrize("placeholder_kind", ["zero", "codebook"])
@pytest.mark.parametrize("backbone", ["deepfm", "dcn_mix"])
def test_contributions_sum_to_loss_change(backbone, placeholder_kind):
    model = tiny_model(backbone)
    placeholder = tiny_placeholder(model, placeholder_kind)
    model64 = float64_copy(model)

    for row in range(len(TINY_X)):
        x_row = TINY_X[row : row + 1]
        attribution = estimate_shapley(
            model, split_of(x_row, TINY_Y[row : row + 1]), placeholder, passes=1, seed=row, progress=False
        )
        ids = torch.as_tensor(x_row, dtype=torch.long)
        embeddings = model64.embed(ids).detach()
        with torch.no_grad():
            logits = model64.head(torch.cat([embeddings, placeholder.values.double()[None]]), ids.repeat(2, 1))
        label = torch.full((2,), float(TINY_Y[row]), dtype=torch.float64)
        kept_loss, removed_loss = F.binary_cross_entropy_with_logits(logits, label, reduction="none").tolist()

        active = np.zeros(6, dtype=bool)
        active[x_row[0]] = True
        credited = float((attribution.values * attribution.samples)[active].sum())
        assert attribution.samples == 1
        assert credited == pytest.approx(removed_loss - kept_loss, abs=1e-5)
        assert np.all(attribution.values[~active] == 0.0)
        assert np.all(attribution.std_errors[~active] == 0.0)
        # A single sample gives no variance estimate.
        assert np.all(np.isinf(attribution.std_errors[active]))


def test_passes_draw_fresh_permutations():
    model = tiny_model("dcn_mix")
    placeholder = tiny_placeholder(model, "codebook")
    x_row, label = TINY_X[:1], TINY_Y[:1]
    attribution = estimate_shapley(model, split_of(x_row, label), placeholder, passes=20, seed=0, progress=False)

    active = np.zeros(6, dtype=bool)
    active[x_row[0]] = True
    assert attribution.samples == 20
    # Each pass credits the same total, but a new order splits it differently among the players.
    single = estimate_shapley(model, split_of(x_row, label), placeholder, passes=1, seed=0, progress=False)
    assert float(attribution.values[active].sum()) == pytest.approx(float(single.values[active].sum()), abs=1e-5)
    assert np.all(attribution.std_errors[active] > 0.0)
    assert np.all(attribution.std_errors[~active] == 0.0)


def synthetic_split(rows: int, seed: int, num_fields: int = 3, features_per_field: int = 5) -> EncodedSplit:
    """Return random ids with one feature per field. The last feature of every field never occurs."""
    rng = np.random.default_rng(seed)
    local = rng.integers(0, features_per_field - 1, size=(rows, num_fields))
    x = local + np.arange(num_fields) * features_per_field
    y = (rng.random(rows) < 0.4).astype(np.float32)
    return split_of(x, y)


def synthetic_model(seed: int = 5) -> DeepFM:
    model = DeepFM(15, 3, embed_dim=2, hidden_units=(4,), first_order=True)
    return randomize_(model, seed=seed)


def test_absent_features_get_zero_and_counts_match():
    data = synthetic_split(300, seed=1)
    model = synthetic_model()
    attribution = estimate_shapley(model, data, zero_placeholder(3, 2), batch_size=32, passes=2, seed=0, progress=False)

    counts = np.bincount(data.x.reshape(-1), minlength=15)
    np.testing.assert_array_equal(attribution.feature_counts, 2 * counts)
    absent = counts == 0
    assert absent.sum() == 3
    assert np.all(attribution.values[absent] == 0.0)
    assert np.all(attribution.std_errors[absent] == 0.0)
    assert np.all(attribution.std_errors[~absent] > 0.0)
    assert attribution.values.shape == (15, 2)
    assert attribution.values.dtype == np.float64


def test_seed_controls_permutations():
    data = synthetic_split(100, seed=2)
    model = synthetic_model()
    placeholder = zero_placeholder(3, 2)

    def run(seed: int) -> np.ndarray:
        return estimate_shapley(model, data, placeholder, batch_size=16, seed=seed, progress=False).values

    np.testing.assert_array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))


def test_estimator_uses_eval_mode_and_restores_training():
    data = synthetic_split(64, seed=3)
    model = DeepFM(15, 3, embed_dim=2, hidden_units=(8,), dropout=0.5)
    randomize_(model, seed=4)
    before = copy.deepcopy(model.state_dict())
    placeholder = zero_placeholder(3, 2)

    model.eval()
    reference = estimate_shapley(model, data, placeholder, seed=1, progress=False).values
    model.train()
    in_training = estimate_shapley(model, data, placeholder, seed=1, progress=False).values

    np.testing.assert_array_equal(in_training, reference)
    assert model.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_estimator_rejects_invalid_arguments():
    model = synthetic_model()
    data = synthetic_split(10, seed=0)
    with pytest.raises(ValueError, match="empty"):
        estimate_shapley(model, split_of(np.zeros((0, 3)), np.zeros(0)), zero_placeholder(3, 2), progress=False)
    with pytest.raises(ValueError, match="shape"):
        estimate_shapley(model, data, zero_placeholder(4, 2), progress=False)
    with pytest.raises(ValueError, match="positive"):
        estimate_shapley(model, data, zero_placeholder(3, 2), batch_size=0, progress=False)
    with pytest.raises(ValueError, match="positive"):
        estimate_shapley(model, data, zero_placeholder(3, 2), passes=0, progress=False)


# --- stopping rules ---------------------------------------------------------------------------------


def test_max_samples_stops_early():
    data = synthetic_split(50, seed=4)
    attribution = estimate_shapley(
        synthetic_model(), data, zero_placeholder(3, 2), batch_size=8, max_samples=20, passes=3, progress=False
    )
    assert attribution.samples == 20
    assert attribution.stop_reason == "max_samples"
    assert attribution.feature_counts.sum() == 20 * 3


def test_passes_bound_samples():
    data = synthetic_split(10, seed=5)
    model = synthetic_model()
    attribution = estimate_shapley(model, data, zero_placeholder(3, 2), batch_size=4, passes=3, progress=False)
    assert attribution.samples == 30
    assert attribution.stop_reason == "passes"
    np.testing.assert_array_equal(attribution.feature_counts, 3 * np.bincount(data.x.reshape(-1), minlength=15))

    # A sample limit above what the passes provide leaves the passes as the binding rule.
    capped = estimate_shapley(
        model, data, zero_placeholder(3, 2), batch_size=4, passes=3, max_samples=1000, progress=False
    )
    assert capped.samples == 30
    assert capped.stop_reason == "passes"


def test_threshold_stops_at_first_converged_check():
    data = synthetic_split(2000, seed=6)
    model = synthetic_model()
    placeholder = zero_placeholder(3, 2)
    threshold, check_every = 0.2, 64
    attribution = estimate_shapley(
        model, data, placeholder, batch_size=16, threshold=threshold, check_every=check_every, seed=9, progress=False
    )

    assert attribution.stop_reason == "threshold"
    assert attribution.samples < len(data)
    assert attribution.samples % check_every == 0
    assert attribution.convergence_ratio < threshold
    # The same seed draws the same prefix of samples and orders, so the previous check had not converged.
    previous = estimate_shapley(
        model, data, placeholder, batch_size=16, max_samples=attribution.samples - check_every, seed=9, progress=False
    )
    assert previous.convergence_ratio >= threshold

    expected_ratio = attribution.std_errors.max() / (attribution.values.max() - attribution.values.min())
    assert attribution.convergence_ratio == pytest.approx(expected_ratio, rel=1e-12)


# --- removal paths -------------------------------------------------------------------------------


def test_path_inputs_by_hand():
    embeddings = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    placeholder = torch.tensor([[10.0, 20.0], [30.0, 40.0]])
    order = torch.tensor([[2, 0, 3, 1]])

    np.testing.assert_array_equal(player_ranks(order).numpy(), [[1, 3, 0, 2]])
    expected = [
        [1, 2, 3, 4],
        [1, 2, 30, 4],
        [10, 2, 30, 4],
        [10, 2, 30, 40],
        [10, 20, 30, 40],
    ]
    np.testing.assert_array_equal(path_inputs(embeddings, placeholder, order)[0].numpy(), expected)


def realistic_deepfm(seed: int = 21) -> tuple[DeepFM, np.ndarray]:
    """Return a DeepFM at the Criteo shape (39 fields, d = 16) with 20 features per field."""
    num_fields, per_field = 39, 20
    torch.manual_seed(seed)
    model = DeepFM(num_fields * per_field, num_fields, embed_dim=16, hidden_units=(400, 400, 400)).eval()
    with torch.no_grad():
        model.embedding.weight.normal_(0.0, 0.1)
        model.first_order.weight.normal_(0.0, 0.1)
    field = np.repeat(np.arange(num_fields), per_field)
    return model, field


def realistic_ids(model: DeepFM, rows: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    per_field = model.num_features // model.num_fields
    local = rng.integers(0, per_field, size=(rows, model.num_fields))
    return torch.as_tensor(local + np.arange(model.num_fields) * per_field)


@pytest.mark.parametrize("placeholder_kind", ["zero", "codebook"])
def test_structured_deepfm_paths_match_generic(placeholder_kind):
    model, field = realistic_deepfm()
    if placeholder_kind == "zero":
        placeholder = zero_placeholder(39, 16).values
    else:
        placeholder = codebook_placeholder(model.embedding_table().detach(), field, np.arange(780) % 7 + 1).values
    x = realistic_ids(model, rows=6, seed=0)
    order = torch.rand(6, 39 * 16, generator=torch.Generator().manual_seed(0)).argsort(dim=1)

    with torch.no_grad():
        embeddings = model.embed(x)
        structured = removal_path_logits(model, embeddings, placeholder, order, x, structured=True)
        generic = removal_path_logits(model, embeddings, placeholder, order, x, structured=False)
        model64 = float64_copy(model)
        reference = removal_path_logits(model64, model64.embed(x), placeholder.double(), order, x, structured=False)

    assert structured.shape == (6, 39 * 16 + 1)
    assert float(reference.std()) > 0.01
    # Logits reach about 2.7 here, and float32 evaluation is accurate to about 1e-6 of them.
    np.testing.assert_allclose(structured.numpy(), generic.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(structured.double().numpy(), reference.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(generic.double().numpy(), reference.numpy(), rtol=0, atol=1e-5)
    # Step 0 is the plain forward pass and the last step has every player replaced.
    with torch.no_grad():
        full = model.head(placeholder.expand(6, 39, 16), x)
        np.testing.assert_allclose(structured[:, 0].numpy(), model(x).numpy(), atol=1e-5)
        np.testing.assert_allclose(structured[:, -1].numpy(), full.numpy(), atol=1e-5)


@pytest.mark.parametrize("hidden_units", [(8,), (8, 4), ()])
def test_structured_paths_without_first_order(hidden_units):
    model = randomize_(DeepFM(15, 3, embed_dim=4, hidden_units=hidden_units, first_order=False), seed=8, scale=0.5)
    x = torch.tensor([[0, 5, 10], [4, 9, 14], [2, 7, 11]])
    placeholder = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    order = torch.rand(3, 12, generator=torch.Generator().manual_seed(2)).argsort(dim=1)

    with torch.no_grad():
        embeddings = model.embed(x)
        structured = removal_path_logits(model, embeddings, placeholder, order, x, structured=True)
        inputs = path_inputs(embeddings, placeholder, order).view(3, 13, 3, 4)
        by_step = torch.stack([model.head(inputs[:, step], x) for step in range(13)], dim=1)

    np.testing.assert_allclose(structured.numpy(), by_step.numpy(), rtol=0, atol=1e-5)


def test_structured_and_generic_estimates_agree():
    model, field = realistic_deepfm(seed=22)
    x = realistic_ids(model, rows=12, seed=1).numpy()
    data = split_of(x, np.arange(12) % 2)
    placeholder = codebook_placeholder(model.embedding_table().detach(), field, np.ones(780))

    structured = estimate_shapley(model, data, placeholder, batch_size=6, seed=4, progress=False)
    generic = estimate_shapley(model, data, placeholder, batch_size=6, seed=4, progress=False, structured=False)

    assert np.abs(generic.values).max() > 1e-4
    np.testing.assert_allclose(structured.values, generic.values, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(structured.feature_counts, generic.feature_counts)


def test_efficiency_at_criteo_shape():
    model, field = realistic_deepfm(seed=23)
    x = realistic_ids(model, rows=1, seed=2)
    placeholder = codebook_placeholder(model.embedding_table().detach(), field, np.arange(780) % 5)
    attribution = estimate_shapley(model, split_of(x.numpy(), [1.0]), placeholder, passes=1, progress=False)

    model64 = float64_copy(model)
    with torch.no_grad():
        logits = model64.head(torch.cat([model64.embed(x), placeholder.values.double()[None]]), x.repeat(2, 1))
    labels = torch.ones(2, dtype=torch.float64)
    kept_loss, removed_loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").tolist()
    assert float(attribution.values.sum()) == pytest.approx(removed_loss - kept_loss, abs=1e-4)


# --- saving and loading --------------------------------------------------------------------------


def small_attribution() -> Attribution:
    data = synthetic_split(40, seed=7)
    model = synthetic_model()
    placeholder = codebook_placeholder(model.embedding_table().detach(), np.repeat(np.arange(3), 5), np.ones(15))
    return estimate_shapley(model, data, placeholder, batch_size=8, progress=False)


def test_attribution_save_load_round_trip(tmp_path):
    attribution = small_attribution()
    path = tmp_path / "nested" / "attribution.npz"
    attribution.save(path)

    with np.load(path, allow_pickle=False) as archive:
        assert {"values", "std_errors", "feature_counts", "placeholder_values", "metadata"} <= set(archive.files)
        np.testing.assert_array_equal(archive["values"], attribution.values)

    loaded = Attribution.load(path)
    np.testing.assert_array_equal(loaded.values, attribution.values)
    np.testing.assert_array_equal(loaded.std_errors, attribution.std_errors)
    np.testing.assert_array_equal(loaded.feature_counts, attribution.feature_counts)
    assert torch.equal(loaded.placeholder.values, attribution.placeholder.values)
    assert loaded.placeholder.name == "codebook"
    assert loaded.samples == attribution.samples
    assert loaded.convergence_ratio == attribution.convergence_ratio
    assert loaded.seconds == attribution.seconds
    assert loaded.stop_reason == attribution.stop_reason
    assert [p.name for p in tmp_path.joinpath("nested").iterdir()] == ["attribution.npz"]

    # A name without the .npz suffix is kept as given.
    plain = tmp_path / "attribution"
    attribution.save(plain)
    assert plain.is_file()
    np.testing.assert_array_equal(Attribution.load(plain).values, attribution.values)


def test_attribution_load_rejects_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Attribution.load(tmp_path / "missing.npz")

    good = tmp_path / "good.npz"
    small_attribution().save(good)
    raw = good.read_bytes()

    bad_files = {
        "garbage.npz": b"not an attribution file" * 8,
        "empty.npz": b"",
        "truncated.npz": raw[: len(raw) // 2],
        # One flipped byte inside the stored values: the zip structure is intact but the CRC fails.
        "flipped_byte.npz": raw[:250] + bytes([raw[250] ^ 0xFF]) + raw[251:],
    }
    for name, content in bad_files.items():
        (tmp_path / name).write_bytes(content)
    np.savez(tmp_path / "no_values.npz", metadata=np.array("{}"))
    with open(tmp_path / "plain_array.npz", "wb") as handle:
        np.save(handle, np.zeros(3))

    for name in [*bad_files, "no_values.npz", "plain_array.npz"]:
        with pytest.raises(CheckpointError):
            Attribution.load(tmp_path / name)
