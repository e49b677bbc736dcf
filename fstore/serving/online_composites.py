"""Composite features over windows, answered online at the request's time.

A composite feature (``source_features`` and an expression over them) that reads a windowed feature,
directly or through another composite, changes as its windows age: historical retrieval recomputes it at
the label's time (``fstore.serving.retrieval.plan.plan_set``'s ``recompute``). Online, the stored value is
the composite at the entity's last event, so the two would disagree as soon as an event left a window.

Here, per request, the same recomputation at the request's time: the windows the composites need, from
the entity's record of events (``fstore.storage.online.windows``); their other inputs as stored (null past
the set's TTL, as historical retrieval's point-in-time read gives them); then the composites' own SQL, in
dependency order, cast to their types as historical retrieval on DuckDB casts them
(``historical_duckdb.cast_sql``), in one DuckDB query over every entity of the request, on this thread's
sealed connection (it reads no file). ``current_timestamp``/``now()`` in a composite mean the request's
time, as they mean the label's time in historical retrieval.

Only requests that ask for such a composite pay for it (one DuckDB query, about a millisecond). A
composite that also reads source columns, and python features, keep their stored value (historical
retrieval keeps their point-in-time value: neither has a source row at request time).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from fstore.definitions.model import FeatureSetVersion
    from fstore.storage.online.windows import OnlineWindow

log = logging.getLogger(__name__)
_ARROW = {"int": "int64", "float": "float64", "bool": "bool_", "string": "string"}
_DUCK = {"int": "BIGINT", "float": "DOUBLE", "bool": "BOOLEAN", "string": "VARCHAR"}
VIEW = "__fs_online_composites"  # an empty view of the inputs, registered only to type the composites
ROW = "__fs_online_row"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class OnlineComposites:
    """What one set's request needs to recompute its composites over windows at the request's time."""

    names: tuple[str, ...]                 # the composites recomputed, in dependency order
    windows: tuple["OnlineWindow", ...]    # the windows they read (each from the record)
    stored: tuple[str, ...]                # their other inputs, read as stored
    types: dict[str, str]                  # data type of every input
    select: str                            # DuckDB SQL over one list parameter per input, then ``__fs_ts``, ``ROW``


def online_composites(fsv: "FeatureSetVersion", wanted: Sequence[str],
                      windows: dict[str, "OnlineWindow"]) -> OnlineComposites | None:
    """The composites of ``wanted`` that read a window (None when there are none), prepared once per set version."""
    from fstore.serving.retrieval.plan import plan_set

    plan = plan_set(fsv, tuple(wanted))
    if not plan.recompute:
        return None
    inputs = [*plan.windows, *plan.offline]
    types = {name: fsv.feature(name).data_type for name in inputs}
    unsupported = [n for n in inputs if types[n] not in _ARROW]
    try:
        if unsupported:
            raise ValueError(f"inputs {', '.join(unsupported)} are not int, float, bool or string")
        select = _select(fsv, plan.recompute, types)
    except Exception as exc:  # noqa: BLE001 - never fail serving: the stored values, as before this module
        log.warning("online: %s v%s answers its composites over windows %s as stored at the entity's last event, "
                    "not at the request's time: %s", fsv.name, fsv.version, ", ".join(plan.recompute), exc)
        return None
    return OnlineComposites(names=tuple(plan.recompute), windows=tuple(windows[n] for n in plan.windows),
                            stored=tuple(plan.offline), types=types, select=select)


def _select(fsv: "FeatureSetVersion", names: Sequence[str], types: dict[str, str]) -> str:
    """The composites' SQL, each over the ones before it, cast to its type; typed against an empty view."""
    import pyarrow as pa

    from fstore.compiler import feature_expression
    from fstore.engine.duckdb import ident, thread_connection
    from fstore.serving.retrieval.entities import TS
    from fstore.serving.retrieval.historical_duckdb import cast_sql, duck_expression

    empty = pa.table({**{n: pa.array([], getattr(pa, _ARROW[t])()) for n, t in types.items()},
                      TS: pa.array([], pa.timestamp("us", tz="UTC")), ROW: pa.array([], pa.int64())})
    con = thread_connection()
    scope = f"SELECT * FROM {VIEW}"
    con.register(VIEW, empty)
    try:
        for name in names:
            expression = duck_expression(feature_expression(fsv, name, timestamp=TS))
            current = str(con.sql(f"SELECT {expression} FROM ({scope})").types[0])
            scope = f"SELECT *, {cast_sql(expression, fsv.feature(name).data_type, current)} AS {ident(name)} FROM ({scope})"
    finally:
        con.unregister(VIEW)
    # the rows come as list parameters, unnested side by side: no Arrow table to register per request
    # (1 row: 0.7 ms a query, against 2.2 ms registering one)
    lists = [f"UNNEST(${i}::{_DUCK[t]}[]) AS {ident(n)}" for i, (n, t) in enumerate(types.items(), 1)]
    lists += [f"UNNEST(${len(types) + 1}::TIMESTAMPTZ[]) AS {TS}", f"UNNEST(${len(types) + 2}::BIGINT[]) AS {ROW}"]
    scope = scope.replace(f"SELECT * FROM {VIEW}", f"SELECT {', '.join(lists)}", 1)
    return f"SELECT {', '.join(ident(n) for n in names)} FROM ({scope}) ORDER BY {ROW}"


def evaluate(composites: OnlineComposites, inputs: list[dict[str, Any]], now_micros: int) -> list[tuple]:
    """Each row's composites (in ``composites.names`` order) from its ``inputs`` (feature name -> value)."""
    from fstore.engine.duckdb import thread_connection

    now = _EPOCH + timedelta(microseconds=now_micros)
    params = [[row[n] for row in inputs] for n in composites.types]
    params += [[now] * len(inputs), list(range(len(inputs)))]
    return thread_connection().execute(composites.select, params).fetchall()
