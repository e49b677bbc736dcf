"""Feature profiles computed while a run validates its rows: the distribution of every feature, per run.

A profile per feature holds ``count``, ``nulls``, ``null_rate``, ``distinct`` (approximate), ``min``, ``max``,
``mean``, ``std``, quantiles ``p1 p5 p25 p50 p75 p95 p99`` (Spark ``percentile_approx``, DuckDB
``approx_quantile``), ``coverage`` (the share of the run's entities with a value) and — numeric features —
a ``histogram`` of 20 equal-width bins between the run's min and max, or — strings and booleans — the
``top_k`` most frequent values with their counts.

Cost: everything but the histogram and the top values is added to validation's one aggregation
(``fstore.compute.validation``), so it rides on the pass that already reads every computed row. The bins
need that pass's min and max, so the histogram and the top values are one more aggregation — over the rows
the run already holds (Spark: the persisted DataFrame validation reads; DuckDB: the Arrow table in
memory), never over the source. ``PROFILES=off`` skips both (the figures in README-NOTES.md compare).

Values are profiled as computed, before a validation policy replaces or drops them (as the quality
report is).
"""
from __future__ import annotations

import math
from typing import Any

from fstore.compiler.dialect import quote
from fstore.definitions.model import Feature, FeatureSetVersion

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
BINS = 20
TOP_K = 10
NUMERIC = ("int", "float")
EVENT_TIME = "event_timestamp"  # the computed rows' event time column
CATEGORICAL = ("string", "bool")


def kind(feature: Feature) -> str | None:
    """``numeric`` (histogram), ``categorical`` (top values) or None (lists, timestamps: counts only)."""
    if feature.data_type in NUMERIC:
        return "numeric"
    if feature.data_type in CATEGORICAL:
        return "categorical"
    return None


def entity_key(fsv: FeatureSetVersion, columns: list[str]) -> str | None:
    """Spark SQL for one value per entity (its join keys), or None when the rows do not carry them."""
    keys = [k for e in fsv.entities for k in e.join_keys]
    if not keys or any(k not in columns for k in keys):
        return None
    if len(keys) == 1:
        return quote(keys[0])
    return "concat_ws('|', " + ", ".join(f"CAST({quote(k)} AS STRING)" for k in keys) + ")"


def aggregates(checked: list[Feature], before: dict[str, str], key: str | None, columns: list[str]) -> list[str]:
    """The profile's aggregates added to validation's pass (``i`` = the feature's index in ``checked``)."""
    out = [f"max({quote(EVENT_TIME)}) AS `__pt`"] if EVENT_TIME in columns else []
    if key is not None:
        out.append(f"approx_count_distinct({key}) AS `__pe`")
    for i, f in enumerate(checked):
        v = quote(before[f.name])
        if kind(f) == "numeric":
            probs = ", ".join(repr(q) for q in QUANTILES)
            out += [f"stddev(CAST({v} AS DOUBLE)) AS `__psd{i}`",
                    f"percentile_approx(CAST({v} AS DOUBLE), array({probs})) AS `__pq{i}`"]
        if f.data_type == "bool":
            out.append(f"approx_count_distinct({v}) AS `__pd{i}`")
        if key is not None:
            out.append(f"approx_count_distinct(CASE WHEN {v} IS NOT NULL THEN {key} END) AS `__pc{i}`")
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def second_pass(table: str, checked: list[Feature], before: dict[str, str], row: dict[str, Any]) -> str | None:
    """Spark SQL over ``table`` (the rows the first pass read) giving ``(f, k, n)``: per numeric feature the
    count of each histogram bin ``k``, per categorical one its ``TOP_K`` most frequent values; None when
    no feature needs it."""
    parts = []
    for i, f in enumerate(checked):
        v = quote(before[f.name])
        if kind(f) == "numeric":
            lo, hi = row.get(f"__min{i}"), row.get(f"__max{i}")
            if not (_finite(lo) and _finite(hi)) or hi <= lo:
                continue  # no values, a constant, or NaN/inf: the first pass says all there is
            lo, width = float(lo), (float(hi) - float(lo)) / BINS
            parts.append(f"SELECT {i} AS f, CAST(LEAST(GREATEST(FLOOR((CAST({v} AS DOUBLE) - {lo!r}) / {width!r}), 0), "
                         f"{BINS - 1}) AS STRING) AS k, count(1) AS n FROM {table} "
                         f"WHERE {v} BETWEEN {lo!r} AND {float(hi)!r} GROUP BY 1, 2")
        elif kind(f) == "categorical":
            parts.append(f"SELECT {i} AS f, CAST({v} AS STRING) AS k, count(1) AS n FROM {table} "
                         f"WHERE {v} IS NOT NULL GROUP BY 1, 2")
    if not parts:
        return None
    union = " UNION ALL ".join(parts)
    return (f"SELECT f, k, n FROM (SELECT f, k, n, row_number() OVER (PARTITION BY f ORDER BY n DESC, k) AS r "
            f"FROM ({union}) AS u) AS t WHERE r <= {max(BINS, TOP_K)}")


