"""Windowed features online, exact at the request's time: the stored contributions and their combination.

Why: a window's value as of the entity's last event never ages (a 30-day count keeps an
event 35 days old until the entity's next event), so online answers drifted from what
historical retrieval (``fstore.serving.retrieval.windows``) computes at the same instant.

Design: raw contributions, not tiles. For an entity whose last loaded event is at ``T``,
the online hash also holds the field ``@w``: the entity's events of ``(T - longest window,
T]`` that some window counts, each as its event time in micros and, per windowed feature,
what that window takes from it (its value; ``1`` for a count; null when the window does not
count the event: filter false, null value, or older than its own size). At a request time
``t >= T`` the window ``(t - s, t]`` holds exactly the stored events with ``ts > t - s``
(no event after ``T`` was loaded, and ``t - s >= T - s``), so applying the aggregation to
them gives the historical answer — for every aggregation, including those no partial
aggregate merges exactly (``count_distinct``, ``last``, ``stddev``). Tiles (hourly or daily
partials) would bound the memory of very busy entities, but an exact window still needs the
edge tile's raw events and ``count_distinct`` needs the values anyway: for windows of days
and entities of tens to hundreds of events per window, the raw events are the smaller and
simpler design (memory: README-NOTES "Online windows exact at request time").

Stored text (JSON, one parse per entity and request): ``[T, version, [ts…], [col…] per
windowed feature in definition order]``, events sorted by time. ``T`` is the hash's ``@ts``
when written and ``version`` the feature set version whose windows these are; a reader uses
the record only when both still match (else it belongs to an older row or another
definition, and the stored scalar is answered, as before this design).

Precision: ``count``, ``count_distinct``, ``min``, ``max``, ``last`` and integer ``sum``
are exact (values round-trip JSON exactly; Python ints do not overflow). A float ``sum`` is
the IEEE double sum in event-time order (Spark's window frame adds in that order; DuckDB's
segment tree may differ in the last bits); ``avg`` is that sum over the count; ``stddev`` the
sample standard deviation by a two-pass mean, within a few ULPs of the engines'.
"""
from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import reduce
from operator import add
from typing import TYPE_CHECKING, Any, Callable, Sequence

import orjson

from fstore.storage.online.base import iso_from_micros, to_micros

if TYPE_CHECKING:
    from fstore.definitions.model import FeatureSetVersion

FIELD = "@w"  # ``@`` cannot start a feature name
_COLS = 3  # the first column's position in a record


@dataclass(frozen=True)
class OnlineWindow:
    """What serving needs to answer one windowed feature at a time ``t``."""

    feature: str
    function: str
    size_micros: int
    data_type: str
    column: bool = True  # False for COUNT(*): every event counts, null values too
    index: int = 0  # its column in the stored record

    @property
    def empty(self) -> Any:
        """The empty window's value (what historical retrieval answers): 0 for counts, else null."""
        return 0 if self.function in ("count", "count_distinct") else None


def online_windows(fsv: "FeatureSetVersion") -> dict[str, OnlineWindow]:
    """The windowed features of ``fsv`` by name, in definition order (row, composite and python features are not windows)."""
    from fstore.compiler import EVENT_TIME
    from fstore.compiler.windows import window_spec

    out = {}
    for f in fsv.features:
        spec = window_spec(fsv, f, event_time=EVENT_TIME)
        if spec is not None:
            out[f.name] = OnlineWindow(feature=f.name, function=spec.function, size_micros=spec.size_seconds * 1_000_000,
                                       data_type=f.data_type, column=spec.value is not None, index=len(out))
    return out


# -- writing -----------------------------------------------------------------------------------

def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime):
        return to_micros(value)
    return value


def _take(window: OnlineWindow, at: int, ts: int, counted: bool, value: Any) -> Any:
    """What ``window`` keeps of one event: None when it does not count it as of ``at``."""
    if not counted or ts <= at - window.size_micros or (value is None and window.column):
        return None
    if window.function == "count":
        return 1
    return _json_value(value)


def encode(windows: Sequence[OnlineWindow], version: int, at: int,
           events: Sequence[tuple[int, Sequence[tuple[bool, Any]]]]) -> bytes:
    """The stored record of one entity as of its last event ``at``.

    ``events``: ``(ts micros, [(counted, value) per window])`` — ``counted`` the window's filter
    — in any order; events after ``at`` or counted by no window are left out.
    """
    rows = []
    for ts, per_window in events:
        if ts > at:
            continue
        takes = [_take(w, at, ts, counted, value) for w, (counted, value) in zip(windows, per_window)]
        if any(t is not None for t in takes):
            rows.append((ts, takes))
    # by time; events at the same instant by their values, so the record (and a float sum's order) does not
    # depend on the order the engine handed the events over in
    rows.sort(key=lambda r: (r[0], orjson.dumps(r[1])))
    return orjson.dumps([at, version, [ts for ts, _ in rows], *([r[1][i] for r in rows] for i in range(len(windows)))])


def contribution(window: OnlineWindow, counted: bool, value: Any) -> Any:
    """What ``window`` keeps of one event whatever its age (``_take`` without the horizon): None when not counted."""
    return _take(window, 0, 0, counted, value)


