"""The wide case's values: fstore's last call against Feast's, label by label and value by value.

fstore returns one row per label, in the label frame's order (``RetrievalResult.to_df``), so its row
``i`` answers label ``i``; Feast's rows carry the label's ``row_id`` (``bench.wide_feast`` adds it) and
come sorted by time, some labels missing. Rows are matched by that number; on the rows both returned,
every feature is compared exactly (both read the same float64 Parquet; NaN equals NaN). Feast's missing
labels are counted apart and classified against the events, as ``bench.compare`` does for the main
bench: no event of the user at or before the label's time, or a duplicate label collapsed into its copy;
anything else is unexplained.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from bench.wide import ENTITY, column_names, set_names

ROW_ID = "row_id"
TS = "event_timestamp"
EXAMPLES = 5
DROPPED_EXPLANATION = (
    "Feast's file (dask) store left-joins every event of the label's user, then keeps `feature_ts <= label_ts`, "
    "which removes the label itself when none passes (a user with no events at all keeps its row, with nulls); "
    "it also drops duplicates on (user_id, label time), so identical labels collapse into one row. "
    "fstore returns every label, with null features where no event is at or before its time.")


def column_pairs(sets: int, per_set: int) -> dict[str, str]:
    """Feast's column for each feature (``full_feature_names``: ``view__feature``) -> fstore's (its output
    name for ``set:feature``)."""
    from fstore.serving.retrieval.plan import output_name

    return {f"{view}__{column}": output_name(f"{view}:{column}")
            for view in set_names(sets) for column in column_names(per_set)}


def _check_columns(frame: pd.DataFrame, columns: list[str], who: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{who} result has no column {missing[:5]}{' …' if len(missing) > 5 else ''}")


def _keys(frame: pd.DataFrame, row_ids) -> pd.DataFrame:
    """``user_id`` and ``event_timestamp`` (UTC, µs) in the frame's row order, indexed by the label's row_id."""
    out = pd.DataFrame({ENTITY: frame[ENTITY].astype("int64").to_numpy(),
                        TS: pd.to_datetime(frame[TS], utc=True).astype("datetime64[us, UTC]").to_numpy()},
                       index=pd.Index(np.asarray(row_ids, dtype="int64"), name=ROW_ID))
    if out.index.duplicated().any():
        raise ValueError("a result repeats a row_id: labels were duplicated")
    return out


def _has_event_before(labels: pd.DataFrame, events: pd.DataFrame) -> pd.Series:
    """Per label (indexed by row_id): whether its user has an event at or before its time."""
    left = pd.DataFrame({ROW_ID: labels.index, ENTITY: labels[ENTITY].to_numpy(), TS: labels[TS].to_numpy()})
    right = pd.DataFrame({ENTITY: events[ENTITY].astype("int64").to_numpy(),
                          "_event_ts": pd.to_datetime(events[TS], utc=True).astype("datetime64[us, UTC]").to_numpy()})
    merged = pd.merge_asof(left.sort_values(TS), right.sort_values("_event_ts"), left_on=TS, right_on="_event_ts",
                           by=ENTITY, direction="backward", allow_exact_matches=True)
    return merged.set_index(ROW_ID)["_event_ts"].notna().reindex(labels.index)


def compare(labels: pd.DataFrame, events: pd.DataFrame, fstore: pd.DataFrame, feast: pd.DataFrame,
            pairs: dict[str, str]) -> dict:
    """fstore's rows (label order) against Feast's (with ``row_id``); ``pairs`` maps Feast's columns to fstore's.
    Values are compared one column at a time: a 170,000 x 1,000 result is never copied whole."""
    features = list(pairs.values())
    if ROW_ID not in feast.columns:
        raise ValueError("Feast's result has no row_id column: its rows cannot be matched to labels")
    _check_columns(fstore, [ENTITY, TS, *features], "fstore's")
    _check_columns(feast, [ENTITY, TS, *pairs], "Feast's")
    expected = _keys(labels, np.arange(len(labels)))
    got_fstore, got_feast = _keys(fstore, np.arange(len(fstore))), _keys(feast, feast[ROW_ID])
    keys_differ = {}
    for name, got in (("fstore", got_fstore), ("feast", got_feast)):
        known = got.index.intersection(expected.index)
        keys_differ[name] = int(((got.loc[known, ENTITY] != expected.loc[known, ENTITY])
                                 | (got.loc[known, TS] != expected.loc[known, TS])).sum()
                                + len(got.index.difference(expected.index)))
    both = got_fstore.index.intersection(got_feast.index)
    at_fstore, at_feast = got_fstore.index.get_indexer(both), got_feast.index.get_indexer(both)
    row_differs = np.zeros(len(both), dtype=bool)
    first_differing = np.full(len(both), -1)
    values_differ = 0
    for number, (feast_column, column) in enumerate(pairs.items()):
        a = fstore[column].to_numpy(dtype="float64")[at_fstore]
        b = feast[feast_column].to_numpy(dtype="float64")[at_feast]
        differs = ~((a == b) | (np.isnan(a) & np.isnan(b)))
        values_differ += int(differs.sum())
        first_differing[differs & ~row_differs] = number
        row_differs |= differs
    examples = []
    for position in np.flatnonzero(row_differs)[:EXAMPLES]:
        feast_column, column = list(pairs.items())[first_differing[position]]
        examples.append({ROW_ID: int(both[position]), "column": column,
                         "fstore": float(fstore[column].iloc[at_fstore[position]]),
                         "feast": float(feast[feast_column].iloc[at_feast[position]])})
    dropped = expected.index.difference(got_feast.index)
    before = _has_event_before(expected, events)
    no_event = dropped[~before.loc[dropped].to_numpy()]
    returned_keys = set(zip(got_feast[ENTITY], got_feast[TS]))
    rest = dropped.difference(no_event)
    duplicate = rest[[(u, t) in returned_keys for u, t in zip(expected.loc[rest, ENTITY], expected.loc[rest, TS])]]
    # fstore keeps those labels: their features must all be null (no event to read).
    kept = got_fstore.index.get_indexer(got_fstore.index.intersection(no_event))
    null_rows = int(fstore[features].iloc[kept].isna().all(axis=1).sum())
    return {"labels": int(len(expected)), "fstore_rows": int(len(got_fstore)), "feast_rows": int(len(got_feast)),
            "features": len(features), "rows_in_both": int(len(both)), "rows_equal": int((~row_differs).sum()),
            "values_compared": int(len(both) * len(features)), "values_differ": values_differ,
            "keys_differ": keys_differ,
            "feast_dropped": {"total": int(len(dropped)), "no_event_at_or_before": int(len(no_event)),
                              "duplicate_label": int(len(duplicate)),
                              "unexplained": int(len(rest) - len(duplicate)),
                              "fstore_null_rows": null_rows},
            "examples": examples}


def agrees(summary: dict) -> bool:
    """Every shared value equal, every label's key kept, every label Feast dropped explained, and fstore's rows
    for the labels with no earlier event all null."""
    d = summary["feast_dropped"]
    return (summary["values_differ"] == 0 and d["unexplained"] == 0
            and d["fstore_null_rows"] == d["no_event_at_or_before"]
            and not any(summary["keys_differ"].values()) and summary["fstore_rows"] == summary["labels"])


def agreement_line(summary: dict, engine: str) -> str:
    """One sentence for the report: what matched, what Feast dropped and why."""
    d = summary["feast_dropped"]
    text = (f"{'agree' if agrees(summary) else 'DIFFER'}: fstore ({engine}) returned {summary['fstore_rows']:,} of "
            f"{summary['labels']:,} labels, Feast {summary['feast_rows']:,}; on the {summary['rows_in_both']:,} rows "
            f"both returned, {summary['rows_equal']:,} are equal ({summary['values_compared']:,} values, "
            f"{summary['values_differ']:,} differ). Feast dropped {d['total']:,}: {d['no_event_at_or_before']:,} "
            f"with no event of the user at or before the label (fstore: {d['fstore_null_rows']:,} of them all null), "
            f"{d['duplicate_label']:,} duplicate labels, "
            f"{d['unexplained']:,} unexplained")
    if any(summary["keys_differ"].values()):
        text += f"; rows whose key is not their label's: {summary['keys_differ']}"
    if summary["examples"]:
        text += f"; e.g. {summary['examples'][0]}"
    return text + "."