def build(quality: dict[str, dict[str, Any]], checked: list[Feature], row: dict[str, Any],
          groups: list[tuple[int, str, int]]) -> dict[str, Any]:
    """The run's profile: ``{"rows", "entities", "features": {name: profile}}`` from the quality report,
    the first pass's row and the second pass's ``(f, k, n)`` rows."""
    entities = row.get("__pe")
    features: dict[str, Any] = {}
    for i, f in enumerate(checked):
        q = quality[f.name]
        count, nulls = int(q["count"]), int(q["nulls"])
        p: dict[str, Any] = {"kind": kind(f) or "other", "count": count, "nulls": nulls,
                             "null_rate": round(nulls / count, 6) if count else None,
                             "distinct": q.get("distinct") if q.get("distinct") is not None else row.get(f"__pd{i}")}
        if entities is not None:
            with_value = int(row.get(f"__pc{i}") or 0)
            p["coverage"] = round(min(1.0, with_value / entities), 6) if entities else None
        mine = [(k, int(n)) for g, k, n in groups if int(g) == i]
        if kind(f) == "numeric":
            quantiles = row.get(f"__pq{i}")
            lo, hi = q.get("min"), q.get("max")
            p.update(min=lo, max=hi, mean=q.get("mean"), std=_float(row.get(f"__psd{i}")),
                     quantiles={f"p{round(x * 100)}": _float(v) for x, v in zip(QUANTILES, quantiles or [])})
            p["histogram"] = _histogram(lo, hi, count - nulls, mine)
        elif kind(f) == "categorical":
            top = sorted(mine, key=lambda kn: (-kn[1], kn[0]))[:TOP_K]
            p["top_k"] = [[k, n] for k, n in top]
            if f.data_type == "string":
                p.update(min=q.get("min"), max=q.get("max"))
        features[f.name] = p
    newest = row.get("__pt")
    return {"rows": int(next(iter(quality.values()))["count"]) if quality else 0,
            "entities": int(entities) if entities is not None else None,
            "newest_event": newest.isoformat() if hasattr(newest, "isoformat") else None, "features": features}


def _float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _histogram(lo: Any, hi: Any, values: int, bins: list[tuple[str, int]]) -> dict[str, Any] | None:
    """``{"edges": [21 floats], "counts": [20 ints]}``; a constant feature is one bin of zero width."""
    if not (_finite(lo) and _finite(hi)) or values == 0:
        return None
    lo, hi = float(lo), float(hi)
    if hi <= lo:
        return {"edges": [lo, hi], "counts": [values]}
    counts = [0] * BINS
    for k, n in bins:
        counts[int(float(k))] += n
    width = (hi - lo) / BINS
    return {"edges": [lo + j * width for j in range(BINS)] + [hi], "counts": counts}

