"""Backbones: shapes, gradient steps, the DCN-Mix cross layer and the DeepFM FM term against explicit formulas."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from fedshaver.models import DCNMix, DeepFM, build_model
from fedshaver.models.base import MLP
from fedshaver.models.dcn_mix import CrossLayerMix
from fedshaver.models.deepfm import fm_second_order
from fedshaver.training import Trainer, TrainOptions

NUM_FEATURES = 60
NUM_FIELDS = 5
EMBED_DIM = 4
BATCH = 7

SMALL_OPTIONS = {
    "deepfm": {"embed_dim": EMBED_DIM, "hidden_units": [16, 8]},
    "dcn_mix": {"embed_dim": EMBED_DIM, "hidden_units": [16, 8], "cross_layers": 2, "num_experts": 3, "rank": 5},
}


def small_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(name, NUM_FEATURES, NUM_FIELDS, **SMALL_OPTIONS[name])


def random_ids(batch: int, seed: int = 1, high: int = NUM_FEATURES) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (batch, NUM_FIELDS), generator=generator)


@pytest.mark.parametrize("name", ["deepfm", "dcn_mix"])
def test_backbone_output_shapes(name):
    model = small_model(name)
    x = random_ids(BATCH)

    embeddings = model.embed(x)
    assert embeddings.shape == (BATCH, NUM_FIELDS, EMBED_DIM)
    assert torch.equal(embeddings, model.embedding.weight[x])
    assert model.head(embeddings, x).shape == (BATCH,)
    assert model(x).shape == (BATCH,)
    assert torch.equal(model(x), model.head(embeddings, x))
    assert model.embedding_table().shape == (NUM_FEATURES, EMBED_DIM)


@pytest.mark.parametrize("name", ["deepfm", "dcn_mix"])
def test_gradient_step_updates_used_rows_only(name):
    model = small_model(name)
    # The batch uses ids below 30 only, so rows 30 and above of each per-feature table stay unused.
    x = random_ids(64, seed=3, high=30)
    y = (torch.rand(64, generator=torch.Generator().manual_seed(4)) < 0.3).float()
    used = torch.unique(x)
    unused = torch.tensor(sorted(set(range(NUM_FEATURES)) - set(used.tolist())))
    assert len(unused) >= 30

    trainer = Trainer(model, TrainOptions(learning_rate=1e-3, weight_decay=0.0))
    optimizer = trainer.make_optimizer()
    table_before = model.embedding.weight.detach().clone()
    first_order_before = model.first_order.weight.detach().clone() if name == "deepfm" else None

    loss_before = F.binary_cross_entropy_with_logits(model(x), y)
    optimizer.zero_grad()
    loss_before.backward()
    optimizer.step()
    with torch.no_grad():
        loss_after = F.binary_cross_entropy_with_logits(model(x), y)

    assert float(loss_after) < float(loss_before.detach())
    table_after = model.embedding.weight.detach()
    changed_rows = (table_after != table_before).any(dim=1)
    assert bool(changed_rows[used].all())
    assert not bool(changed_rows[unused].any())
    if name == "deepfm":
        first_order_changed = (model.first_order.weight.detach() != first_order_before).any(dim=1)
        assert bool(first_order_changed[used].all())
        assert not bool(first_order_changed[unused].any())


def cross_layer_by_expert(layer: CrossLayerMix, x0: torch.Tensor, xl: torch.Tensor) -> torch.Tensor:
    """Evaluate ``sum_i G_i(x_l) * x_0 ⊙ (U_i tanh(C_i tanh(V_i^T x_l)) + b) + x_l`` one expert at a time.

    Row-vector convention of the module: ``V_i = V[:, i, :]`` is ``(dim, rank)``, the ``C_i`` product of a
    row ``h`` is ``h @ C[i]``, and ``U_i = U[i]`` is ``(rank, dim)``.
    """
    gates = torch.softmax(xl @ layer.gate.weight.t(), dim=1)
    output = xl.clone()
    for expert in range(layer.num_experts):
        down = torch.tanh(xl @ layer.V[:, expert, :])
        middle = torch.tanh(down @ layer.C[expert])
        up = middle @ layer.U[expert]
        output = output + gates[:, expert : expert + 1] * (x0 * (up + layer.bias))
    return output


def test_cross_layer_matches_per_expert_formula():
    torch.manual_seed(5)
    dim = NUM_FIELDS * EMBED_DIM
    layer = CrossLayerMix(dim, num_experts=4, rank=6).double()
    with torch.no_grad():
        # The bias starts at zero, which would hide a misplaced bias term.
        layer.bias.normal_()
    x0 = torch.randn(BATCH, dim, dtype=torch.float64)
    xl = torch.randn(BATCH, dim, dtype=torch.float64)

    expected = cross_layer_by_expert(layer, x0, xl)
    with torch.no_grad():
        actual = layer(x0, xl)
        from_projection = layer.forward_from_projection(x0, xl, layer.project(xl), layer.gate(xl))

    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(from_projection, expected, rtol=1e-12, atol=1e-12)


def test_cross_layer_projection_is_per_expert():
    torch.manual_seed(6)
    dim = NUM_FIELDS * EMBED_DIM
    layer = CrossLayerMix(dim, num_experts=3, rank=4)
    xl = torch.randn(BATCH, dim)

    projected = layer.project(xl).detach()

    assert projected.shape == (BATCH, 3 * 4)
    for expert in range(3):
        torch.testing.assert_close(projected[:, expert * 4 : (expert + 1) * 4], (xl @ layer.V[:, expert, :]).detach())


def test_dcn_mix_head_stacks_cross_layers_then_dnn():
    model = small_model("dcn_mix").double()
    with torch.no_grad():
        for layer in model.cross:
            layer.bias.normal_()
    x = random_ids(BATCH)
    embeddings = model.embed(x).detach()

    x0 = embeddings.flatten(1)
    xl = x0
    for layer in model.cross:
        xl = cross_layer_by_expert(layer, x0, xl)
    expected = model.dnn(xl).detach()

    with torch.no_grad():
        torch.testing.assert_close(model.head(embeddings, x), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    assert len(model.cross) == SMALL_OPTIONS["dcn_mix"]["cross_layers"]


def test_fm_term_equals_pairwise_sum():
    generator = torch.Generator().manual_seed(7)
    embeddings = torch.randn(BATCH, NUM_FIELDS, EMBED_DIM, generator=generator, dtype=torch.float64)

    expected = torch.zeros(BATCH, dtype=torch.float64)
    for j, k in itertools.combinations(range(NUM_FIELDS), 2):
        expected += (embeddings[:, j] * embeddings[:, k]).sum(dim=1)

    torch.testing.assert_close(fm_second_order(embeddings), expected, rtol=1e-12, atol=1e-12)


def test_deepfm_logit_is_sum_of_its_terms():
    model = small_model("deepfm").double()
    with torch.no_grad():
        # Bias and first-order weights start at zero, so give them values the sum must include.
        model.bias.fill_(0.25)
        model.first_order.weight.normal_()
    x = random_ids(BATCH)
    embeddings = model.embed(x).detach()

    first_order = model.first_order.weight.detach()[x].sum(dim=(1, 2))
    pairwise = torch.zeros(BATCH, dtype=torch.float64)
    for j, k in itertools.combinations(range(NUM_FIELDS), 2):
        pairwise += (embeddings[:, j] * embeddings[:, k]).sum(dim=1)
    expected = 0.25 + first_order + pairwise + model.dnn(embeddings.flatten(1)).detach()

    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)


def test_deepfm_without_first_order_has_bias_only():
    torch.manual_seed(0)
    model = DeepFM(NUM_FEATURES, NUM_FIELDS, embed_dim=EMBED_DIM, hidden_units=[8], first_order=False)
    with torch.no_grad():
        model.bias.fill_(-0.5)
    x = random_ids(BATCH)

    assert model.first_order is None
    torch.testing.assert_close(model.linear_term(x), torch.full((BATCH,), -0.5))
    assert not any(key.startswith("first_order") for key in model.state_dict())


@pytest.mark.parametrize("hidden_units", [[12, 9, 5], [6]])
def test_mlp_from_first_preactivation_matches_forward(hidden_units):
    torch.manual_seed(8)
    mlp = MLP(10, hidden_units, dropout=0.3).eval()
    inputs = torch.randn(BATCH, 10)

    with torch.no_grad():
        expected = mlp(inputs)
        preactivation = mlp.hidden[0](inputs)
        preactivation_copy = preactivation.clone()
        actual = mlp.forward_from_first_preactivation(preactivation)

    assert expected.shape == (BATCH,)
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    # The ReLU is applied in place, as documented, so the argument now contains the first layer's activation.
    torch.testing.assert_close(preactivation, torch.relu(preactivation_copy))


def test_mlp_without_hidden_layers_is_linear():
    torch.manual_seed(9)
    mlp = MLP(10, [])
    inputs = torch.randn(BATCH, 10)

    expected = inputs @ mlp.output.weight[0] + mlp.output.bias
    torch.testing.assert_close(mlp(inputs), expected)


def test_build_model_rejects_unknown_name():
    with pytest.raises(ValueError, match="'wide_deep'"):
        build_model("wide_deep", NUM_FEATURES, NUM_FIELDS)


def test_build_model_routes_backbone_options():
    options = {**SMALL_OPTIONS["dcn_mix"], "first_order": False, "dropout": 0.1}

    deepfm = build_model("deepfm", NUM_FEATURES, NUM_FIELDS, **options)
    dcn = build_model("dcn_mix", NUM_FEATURES, NUM_FIELDS, **options)

    assert isinstance(deepfm, DeepFM)
    assert deepfm.first_order is None
    assert [layer.out_features for layer in deepfm.dnn.hidden] == [16, 8]
    assert isinstance(dcn, DCNMix)
    assert len(dcn.cross) == 2
    assert dcn.cross[0].num_experts == 3
    assert dcn.cross[0].rank == 5
    assert dcn.dnn.dropout.p == 0.1
    assert dcn.embedding.weight.shape == (NUM_FEATURES, EMBED_DIM)


@pytest.mark.parametrize("name", ["deepfm", "dcn_mix"])
def test_head_state_dict_excludes_embedding(name):
    model = small_model(name)

    head = model.head_state_dict()

    assert not any(key.startswith("embedding.") for key in head)
    assert set(head) == set(model.state_dict()) - {"embedding.weight"}
    assert any(key.startswith("dnn.") for key in head)
    if name == "deepfm":
        assert "first_order.weight" in head
    for key, value in head.items():
        assert torch.equal(value, model.state_dict()[key])
