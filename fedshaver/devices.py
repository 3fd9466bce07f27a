"""Device profiles: hardware tiers with embedding memory budgets, and the tier of every client.

A profile is a YAML file with a list of tiers::

    tiers:
      - name: watch
        budget_bytes: 8192      # stored embedding table, index and codebook included
        share: 0.2              # fraction of the clients
      - name: phone
        sparsity: 0.8           # or a sparsity rate instead of a byte budget
        clients: [0, 3]         # or explicit client ids

Clients named in ``clients`` get that tier. The remaining clients are shuffled with the run's seed and
split over the tiers that give a ``share``, in proportion to the shares (largest remainders), so every
client gets exactly one tier.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fedshaver.config import safe_load_yaml
from fedshaver.errors import DeviceProfileError, InfeasibleBudgetError
from fedshaver.shaver.pruning import Budget

_TIER_KEYS = {"name", "budget_bytes", "sparsity", "share", "clients", "description"}


@dataclass
class Tier:
    """One device tier.

    Attributes
    ----------
    name : str
        Tier name, e.g. ``watch``.
    budget : Budget
        Embedding memory budget, in bytes or as a sparsity rate.
    share : float or None
        Fraction of the clients not listed explicitly that get this tier.
    clients : list of int
        Client ids assigned to this tier explicitly.
    description : str
        Free text shown in tables.
    """

    name: str
    budget: Budget
    share: float | None = None
    clients: list[int] = field(default_factory=list)
    description: str = ""


@dataclass
class DeviceProfile:
    """Tiers of a device population, loaded from a profile file."""

    tiers: list[Tier]
    source: str = ""

    def tier(self, name: str) -> Tier:
        """Return the tier called ``name``."""
        for tier in self.tiers:
            if tier.name == name:
                return tier
        raise DeviceProfileError(f"{self.source}: no tier named {name!r}; tiers are {[t.name for t in self.tiers]}")

    def table(self) -> pd.DataFrame:
        """Return one row per tier: name, budget kind and value, share, explicit clients."""
        return pd.DataFrame(
            [
                {
                    "tier": t.name,
                    "budget": t.budget.label,
                    "budget_kind": t.budget.kind,
                    "budget_value": t.budget.value,
                    "share": t.share,
                    "clients": ",".join(str(c) for c in t.clients),
                }
                for t in self.tiers
            ]
        )


def _tier_from_dict(entry, index: int, origin: str) -> Tier:
    where = f"{origin}: tier {index + 1}"
    if not isinstance(entry, dict):
        raise DeviceProfileError(f"{where} must be a mapping, got {entry!r}")
    unknown = set(entry) - _TIER_KEYS
    if unknown:
        raise DeviceProfileError(f"{where} has unknown key(s) {sorted(unknown)}; valid keys are {sorted(_TIER_KEYS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise DeviceProfileError(f"{where} needs a non-empty string 'name', got {name!r}")
    where = f"{origin}: tier {name!r}"
    has_bytes, has_sparsity = "budget_bytes" in entry, "sparsity" in entry
    if has_bytes == has_sparsity:
        raise DeviceProfileError(f"{where} needs exactly one of 'budget_bytes' and 'sparsity'")
    try:
        if has_bytes:
            value = entry["budget_bytes"]
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise DeviceProfileError(f"{where}: budget_bytes must be a positive integer, got {value!r}")
            budget = Budget(bytes=value)
        else:
            value = entry["sparsity"]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DeviceProfileError(f"{where}: sparsity must be a number in [0, 1], got {value!r}")
            budget = Budget(sparsity=float(value))
    except InfeasibleBudgetError as error:
        raise DeviceProfileError(f"{where}: {error}") from None
    share = entry.get("share")
    if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1):
        raise DeviceProfileError(f"{where}: share must be a number in (0, 1], got {share!r}")
    clients = entry.get("clients", [])
    if not isinstance(clients, list) or any(isinstance(c, bool) or not isinstance(c, int) for c in clients):
        raise DeviceProfileError(f"{where}: clients must be a list of integer client ids, got {clients!r}")
    if share is None and not clients:
        raise DeviceProfileError(f"{where} needs a 'share' of the clients or an explicit 'clients' list")
    return Tier(name, budget, None if share is None else float(share), list(clients), str(entry.get("description", "")))


def load_device_profile(path: Path | str) -> DeviceProfile:
    """Load and validate a device profile file.

    Raises
    ------
    DeviceProfileError
        On a missing file, invalid YAML, unknown keys, a tier with both or neither budget kind, bad
        shares, shares that do not sum to 1, or a client id listed twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DeviceProfileError(f"device profile not found: {path}")
    try:
        document = safe_load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise DeviceProfileError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(document, dict) or set(document) != {"tiers"} or not isinstance(document["tiers"], list):
        raise DeviceProfileError(f"{path}: expected a mapping with one key 'tiers' holding a list of tiers")
    if not document["tiers"]:
        raise DeviceProfileError(f"{path}: the profile has no tiers")
    tiers = [_tier_from_dict(entry, i, str(path)) for i, entry in enumerate(document["tiers"])]
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        raise DeviceProfileError(f"{path}: tier names must be unique, got {names}")
    shares = [t.share for t in tiers if t.share is not None]
    if shares and not math.isclose(sum(shares), 1.0, abs_tol=1e-6):
        raise DeviceProfileError(f"{path}: tier shares must sum to 1, got {sum(shares):g} ({shares})")
    listed = [c for t in tiers for c in t.clients]
    duplicates = sorted({c for c in listed if listed.count(c) > 1})
    if duplicates:
        raise DeviceProfileError(f"{path}: clients {duplicates} are listed in more than one tier")
    return DeviceProfile(tiers, str(path))


def assign_tiers(profile: DeviceProfile, num_clients: int, seed: int) -> dict[int, str]:
    """Return the tier name of every client ``0 .. num_clients - 1``.

    Raises
    ------
    DeviceProfileError
        When an explicit client id is out of range, or clients remain but no tier has a share.
    """
    assignment: dict[int, str] = {}
    for tier in profile.tiers:
        for client in tier.clients:
            if not 0 <= client < num_clients:
                raise DeviceProfileError(
                    f"{profile.source}: tier {tier.name!r} lists client {client}, but client ids are 0..{num_clients - 1}"
                )
            assignment[client] = tier.name
    remaining = [c for c in range(num_clients) if c not in assignment]
    shared = [t for t in profile.tiers if t.share is not None]
    if remaining and not shared:
        raise DeviceProfileError(
            f"{profile.source}: clients {remaining} have no tier; give some tier a 'share' or list them explicitly"
        )
    if not remaining:
        return dict(sorted(assignment.items()))

    # Largest-remainder apportionment of the remaining clients over the share tiers.
    quotas = np.array([t.share for t in shared]) * len(remaining)
    counts = np.floor(quotas).astype(int)
    leftovers = len(remaining) - counts.sum()
    order = sorted(range(len(shared)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[:leftovers]:
        counts[i] += 1
    shuffled = np.random.default_rng(seed).permutation(remaining)
    start = 0
    for tier, count in zip(shared, counts):
        for client in shuffled[start : start + count]:
            assignment[int(client)] = tier.name
        start += count
    return dict(sorted(assignment.items()))
