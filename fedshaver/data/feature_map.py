"""The feature map: fields, vocabularies, offsets, OOV and missing ids, feature frequencies.

All fields share one embedding table ``E`` of shape ``(num_features, embed_dim)``. Field ``j`` owns
the rows ``offset_j .. offset_j + vocab_size_j - 1``. Inside a field, local id 0 is the field's OOV
feature (categories rarer than ``min_count`` in the training split, and categories never seen there),
local id 1 is its missing-value feature, and local ids 2, 3, ... are the kept tokens in order of
decreasing training frequency (ties by token).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fedshaver.data.formats import MISSING_TOKEN
from fedshaver.errors import FeatureMapError, UnknownFieldError

FORMAT_VERSION = 1
OOV_LOCAL_ID = 0
MISSING_LOCAL_ID = 1
RESERVED_IDS = 2


@dataclass
class FieldInfo:
    """Vocabulary of one field.

    Attributes
    ----------
    name : str
        Field name, e.g. ``C5`` or ``site_id``.
    kind : str
        ``numeric`` (bucketed integers) or ``categorical``.
    offset : int
        Global id of the field's first feature (its OOV feature).
    tokens : list of str
        Kept tokens; token ``tokens[k]`` has local id ``k + 2``.
    counts : list of int
        Training-split frequency of every local id, OOV and missing included.
    """

    name: str
    kind: str
    offset: int
    tokens: list[str]
    counts: list[int]
    _index: pd.Index | None = field(default=None, repr=False, compare=False)

    @property
    def vocab_size(self) -> int:
        """Number of features of the field, OOV and missing included."""
        return len(self.tokens) + RESERVED_IDS

    @property
    def oov_id(self) -> int:
        """Global id of the field's OOV feature."""
        return self.offset + OOV_LOCAL_ID

    @property
    def missing_id(self) -> int:
        """Global id of the field's missing-value feature."""
        return self.offset + MISSING_LOCAL_ID

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """Map an array of tokens to global ids; blanks go to the missing id, unknown tokens to OOV."""
        if self._index is None:
            self._index = pd.Index(self.tokens, dtype=object)
        # An object Index keeps pandas from converting the tokens to its string dtype first.
        tokens = np.asarray(tokens, dtype=object)
        local = self._index.get_indexer(pd.Index(tokens, dtype=object, copy=False)) + RESERVED_IDS
        local[local < RESERVED_IDS] = OOV_LOCAL_ID
        local[tokens == MISSING_TOKEN] = MISSING_LOCAL_ID
        return (local + self.offset).astype(np.int64)


