"""Named exceptions of fedshaver.

Every error that bad input can cause derives from :class:`FedShaverError`, so callers can catch the
whole family, and from the matching built-in class (``ValueError``, ``FileNotFoundError``), so code
written against the standard library keeps working. Messages quote the bad value, where it came from
and what was expected.
"""

from __future__ import annotations

from pathlib import Path


class FedShaverError(Exception):
    """Base class of all fedshaver errors."""


class ConfigError(FedShaverError, ValueError):
    """A configuration file or value is invalid: unknown key, wrong type or out-of-range value."""


class DataNotFoundError(FedShaverError, FileNotFoundError):
    """A data file, a data folder or the data-folder environment variable is missing."""


class DataFileError(FedShaverError, ValueError):
    """A data file cannot be read as a whole: truncated or corrupt compression, unreadable bytes."""


class MalformedRowError(FedShaverError, ValueError):
    """A raw data row cannot be parsed.

    Attributes
    ----------
    path : Path
        File that contains the row.
    line : int
        1-based line number of the row in that file.
    field : str or None
        Field that contains the bad value, or None when the whole row is wrong.
    value : str
        The offending value, or a description of the row.
    reason : str
        What was expected instead.
    """

    def __init__(self, path: Path | str, line: int, field: str | None, value: str, reason: str):
        self.path = Path(path)
        self.line = line
        self.field = field
        self.value = value
        self.reason = reason
        where = f"{self.path}, line {line}"
        if field is not None:
            where += f", field {field!r}"
        shown = value if len(value) <= 80 else value[:77] + "..."
        super().__init__(
            f"malformed row in {where}: {reason}; got {shown!r}. Fix the row, or set "
            "on_bad_rows: skip to drop such rows and count them in the preparation report."
        )


class FeatureMapError(FedShaverError, ValueError):
    """A feature map file is invalid or does not match the data or model it is used with."""


class UnknownFieldError(FedShaverError, ValueError):
    """A field name is not part of the feature map."""


class InfeasibleBudgetError(FedShaverError, ValueError):
    """A memory budget or sparsity rate cannot be met by any valid storage format.

    Attributes
    ----------
    requested : float
        The budget that was asked for, in bytes or as a sparsity rate.
    minimum : float
        The smallest feasible budget in the same unit.
    """

    def __init__(self, message: str, requested: float, minimum: float):
        self.requested = requested
        self.minimum = minimum
        super().__init__(message)


class PartitionError(FedShaverError, ValueError):
    """Client partitions cannot be built or a client partition is unusable (empty, one row)."""


class DeviceProfileError(ConfigError):
    """A device profile is invalid: bad tier, share or client id."""


class CheckpointError(FedShaverError, ValueError):
    """A checkpoint or attribution file is missing keys or does not match the model."""
