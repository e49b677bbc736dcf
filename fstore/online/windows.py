"""Windowed features online, exact at the request's time: the stored contributions and their combination.

Why: a window's value as of the entity's last event never ages (a 30-day count keeps an
event 35 days old until the entity's next event), so online answers drifted from what
historical retrieval (``fstore.retrieval.windows``) computes at the same instant.

Design: raw contributions, not tiles. For each windowed feature ``f`` (size ``s``) and each
entity whose last loaded event is at ``T``, the online hash also holds the field ``@w:f``:
the events of ``(T - s, T]`` that the window counts (filter true; a non-null value unless
the aggregation is ``COUNT(*)``), each as its event time in micros and its value. At a
request time ``t >= T`` the window ``(t - s, t]`` holds exactly the stored events with
``ts > t - s`` (no event after ``T`` is loaded, and ``t - s >= T - s``), so applying the
aggregation to them gives the historical answer — for every aggregation, including the
ones no partial can merge exactly (``count_distinct``, ``last``, ``stddev``). Tiles would
bound memory for very busy entities but need edge events for exactness anyway and give no
exact ``count_distinct``; the contributions are the edge events of a one-tile design.

Stored text: JSON ``[T, [ts, …], [value, …]]`` sorted by ``(ts, value)`` (``[T, [ts, …]]``
for a count, which needs no values). ``T`` is the hash's ``@ts`` when written; a reader uses
the field only when it still equals the hash's ``@ts`` (else the field belongs to an older
row and the stored scalar is answered, as before).

Precision: ``count``, ``count_distinct``, ``min``, ``max``, ``last`` and integer ``sum``
are exact (values round-trip JSON exactly; Python ints do not overflow). A float ``sum`` is
the IEEE double sum in event-time order (Spark's window frame sums in the same order;
DuckDB's segment tree may differ in the last bits); ``avg`` is that sum over the count;
``stddev`` the sample standard deviation by a two-pass mean, within a few ULPs of the engines'.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Callable, Sequence

import orjson

from fstore.online.base import iso_from_micros, to_micros

if TYPE_CHECKING:
    from fstore.definitions import FeatureSetVersion

PREFIX = "@w:"


def field(feature: str) -> str:
    """The hash field holding ``feature``'s window contributions."""
    return PREFIX + feature


@dataclass(frozen=True)
class OnlineWindow:
    """What serving needs to answer one windowed feature at a time ``t``."""

    feature: str
    function: str
    size_micros: int
    data_type: str
    column: bool = True  # False for COUNT(*): every event counts, null values too

    @property
    def needs_values(self) -> bool:
        """Whether the stored contributions carry values (a count needs only event times)."""
        return self.function != "count"

    @property
    def empty(self) -> Any:
        """The empty window's value (what historical retrieval answers): 0 for counts, else null."""
        return 0 if self.function in ("count", "count_distinct") else None


def online_windows(fsv: "FeatureSetVersion") -> dict[str, OnlineWindow]:
    """The windowed features of ``fsv`` by name (row, composite and python features are not windows)."""
    from fstore.compiler import EVENT_TIME
    from fstore.compiler.windows import window_spec

    out = {}
    for f in fsv.features:
        spec = window_spec(fsv, f, event_time=EVENT_TIME)
        if spec is not None:
            out[f.name] = OnlineWindow(feature=f.name, function=spec.function, size_micros=spec.size_seconds * 1_000_000,
                                       data_type=f.data_type, column=spec.value is not None)
    return out


# -- writing -----------------------------------------------------------------------------------

def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return to_micros(value)
    return value


def encode(window: OnlineWindow, at: int, events: Sequence[tuple[int, Any]]) -> bytes:
    """The stored text of one entity's contributions to ``window`` as of its last event ``at``.

    ``events``: ``(ts micros, value)`` of the entity's events that the window counts (filter
    true), any order, any time; those outside ``(at - size, at]`` and, unless the window is a
    ``COUNT(*)``, those with a null value, are left out.
    """
    lo = at - window.size_micros
    kept = [(ts, _json_value(v)) for ts, v in events if lo < ts <= at and (v is not None or not window.column)]
    if not window.needs_values:
        return orjson.dumps([at, sorted(ts for ts, _ in kept)])
    kept.sort(key=_order)
    return orjson.dumps([at, [ts for ts, _ in kept], [v for _, v in kept]])


def _order(item: tuple[int, Any]) -> tuple:
    ts, v = item
    return (ts, isinstance(v, str), v)


# -- reading -----------------------------------------------------------------------------------

def decode(raw: bytes) -> list:
    """``[at, [ts…]]`` or ``[at, [ts…], [value…]]``."""
    return orjson.loads(raw)


def combine(window: OnlineWindow, stored: list, t: int) -> Any:
    """The window's value at ``t`` (micros) from decoded contributions; assumes ``t >= stored[0]``
    for exactness (events after the entity's last loaded one are not known).

    The raw aggregate, before the feature's cast (``cast``).
    """
    times = stored[1]
    lo, hi = t - window.size_micros, t
    # times are sorted: the window is one contiguous run of them
    first = bisect_right(times, lo)
    last = bisect_right(times, hi)
    fn = window.function
    if fn == "count":
        return last - first
    values = stored[2][first:last]
    if fn == "count_distinct":
        return len(set(values))
    if not values:
        return None
    if fn == "sum":
        return _sum(values)
    if fn == "avg":
        return _sum(values) / len(values)
    if fn == "min":
        return min(values)
    if fn == "max":
        return max(values)
    if fn == "last":
        return values[-1]  # sorted by (ts, value): the latest event, ties to the greatest value
    if fn == "stddev":
        n = len(values)
        if n < 2:
            return None
        mean = _sum(values) / n
        return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    raise ValueError(f"aggregation {fn} has no online combination")


def _sum(values: list) -> Any:
    total = 0
    for v in values:  # in event-time order, like Spark's window frame
        total += v
    return total




def cast(window: OnlineWindow) -> Callable[[Any], Any]:
    """The feature's cast of a combined value to its JSON answer (as the compiler's CAST does)."""
    dt = window.data_type

    def to(value: Any) -> Any:
        if value is None:
            return None
        if dt == "float":
            return float(value)
        if dt == "int":
            return int(value)  # toward zero, as Spark's CAST(double AS BIGINT)
        if dt == "bool":
            return bool(value)
        if dt == "string":
            return value if isinstance(value, str) else str(value)
        if dt == "timestamp":
            return iso_from_micros(int(value))
        return value

    return to


def answer(window: OnlineWindow, raw: bytes, ts: int, t: int, convert: Callable[[Any], Any]) -> tuple[bool, Any]:
    """``(usable, value)``: the window at ``t`` from the stored field ``raw``, when it was written at
    the hash's ``ts`` (else ``(False, None)``: the caller answers the stored scalar)."""
    stored = decode(raw)
    if stored[0] != ts:
        return False, None
    return True, convert(combine(window, stored, t))
