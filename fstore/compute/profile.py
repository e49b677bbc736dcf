"""Feature profiles computed while a run validates its rows: the distribution of every feature, per run.

A profile per feature holds ``count``, ``nulls``, ``null_rate``, ``distinct`` (approximate), ``min``, ``max``,
``mean``, ``std``, quantiles ``p1 p5 p25 p50 p75 p95 p99``, ``coverage`` (the share of the run's entities
with a value) and — numeric features — a ``histogram`` of 20 equal-width bins between the run's min and
max, or — strings and booleans — the ``top_k`` most frequent values with their counts.

Cost: everything is added to validation's one aggregation (``fstore.compute.validation``), so it rides on
the pass that already reads every computed row. The quantiles are 101 (p0 … p100 by 1%: Spark
``percentile_approx`` in that pass; DuckDB ``quantile_disc`` over one reservoir sample of 16384 rows shared by
every feature, in a query of its own over the rows in memory: a reservoir per feature
(``reservoir_quantile``) draws a random number per value, and cost 2.2 s of a 100-feature × 200,000-row
validation, the shared sample 0.5 s), and the histogram is derived from them (the CDF through those points,
read at the 21 bin edges): equal-width bins need the run's min and max, which a single pass knows only at
its end, and a second pass over the numeric columns measured +60% run time on DuckDB. Each bin's count is
therefore approximate (within about 1% of the rows). Only the top values of strings and booleans need one
more aggregation, over the rows the run already holds (Spark: the persisted DataFrame validation reads;
DuckDB: the Arrow table in memory), never over the source. ``PROFILES=off`` skips it all (the figures in
README-NOTES.md compare).

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


LEVELS = tuple(i / 100 for i in range(101))
_PROBS = ", ".join(repr(q) for q in LEVELS)
SAMPLE = 16384  # rows of DuckDB's one reservoir sample for the quantiles
SAMPLE_SEED = 20261207


def aggregates(checked: list[Feature], before: dict[str, str], key: str | None, columns: list[str],
               engine: str = "spark") -> list[str]:
    """The profile's aggregates added to validation's pass (``i`` = the feature's index in ``checked``)."""
    out = [f"max({quote(EVENT_TIME)}) AS `__pt`"] if EVENT_TIME in columns else []
    if key is not None:
        out.append(f"approx_count_distinct({key}) AS `__pe`")
    for i, f in enumerate(checked):
        v = quote(before[f.name])
        if kind(f) == "numeric":
            out.append(f"stddev(CAST({v} AS DOUBLE)) AS `__psd{i}`")
            if engine != "duckdb":  # DuckDB: ``sampled_quantiles``
                out.append(f"percentile_approx(CAST({v} AS DOUBLE), array({_PROBS})) AS `__pq{i}`")
        if f.data_type == "bool":
            out.append(f"approx_count_distinct({v}) AS `__pd{i}`")
        if key is not None:
            out.append(f"approx_count_distinct(CASE WHEN {v} IS NOT NULL THEN {key} END) AS `__pc{i}`")
    return out


def sampled_quantiles(rows_sql: str, checked: list[Feature], before: dict[str, str]) -> str | None:
    """DuckDB SQL (not Spark's) of every numeric feature's quantiles ``__pq<i>`` over one reservoir sample of
    ``SAMPLE`` rows of the DuckDB query ``rows_sql`` (all of them when fewer); None when no feature is numeric."""
    from fstore.engine.duckdb import ident

    items = [f"quantile_disc(CAST({ident(before[f.name])} AS DOUBLE), [{_PROBS}]) AS {ident(f'__pq{i}')}"
             for i, f in enumerate(checked) if kind(f) == "numeric"]
    if not items:
        return None
    return (f"SELECT {', '.join(items)} FROM ({rows_sql}) AS sampled "
            f"USING SAMPLE reservoir({SAMPLE} ROWS) REPEATABLE ({SAMPLE_SEED})")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def second_pass(table: str, checked: list[Feature], before: dict[str, str]) -> str | None:
    """Spark SQL over ``table`` (the rows the first pass read) giving ``(f, k, n)``: the ``TOP_K`` most
    frequent values ``k`` of each string or boolean feature ``f`` with their counts; None when there is none."""
    parts = []
    for i, f in enumerate(checked):
        if kind(f) == "categorical":
            v = quote(before[f.name])
            value = v if f.data_type == "string" else f"CAST({v} AS STRING)"
            parts.append(f"SELECT {i} AS f, {value} AS k, count(1) AS n FROM {table} WHERE {v} IS NOT NULL GROUP BY {v}")
    if not parts:
        return None
    union = " UNION ALL ".join(parts)
    return (f"SELECT f, k, n FROM (SELECT f, k, n, row_number() OVER (PARTITION BY f ORDER BY n DESC, k) AS r "
            f"FROM ({union}) AS u) AS t WHERE r <= {TOP_K}")


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
            levels = [_float(x) for x in row.get(f"__pq{i}") or []]
            lo, hi = q.get("min"), q.get("max")
            at = dict(zip((round(x * 100) for x in LEVELS), levels))
            p.update(min=lo, max=hi, mean=q.get("mean"), std=_float(row.get(f"__psd{i}")),
                     quantiles={f"p{round(x * 100)}": at.get(round(x * 100)) for x in QUANTILES})
            p["histogram"] = _histogram(lo, hi, count - nulls, levels)
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


def _histogram(lo: Any, hi: Any, values: int, levels: list[float | None]) -> dict[str, Any] | None:
    """``{"edges": [21 floats], "counts": [20 ints]}`` between ``lo`` and ``hi`` from the 101 quantiles
    ``levels`` (p0 … p100); a constant feature is one bin of zero width."""
    if not (_finite(lo) and _finite(hi)) or values == 0:
        return None
    lo, hi = float(lo), float(hi)
    if hi <= lo:
        return {"edges": [lo, hi], "counts": [values]}
    import numpy as np

    width = (hi - lo) / BINS
    edges = [lo + j * width for j in range(BINS)] + [hi]
    known = [(x, i / 100) for i, x in enumerate(levels) if x is not None]
    if len(known) < 2:
        return None
    xs = np.clip(np.array([x for x, _ in known]), lo, hi)
    share = np.array([c for _, c in known])
    # A value repeated over several quantiles is a point mass: the CDF steps there (take the highest level).
    points, last = np.unique(xs[::-1], return_index=True)
    cdf_at = share[::-1][last]
    cdf = np.interp(edges, np.concatenate(([lo], points, [hi])), np.concatenate(([0.0], cdf_at, [1.0])))
    cdf[0], cdf[-1] = 0.0, 1.0
    counts = np.diff(cdf) * values
    rounded = np.floor(counts).astype(int)
    rounded[np.argsort(counts - rounded)[::-1][: values - int(rounded.sum())]] += 1  # largest remainders
    return {"edges": edges, "counts": [int(c) for c in rounded]}
