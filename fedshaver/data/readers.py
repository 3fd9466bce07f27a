"""Streaming readers for delimited CTR logs, plain or gzip-compressed.

Rows are read in chunks of a fixed number of lines, so memory does not grow with the file size. Each
line's field count is checked before parsing, so a short or long line raises (or is skipped) with its
exact line number instead of shifting columns.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd

from fedshaver.data.formats import BadRowPolicy, DataFormat, RawChunk
from fedshaver.errors import DataNotFoundError, MalformedRowError

_GZIP_MAGIC = b"\x1f\x8b"
_COUNT_BLOCK_BYTES = 1 << 24


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
    with open_binary(path) as handle:
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
        with open_binary(path) as handle:
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

    Each step covers the next ``num_lines`` data lines. ``positions`` holds the index, within those
    lines, of each row of ``chunk``; lines with a wrong field count are missing from ``chunk`` when
    ``policy`` skips them. Callers that label every data line (the train/valid/test assignment) stay
    aligned with the stream by consuming ``num_lines`` labels per step.

    Raises
    ------
    MalformedRowError
        For a line with the wrong number of fields, unless ``policy`` skips such lines.
    """
    delimiter = data_format.delimiter.encode("latin-1")
    expected = len(data_format.columns)
    for path in paths:
        header = _has_header(path, data_format)
        first_line = 2 if header else 1
        with open_binary(path) as handle:
            if header:
                handle.readline()
            line_number = first_line
            while True:
                raw_lines = list(itertools.islice(handle, chunk_rows))
                if not raw_lines:
                    break
                lines = [line.rstrip(b"\r\n") for line in raw_lines]
                field_counts = np.fromiter((line.count(delimiter) + 1 for line in lines), dtype=np.int64, count=len(lines))
                good = field_counts == expected
                for bad_index in np.flatnonzero(~good):
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
                if len(good_positions) == len(lines):
                    text = b"\n".join(lines)
                else:
                    text = b"\n".join(lines[i] for i in good_positions)
                frame = _parse_lines(text, data_format, len(good_positions))
                chunk = RawChunk(path=path, frame=frame, lines=line_number + good_positions)
                yield chunk, good_positions, len(lines)
                line_number += len(lines)


def _parse_lines(text: bytes, data_format: DataFormat, num_rows: int) -> pd.DataFrame:
    if num_rows == 0:
        return pd.DataFrame({name: pd.Series([], dtype=object) for name in data_format.columns})
    frame = pd.read_csv(
        io.BytesIO(text + b"\n"),
        sep=data_format.delimiter,
        header=None,
        names=list(data_format.columns),
        dtype=str,
        na_filter=False,
        quoting=csv.QUOTE_NONE,
        skip_blank_lines=False,
        encoding="latin-1",
        engine="c",
    )
    if len(frame) != num_rows:
        raise AssertionError(f"parser returned {len(frame)} rows for {num_rows} checked lines")
    return frame
