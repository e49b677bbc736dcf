"""Correctness: both systems' historical results against each other and against a pandas oracle, row by row.

The oracle is ``pandas.merge_asof`` (backward, exact matches allowed) over the
generated events: for each entity row, the latest event of that user at or
before its timestamp — the ``<=`` rule both systems state. Rows are matched by
``row_id``, a column both benchmarks add to the entity frame and both systems
carry through. Every difference is counted, classified and explained; any
difference with no explanation is listed in full (up to a cap) and makes the
verdict fail.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.data import FEATURES, Dataset

SHOW = 25  # unexplained differences listed per category


def oracle(events: pd.DataFrame, entities: pd.DataFrame) -> pd.DataFrame:
    """The expected features per entity row (NaN where the user has no event at or before the row's time)."""
    left = entities.reset_index(drop=True).copy()
    left.insert(0, "row_id", np.arange(len(left)))
    right = events.rename(columns={"event_timestamp": "_feature_ts"}).sort_values("_feature_ts")
    merged = pd.merge_asof(left.sort_values("event_timestamp"), right, left_on="event_timestamp",
                           right_on="_feature_ts", by="user_id", direction="backward", allow_exact_matches=True)
    return merged.sort_values("row_id").reset_index(drop=True)


def _feature_columns(frame: pd.DataFrame) -> dict[str, str]:
    """Map ``f0..f9`` to the result's column names (``f0``, ``user_events:f0``, ``user_events__f0`` …)."""
    out = {}
    for name in FEATURES:
        candidates = [c for c in frame.columns if c == name or c.endswith((f":{name}", f"__{name}", f".{name}"))]
        if not candidates:
            raise ValueError(f"result has no column for feature {name}: {list(frame.columns)}")
        out[name] = candidates[0]
    return out


def _normalize(frame: pd.DataFrame) -> pd.DataFrame:
    """``row_id``, ``user_id``, ``event_timestamp`` (UTC, µs) and ``f0..f9`` (float64), indexed by row_id."""
    columns = _feature_columns(frame)
    out = pd.DataFrame({"row_id": frame["row_id"].astype("int64"), "user_id": frame["user_id"].astype("int64"),
                        "event_timestamp": pd.to_datetime(frame["event_timestamp"], utc=True).astype("datetime64[us, UTC]")})
    for name, column in columns.items():
        out[name] = frame[column].astype("float64").to_numpy()
    if out["row_id"].duplicated().any():
        raise ValueError("a result repeats a row_id: rows were duplicated")
    return out.set_index("row_id").sort_index()


def _values_equal(a: pd.DataFrame, b: pd.DataFrame) -> pd.Series:
    """Per row: every feature equal exactly, NaN equal to NaN."""
    equal = pd.Series(True, index=a.index)
    for name in FEATURES:
        x, y = a[name].to_numpy(), b[name].to_numpy()
        equal &= (x == y) | (np.isnan(x) & np.isnan(y))
    return equal


def _examples(frame: pd.DataFrame, index, limit: int = SHOW) -> list[dict]:
    rows = frame.loc[list(index)[:limit]].reset_index()
    return [{k: (str(v) if isinstance(v, pd.Timestamp) else v) for k, v in r.items()} for r in rows.to_dict("records")]


def compare_system(name: str, result: pd.DataFrame, expected: pd.DataFrame) -> dict:
    """One system against the oracle: missing rows (explained or not), extra rows, value differences."""
    got = _normalize(result)
    exp = expected.set_index("row_id")
    no_feature_row = exp["_feature_ts"].isna()
    missing = exp.index.difference(got.index)
    extra = got.index.difference(exp.index)
    both = exp.index.intersection(got.index)
    keys_differ = both[(got.loc[both, "user_id"].to_numpy() != exp.loc[both, "user_id"].to_numpy())
                       | (got.loc[both, "event_timestamp"].to_numpy() != exp.loc[both, "event_timestamp"].to_numpy())]
    values_differ = both[~_values_equal(got.loc[both], exp.loc[both]).to_numpy()]
    dropped_explained = missing[no_feature_row.loc[missing].to_numpy()]
    remaining = missing.difference(dropped_explained)
    # An entity row identical (key and timestamp) to another one that was returned: collapsed into it.
    returned_keys = set(zip(got["user_id"], got["event_timestamp"]))
    duplicate = remaining[[(u, t) in returned_keys for u, t in
                           zip(exp.loc[remaining, "user_id"], exp.loc[remaining, "event_timestamp"])]]
    dropped_unexplained = remaining.difference(duplicate)
    differences = []
    if len(dropped_explained):
        differences.append({"what": f"{name} returned no row", "count": int(len(dropped_explained)), "explained": True,
                            "explanation": "the user's events all come after the row's timestamp (checked row by row "
                                           "against the oracle). Feast's file/dask store left-joins every event of the "
                                           "user, then filters `feature_ts <= entity_ts`, which removes the entity row "
                                           "itself when no event passes (a user with no events at all keeps its row, "
                                           "with nulls); fstore returns every entity row, with null features here"})
    if len(duplicate):
        differences.append({"what": f"{name} returned one row for several identical entity rows", "count": int(len(duplicate)),
                            "explained": True,
                            "explanation": "the entity frame holds the same (user_id, event_timestamp) more than once; "
                                           "Feast drops duplicates on (join keys, entity timestamp), so the copies "
                                           "collapse into one row (whose values are correct); fstore keeps every copy",
                            "examples": _examples(exp, duplicate, 5)})
    for what, index in (("returned no row although a feature row exists at or before its timestamp", dropped_unexplained),
                        ("returned a row that is not in the entity frame", extra),
                        ("changed the entity row's key or timestamp", keys_differ),
                        ("returned feature values that differ from the latest event at or before the timestamp",
                         values_differ)):
        if len(index):
            source = got if what.startswith(("returned a row", "changed", "returned feature")) else exp
            differences.append({"what": f"{name} {what}", "count": int(len(index)), "explained": False,
                                "explanation": "unexplained: a bug to investigate",
                                "examples": _examples(source, index)})
    nulls_ok = int(got.loc[got.index.intersection(exp.index[no_feature_row]), list(FEATURES)].isna().all(axis=1).sum())
    return {"rows_expected": int(len(exp)), "rows_returned": int(len(got)), "rows_compared": int(len(both)),
            "rows_equal": int(len(both) - len(values_differ)), "rows_without_feature_row": int(no_feature_row.sum()),
            "rows_without_feature_row_returned_as_null": nulls_ok, "differences": differences}


def compare_pair(feast: pd.DataFrame, fstore: pd.DataFrame) -> dict:
    """Feast against fstore directly, on the rows both returned."""
    a, b = _normalize(feast), _normalize(fstore)
    both = a.index.intersection(b.index)
    differ = both[~_values_equal(a.loc[both], b.loc[both]).to_numpy()]
    return {"rows_in_both": int(len(both)), "rows_only_fstore": int(len(b.index.difference(a.index))),
            "rows_only_feast": int(len(a.index.difference(b.index))), "rows_values_differ": int(len(differ)),
            "examples": [{"feast": f, "fstore": s} for f, s in zip(_examples(a, differ, 10), _examples(b, differ, 10))]}


def compare_all(dataset: Dataset, fstore_outputs: dict[int, str], feast_outputs: dict[int, str] | None) -> dict:
    """Every entity frame size: each system against the oracle, and the two systems against each other."""
    events = pd.read_parquet(dataset.events_path)
    out: dict = {"rule": "latest event with event_timestamp <= entity timestamp (pandas merge_asof oracle)", "sizes": {}}
    for rows, path in fstore_outputs.items():
        entities = pd.read_parquet(dataset.entities_path(rows))
        expected = oracle(events, entities)
        summary: dict = {"fstore": compare_system("fstore", pd.read_parquet(path), expected)}
        if feast_outputs:
            feast = pd.read_parquet(feast_outputs[rows])
            summary["feast"] = compare_system("Feast", feast, expected)
            summary["feast_vs_fstore"] = compare_pair(feast, pd.read_parquet(path))
        differences = [d for side in ("fstore", "feast") if side in summary for d in summary[side]["differences"]]
        unexplained = [d for d in differences if not d["explained"]]
        pair = summary.get("feast_vs_fstore")
        summary["differences"] = differences
        summary["verdict"] = (
            ("PASS" if not unexplained else f"FAIL: {len(unexplained)} unexplained difference kind(s)")
            + f" — fstore {summary['fstore']['rows_equal']:,}/{summary['fstore']['rows_expected']:,} rows equal to the oracle"
            + (f"; Feast {summary['feast']['rows_equal']:,}/{summary['feast']['rows_expected']:,} rows equal, "
               f"{summary['feast']['rows_expected'] - summary['feast']['rows_returned']:,} dropped; "
               f"on the {pair['rows_in_both']:,} rows both returned, {pair['rows_values_differ']:,} differ" if pair else ""))
        out["sizes"][str(rows)] = summary
        print(f"correctness, {rows:,} entity rows: {summary['verdict']}")
        for d in differences:
            print(f"  {d['count']:,} rows: {d['what']} — {d['explanation']}")
            for example in d.get("examples", []):
                print(f"    {example}")
    return out