@dataclass
class FeatureMap:
    """Fields of a prepared dataset, in embedding order, with their vocabularies.

    Attributes
    ----------
    dataset : str
        Raw format the data came from (``criteo`` or ``avazu``).
    fields : list of FieldInfo
        One entry per field, offsets increasing.
    min_count : int
        Tokens rarer than this in the training split were mapped to OOV.
    split_rows : dict
        Number of rows in each of ``train``, ``valid`` and ``test``.
    source : dict
        Description of the raw files and options the map was built from.
    """

    dataset: str
    fields: list[FieldInfo]
    min_count: int
    split_rows: dict[str, int] = field(default_factory=dict)
    source: dict = field(default_factory=dict)

    @property
    def num_fields(self) -> int:
        """Number of fields ``m``."""
        return len(self.fields)

    @property
    def num_features(self) -> int:
        """Number of rows ``n`` of the shared embedding table."""
        last = self.fields[-1]
        return last.offset + last.vocab_size

    @property
    def field_names(self) -> list[str]:
        """Field names in embedding order."""
        return [f.name for f in self.fields]

    @property
    def offsets(self) -> np.ndarray:
        """Offsets of all fields plus ``num_features`` at the end, shape ``(num_fields + 1,)``."""
        return np.array([f.offset for f in self.fields] + [self.num_features], dtype=np.int64)

    @property
    def feature_field(self) -> np.ndarray:
        """Field index of every feature, shape ``(num_features,)``."""
        sizes = [f.vocab_size for f in self.fields]
        return np.repeat(np.arange(self.num_fields), sizes)

    def frequencies(self) -> np.ndarray:
        """Training-split frequency of every feature, shape ``(num_features,)``."""
        return np.concatenate([np.asarray(f.counts, dtype=np.int64) for f in self.fields])

    def field_index(self, name: str) -> int:
        """Return the position of field ``name``.

        Raises
        ------
        UnknownFieldError
            When no field has that name.
        """
        for index, info in enumerate(self.fields):
            if info.name == name:
                return index
        raise UnknownFieldError(f"unknown field {name!r}; the feature map has fields {self.field_names}")

    def to_dict(self) -> dict:
        """Return the map as JSON-serialisable data."""
        return {
            "format_version": FORMAT_VERSION,
            "dataset": self.dataset,
            "num_fields": self.num_fields,
            "num_features": self.num_features,
            "min_count": self.min_count,
            "split_rows": dict(self.split_rows),
            "source": self.source,
            "fields": [
                {
                    "name": f.name,
                    "kind": f.kind,
                    "offset": f.offset,
                    "vocab_size": f.vocab_size,
                    "oov_id": f.oov_id,
                    "missing_id": f.missing_id,
                    "tokens": list(f.tokens),
                    "counts": [int(c) for c in f.counts],
                }
                for f in self.fields
            ],
        }

    @classmethod
    def from_dict(cls, data: dict, origin: str = "<dict>") -> FeatureMap:
        """Build a map from :meth:`to_dict` output, checking that ids and sizes are consistent.

        Raises
        ------
        FeatureMapError
            When a key is missing or has the wrong type, the version is unknown, a field name or a
            token appears twice, a count is negative, or offsets, sizes and ids disagree.
        """
        if not isinstance(data, dict):
            raise FeatureMapError(f"{origin}: a feature map must be a JSON object, got {type(data).__name__}")
        try:
            if data["format_version"] != FORMAT_VERSION:
                raise FeatureMapError(
                    f"{origin}: feature map format_version {data['format_version']!r} is not supported "
                    f"(expected {FORMAT_VERSION}); prepare the data again"
                )
            fields = []
            expected_offset = 0
            for entry in data["fields"]:
                info = _field_from_dict(entry, expected_offset, origin)
                if any(f.name == info.name for f in fields):
                    raise FeatureMapError(f"{origin}: field {info.name!r} appears twice")
                fields.append(info)
                expected_offset += info.vocab_size
            if not fields:
                raise FeatureMapError(f"{origin}: feature map has no fields")
            feature_map = cls(
                dataset=str(data["dataset"]),
                fields=fields,
                min_count=int(data["min_count"]),
                split_rows={k: int(v) for k, v in data.get("split_rows", {}).items()},
                source=dict(data.get("source", {})),
            )
            if int(data["num_features"]) != feature_map.num_features:
                raise FeatureMapError(
                    f"{origin}: num_features is {data['num_features']}, but the fields add up to {feature_map.num_features}"
                )
            if "num_fields" in data and int(data["num_fields"]) != feature_map.num_fields:
                raise FeatureMapError(f"{origin}: num_fields is {data['num_fields']}, but there are {feature_map.num_fields} fields")
        except FeatureMapError:
            raise
        except KeyError as error:
            raise FeatureMapError(f"{origin}: feature map is missing the key {error.args[0]!r}") from None
        except (TypeError, ValueError) as error:
            raise FeatureMapError(f"{origin}: feature map has a value of the wrong type ({error})") from None
        return feature_map

    def save(self, path: Path | str) -> None:
        """Write the map as JSON, atomically (a temporary file renamed into place)."""
        path = Path(path)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path | str) -> FeatureMap:
        """Read a map written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FeatureMapError(f"feature map not found: {path}") from None
        except json.JSONDecodeError as error:
            raise FeatureMapError(f"{path}: not valid JSON ({error})") from None
        return cls.from_dict(data, origin=str(path))


def _field_from_dict(entry: dict, expected_offset: int, origin: str) -> FieldInfo:
    """Build one field from its :meth:`FeatureMap.to_dict` entry and check it against its position."""
    name = str(entry["name"])
    info = FieldInfo(
        name=name,
        kind=str(entry["kind"]),
        offset=int(entry["offset"]),
        tokens=[str(t) for t in entry["tokens"]],
        counts=[int(c) for c in entry["counts"]],
    )
    if info.offset != expected_offset:
        raise FeatureMapError(f"{origin}: field {name!r} has offset {info.offset}, expected {expected_offset}")
    if int(entry["vocab_size"]) != info.vocab_size or len(info.counts) != info.vocab_size:
        raise FeatureMapError(
            f"{origin}: field {name!r} has vocab_size {entry['vocab_size']}, "
            f"{len(info.tokens)} tokens and {len(info.counts)} counts; "
            f"expected vocab_size = tokens + {RESERVED_IDS} = counts"
        )
    for key, expected in (("oov_id", info.oov_id), ("missing_id", info.missing_id)):
        if key in entry and int(entry[key]) != expected:
            raise FeatureMapError(f"{origin}: field {name!r} has {key} {entry[key]}, expected {expected}")
    seen = set()
    for token in info.tokens:
        if token in seen:
            raise FeatureMapError(f"{origin}: field {name!r}: token {token!r} appears twice")
        seen.add(token)
    if MISSING_TOKEN in info.tokens:
        raise FeatureMapError(f"{origin}: field {name!r} lists the blank token, which always has the missing id")
    if any(c < 0 for c in info.counts):
        raise FeatureMapError(f"{origin}: field {name!r} has a negative count")
    return info
