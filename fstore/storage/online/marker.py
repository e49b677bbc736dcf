"""The load marker: how serving tells "the online store lost its values" from "never loaded".

A Redis that restarts without persistence comes back empty and answers every
lookup with ``missing``, exactly as for a set never materialized. So every online
load (``load.load_dataframe`` from Spark, ``load_arrow`` in process, a reload)
ends by writing a small marker of its own per feature set: a Redis hash
``fstore:loaded:<set>`` (a row of ``online_loaded`` in the embedded store) with
the feature set version, the Delta version, the run id, the time and the keys
written, and ``complete``. A store restarted empty loses the marker with the values.

A set **lost its online values** when (``lost_reason``):

* its marker is absent while the registry records a succeeded run that wrote rows
  online and the store holds nothing of the set (not even ``fsmeta:<set>``, the
  newest event time every write keeps): the store restarted empty;
* or its marker says ``complete=0``: a load found the store in that state and wrote
  only its own keys (an incremental run after the restart), so the keys of earlier
  runs are still gone. Only a reload (``fstore online reload``), which writes every
  key from the offline table, writes ``complete=1`` again.

A store whose values predate markers (``fsmeta`` present, no marker) is not lost;
its next load writes a complete marker.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

MARKER_PREFIX = "fstore:loaded:"
COMPLETE_FIELD = "complete"


def marker_key(feature_set: str) -> str:
    """The Redis key of a set's load marker."""
    return MARKER_PREFIX + feature_set


@dataclass(frozen=True)
class LoadState:
    """What the online store holds about one set's loads: the marker's ``complete`` flag
    (``"1"``, ``"0"`` or None without a marker) and whether any value of the set is stored."""

    complete: str | None
    has_values: bool


@dataclass(frozen=True, kw_only=True)
class LoadInfo:
    """What a load knows beyond its rows, written into the marker."""

    run_id: str | None = None
    offline_version: int | None = None
    expect_loaded: bool = False  # the registry records an earlier load that wrote rows online
    full: bool = False           # every key of the set is written (a reload from the offline table)
    kind: str = "load"           # "run" (materialization), "reload", or "load" (a direct call)


def lost_reason(name: str, state: LoadState, *, loaded_in_registry: bool) -> str | None:
    """Why the online values of ``name`` cannot be trusted, or None (module docstring)."""
    if state.complete == "1":
        return None
    if state.complete is not None:
        return (f"online values of {name} were lost (the online store restarted empty) and a later load wrote only "
                f"its own keys; run `fstore online reload {name}`")
    if loaded_in_registry and not state.has_values:
        return (f"online values of {name} are gone: they were loaded, but the online store has neither values nor a "
                f"load marker (restarted empty?); run `fstore online reload {name}`")
    return None


def marker_fields(version: int, written: int, info: LoadInfo, before: LoadState) -> dict[str, str]:
    """The marker a load writes after its rows, given the state it found before writing them."""
    if info.full:
        complete = True
    elif before.complete is not None:
        complete = before.complete == "1"
    else:
        complete = not (info.expect_loaded and not before.has_values)
    at = datetime.now(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    fields = {COMPLETE_FIELD: "1" if complete else "0", "feature_set_version": str(version),
              "loaded_at": at, "keys_written": str(int(written)), "kind": info.kind}
    if info.run_id:
        fields["run_id"] = info.run_id
    if info.offline_version is not None:
        fields["offline_version"] = str(info.offline_version)
    return fields


def parse_marker(raw: Mapping[Any, Any] | None) -> dict[str, Any] | None:
    """A stored marker (bytes or text) as JSON-ready values; None when absent."""
    if not raw:
        return None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        key = key.decode() if isinstance(key, bytes) else str(key)
        value = value.decode() if isinstance(value, bytes) else value
        if key in ("feature_set_version", "offline_version", "keys_written"):
            value = int(value)
        elif key == COMPLETE_FIELD:
            value = value == "1"
        out[key] = value
    return out


__all__ = ["LoadInfo", "LoadState", "lost_reason", "marker_fields", "marker_key", "parse_marker"]
