"""Experiment configuration: YAML files with a base block and per-experiment overrides.

A config file has two top-level keys::

    base:           # settings shared by every experiment of the file
      data: {...}
      model: {...}
    experiments:    # name -> overrides, merged key by key over ``base``
      criteo_deepfm_tiny:
        train: {epochs: 1}

Every section maps to a dataclass below. Loading rejects unknown keys and values of the wrong type
with a :class:`ConfigError` that quotes the key and the file. Relative paths are resolved against the
folder of the config file, and ``${FEDSHAVER_DATA_DIR}`` expands to the data folder named by that
environment variable.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fedshaver.errors import ConfigError, DataNotFoundError
from fedshaver.shaver.methods import METHODS

DATA_DIR_VARIABLE = "FEDSHAVER_DATA_DIR"
_VARIABLE_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class DataConfig:
    """Raw data and preprocessing.

    Attributes
    ----------
    format : str
        ``criteo`` or ``avazu``.
    files : list of str
        Raw files, read in this order as one stream.
    min_count : int or None
        Tokens rarer than this in the training split map to OOV; None takes the format's default (10 for
        Criteo, 2 for Avazu, the values of the Shaver paper).
    split_fractions : list of float
        Train, validation and test fractions.
    seed : int
        Seed of the split.
    chunk_rows : int
        Lines per preprocessing chunk; bounds memory.
    on_bad_rows : str
        ``raise`` or ``skip`` (count skipped rows in the report).
    key_fields : list of str
        Raw columns whose value hashes are kept for natural client partitions.
    cache_dir : str
        Folder for prepared datasets.
    """

    format: str = "criteo"
    files: list[str] = field(default_factory=list)
    min_count: int | None = None
    split_fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    seed: int = 2025
    chunk_rows: int = 50_000
    on_bad_rows: str = "raise"
    key_fields: list[str] = field(default_factory=list)
    cache_dir: str = "cache"


@dataclass
class ModelConfig:
    """Backbone architecture.

    Attributes
    ----------
    name : str
        ``deepfm`` or ``dcn_mix``.
    embed_dim : int
        Embedding dimension ``d``.
    hidden_units : list of int
        DNN hidden layer widths.
    dropout : float
        DNN dropout rate.
    first_order : bool
        DeepFM only: keep the per-feature first-order weights.
    cross_layers, num_experts, rank : int
        DCN-Mix only: stacked cross layers, experts per layer, low rank per expert.
    """

    name: str = "deepfm"
    embed_dim: int = 16
    hidden_units: list[int] = field(default_factory=lambda: [400, 400, 400])
    dropout: float = 0.0
    first_order: bool = True
    cross_layers: int = 3
    num_experts: int = 4
    rank: int = 64


@dataclass
class TrainConfig:
    """Optimisation; see :class:`fedshaver.training.TrainOptions`. ``num_threads`` sets torch's CPU threads."""

    batch_size: int = 1024
    epochs: int = 10
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 2
    seed: int = 2025
    num_threads: int = 2


@dataclass
class ShaverConfig:
    """Attribution settings.

    Attributes
    ----------
    placeholder : str
        ``codebook`` (Shaver-Codebook) or ``zero`` (Shaver-Zero): what a removed parameter becomes
        during attribution.
    batch_size : int
        Samples whose removal paths are evaluated together.
    max_samples : int or None
        Stop after this many samples.
    threshold : float or None
        Stop once the convergence ratio (largest standard error over the value range) drops below it.
    passes : int
        Maximum passes over the attribution data; the Shaver paper uses one.
    data_fraction : float
        Fraction of the attribution data to use (0, 1].
    seed : int
        Seed of the permutations and of the data subsample.
    """

    placeholder: str = "codebook"
    batch_size: int = 8
    max_samples: int | None = None
    threshold: float | None = None
    passes: int = 1
    data_fraction: float = 1.0
    seed: int = 2025


