"""Streaming preprocessing of raw CTR logs into a cached, encoded dataset.

The raw text is parsed once. The parse pass validates every row, turns each field's tokens into
dense integer codes (one table of distinct tokens per field) and stages the codes, labels, key hashes
and line positions in binary files. It also counts the data lines, so the seeded train/valid/test
split can have exact sizes. The count pass reads the staged rows, draws each line's split and counts
every field's tokens on the training split. The vocabularies (min-count, OOV and missing ids) follow
from these counts. The encode pass maps the staged codes to global feature ids and appends each split
to its ``.npy`` files. Peak memory is one chunk of rows plus the per-field token tables, whose size
depends on the number of distinct values, not on the number of rows. The staged files take 8 bytes
per row more disk space than the encoded arrays (the line index), and they are deleted before the
result is renamed into place.

The result lands in ``<cache_dir>/<format>-<fingerprint>/`` only when complete: it is written into a
temporary folder that is renamed at the end and removed on any error. The fingerprint covers the raw
files (path, size, modification time) and every option, so a second run with the same inputs loads the
cache instead of parsing text again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fedshaver.data.dataset import FEATURE_MAP_FILE, REPORT_FILE, PreparedDataset, load_prepared
from fedshaver.data.feature_map import RESERVED_IDS, FeatureMap, FieldInfo
from fedshaver.data.formats import MISSING_TOKEN, BadRowPolicy, DataFormat, get_format
from fedshaver.data.readers import iter_raw_chunks
from fedshaver.data.splits import SPLIT_NAMES, SplitAssigner, split_sizes
from fedshaver.data.staging import NpyWriter, StagedRows
from fedshaver.errors import ConfigError, DataNotFoundError, UnknownFieldError

logger = logging.getLogger(__name__)

PIPELINE_VERSION = 1
_STAGING_FOLDER = "staging"


def build_field_info(name: str, kind: str, offset: int, counter: dict[str, int], min_count: int) -> FieldInfo:
    """Build one field's vocabulary from its training-split token counts.

    Tokens seen at least ``min_count`` times are kept, most frequent first (ties by token); the
    others are counted towards the OOV feature, and blanks towards the missing-value feature.
    """
    missing = counter.get(MISSING_TOKEN, 0)
    kept = sorted(
        ((token, count) for token, count in counter.items() if token != MISSING_TOKEN and count >= min_count),
        key=lambda item: (-item[1], item[0]),
    )
    rare = sum(count for token, count in counter.items() if token != MISSING_TOKEN and count < min_count)
    return FieldInfo(
        name=name,
        kind=kind,
        offset=offset,
        tokens=[token for token, _ in kept],
        counts=[rare, missing] + [count for _, count in kept],
    )


def _fingerprint(paths: Sequence[Path], options: dict) -> str:
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    digest.update(json.dumps(options, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def prepare_dataset(
    files: Sequence[Path | str],
    data_format: str,
    cache_dir: Path | str,
    min_count: int | None = None,
    split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 2025,
    chunk_rows: int = 50_000,
    on_bad_rows: str = "raise",
    key_fields: Sequence[str] = (),
    force: bool = False,
    progress: bool = True,
) -> PreparedDataset:
    """Prepare raw log files into an encoded dataset, or load it from the cache.

    Parameters
    ----------
    files : sequence of path
        Raw files, read as one stream in this order (e.g. Avazu part 1 with its header, then part 2).
    data_format : str
        ``criteo`` or ``avazu``.
    cache_dir : path
        Folder that receives one sub-folder per distinct preparation.
    min_count : int, optional
        Tokens rarer than this in the training split map to their field's OOV id. Defaults to the
        value the Shaver paper uses for the format (10 for Criteo, 2 for Avazu).
    split_fractions : sequence of float
        Train, validation and test fractions.
    seed : int
        Seed of the split.
    chunk_rows : int
        Lines read per chunk; bounds peak memory.
    on_bad_rows : str
        ``raise`` (default) stops at the first malformed row with a :class:`MalformedRowError`;
        ``skip`` drops malformed rows and counts them in the report.
    key_fields : sequence of str
        Raw columns whose 64-bit value hashes are stored for natural client partitioning.
    force : bool
        Prepare again even when a cached result exists.
    progress : bool
        Show tqdm progress bars.

    Returns
    -------
    PreparedDataset
    """
    fmt = get_format(data_format)
    paths = [Path(f) for f in files]
    if not paths:
        raise ConfigError("no data files given; set data.files in the config")
    for path in paths:
        if not path.is_file():
            raise DataNotFoundError(f"data file not found: {path}")
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be at least 1, got {chunk_rows}")
    min_count = fmt.default_min_count if min_count is None else int(min_count)
    if min_count < 1:
        raise ConfigError(f"min_count must be at least 1, got {min_count}")
    # Check the fractions and the bad-row mode now, before a pass over the files.
    split_sizes(0, split_fractions)
    BadRowPolicy(on_bad_rows)
    raw_columns = [c for c in fmt.columns if c != fmt.label_column]
    for key in key_fields:
        if key not in raw_columns:
            raise UnknownFieldError(f"key field {key!r} is not a column of the {fmt.name} format; expected one of {raw_columns}")

    options = {
        "pipeline_version": PIPELINE_VERSION,
        "format": fmt.name,
        "min_count": min_count,
        "split_fractions": [float(f) for f in split_fractions],
        "seed": int(seed),
        "on_bad_rows": on_bad_rows,
        "key_fields": list(key_fields),
    }
    target = Path(cache_dir) / f"{fmt.name}-{_fingerprint(paths, options)}"
    if target.is_dir() and not force:
        logger.info("Loading prepared dataset from cache %s", target)
        return load_prepared(target)

    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    try:
        _prepare_into(temporary, paths, fmt, min_count, split_fractions, seed, chunk_rows, on_bad_rows, key_fields, options, progress)
        if target.exists():
            shutil.rmtree(target)
        try:
            os.replace(temporary, target)
        except OSError:
            if not target.is_dir():
                raise
            # Another process with the same inputs and options finished first; keep its result.
            shutil.rmtree(temporary, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return load_prepared(target)


class _TokenCodes:
    """Dense integer codes for the distinct tokens of one field, in order of first appearance."""

    def __init__(self) -> None:
        self.codes: dict[str, int] = {}

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """Return the code of every token, giving new tokens the next free codes."""
        # factorize hashes the chunk in C; the Python loop then runs once per distinct token only.
        local, uniques = pd.factorize(tokens)
        codes = self.codes
        mapping = np.fromiter((codes.setdefault(t, len(codes)) for t in uniques.tolist()), dtype=np.int32, count=len(uniques))
        return mapping[local]

    @property
    def tokens(self) -> list[str]:
        """Tokens in code order."""
        return list(self.codes)


def _split_labels(blocks: Iterator[tuple], num_lines: int, split_fractions, seed) -> Iterator[tuple]:
    """Yield each staged block with the split label of each of its rows appended.

    Labels are drawn per data line, malformed lines included, so a row's split depends only on its line
    and the seed, never on chunk sizes or on which rows were skipped.
    """
    assigner = SplitAssigner(num_lines, split_fractions, seed)
    served = 0
    for block in blocks:
        lines = block[0]
        if len(lines) == 0:
            yield (*block, np.empty(0, dtype=np.int8))
            continue
        end = int(lines[-1]) + 1
        labels = assigner.take(end - served)
        yield (*block, labels[lines - served])
        served = end


def _parse_pass(paths, fmt: DataFormat, chunk_rows, policy, key_fields, staged: StagedRows, progress):
    """Read the raw files once: validate rows, stage their token codes, labels and key hashes.

    Returns the number of data lines and each field's table of token codes.
    """
    vocabularies = [_TokenCodes() for _ in fmt.fields]
    line_offset = 0
    with contextlib.closing(staged), tqdm(unit="rows", desc="prepare 1/3 parse", disable=not progress) as bar:
        for chunk, positions, consumed in iter_raw_chunks(paths, fmt, chunk_rows, policy):
            tokens = fmt.tokenize(chunk, policy)
            # Selecting rows copies every object column, so it is skipped when no row is malformed.
            valid = slice(None) if tokens.valid.all() else np.flatnonzero(tokens.valid)
            labels = tokens.labels[valid]
            codes = np.empty((len(labels), len(fmt.fields)), dtype=np.int32)
            for column, name in enumerate(fmt.fields):
                codes[:, column] = vocabularies[column].encode(tokens.tokens[name][valid])
            keys = np.empty((len(labels), len(key_fields)), dtype=np.uint64)
            for column, key in enumerate(key_fields):
                keys[:, column] = pd.util.hash_array(chunk.frame[key].to_numpy(dtype=object)[valid])
            staged.append(line_offset + positions[valid], codes, labels, keys)
            line_offset += consumed
            bar.update(consumed)
            # Free this chunk's strings before the reader builds the next chunk.
            del chunk, tokens
    return line_offset, vocabularies


def _count_pass(staged: StagedRows, num_lines, split_fractions, seed, vocabularies, block_rows):
    """Return the rows and clicks of each split and each field's training counts per token code."""
    rows = np.zeros(len(SPLIT_NAMES), dtype=np.int64)
    positives = np.zeros(len(SPLIT_NAMES), dtype=np.int64)
    train_counts = [np.zeros(len(v.codes), dtype=np.int64) for v in vocabularies]
    for _, codes, labels, _, split in _split_labels(staged.iter_blocks(block_rows), num_lines, split_fractions, seed):
        rows += np.bincount(split, minlength=len(SPLIT_NAMES))
        positives += np.bincount(split, weights=labels, minlength=len(SPLIT_NAMES)).astype(np.int64)
        train = codes[split == 0]
        for column, counts in enumerate(train_counts):
            counts += np.bincount(train[:, column], minlength=len(counts))
    return rows, positives, train_counts


