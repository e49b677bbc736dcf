"""Feast 0.67's side of the wide case: ``bench.wide``'s point, on the same data, with Feast's file offline store.

Run on Feast's interpreter (``bench.feast_side.feast_python()``) as
``python -m bench.wide_feast …``; it prints one JSON line, as ``bench.wide`` does:

* data: ``bench.wide.make_data`` (the same seed and files: when fstore's side already wrote them, they
  are reused as they are);
* definitions: a Feast repo (local registry, file offline store) with entity ``user_id`` and ``sets``
  feature views ``w0..`` over one ``FileSource`` of ``events.parquet``, each with ``features / sets``
  Float64 features ``c0..``;
* work: ``calls`` consecutive ``get_historical_features(...).to_df()`` for every feature on the label
  rows, with ``full_feature_names=True`` (columns ``w0__c0``: fstore names the same features so too),
  recording each call's seconds and rows, and the process's peak resident memory at the end.

The label frame gets a ``row_id`` column (Feast carries entity columns through), so the last call's rows,
written to ``--output``, can be matched to the label they answer: Feast returns its rows sorted by time
and drops some (``bench.wide_compare`` says which). Nothing here imports fstore: Feast's venv need not
have fstore's dependencies, only Feast, pandas, numpy and pyarrow.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd

from bench.wide import ENTITY, column_names, label_path, make_data, point_parser, set_names, timed_calls

ROW_ID = "row_id"


def write_repo(repo: Path) -> None:
    """A fresh Feast repo folder: local registry, file offline store (Feast's default, dask), SQLite online
    store (required by the config; the views are offline only, so it is never written)."""
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir(parents=True)
    (repo / "feature_store.yaml").write_text(
        "project: wide\n"
        f"registry: {repo / 'registry.db'}\n"
        "provider: local\n"
        "entity_key_serialization_version: 3\n"
        "online_store:\n"
        "  type: sqlite\n"
        f"  path: {repo / 'online.db'}\n"
        "offline_store:\n"
        "  type: file\n"
    )


def apply_definitions(repo: Path, events_path: str, *, sets: int, per_set: int):
    """Entity ``user_id`` (INT64) and views ``w0..`` of Float64 ``c0..`` over one source; returns the store.

    TTL 0: Feast's "lives forever". Its file store then keeps every event at or before the label's time
    (``_filter_ttl``: ``feature_ts <= entity_ts``, no lower bound), which is fstore's rule for a set with no
    TTL. A TTL of 60 days or more would give the same rows on this data, but adds a lower bound that only
    the data's span makes harmless, and one more comparison per joined row.
    """
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64

    user = Entity(name=ENTITY, join_keys=[ENTITY], value_type=ValueType.INT64)
    source = FileSource(name="wide_events", path=events_path, timestamp_field="event_timestamp")
    views = [FeatureView(name=name, entities=[user], ttl=timedelta(0), online=False, source=source,
                         schema=[Field(name=column, dtype=Float64) for column in column_names(per_set)])
             for name in set_names(sets)]
    store = FeatureStore(repo_path=str(repo))
    store.apply([user, *views])
    return store


def feature_refs(sets: int, per_set: int) -> list[str]:
    return [f"{view}:{column}" for view in set_names(sets) for column in column_names(per_set)]


def point(args: argparse.Namespace) -> dict:
    """One measured point (see the module docstring); the last call's rows go to ``--output``."""
    import feast

    per_set = args.features // args.sets
    folder = make_data(Path(args.data), events=args.events, users=args.users, columns=per_set, labels=[args.labels])
    out: dict = {"engine": "feast", "feast_version": feast.__version__, "features": per_set * args.sets,
                 "sets": args.sets, "labels": args.labels, "events": args.events, "data": str(folder)}
    repo = Path(args.work) / f"feast-{args.features}x{args.sets}"
    write_repo(repo)
    began = time.perf_counter()
    store = apply_definitions(repo, str(folder / "events.parquet"), sets=args.sets, per_set=per_set)
    out["apply_seconds"] = round(time.perf_counter() - began, 2)
    labels = pd.read_parquet(label_path(folder, args.labels))
    labels.insert(0, ROW_ID, range(len(labels)))
    refs = feature_refs(args.sets, per_set)
    timed_calls(out, args, lambda: store.get_historical_features(entity_df=labels, features=refs,
                                                                 full_feature_names=True).to_df())
    return out


def main(argv: list[str] | None = None) -> None:
    args = point_parser("python -m bench.wide_feast", "folder for the Feast repo").parse_args(argv)
    print(json.dumps(point(args), default=str))


if __name__ == "__main__":
    sys.exit(main())
