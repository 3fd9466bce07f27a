"""Device profiles and tier assignment."""

from __future__ import annotations

from collections import Counter

import pytest
import yaml

from fedshaver.devices import assign_tiers, load_device_profile
from fedshaver.errors import DeviceProfileError
from conftest import CONFIGS


def write_profile(tmp_path, tiers) -> str:
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump({"tiers": tiers}))
    return path


def test_default_profile_tiers():
    profile = load_device_profile(CONFIGS / "devices" / "default.yaml")
    assert [t.name for t in profile.tiers] == ["watch", "phone", "tablet", "laptop"]
    assert profile.tier("watch").budget.bytes == 8192
    assert profile.tier("tablet").budget.sparsity == 0.5


def test_shares_split_ten_clients():
    profile = load_device_profile(CONFIGS / "devices" / "default.yaml")
    counts = Counter(assign_tiers(profile, 10, seed=0).values())
    # Shares 0.2 / 0.3 / 0.3 / 0.2 of 10 clients.
    assert counts == {"watch": 2, "phone": 3, "tablet": 3, "laptop": 2}


def test_assignment_follows_seed():
    profile = load_device_profile(CONFIGS / "devices" / "default.yaml")
    assert assign_tiers(profile, 10, seed=4) == assign_tiers(profile, 10, seed=4)
    assert assign_tiers(profile, 10, seed=4) != assign_tiers(profile, 10, seed=5)


def test_largest_remainder_breaks_ties_by_order(tmp_path):
    profile = load_device_profile(write_profile(tmp_path, [
        {"name": "a", "sparsity": 0.9, "share": 0.5},
        {"name": "b", "sparsity": 0.5, "share": 0.5},
    ]))  # fmt: skip
    # 3 clients at 1.5 each: both remainders are 0.5, so the earlier tier gets the extra client.
    assert Counter(assign_tiers(profile, 3, seed=0).values()) == {"a": 2, "b": 1}


def test_explicit_clients_come_first(tmp_path):
    profile = load_device_profile(write_profile(tmp_path, [
        {"name": "server", "sparsity": 0.0, "clients": [0, 1]},
        {"name": "watch", "budget_bytes": 9000, "share": 1.0},
    ]))  # fmt: skip
    assignment = assign_tiers(profile, 5, seed=0)
    assert assignment[0] == "server"
    assert assignment[1] == "server"
    assert [assignment[c] for c in (2, 3, 4)] == ["watch"] * 3


@pytest.mark.parametrize(
    ("tiers", "message"),
    [
        ([{"name": "a", "sparsity": 0.5, "budget_bytes": 10, "share": 1.0}], "exactly one of"),
        ([{"name": "a", "share": 1.0}], "exactly one of"),
        ([{"name": "a", "sparsity": 1.5, "share": 1.0}], "sparsity rate must be in \\[0, 1\\]"),
        ([{"name": "a", "budget_bytes": -4, "share": 1.0}], "positive integer"),
        ([{"name": "a", "sparsity": 0.5, "share": 0.6}, {"name": "b", "sparsity": 0.1, "share": 0.6}], "sum to 1"),
        ([{"name": "a", "sparsity": 0.5}], "share"),
        ([{"name": "a", "sparsity": 0.5, "share": 1.0, "memory": 3}], "unknown key"),
        ([{"name": "a", "sparsity": 0.5, "clients": [1]}, {"name": "b", "sparsity": 0.1, "clients": [1]}], "more than one tier"),
        ([{"name": "a", "sparsity": 0.5, "share": 0.5}, {"name": "a", "sparsity": 0.1, "share": 0.5}], "unique"),
    ],
)
def test_invalid_profiles_are_rejected(tmp_path, tiers, message):
    with pytest.raises(DeviceProfileError, match=message):
        load_device_profile(write_profile(tmp_path, tiers))


def test_client_id_out_of_range(tmp_path):
    profile = load_device_profile(write_profile(tmp_path, [{"name": "a", "sparsity": 0.5, "clients": [7]}]))
    with pytest.raises(DeviceProfileError, match="lists client 7, but client ids are 0..3"):
        assign_tiers(profile, 4, seed=0)


def test_unassigned_clients_without_shares(tmp_path):
    profile = load_device_profile(write_profile(tmp_path, [{"name": "a", "sparsity": 0.5, "clients": [0]}]))
    with pytest.raises(DeviceProfileError, match="clients \\[1, 2\\] have no tier"):
        assign_tiers(profile, 3, seed=0)


def test_missing_and_malformed_profile_files(tmp_path):
    with pytest.raises(DeviceProfileError, match="not found"):
        load_device_profile(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("tiers: [name: a\n")
    with pytest.raises(DeviceProfileError, match="invalid YAML"):
        load_device_profile(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("tiers: []\n")
    with pytest.raises(DeviceProfileError, match="no tiers"):
        load_device_profile(empty)