def _build_fields(fmt: DataFormat, vocabularies, train_counts, min_count) -> tuple[list[FieldInfo], list[np.ndarray]]:
    """Build every field's vocabulary and the lookup table from token code to global feature id."""
    fields = []
    lookups = []
    offset = 0
    for name, vocabulary, counts in zip(fmt.fields, vocabularies, train_counts):
        tokens = vocabulary.tokens
        seen = np.flatnonzero(counts)
        counter = dict(zip([tokens[code] for code in seen], counts[seen].tolist()))
        kind = "numeric" if name in fmt.numeric_fields else "categorical"
        info = build_field_info(name, kind, offset, counter, min_count)
        # Same rules as FieldInfo.encode: kept tokens get their id, a blank the missing id, the rest OOV.
        lookup = np.full(len(tokens), info.oov_id, dtype=np.int64)
        kept_codes = [vocabulary.codes[token] for token in info.tokens]
        lookup[kept_codes] = info.offset + RESERVED_IDS + np.arange(len(kept_codes))
        if MISSING_TOKEN in vocabulary.codes:
            lookup[vocabulary.codes[MISSING_TOKEN]] = info.missing_id
        fields.append(info)
        lookups.append(lookup)
        offset += info.vocab_size
    return fields, lookups


def _encode_pass(folder, staged, num_lines, split_fractions, seed, lookups, rows, key_fields, block_rows, progress):
    """Map the staged token codes to global ids and write each split's ``.npy`` files."""
    with contextlib.ExitStack() as stack:
        writers = {}
        for index, name in enumerate(SPLIT_NAMES):
            count = int(rows[index])
            writers[name] = {
                "x": stack.enter_context(NpyWriter(folder / f"{name}_x.npy", np.int32, (count, len(lookups)))),
                "y": stack.enter_context(NpyWriter(folder / f"{name}_y.npy", np.float32, (count,))),
            }
            if key_fields:
                writers[name]["keys"] = stack.enter_context(
                    NpyWriter(folder / f"{name}_keys.npy", np.uint64, (count, len(key_fields)))
                )
        blocks = _split_labels(staged.iter_blocks(block_rows), num_lines, split_fractions, seed)
        with tqdm(total=staged.rows, unit="rows", desc="prepare 3/3 encode", disable=not progress) as bar:
            for _, codes, labels, keys, split in blocks:
                ids = np.empty(codes.shape, dtype=np.int32)
                for column, lookup in enumerate(lookups):
                    ids[:, column] = lookup[codes[:, column]]
                for index, name in enumerate(SPLIT_NAMES):
                    selected = np.flatnonzero(split == index)
                    writers[name]["x"].append(ids[selected])
                    writers[name]["y"].append(labels[selected])
                    if key_fields:
                        writers[name]["keys"].append(keys[selected])
                bar.update(len(codes))


