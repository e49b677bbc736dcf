"""One read of a source for the runs of several feature sets over it (``materialize_many``).

Sets defined over the same source (the same ``Source`` definition) and materialized over the same
``[start, end)`` read the same rows: the first of them lists the source (``source_read.take``, the
files every one of those runs records as read) and reads ``[start - longest look-back, end)`` once —
DuckDB: into one Arrow table each set's query runs over; Spark: one DataFrame persisted until
``close`` — and every set computes its features from that. Each set still has its own run, lock,
validation, Delta commit and online load. A shared read that fails is not shared: each run then
reads the source itself and reports its own error.
"""
from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fstore.core.context import StoreContext
    from fstore.definitions.model import FeatureSetVersion, Source

log = logging.getLogger(__name__)


def source_key(source: "Source | None") -> str | None:
    """What makes two sets' sources the same read (None: no source)."""
    return json.dumps(source.to_dict(), sort_keys=True, default=str) if source is not None else None


class SharedScan:
    """The shared reads of one ``materialize_many`` call over ``[start, end)``; ``close`` releases them."""

    def __init__(self, store: "StoreContext", versions: list["FeatureSetVersion"], start: datetime, end: datetime):
        self.store, self.start, self.end = store, start, end
        counts: dict[str, int] = {}
        self.lookback: dict[str, int] = {}
        for fsv in versions:
            key = source_key(fsv.feature_set.source)
            if key is None:
                continue
            # The longest window (what the compiled query's look-back is), read from the definition: compiling
            # a set of hundreds of features takes most of a second, and its run compiles it anyway.
            lookback = max((f.window.size_seconds for f in fsv.features if f.window is not None), default=0)
            counts[key] = counts.get(key, 0) + 1
            self.lookback[key] = max(self.lookback.get(key, 0), lookback)
        # Only sources two or more sets read are worth holding in memory.
        self.lookback = {k: v for k, v in self.lookback.items() if counts[k] > 1}
        self._listings: dict[str, Any] = {}
        self._rows: dict[str, Any] = {}

    def shares(self, source: "Source | None") -> bool:
        return source_key(source) in self.lookback

    def listing(self, source: "Source") -> dict | None:
        """``source_read.take(source)``, taken once before the shared read (so every run records the files read)."""
        from fstore.compute import source_read

        key = source_key(source)
        if key not in self._listings:
            self._listings[key] = source_read.take(source)
        return self._listings[key]

    def duckdb_rows(self, source: "Source"):
        """The source's rows as one pyarrow Table, or None when not shared (or the shared read failed)."""
        from fstore.engine import duckdb as engine

        return self._read(source, lambda lookback: engine.read_range(
            source, settings=self.store.settings, start=self.start, end=self.end, lookback_seconds=lookback,
            threads=self.store.settings.max_compute_threads))

    def spark_rows(self, spark, source: "Source"):
        """The source's rows as one persisted Spark DataFrame, or None when not shared (or the read failed)."""
        from pyspark import StorageLevel

        from fstore.engine.spark import read_source

        return self._read(source, lambda lookback: read_source(
            spark, source, settings=self.store.settings, start=self.start, end=self.end,
            lookback_seconds=lookback).persist(StorageLevel.MEMORY_AND_DISK))

    def _read(self, source: "Source", read):
        key = source_key(source)
        if key not in self.lookback:
            return None
        if key not in self._rows:
            self.listing(source)  # listed before reading: a file arriving meanwhile is new to the next run
            try:
                self._rows[key] = read(self.lookback[key])
            except Exception:  # noqa: BLE001 - each run then reads on its own and reports its own error
                log.warning("could not read source %s once for several sets; each reads it itself",
                            source.path or source.table or "query", exc_info=True)
                self._rows[key] = None
        return self._rows[key]

    def close(self) -> None:
        """Release what was read (Spark: unpersist)."""
        rows, self._rows = self._rows, {}
        for value in rows.values():
            if value is not None and hasattr(value, "unpersist"):
                try:
                    value.unpersist()
                except Exception:  # noqa: BLE001 - the session's cache is freed when it stops anyway
                    log.debug("could not unpersist a shared source read", exc_info=True)
