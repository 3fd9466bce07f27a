"""Append-only binary files for the preprocessing passes: ``.npy`` outputs and staged rows.

Both write with plain ``write`` calls instead of a memory map. Pages written through a memory map stay
in the process's resident memory until the map is closed, so peak RSS would grow with the number of
rows. Pages written with ``write`` go to the page cache, which does not count towards RSS.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np


class NpyWriter:
    """Write a ``.npy`` file of known shape by appending rows.

    :meth:`close` raises when the appended rows do not fill the shape written in the header.
    """

    def __init__(self, path: Path, dtype, shape: tuple[int, ...]):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.shape = tuple(shape)
        self.rows = 0
        self._handle = self.path.open("wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        np.lib.format.write_array_header_1_0(self._handle, header)

    def append(self, block: np.ndarray) -> None:
        """Append rows given as an array of shape ``(rows,) + shape[1:]``."""
        if block.shape[1:] != self.shape[1:]:
            raise ValueError(f"{self.path.name}: got rows of shape {block.shape[1:]}, expected {self.shape[1:]}")
        np.ascontiguousarray(block, dtype=self.dtype).tofile(self._handle)
        self.rows += len(block)

    def close(self) -> None:
        """Close the file and check that the rows fill the declared shape."""
        self._handle.close()
        if self.rows != self.shape[0]:
            raise RuntimeError(f"{self.path.name}: wrote {self.rows} rows, but the header declares {self.shape[0]}")

    def __enter__(self) -> NpyWriter:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:
            self.close()
        else:
            self._handle.close()


class StagedRows:
    """Rows of the parse pass kept on disk for the counting and encoding passes.

    Each row has its data-line index in the input stream (int64), one token code per field (int32),
    its label (float32) and one hash per key column (uint64). Each column goes to its own headerless
    file in ``folder``.
    """

    def __init__(self, folder: Path, num_fields: int, num_keys: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.widths = {"lines": 1, "codes": num_fields, "labels": 1, "keys": num_keys}
        self.dtypes = {"lines": np.int64, "codes": np.int32, "labels": np.float32, "keys": np.uint64}
        self.rows = 0
        self._handles = {name: (self.folder / f"{name}.bin").open("wb") for name in self.widths}

    def append(self, lines: np.ndarray, codes: np.ndarray, labels: np.ndarray, keys: np.ndarray) -> None:
        """Append rows; ``codes`` has shape ``(rows, num_fields)`` and ``keys`` ``(rows, num_keys)``."""
        for name, block in (("lines", lines), ("codes", codes), ("labels", labels), ("keys", keys)):
            np.ascontiguousarray(block, dtype=self.dtypes[name]).tofile(self._handles[name])
        self.rows += len(lines)

    def close(self) -> None:
        """Finish writing; call before :meth:`iter_blocks`."""
        for handle in self._handles.values():
            handle.close()

    def iter_blocks(self, block_rows: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(lines, codes, labels, keys)`` for consecutive blocks of at most ``block_rows`` rows."""
        with contextlib.ExitStack() as stack:
            handles = {name: stack.enter_context((self.folder / f"{name}.bin").open("rb")) for name in self.widths}
            for start in range(0, self.rows, block_rows):
                count = min(block_rows, self.rows - start)
                block = []
                for name, width in self.widths.items():
                    values = np.fromfile(handles[name], dtype=self.dtypes[name], count=count * width)
                    if len(values) != count * width:
                        raise RuntimeError(f"staged file {name}.bin ends after {start} rows; expected {self.rows}")
                    block.append(values.reshape(count, width) if name in ("codes", "keys") else values)
                yield tuple(block)