@dataclass
class PruneConfig:
    """Methods and budgets of a pruning sweep.

    Attributes
    ----------
    methods : list of str
        Any of ``shaver_codebook``, ``shaver_zero``, ``magnitude``, ``taylor``, ``random``, ``ptq``.
    sparsity_rates : list of float
        Fractions of the ``n * d`` embedding parameters to remove.
    byte_budgets : list of int
        Embedding storage budgets in bytes (compact format, index and codebook included).
    ptq_bits : list of int
        Bit widths of post-training quantization.
    """

    methods: list[str] = field(
        default_factory=lambda: ["shaver_codebook", "shaver_zero", "magnitude", "taylor", "random", "ptq"]
    )
    sparsity_rates: list[float] = field(default_factory=lambda: [0.5, 0.8, 0.95])
    byte_budgets: list[int] = field(default_factory=list)
    ptq_bits: list[int] = field(default_factory=lambda: [16, 8, 4])


@dataclass
class FederationConfig:
    """Federated simulation.

    Attributes
    ----------
    num_clients : int
        Simulated client devices ``K``.
    rounds : int
        FedAvg rounds.
    local_epochs : int
        Local epochs per round on each sampled client.
    fraction_train : float
        Fraction of clients sampled per round.
    partitioner : str
        ``iid``, ``dirichlet`` (over the label) or ``natural`` (by ``partition_by``).
    dirichlet_alpha : float
        Concentration of the Dirichlet partitioner; smaller is more skewed.
    partition_by : str or None
        Raw column for natural partitions (must be listed in ``data.key_fields``); its value hashes
        are bucketed into ``num_clients`` groups.
    min_partition_rows : int
        Smallest acceptable number of training rows per client.
    round_timeout : float
        Seconds the server waits for the replies of one round before going on without the rest.
    device_profile : str
        Device profile file (tiers and budgets).
    client_cpus : int
        CPUs reserved per simulated client.
    finetune_epochs : int
        Local epochs of on-device fine-tuning of the received variant (0 disables it).
    finetune_learning_rate : float or None
        Adam learning rate of the fine-tuning; None uses ``train.learning_rate``.
    fail_clients : list of dict
        Fault injection for tests: entries ``{partition_id, phase, round}`` make that client raise.
    """

    num_clients: int = 10
    rounds: int = 5
    local_epochs: int = 1
    fraction_train: float = 1.0
    partitioner: str = "iid"
    dirichlet_alpha: float = 0.5
    partition_by: str | None = None
    min_partition_rows: int = 2
    round_timeout: float = 600.0
    device_profile: str = "devices/default.yaml"
    client_cpus: int = 1
    finetune_epochs: int = 0
    finetune_learning_rate: float | None = None
    fail_clients: list[dict] = field(default_factory=list)


@dataclass
class StudyConfig:
    """Settings of the research workflows under ``simulations/``.

    Attributes
    ----------
    backbones : list of str
        Backbones compared by the budget sweep (``deepfm``, ``dcn_mix``).
    modes : list of str
        ``centralized`` (central training) and/or ``federated`` (the global model of a FedAvg run).
    data_fractions : list of float
        Fractions of the server's data used for attribution in the data-fraction study.
    fixed_sparsity : list of float
        Sparsity rates evaluated at each data fraction.
    frequency_bins : int
        Number of equal-size feature-frequency bins in the frequency analysis.
    frequency_sparsity : float
        Sparsity rate of the frequency analysis.
    """

    backbones: list[str] = field(default_factory=lambda: ["deepfm", "dcn_mix"])
    modes: list[str] = field(default_factory=lambda: ["centralized"])
    data_fractions: list[float] = field(default_factory=lambda: [0.01, 0.05, 0.1, 0.25, 0.5, 1.0])
    fixed_sparsity: list[float] = field(default_factory=lambda: [0.5, 0.8, 0.95])
    frequency_bins: int = 3
    frequency_sparsity: float = 0.5


