"""Two-pass streaming preprocessing of raw CTR logs into a cached, encoded dataset.

Pass 0 counts the data lines, so the seeded train/valid/test split can have exact sizes. Pass 1
counts the tokens of every field on the training split and builds the vocabularies (min-count, OOV and
missing ids). Pass 2 encodes every row into global feature ids and writes each split straight into a
memory-mapped ``.npy`` file. Peak memory is one chunk of rows plus the token counters, whose size
depends on the number of distinct values, not on the number of rows.

The result lands in ``<cache_dir>/<format>-<fingerprint>/`` only when complete: it is written into a
temporary folder that is renamed at the end and removed on any error. The fingerprint covers the raw
files (path, size, modification time) and every option, so a second run with the same inputs loads the
cache instead of parsing text again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from fedshaver.data.dataset import FEATURE_MAP_FILE, REPORT_FILE, PreparedDataset, load_prepared
from fedshaver.data.feature_map import FeatureMap, FieldInfo
from fedshaver.data.formats import MISSING_TOKEN, BadRowPolicy, DataFormat, get_format
from fedshaver.data.readers import count_data_rows, iter_raw_chunks
from fedshaver.data.splits import SPLIT_NAMES, SplitAssigner
from fedshaver.errors import ConfigError, DataNotFoundError, UnknownFieldError

logger = logging.getLogger(__name__)

PIPELINE_VERSION = 1


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
        os.replace(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return load_prepared(target)


def _prepare_into(folder, paths, fmt: DataFormat, min_count, split_fractions, seed, chunk_rows, on_bad_rows, key_fields, options, progress):
    started = time.perf_counter()
    num_lines = count_data_rows(paths, fmt)
    if num_lines == 0:
        raise DataNotFoundError(f"the data files contain no data rows: {[str(p) for p in paths]}")
    logger.info("Preparing %s: %d data lines in %d file(s)", fmt.name, num_lines, len(paths))

    # Pass 1: token counts on the training split.
    pass1_started = time.perf_counter()
    policy = BadRowPolicy(on_bad_rows)
    counters: dict[str, dict[str, int]] = {name: {} for name in fmt.fields}
    rows = np.zeros(len(SPLIT_NAMES), dtype=np.int64)
    positives = np.zeros(len(SPLIT_NAMES), dtype=np.int64)
    assigner = SplitAssigner(num_lines, split_fractions, seed)
    with tqdm(total=num_lines, unit="rows", desc="prepare 1/2 count", disable=not progress) as bar:
        for chunk, positions, consumed in iter_raw_chunks(paths, fmt, chunk_rows, policy):
            split = assigner.take(consumed)[positions]
            tokens = fmt.tokenize(chunk, policy)
            for index in range(len(SPLIT_NAMES)):
                in_split = tokens.valid & (split == index)
                rows[index] += int(in_split.sum())
                positives[index] += int(tokens.labels[in_split].sum())
            train = tokens.valid & (split == 0)
            for name in fmt.fields:
                counts = pd.Series(tokens.tokens[name][train], dtype=object).value_counts(sort=False)
                counter = counters[name]
                for token, count in zip(counts.index.tolist(), counts.tolist()):
                    counter[token] = counter.get(token, 0) + count
            bar.update(consumed)
    pass1_seconds = time.perf_counter() - pass1_started

    if rows[0] == 0:
        raise DataNotFoundError(f"no valid training rows in {[str(p) for p in paths]}; check the files and on_bad_rows")
    fields = []
    offset = 0
    for name in fmt.fields:
        kind = "numeric" if name in fmt.numeric_fields else "categorical"
        info = build_field_info(name, kind, offset, counters[name], min_count)
        fields.append(info)
        offset += info.vocab_size
    del counters
    if offset >= np.iinfo(np.int32).max:
        raise ConfigError(f"{offset} features do not fit int32 ids; raise min_count")
    feature_map = FeatureMap(
        dataset=fmt.name,
        fields=fields,
        min_count=min_count,
        split_rows={name: int(rows[i]) for i, name in enumerate(SPLIT_NAMES)},
        source={"files": [str(p) for p in paths], **options},
    )
    logger.info(
        "Vocabulary built: %d fields, %d features, rows train/valid/test = %d/%d/%d (%.1fs)",
        feature_map.num_fields, feature_map.num_features, *rows, pass1_seconds,
    )

    # Pass 2: encode every row into its split's memory-mapped arrays.
    pass2_started = time.perf_counter()
    arrays = {}
    for index, name in enumerate(SPLIT_NAMES):
        count = int(rows[index])
        arrays[name] = {
            "x": np.lib.format.open_memmap(folder / f"{name}_x.npy", mode="w+", dtype=np.int32, shape=(count, len(fields))),
            "y": np.lib.format.open_memmap(folder / f"{name}_y.npy", mode="w+", dtype=np.float32, shape=(count,)),
        }
        if key_fields:
            arrays[name]["keys"] = np.lib.format.open_memmap(
                folder / f"{name}_keys.npy", mode="w+", dtype=np.uint64, shape=(count, len(key_fields))
            )
    written = np.zeros(len(SPLIT_NAMES), dtype=np.int64)
    encode_policy = BadRowPolicy(on_bad_rows)
    assigner = SplitAssigner(num_lines, split_fractions, seed)
    with tqdm(total=num_lines, unit="rows", desc="prepare 2/2 encode", disable=not progress) as bar:
        for chunk, positions, consumed in iter_raw_chunks(paths, fmt, chunk_rows, encode_policy):
            split = assigner.take(consumed)[positions]
            tokens = fmt.tokenize(chunk, encode_policy)
            ids = np.empty((len(chunk), len(fields)), dtype=np.int32)
            for column, info in enumerate(fields):
                ids[:, column] = info.encode(tokens.tokens[info.name])
            if key_fields:
                keys = np.stack(
                    [pd.util.hash_array(chunk.frame[key].to_numpy(dtype=object)) for key in key_fields], axis=1
                )
            for index, name in enumerate(SPLIT_NAMES):
                selected = np.flatnonzero(tokens.valid & (split == index))
                start, stop = written[index], written[index] + len(selected)
                arrays[name]["x"][start:stop] = ids[selected]
                arrays[name]["y"][start:stop] = tokens.labels[selected]
                if key_fields:
                    arrays[name]["keys"][start:stop] = keys[selected]
                written[index] = stop
            bar.update(consumed)
    for split_arrays in arrays.values():
        for array in split_arrays.values():
            array.flush()
    del arrays
    pass2_seconds = time.perf_counter() - pass2_started
    if not np.array_equal(written, rows):
        raise RuntimeError(f"encoding pass wrote {written.tolist()} rows, counting pass found {rows.tolist()}")

    feature_map.save(folder / FEATURE_MAP_FILE)
    total_seconds = time.perf_counter() - started
    report = {
        "format": fmt.name,
        "files": [str(p) for p in paths],
        "data_lines": int(num_lines),
        "rows": {name: int(rows[i]) for i, name in enumerate(SPLIT_NAMES)},
        "positives": {name: int(positives[i]) for i, name in enumerate(SPLIT_NAMES)},
        "key_fields": list(key_fields),
        "bad_rows": policy.report(),
        "seconds": {"count_pass": round(pass1_seconds, 3), "encode_pass": round(pass2_seconds, 3), "total": round(total_seconds, 3)},
        "rows_per_second": round(num_lines / total_seconds, 1),
        "options": options,
    }
    (folder / REPORT_FILE).write_text(json.dumps(report, indent=1), encoding="utf-8")
    if policy.skipped:
        logger.warning(
            "Skipped %d malformed rows (%s); see %s", policy.skipped, ", ".join(f"{k}: {v}" for k, v in policy.counts.items()), REPORT_FILE
        )
    logger.info("Encoded %d rows in %.1fs (%.0f rows/s)", int(rows.sum()), total_seconds, num_lines / total_seconds)