def encode_takes(windows: Sequence[OnlineWindow], version: int, at: int,
                 events: Sequence[tuple[int, Sequence[Any], str | None]], *, keep_micros: int = 0) -> bytes:
    """The stored record of one entity as of ``at`` from events already reduced to contributions
    (``contribution``; a decoded record's own, ``record_events``): ``(ts, [take per window], event id)``.

    Each window keeps its events of ``(at - size - keep_micros, at]``: ``keep_micros`` (a set's allowed
    lateness) leaves the history a late event's own window needs (``fstore.compute.stream_windows``).
    When an event carries an id, the record ends with one more column, the ids (null for events without
    one): serving reads columns by position and never that one.
    """
    rows = []
    for ts, takes, ident in events:
        if ts > at:
            continue
        kept = [t if t is not None and ts > at - w.size_micros - keep_micros else None for w, t in zip(windows, takes)]
        if any(t is not None for t in kept):
            rows.append((ts, kept, ident))
    rows.sort(key=lambda r: (r[0], orjson.dumps(r[1]), r[2] or ""))
    columns = [[r[1][i] for r in rows] for i in range(len(windows))]
    if any(r[2] is not None for r in rows):
        columns.append([r[2] for r in rows])
    return orjson.dumps([at, version, [r[0] for r in rows], *columns])


def record_events(record: list, count: int) -> list[tuple[int, list[Any], str | None]]:
    """The ``(ts, takes, event id)`` of a decoded record of ``count`` windows (ids None when it holds none)."""
    times = record[2]
    ids = record[_COLS + count] if len(record) > _COLS + count else [None] * len(times)
    return [(ts, [record[_COLS + i][j] for i in range(count)], ids[j]) for j, ts in enumerate(times)]


# -- reading -----------------------------------------------------------------------------------

def decode(raw: bytes) -> list:
    """``[at, version, [ts…], [col…]…]``."""
    return orjson.loads(raw)


def _naive_sum(values: list) -> Any:
    """The sum in event-time order, as Spark's window frame adds (the builtin ``sum`` compensates floats)."""
    return reduce(add, values, 0)


def combine(window: OnlineWindow, record: list, t: int) -> Any:
    """The window's value at ``t`` (micros) from a decoded record, before the feature's cast (``cast``).

    Exact for ``t >= record[0]``: events after the entity's last loaded one are not known.
    """
    times, col = record[2], record[_COLS + window.index]
    first, last = bisect_right(times, t - window.size_micros), bisect_right(times, t)  # sorted: one run
    fn = window.function
    values = [v for v in col[first:last] if v is not None]
    if fn == "count":
        return len(values)
    if fn == "count_distinct":
        return len(set(values))
    if not values:
        return None
    if fn == "sum":
        return _naive_sum(values)
    if fn == "avg":
        return _naive_sum(values) / len(values)
    if fn == "min":
        return min(values)
    if fn == "max":
        return max(values)
    if fn == "last":  # the latest event with a value; several at that instant: the greatest value
        j = last - 1
        while col[j] is None:
            j -= 1
        return max(v for k, v in zip(times[first:last], col[first:last]) if k == times[j] and v is not None)
    if fn == "stddev":
        n = len(values)
        if n < 2:
            return None
        mean = _naive_sum(values) / n
        return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    raise ValueError(f"aggregation {fn} has no online combination")


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


_COUNT, _COUNT_DISTINCT, _SUM, _AVG, _MIN, _MAX, _GENERAL = range(7)
_KINDS = {"count": _COUNT, "count_distinct": _COUNT_DISTINCT, "sum": _SUM, "avg": _AVG, "min": _MIN, "max": _MAX}


def combiners(windows: Sequence[OnlineWindow]) -> Callable[[list, int], list]:
    """``combine`` then ``cast`` of every window of ``windows`` at ``t``, in order, from one decoded record,
    prepared once per set. Serving calls it per entity and request, so it is one flat loop: the window
    bounds are found once per distinct size, and the common aggregations are written out (the same
    arithmetic as ``combine``, which the tests hold equal; float sums in event-time order, uncompensated,
    as the engines add)."""
    sizes = sorted({w.size_micros for w in windows})
    parts = [(sizes.index(w.size_micros), _COLS + w.index, _KINDS.get(w.function, _GENERAL),
              {"float": float, "int": int}.get(w.data_type, cast(w)), w) for w in windows]

    def run(record: list, t: int) -> list:
        times = record[2]
        last = bisect_right(times, t)
        firsts = [bisect_right(times, t - size, 0, last) for size in sizes]  # sorted times: one run per window
        out = []
        for si, col, kind, number, window in parts:
            values = record[col][firsts[si]:last]
            if None in values:
                values = [v for v in values if v is not None]
            if kind == _COUNT:
                out.append(len(values))
            elif kind == _COUNT_DISTINCT:
                out.append(len(set(values)))
            elif not values:
                out.append(None)
            elif kind == _SUM:
                out.append(number(reduce(add, values)))
            elif kind == _AVG:
                out.append(number(reduce(add, values) / len(values)))
            elif kind == _MIN:
                out.append(number(min(values)))
            elif kind == _MAX:
                out.append(number(max(values)))
            else:
                out.append(cast(window)(combine(window, record, t)))
        return out

    return run


def usable(record: list, ts: int, version: int) -> bool:
    """Whether a decoded record belongs to the hash's current row (``ts``) and to this set version."""
    return record[0] == ts and record[1] == version