@dataclass
class OutputConfig:
    """Output location: ``run_dir`` receives one sub-folder per run."""

    run_dir: str = "runs"


@dataclass
class ExperimentConfig:
    """A complete, validated experiment configuration.

    Attributes
    ----------
    name : str
        Experiment name (the key under ``experiments``).
    source : str
        Config file it was loaded from.
    """

    name: str = "default"
    seed: int = 2025
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    shaver: ShaverConfig = field(default_factory=ShaverConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    source: str = ""

    def to_dict(self) -> dict:
        """Return the configuration as plain data (the resolved form written into run folders)."""
        return dataclasses.asdict(self)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(ExperimentConfig)}


def deep_merge(base: dict, override: dict) -> dict:
    """Return ``base`` updated with ``override``, merging nested dicts key by key."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _matches(value: Any, annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_matches(v, item_type) for v in value)
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return isinstance(value, annotation)


def _build_section(cls: type, values: Any, where: str, origin: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{origin}: {where} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{origin}: unknown key {where}.{key}; valid keys are {sorted(known)}")
        annotation = hints[key]
        if not _matches(value, annotation):
            raise ConfigError(
                f"{origin}: {where}.{key} must be {_type_name(annotation)}, got {value!r} ({type(value).__name__})"
            )
        if annotation is float or (typing.get_origin(annotation) is list and typing.get_args(annotation)[0] is float):
            value = [float(v) for v in value] if isinstance(value, list) else float(value)
        kwargs[key] = value
    return cls(**kwargs)


def build_config(values: dict, name: str = "default", origin: str = "<dict>") -> ExperimentConfig:
    """Validate a plain dict (base block already merged) into an :class:`ExperimentConfig`."""
    hints = typing.get_type_hints(ExperimentConfig)
    kwargs: dict[str, Any] = {"name": name, "source": origin}
    for key, value in values.items():
        if key not in _SECTIONS or key in ("name", "source"):
            valid = sorted(k for k in _SECTIONS if k not in ("name", "source"))
            raise ConfigError(f"{origin}: unknown section {key!r}; valid sections are {valid}")
        if key == "seed":
            if not _matches(value, int):
                raise ConfigError(f"{origin}: seed must be int, got {value!r}")
            kwargs["seed"] = value
            continue
        kwargs[key] = _build_section(hints[key], value, key, origin)
    return ExperimentConfig(**kwargs)


def expand_path(value: str, base_dir: Path | None) -> Path:
    """Expand ``${VARIABLE}`` references and resolve a relative path against ``base_dir``.

    Raises
    ------
    DataNotFoundError
        When a referenced environment variable is not set.
    """

    def substitute(match: re.Match) -> str:
        variable = match.group(1)
        hint = " (the folder of the larger real data samples)" if variable == DATA_DIR_VARIABLE else ""
        if variable not in os.environ:
            raise DataNotFoundError(f"path {value!r} needs the environment variable {variable}{hint}, which is not set")
        if not os.environ[variable].strip():
            raise DataNotFoundError(f"path {value!r} needs the environment variable {variable}{hint}, which is empty")
        return os.environ[variable]

    path = Path(_VARIABLE_PATTERN.sub(substitute, value)).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return Path(os.path.normpath(path))


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML loader that rejects a key repeated in one mapping instead of keeping the last value."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def safe_load_yaml(text: str):
    """Parse YAML with the safe loader, rejecting duplicate keys (``yaml.YAMLError`` on failure)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def available_experiments(path: Path | str) -> list[str]:
    """Return the experiment names defined in a config file."""
    return sorted(_read_yaml(Path(path)).get("experiments", {}) or {})


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        document = safe_load_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with 'base' and 'experiments'")
    unknown = set(document) - {"base", "experiments"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(unknown)}; expected 'base' and 'experiments'")
    return document


