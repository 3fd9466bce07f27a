"""Streaming readers for delimited CTR logs, plain or gzip-compressed.

Rows are read in chunks of a fixed number of lines, so memory does not grow with the file size. Each
line's field count is checked before parsing, so a short or long line raises (or is skipped) with its
exact line number instead of shifting columns.
"""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from fedshaver.data.formats import BadRowPolicy, DataFormat, RawChunk
from fedshaver.errors import DataFileError, DataNotFoundError, MalformedRowError

_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"
_COUNT_BLOCK_BYTES = 1 << 24
_READ_BLOCK_BYTES = 1 << 22


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Turn errors of the decompressor or the file system while reading ``path`` into :class:`DataFileError`."""
    try:
        yield
    except (EOFError, OSError, zlib.error) as error:
        raise DataFileError(f"cannot read {path}: {error}; the file is truncated or corrupt") from None


def open_binary(path: Path) -> BinaryIO:
    """Open a data file for binary reading, decompressing gzip files transparently."""
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"data file not found: {path}")
    with path.open("rb") as probe:
        magic = probe.read(2)
    if magic == _GZIP_MAGIC:
        return gzip.open(path, "rb")
    return path.open("rb")


def _header_bytes(data_format: DataFormat) -> bytes:
    return data_format.delimiter.join(data_format.columns).encode("latin-1")


def _has_header(path: Path, data_format: DataFormat) -> bool:
    """Return whether the first line of ``path`` is the format's header line.

    Raises
    ------
    MalformedRowError
        When the first line starts like a header (first column name) but differs from it.
    """
    if not data_format.header:
        return False
    with open_binary(path) as handle, reading(path):
        _skip_byte_order_mark(handle)
        first = handle.readline().rstrip(b"\r\n")
    if first == _header_bytes(data_format):
        return True
    first_field = first.split(data_format.delimiter.encode("latin-1"), 1)[0]
    if first_field == data_format.columns[0].encode("latin-1"):
        raise MalformedRowError(
            path, 1, None, first.decode("latin-1"), f"header differs from the {data_format.name} header"
        )
    return False


def count_data_rows(paths: Sequence[Path], data_format: DataFormat) -> int:
    """Count the data lines (all lines but headers) of ``paths`` without parsing them."""
    total = 0
    for path in paths:
        lines = 0
        last = b"\n"
        with open_binary(path) as handle, reading(path):
            while block := handle.read(_COUNT_BLOCK_BYTES):
                lines += block.count(b"\n")
                last = block[-1:]
        if last != b"\n":
            lines += 1
        total += lines - int(_has_header(path, data_format))
    return total


def iter_raw_chunks(
    paths: Sequence[Path],
    data_format: DataFormat,
    chunk_rows: int,
    policy: BadRowPolicy,
) -> Iterator[tuple[RawChunk, np.ndarray, int]]:
    """Yield ``(chunk, positions, num_lines)`` over the data lines of ``paths`` read as one stream.

    Each step covers the next ``num_lines`` data lines. ``positions`` contains the index, within those
    lines, of each row of ``chunk``; lines with a wrong field count are missing from ``chunk`` when
    ``policy`` skips them. Callers that label every data line (the train/valid/test assignment) stay
    aligned with the stream by consuming ``num_lines`` labels per step.

    Lines end at ``\\n``; trailing ``\\r`` and ``\\n`` characters are removed, empty lines are passed over
    (counted in ``policy.blank_lines``), and a UTF-8 byte order mark at the start of a file is ignored.
    Values are decoded as latin-1 and kept verbatim: there is no quoting, so a quote character is part
    of its value.

    Raises
    ------
    MalformedRowError
        For a line with the wrong number of fields, unless ``policy`` skips such lines.
    """
    delimiter = data_format.delimiter.encode("latin-1")
    expected = len(data_format.columns)
    for path in paths:
        header = _has_header(path, data_format)
        line_number = 2 if header else 1
        with open_binary(path) as handle:
            _skip_byte_order_mark(handle)
            if header:
                handle.readline()
            for raw_lines in _iter_line_blocks(handle, chunk_rows, path):
                lines = [line.rstrip(b"\r\n") for line in raw_lines]
                field_counts = np.fromiter((line.count(delimiter) + 1 for line in lines), dtype=np.int64, count=len(lines))
                # An empty line contains no row, so it is passed over (and counted) rather than reported.
                blank = np.fromiter((not line for line in lines), dtype=bool, count=len(lines))
                policy.blank_lines += int(blank.sum())
                good = field_counts == expected
                for bad_index in np.flatnonzero(~good & ~blank):
                    policy.handle(
                        MalformedRowError(
                            path,
                            line_number + int(bad_index),
                            None,
                            lines[bad_index].decode("latin-1"),
                            f"expected {expected} fields, found {int(field_counts[bad_index])}",
                        )
                    )
                good_positions = np.flatnonzero(good)
                if len(good_positions) < len(lines):
                    lines = [lines[i] for i in good_positions]
                frame = _split_fields(lines, data_format)
                chunk = RawChunk(path=path, frame=frame, lines=line_number + good_positions)
                yield chunk, good_positions, len(raw_lines)
                line_number += len(raw_lines)
                # Drop this chunk before the next one is built, so at most one chunk is alive here.
                del chunk, frame, lines


def _skip_byte_order_mark(handle: BinaryIO) -> None:
    """Move past a UTF-8 byte order mark at the current (first) position of ``handle``, if there is one."""
    if handle.peek(len(_UTF8_BOM))[: len(_UTF8_BOM)] == _UTF8_BOM:
        handle.read(len(_UTF8_BOM))


def _iter_line_blocks(handle: BinaryIO, chunk_rows: int, path: Path) -> Iterator[list[bytes]]:
    """Yield the lines of ``handle`` (without their ``\\n``) in lists of ``chunk_rows``, the last one shorter.

    The file is read in blocks of :data:`_READ_BLOCK_BYTES`, because reading line by line costs a Python
    call per line (several for gzip files). A final line without ``\\n`` is kept. Memory stays at one
    block plus one list of lines.
    """
    pending: list[bytes] = []
    partial = b""
    while True:
        with reading(path):
            block = handle.read(_READ_BLOCK_BYTES)
        if not block:
            break
        pieces = (partial + block).split(b"\n")
        partial = pieces.pop()
        pending.extend(pieces)
        if len(pending) >= chunk_rows:
            full = len(pending) - len(pending) % chunk_rows
            for start in range(0, full, chunk_rows):
                yield pending[start : start + chunk_rows]
            pending = pending[full:]
    if partial:
        pending.append(partial)
    for start in range(0, len(pending), chunk_rows):
        yield pending[start : start + chunk_rows]


def _split_fields(lines: list[bytes], data_format: DataFormat) -> pd.DataFrame:
    """Split lines that all have the format's field count into a frame of ``str`` columns (dtype object)."""
    columns = list(data_format.columns)
    if not lines:
        return pd.DataFrame({name: pd.Series([], dtype=object) for name in columns})
    # Every line has exactly len(columns) fields and no newline, so joining the lines with the
    # delimiter and splitting once gives the fields row by row.
    delimiter = data_format.delimiter
    values = delimiter.encode("latin-1").join(lines).decode("latin-1").split(delimiter)
    table = np.array(values, dtype=object).reshape(len(lines), len(columns))
    return pd.DataFrame(table, columns=columns, dtype=object, copy=False)
