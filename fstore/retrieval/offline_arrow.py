"""The offline store read without Spark: the data files of one Delta version, for an in-process engine.

``fstore.offline.read_table_version`` opens a Delta version (or the version
current at an ``as_of`` time) and hands its files to Spark. The DuckDB engine
needs the same version resolved the same way, then only the file list: DuckDB
scans the Parquet files itself. Files are pruned here with what the Delta log
already knows — the ``event_date`` partition value and the per-file min/max
statistics of ``event_timestamp`` — so days no label row can see are never
opened.

Local tables come back as paths (DuckDB's own Parquet reader, which can number
the rows of each file: the order the Spark engine reads them in, used to break
exact ties). A table elsewhere (``STORAGE_BACKEND=s3``) comes back as a pyarrow
dataset over ``deltalake``'s file system; that branch is written but, like the
rest of the S3 support, not exercised on this machine.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from fstore import offline
from fstore.engine.spark import to_utc_naive
from fstore.errors import InvalidDefinition, NotFound
from fstore.settings import Settings


@dataclass(frozen=True)
class OfflineFiles:
    """What to scan for one read of a feature set's offline table."""

    version: int | None              # the Delta version read; None for STORAGE_FORMAT=parquet
    paths: list[str] = field(default_factory=list)  # local data files, in the table's order, pruned
    dataset: Any = None              # a pyarrow dataset instead of ``paths`` (a table not on local disk)
    schema: Any = None               # the table's pyarrow schema (for a version with no files left)


def open_version(settings: Settings, name: str, as_of: int | str | datetime | None = None):
    """The ``deltalake.DeltaTable`` of ``name`` at ``as_of`` (a version, or the version current at a time)."""
    table = offline.delta_table(settings, name, offline.as_of_version(as_of))
    if table is None:
        raise NotFound(f"feature set {name} has no offline table yet (nothing materialized at "
                       f"{offline.table_uri(settings, name)})")
    return table


def read_files(settings: Settings, name: str, *, as_of: int | str | datetime | None = None,
               lo: datetime | None = None, hi: datetime | None = None) -> OfflineFiles:
    """The files of ``name``'s offline table (at ``as_of``) that can hold rows with event time in ``[lo, hi]``.

    ``lo``/``hi`` are naive UTC and only prune whole files; the caller still filters the rows.
    """
    if settings.storage_format == "parquet":
        if as_of is not None:
            raise InvalidDefinition("as_of needs STORAGE_FORMAT=delta; Parquet tables keep no versions", field="as_of")
        return OfflineFiles(version=None, paths=_parquet_files(settings, name, lo, hi))
    table = open_version(settings, name, as_of)
    from fstore.engine.spark import delta_arrow_schema

    schema = delta_arrow_schema(table)
    root = table.table_uri.rstrip("/")
    if not (root.startswith("file://") or "://" not in root):
        return OfflineFiles(version=table.version(), dataset=table.to_pyarrow_dataset(), schema=schema)
    import pyarrow as pa

    actions = pa.table(table.get_add_actions(flatten=True))
    base = root[len("file://"):] if root.startswith("file://") else root
    columns = {c: actions.column(c).to_pylist() for c in actions.column_names
               if c in ("path", f"partition.{offline.PARTITION}", "min.event_timestamp", "max.event_timestamp")}
    paths = []
    for i, path in enumerate(columns["path"]):
        day = columns.get(f"partition.{offline.PARTITION}", [None] * len(columns["path"]))[i]
        first = _naive(columns.get("min.event_timestamp", [None] * len(columns["path"]))[i])
        last = _naive(columns.get("max.event_timestamp", [None] * len(columns["path"]))[i])
        if hi is not None and ((day is not None and _as_date(day) > hi.date()) or (first is not None and first > hi)):
            continue
        if lo is not None and ((day is not None and _as_date(day) < lo.date()) or (last is not None and last < lo)):
            continue
        paths.append(path if path.startswith("/") else f"{base}/{path}")
    return OfflineFiles(version=table.version(), paths=paths, schema=schema)


def _naive(value: Any) -> datetime | None:
    return to_utc_naive(value) if isinstance(value, datetime) else None


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def _parquet_files(settings: Settings, name: str, lo: datetime | None, hi: datetime | None) -> list[str]:
    """A plain Parquet table's files as Spark lists them (hidden ``_``/``.`` entries skipped), days pruned."""
    uri = offline.table_uri(settings, name)
    if settings.storage_backend != "local" or not os.path.isdir(uri):
        raise NotFound(f"feature set {name} has no offline table yet (nothing materialized at {uri})")
    paths = []
    for folder in sorted(os.listdir(uri)):
        if folder.startswith(("_", ".")):
            continue
        if folder.startswith(f"{offline.PARTITION}="):
            day = _as_date(folder.split("=", 1)[1])
            if (hi is not None and day > hi.date()) or (lo is not None and day < lo.date()):
                continue
        full = os.path.join(uri, folder)
        names = sorted(os.listdir(full)) if os.path.isdir(full) else []
        paths += [os.path.join(full, n) for n in names if n.endswith(".parquet") and not n.startswith(("_", "."))]
    return paths