def load_config(path: Path | str, experiment: str | None = None, overrides: dict | None = None) -> ExperimentConfig:
    """Load one experiment of a YAML config file.

    Parameters
    ----------
    path : path
        Config file.
    experiment : str, optional
        Name under ``experiments``. May be omitted when the file defines exactly one experiment (or
        none, in which case the base block alone is used).
    overrides : dict, optional
        Further overrides merged last, e.g. ``{"federation": {"rounds": 1}}``.

    Raises
    ------
    ConfigError
        On a missing file, invalid YAML, an unknown experiment, section or key, or a wrong type.
    """
    path = Path(path).resolve()
    document = _read_yaml(path)
    base = document.get("base") or {}
    experiments = document.get("experiments") or {}
    if not isinstance(base, dict) or not isinstance(experiments, dict):
        raise ConfigError(f"{path}: 'base' and 'experiments' must be mappings")
    if experiment is None:
        if len(experiments) > 1:
            raise ConfigError(f"{path}: defines several experiments {sorted(experiments)}; choose one")
        experiment = next(iter(experiments), "base")
    if experiment != "base" and experiment not in experiments:
        raise ConfigError(f"{path}: unknown experiment {experiment!r}; available: {sorted(experiments)}")
    values = deep_merge(base, experiments.get(experiment) or {})
    if overrides:
        values = deep_merge(values, overrides)
    config = build_config(values, name=experiment, origin=str(path))
    validate(config)
    return config


def resolve_paths(config: ExperimentConfig) -> dict[str, Path | list[Path]]:
    """Return the config's file and folder settings as absolute paths, relative to its source file."""
    base_dir = Path(config.source).parent if config.source and config.source != "<dict>" else Path.cwd()
    return {
        "files": [expand_path(f, base_dir) for f in config.data.files],
        "cache_dir": expand_path(config.data.cache_dir, base_dir),
        "run_dir": expand_path(config.output.run_dir, base_dir),
        "device_profile": expand_path(config.federation.device_profile, base_dir),
    }


_CHOICES = {
    ("data", "format"): ("criteo", "avazu"),
    ("data", "on_bad_rows"): ("raise", "skip"),
    ("model", "name"): ("deepfm", "dcn_mix"),
    ("shaver", "placeholder"): ("codebook", "zero"),
    ("federation", "partitioner"): ("iid", "dirichlet", "natural"),
}
_POSITIVE = {
    ("data", "chunk_rows"), ("model", "embed_dim"), ("model", "num_experts"), ("model", "rank"),
    ("train", "batch_size"), ("train", "num_threads"), ("shaver", "batch_size"), ("shaver", "passes"),
    ("federation", "num_clients"), ("federation", "client_cpus"), ("federation", "min_partition_rows"),
}  # fmt: skip
_NON_NEGATIVE = {
    ("train", "epochs"), ("train", "patience"), ("model", "cross_layers"), ("federation", "rounds"),
    ("federation", "local_epochs"), ("federation", "finetune_epochs"), ("train", "weight_decay"),
}  # fmt: skip


