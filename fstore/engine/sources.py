"""What both engines and the offline store share about sources: UTC timestamps, local paths, data files.

Naive datetimes are UTC everywhere in fstore; ``to_utc_naive`` is the one conversion.
A path without a scheme (or ``file:``) is local; ``data_files`` lists a folder's data
files the way Spark does (hidden ``_``/``.`` entries skipped), so DuckDB reads the same
files.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone

from fstore.core.errors import InvalidDefinition
from fstore.definitions.model import Source


def to_utc_naive(value: datetime | str) -> datetime:
    """A naive UTC datetime from an aware/naive datetime or an ISO string (naive means UTC)."""
    if isinstance(value, str):
        text = value.strip().replace("Z", "+00:00")
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidDefinition(f"{value!r} is not an ISO 8601 timestamp", field="timestamp") from None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file:")


def local_path(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path[len("file:"):] if path.startswith("file:") else path


def delta_arrow_schema(table):
    """A Delta table's schema as a pyarrow schema (deltalake 1.x hands out arro3 objects)."""
    import pyarrow as pa

    return pa.schema(table.schema().to_arrow())


def check_event_time_type(column: str, type_name: str) -> None:
    """Refuse an event time column that cannot hold times (a number or flag: every row would be lost or wrong).

    Timestamps and dates are times; text is cast per row (ISO 8601, as CSV sources give it).
    """
    kind = type_name.lower()
    if not (kind.startswith("timestamp") or kind in ("date", "string", "varchar")):
        raise InvalidDefinition(f"the source's event timestamp column {column!r} is of type {type_name}; it must hold "
                                "timestamps (a timestamp, date or ISO 8601 text column)", field="source.event_timestamp_column")


def local_path_missing(source: Source) -> bool:
    """True when the source is a local path that does not exist (checked without Spark)."""
    return bool(source.path) and is_local(source.path) and not os.path.exists(local_path(source.path))


def data_files(path: str, extension: str) -> list[str]:
    """A file, or the data files under a folder as Spark lists them (hidden ``_``/``.`` entries skipped)."""
    if os.path.isfile(path):
        return [path]
    found = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        found += [os.path.join(root, n) for n in sorted(names)
                  if not n.startswith(("_", ".")) and (extension == "" or n.endswith(extension) or "." not in n)]
    return found
