"""On demand: ``fstore monitor skew NAME --sample N`` (``check_skew``), the skew check of ``fstore.serving.skew``
run once over entity keys drawn from the set's offline table."""
from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from fstore.serving.online import _entity_ids, entity_rows, get_online_features
from fstore.serving.skew import compare
from fstore.storage.online.base import iso_from_micros

if TYPE_CHECKING:
    from fstore.core.context import StoreContext


def _version(store: "StoreContext", name: str):
    from fstore.registry.repo import load_feature_set_version

    with store.transaction() as s:
        return load_feature_set_version(s, name, secrets=store.secrets)


def sample_keys(store: "StoreContext", name: str, n: int) -> list[dict[str, Any]]:
    """Up to ``n`` distinct entity keys of the set's offline table, drawn at random."""
    from fstore.core.errors import NotFound

    fsv = _version(store, name)
    keys = list(fsv.join_keys)
    if store.settings.compute_engine == "duckdb":
        import duckdb

        from fstore.engine.duckdb import ident
        from fstore.storage.offline_arrow import read_files

        files = read_files(store.settings, fsv.name)
        con = duckdb.connect()
        try:
            if files.paths:
                relation = con.read_parquet(files.paths, union_by_name=True)
            elif files.dataset is not None:
                relation = con.from_arrow(files.dataset)
            else:
                raise NotFound(f"feature set {fsv.name} has no offline rows to sample entity keys from")
            rows = relation.project(", ".join(ident(k) for k in keys)).distinct().fetchall()
        finally:
            con.close()
    else:
        from fstore.storage.offline import read_table

        rows = [tuple(r) for r in read_table(store.spark, store.settings, fsv.name).select(*keys).distinct().collect()]
    random.shuffle(rows)
    return [dict(zip(keys, row)) for row in rows[:n]]


def check_skew(store: "StoreContext", name: str, *, sample: int = 100) -> dict[str, Any]:
    """On demand: ``sample`` entity keys of ``name`` served online at now and retrieved historically at
    the same instant; the skew rate and the features that differed."""
    fsv = _version(store, name)
    rows = sample_keys(store, name, sample)
    features = [f"{fsv.name}:{f.name}" for f in fsv.features]
    at = time.time_ns() // 1000
    stats = {"compared": 0, "skewed": 0, "features": {}}
    if rows:
        answer = get_online_features(store, features=features, entities=rows, now_micros=at)
        parsed = entity_rows(rows)
        stats = compare(store, features=features, rows=parsed, ids=_entity_ids(parsed), feature_sets=None,
                        answer=answer, at_micros=at).get(fsv.name, stats)
    rate = stats["skewed"] / stats["compared"] if stats["compared"] else None
    return {"feature_set": fsv.name, "at": iso_from_micros(at), "compared": stats["compared"],
            "skewed": stats["skewed"], "skew_rate": rate,
            "features": [{"feature": k.split(":", 1)[1], "rows_skewed": v} for k, v in sorted(stats["features"].items())]}
