"""Raw CTR log formats: column layout, field list and the raw-value-to-token rules.

A format turns one chunk of raw string columns into a label vector and one token column per field.
Tokens are strings; the empty string marks a missing value. Numeric fields are bucketed here, so the
vocabulary, min-count and encoding steps that follow treat every field as categorical.

Numeric bucketing follows the winning solution of the Criteo challenge, as used by Shaver and FuxiCTR:
an integer ``x > 2`` becomes the bucket ``ceil(log2(x))``, written ``"log2:<k>"``; every other value
(2, 1, 0 and negatives) keeps a bucket of its own, written as the integer itself.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedshaver.errors import ConfigError, MalformedRowError

MISSING_TOKEN = ""
_INTEGER_PATTERN = re.compile(r"[+-]?[0-9]+")
_HOUR_PATTERN = re.compile(r"[0-9]{8}")
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def bucket_integer(value: int) -> str:
    """Return the token of an integer numeric value: ``"log2:<ceil(log2 x)>"`` for x > 2, else ``str(x)``."""
    if value > 2:
        # ceil(log2(x)) == bit_length(x - 1) for every integer x >= 2, with no float rounding.
        return f"log2:{(value - 1).bit_length()}"
    return str(value)


def bucket_numeric_token(raw: str) -> str | None:
    """Return the token of one raw numeric value, or None when it is not an integer.

    A blank value returns :data:`MISSING_TOKEN`, which is distinct from every bucket.
    """
    text = raw.strip()
    if text == "":
        return MISSING_TOKEN
    if not _INTEGER_PATTERN.fullmatch(text):
        return None
    return bucket_integer(int(text))


def _hour_tokens(raw: str) -> tuple[str, str] | None:
    """Split an Avazu ``YYMMDDHH`` value into (hour of day, weekday) tokens, or None when invalid."""
    if not _HOUR_PATTERN.fullmatch(raw):
        return None
    try:
        day = datetime.date(2000 + int(raw[0:2]), int(raw[2:4]), int(raw[4:6]))
    except ValueError:
        return None
    hour = int(raw[6:8])
    if hour > 23:
        return None
    return f"{hour:02d}", _WEEKDAYS[day.weekday()]


@dataclass(frozen=True)
class RawChunk:
    """A block of raw rows from one file: string columns plus the 1-based line number of each row."""

    path: Path
    frame: pd.DataFrame
    lines: np.ndarray

    def __len__(self) -> int:
        return len(self.frame)


@dataclass
class TokenChunk:
    """Labels and per-field token columns of one chunk; ``valid`` is False for rows skipped as malformed."""

    labels: np.ndarray
    tokens: dict[str, np.ndarray]
    valid: np.ndarray


class BadRowPolicy:
    """Raise on the first malformed row, or skip malformed rows and count them in a report."""

    def __init__(self, mode: str = "raise", max_examples: int = 20):
        if mode not in ("raise", "skip"):
            raise ConfigError(f"on_bad_rows must be 'raise' or 'skip', got {mode!r}")
        self.mode = mode
        self.max_examples = max_examples
        self.counts: dict[str, int] = {}
        self.examples: list[dict] = []
        self.blank_lines = 0

    def handle(self, error: MalformedRowError) -> None:
        """Raise ``error`` in raise mode; otherwise record it."""
        if self.mode == "raise":
            raise error
        self.counts[error.reason] = self.counts.get(error.reason, 0) + 1
        if len(self.examples) < self.max_examples:
            self.examples.append(
                {
                    "file": str(error.path),
                    "line": error.line,
                    "field": error.field,
                    "value": error.value,
                    "reason": error.reason,
                }
            )

    @property
    def skipped(self) -> int:
        """Number of rows skipped so far."""
        return sum(self.counts.values())

    def report(self) -> dict:
        """Return the skipped-row counts by reason and the first examples, as plain data."""
        return {
            "skipped_rows": self.skipped,
            "by_reason": dict(self.counts),
            "examples": list(self.examples),
            "blank_lines": self.blank_lines,
        }


@dataclass(frozen=True)
class DataFormat:
    """Layout of one raw log format.

    Attributes
    ----------
    name : str
        Format name used in configs (``criteo`` or ``avazu``).
    delimiter : str
        Column separator.
    columns : tuple of str
        Raw column names, in file order.
    label_column : str
        Raw column holding the 0/1 click label.
    fields : tuple of str
        Model fields, in embedding order.
    numeric_fields : frozenset of str
        Fields bucketed as integers.
    header : bool
        Whether a file may start with a header line equal to ``columns``.
    default_min_count : int
        Min-count used by the Shaver paper for this dataset.
    """

    name: str
    delimiter: str
    columns: tuple[str, ...]
    label_column: str
    fields: tuple[str, ...]
    numeric_fields: frozenset[str]
    header: bool
    default_min_count: int

    def tokenize(self, chunk: RawChunk, policy: BadRowPolicy) -> TokenChunk:
        """Validate a raw chunk and return its labels and field tokens.

        A row with several invalid values is reported once, with its first invalid column in file
        order (the label first). Rows are reported in line order, so in raise mode the error names the
        chunk's first malformed row.

        Raises
        ------
        MalformedRowError
            On a label other than 0/1 or an invalid value, unless ``policy`` skips such rows.
        """
        frame = chunk.frame
        errors: dict[int, MalformedRowError] = {}

        labels_raw = frame[self.label_column].to_numpy(dtype=object)
        is_one = labels_raw == "1"
        labels = is_one.astype(np.float32)
        for row in np.flatnonzero(~(is_one | (labels_raw == "0"))):
            errors[int(row)] = MalformedRowError(
                chunk.path, int(chunk.lines[row]), self.label_column, str(labels_raw[row]), "label must be 0 or 1"
            )

        tokens: dict[str, np.ndarray] = {}
        for column in self.columns:
            if column == self.label_column or column in self._dropped_columns:
                continue
            if column in self.numeric_fields:
                tokens[column] = self._tokenize_by_unique(
                    chunk, column, bucket_numeric_token, "expected an integer or a blank", errors
                )
            elif column == "hour" and self.name == "avazu":
                tokens["hour"], tokens["weekday"] = self._tokenize_hour(chunk, errors)
            else:
                tokens[column] = frame[column].to_numpy(dtype=object)

        valid = np.ones(len(frame), dtype=bool)
        for row in sorted(errors):
            policy.handle(errors[row])
            valid[row] = False
        return TokenChunk(labels=labels, tokens={name: tokens[name] for name in self.fields}, valid=valid)

    @property
    def _dropped_columns(self) -> frozenset[str]:
        # Avazu's id is unique per row, so it carries no signal; the Shaver paper drops it as well.
        return frozenset({"id"}) if self.name == "avazu" else frozenset()

    @staticmethod
    def _record_errors(chunk, column, codes, uniques, bad_uniques, reason, errors) -> None:
        """Add an error for every row whose value is one of ``bad_uniques``, unless the row already has one."""
        for unique_index in bad_uniques:
            for row in np.flatnonzero(codes == unique_index):
                errors.setdefault(
                    int(row),
                    MalformedRowError(chunk.path, int(chunk.lines[row]), column, str(uniques[unique_index]), reason),
                )

    def _tokenize_by_unique(self, chunk, column, convert, reason, errors) -> np.ndarray:
        # Raw columns repeat few distinct values, so each distinct value is converted once.
        codes, uniques = pd.factorize(chunk.frame[column].to_numpy(dtype=object))
        converted = [convert(value) for value in uniques]
        tokens = np.array([MISSING_TOKEN if t is None else t for t in converted], dtype=object)
        bad = [index for index, token in enumerate(converted) if token is None]
        self._record_errors(chunk, column, codes, uniques, bad, reason, errors)
        return tokens[codes]

    def _tokenize_hour(self, chunk, errors) -> tuple[np.ndarray, np.ndarray]:
        codes, uniques = pd.factorize(chunk.frame["hour"].to_numpy(dtype=object))
        parsed = [_hour_tokens(value) for value in uniques]
        hours = np.array([MISSING_TOKEN if p is None else p[0] for p in parsed], dtype=object)
        weekdays = np.array([MISSING_TOKEN if p is None else p[1] for p in parsed], dtype=object)
        bad = [index for index, pair in enumerate(parsed) if pair is None]
        self._record_errors(chunk, "hour", codes, uniques, bad, "expected a timestamp YYMMDDHH", errors)
        return hours[codes], weekdays[codes]


_CRITEO_NUMERIC = tuple(f"I{i}" for i in range(1, 14))
_CRITEO_CATEGORICAL = tuple(f"C{i}" for i in range(1, 27))

CRITEO = DataFormat(
    name="criteo",
    delimiter="\t",
    columns=("label",) + _CRITEO_NUMERIC + _CRITEO_CATEGORICAL,
    label_column="label",
    fields=_CRITEO_NUMERIC + _CRITEO_CATEGORICAL,
    numeric_fields=frozenset(_CRITEO_NUMERIC),
    header=False,
    default_min_count=10,
)

_AVAZU_COLUMNS = (
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
    "app_domain", "app_category", "device_id", "device_ip", "device_model", "device_type",
    "device_conn_type", "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21",
)  # fmt: skip

AVAZU = DataFormat(
    name="avazu",
    delimiter=",",
    columns=_AVAZU_COLUMNS,
    label_column="click",
    fields=("hour", "weekday") + _AVAZU_COLUMNS[3:],
    numeric_fields=frozenset(),
    header=True,
    default_min_count=2,
)

FORMATS = {fmt.name: fmt for fmt in (CRITEO, AVAZU)}


def get_format(name: str) -> DataFormat:
    """Return the :class:`DataFormat` called ``name``."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(f"unknown data format {name!r}; expected one of {sorted(FORMATS)}") from None