def validate(config: ExperimentConfig) -> None:
    """Check value ranges and choices that types alone do not capture.

    Raises
    ------
    ConfigError
        Quoting the offending key, value and config file.
    """
    origin = config.source or "<config>"

    def fail(key: str, value: Any, expected: str) -> None:
        raise ConfigError(f"{origin}: {key} must be {expected}, got {value!r}")

    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in choices:
            fail(f"{section}.{key}", value, "one of " + ", ".join(choices))
    for section, key in _POSITIVE:
        value = getattr(getattr(config, section), key)
        if value <= 0:
            fail(f"{section}.{key}", value, "positive")
    for section, key in _NON_NEGATIVE:
        value = getattr(getattr(config, section), key)
        if value < 0:
            fail(f"{section}.{key}", value, "zero or positive")
    if config.data.min_count is not None and config.data.min_count < 1:
        fail("data.min_count", config.data.min_count, "at least 1")
    if any(h <= 0 for h in config.model.hidden_units):
        fail("model.hidden_units", config.model.hidden_units, "a list of positive widths")
    if not 0.0 <= config.model.dropout < 1.0:
        fail("model.dropout", config.model.dropout, "in [0, 1)")
    if config.train.learning_rate <= 0:
        fail("train.learning_rate", config.train.learning_rate, "positive")
    if not 0.0 < config.shaver.data_fraction <= 1.0:
        fail("shaver.data_fraction", config.shaver.data_fraction, "in (0, 1]")
    if config.shaver.max_samples is not None and config.shaver.max_samples < 1:
        fail("shaver.max_samples", config.shaver.max_samples, "at least 1")
    if config.shaver.threshold is not None and config.shaver.threshold <= 0:
        fail("shaver.threshold", config.shaver.threshold, "positive")
    for method in config.prune.methods:
        if method not in METHODS:
            fail("prune.methods", method, "one of " + ", ".join(METHODS))
    for rate in config.prune.sparsity_rates:
        if not 0.0 <= rate <= 1.0:
            fail("prune.sparsity_rates", rate, "a list of rates in [0, 1]")
    for budget in config.prune.byte_budgets:
        if budget <= 0:
            fail("prune.byte_budgets", budget, "a list of positive byte counts")
    for bits in config.prune.ptq_bits:
        if bits not in (2, 4, 8, 16):
            fail("prune.ptq_bits", bits, "a list of bit widths from 2, 4, 8, 16")
    if not 0.0 < config.federation.fraction_train <= 1.0:
        fail("federation.fraction_train", config.federation.fraction_train, "in (0, 1]")
    if config.federation.dirichlet_alpha <= 0:
        fail("federation.dirichlet_alpha", config.federation.dirichlet_alpha, "positive")
    if config.federation.finetune_learning_rate is not None and config.federation.finetune_learning_rate <= 0:
        fail("federation.finetune_learning_rate", config.federation.finetune_learning_rate, "positive")
    if config.federation.round_timeout <= 0:
        fail("federation.round_timeout", config.federation.round_timeout, "positive")
    if config.federation.partitioner == "natural":
        if config.federation.partition_by is None:
            fail("federation.partition_by", None, "a raw column name when partitioner is natural")
        if config.federation.partition_by not in config.data.key_fields:
            fail(
                "federation.partition_by",
                config.federation.partition_by,
                f"listed in data.key_fields {config.data.key_fields} (its value hashes are stored there)",
            )
    for entry in config.federation.fail_clients:
        unknown = set(entry) - {"partition_id", "phase", "round"}
        if unknown or "partition_id" not in entry or entry.get("phase", "train") not in ("train", "evaluate", "any"):
            fail(
                "federation.fail_clients",
                entry,
                "entries {partition_id: int, phase: train|evaluate|any, round: int (optional)}",
            )
    for backbone in config.study.backbones:
        if backbone not in ("deepfm", "dcn_mix"):
            fail("study.backbones", backbone, "a list of deepfm, dcn_mix")
    for mode in config.study.modes:
        if mode not in ("centralized", "federated"):
            fail("study.modes", mode, "a list of centralized, federated")
    for fraction in config.study.data_fractions:
        if not 0.0 < fraction <= 1.0:
            fail("study.data_fractions", fraction, "a list of fractions in (0, 1]")
    for rate in config.study.fixed_sparsity:
        if not 0.0 <= rate <= 1.0:
            fail("study.fixed_sparsity", rate, "a list of rates in [0, 1]")
    if config.study.frequency_bins < 1:
        fail("study.frequency_bins", config.study.frequency_bins, "at least 1")
    if not 0.0 <= config.study.frequency_sparsity <= 1.0:
        fail("study.frequency_sparsity", config.study.frequency_sparsity, "in [0, 1]")
    fractions = config.data.split_fractions
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        fail("data.split_fractions", fractions, "three non-negative fractions (train, valid, test) summing to 1")