def _prepare_into(folder, paths, fmt: DataFormat, min_count, split_fractions, seed, chunk_rows, on_bad_rows, key_fields, options, progress):
    started = time.perf_counter()
    policy = BadRowPolicy(on_bad_rows)
    staged = StagedRows(folder / _STAGING_FOLDER, len(fmt.fields), len(key_fields))
    num_lines, vocabularies = _parse_pass(paths, fmt, chunk_rows, policy, key_fields, staged, progress)
    if num_lines == 0:
        raise DataNotFoundError(f"the data files contain no data rows: {[str(p) for p in paths]}")
    parse_seconds = time.perf_counter() - started
    logger.info("Parsed %s: %d data lines in %d file(s) (%.1fs)", fmt.name, num_lines, len(paths), parse_seconds)

    count_started = time.perf_counter()
    rows, positives, train_counts = _count_pass(staged, num_lines, split_fractions, seed, vocabularies, chunk_rows)
    if rows[0] == 0:
        raise DataNotFoundError(f"no valid training rows in {[str(p) for p in paths]}; check the files and on_bad_rows")
    fields, lookups = _build_fields(fmt, vocabularies, train_counts, min_count)
    distinct_tokens = {name: len(vocabulary.codes) for name, vocabulary in zip(fmt.fields, vocabularies)}
    del vocabularies, train_counts
    num_features = fields[-1].offset + fields[-1].vocab_size
    if num_features >= np.iinfo(np.int32).max:
        raise ConfigError(f"{num_features} features do not fit int32 ids; raise min_count")
    feature_map = FeatureMap(
        dataset=fmt.name,
        fields=fields,
        min_count=min_count,
        split_rows={name: int(rows[i]) for i, name in enumerate(SPLIT_NAMES)},
        source={"files": [str(p) for p in paths], **options},
    )
    count_seconds = time.perf_counter() - count_started
    logger.info(
        "Vocabulary built: %d fields, %d features, rows train/valid/test = %d/%d/%d (%.1fs)",
        feature_map.num_fields, feature_map.num_features, *rows, count_seconds,
    )

    encode_started = time.perf_counter()
    _encode_pass(folder, staged, num_lines, split_fractions, seed, lookups, rows, key_fields, chunk_rows, progress)
    shutil.rmtree(staged.folder)
    encode_seconds = time.perf_counter() - encode_started

    feature_map.save(folder / FEATURE_MAP_FILE)
    total_seconds = time.perf_counter() - started
    report = {
        "format": fmt.name,
        "files": [str(p) for p in paths],
        "data_lines": int(num_lines),
        "rows": {name: int(rows[i]) for i, name in enumerate(SPLIT_NAMES)},
        "positives": {name: int(positives[i]) for i, name in enumerate(SPLIT_NAMES)},
        "key_fields": list(key_fields),
        # Distinct tokens of each field over all splits, blank included: the size of the token tables.
        "distinct_tokens": distinct_tokens,
        "bad_rows": policy.report(),
        "seconds": {
            "parse_pass": round(parse_seconds, 3),
            "count_pass": round(count_seconds, 3),
            "encode_pass": round(encode_seconds, 3),
            "total": round(total_seconds, 3),
        },
        "rows_per_second": round(num_lines / total_seconds, 1),
        "options": options,
    }
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=1), encoding="utf-8")
    if policy.skipped:
        logger.warning(
            "Skipped %d malformed rows (%s); see %s", policy.skipped, ", ".join(f"{k}: {v}" for k, v in policy.counts.items()), REPORT_FILE
        )
    logger.info("Encoded %d rows in %.1fs (%.0f rows/s)", int(rows.sum()), total_seconds, num_lines / total_seconds)
