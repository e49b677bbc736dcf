"""``get_historical_features``: entity rows with timestamps → point-in-time-correct features (Spark or DuckDB).

Which value each kind of feature takes, for an entity row with keys ``k`` and
timestamp ``t`` (UTC):

* **Row, composite and python features** come from the feature set's offline
  store (as it was at ``as_of`` when given): the row of key ``k`` with the
  greatest ``event_timestamp <= t``, ties on event time broken by the greatest
  ``created_timestamp``. Its value is taken as it is, NULL included (an older
  non-null value never shows through). No row at or before ``t`` → NULL. A row
  older than the set's TTL (``event_timestamp < t - ttl``; an age of exactly the
  TTL is still valid) → NULL. Nothing after ``t`` is ever visible.
* **Windowed features** are the window evaluated *at* ``t``: the aggregate over
  the source events of key ``k`` with event time in ``(t - size, t]``, read
  from the set's source (not the offline store, which only holds values at
  event times). The TTL does not apply: the window already ages events out.
  An empty window gives 0 for counts and NULL otherwise, like materialization.
* **Composite features that depend (directly or not) on a windowed feature**
  are recomputed at ``t`` from the exact window values and the point-in-time
  values of their other inputs, then cast to the feature's type. A composite
  whose expression also reads raw source columns cannot be evaluated without a
  source row, so it keeps its point-in-time offline value (as a row feature).
  Python features always come from the offline store.

Output: every entity row, in the original order, duplicates kept, with every
column of the entity frame (its timestamp column normalized to UTC), followed
by one column per requested feature, named as requested: a bare name stays
bare (``txn_count_30d``), a name given with its set (``transactions:txn_count_30d``
or ``transactions@3:txn_count_30d``) becomes ``transactions__txn_count_30d``,
so one call can ask the same feature name of two sets.

Plan on Spark: per feature set, one union + running-window shuffle for the
point-in-time join (``fstore.serving.retrieval.pit``) and, when it has windowed
features, one more for the windows (``fstore.serving.retrieval.windows``). Entity
columns ride along in one struct, so nothing is joined back afterwards.

With ``COMPUTE_ENGINE=duckdb`` the same contract and plan run in this process
(``fstore.serving.retrieval.historical_duckdb``): no Spark session is started, and the
result holds an Arrow table (``to_spark`` builds a DataFrame only when asked).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from fstore.serving.retrieval.historical import retrieve
from fstore.serving.retrieval.plan import RetrievalResult, normalize_as_of

if TYPE_CHECKING:
    from fstore.core.context import StoreContext


def get_historical_features(store: "StoreContext", *, entity_df: Any, features: list[str],
                            feature_sets: list[str] | None = None, as_of: int | str | datetime | None = None,
                            timestamp_column: str | None = None, save_as: str | None = None,
                            actor: str = "") -> RetrievalResult:
    """Point-in-time-correct features for each row of ``entity_df`` (see the module docstring).

    ``as_of`` reads the offline store as it was (a Delta version when one set is
    asked, or a timestamp for all). ``save_as`` records the retrieval as a
    training set (written under ``<data_root>/training_sets/<name>/``).
    """
    from fstore.registry.references import resolve
    from fstore.serving.retrieval.entities import key_types, prepare_entities

    groups = resolve(store, features, feature_sets)
    keys = key_types(g.version for g in groups)
    pinned = normalize_as_of(as_of, [g.version.name for g in groups])
    if save_as is not None:
        from fstore.registry.training_sets import check_new_name

        with store.transaction() as s:
            check_new_name(s, save_as)
    pins = {g.version.name: pinned for g in groups}
    if store.settings.compute_engine == "duckdb":
        from fstore.serving.retrieval import historical_duckdb
        from fstore.serving.retrieval.entities import prepare_local

        entities = prepare_local(entity_df, timestamp_column, max_rows=store.settings.max_historical_rows, keys=keys)
        run = historical_duckdb.retrieve
    else:
        entities = prepare_entities(store.spark, entity_df, timestamp_column,
                                    max_rows=store.settings.max_historical_rows, keys=keys)
        run = retrieve
    if save_as is None:
        return run(store, entities, groups, pins)
    from fstore.serving.retrieval.training import saving

    # A saved set computes its windows from a pinned copy of the events, now and on every re-creation.
    with saving(store, save_as, entities, groups, as_of=pinned, actor=actor) as (sources, save):
        result = run(store, entities, groups, pins, sources)
        save(result, features=features, feature_sets=feature_sets, as_of=pinned, entity_source=_describe(entity_df))
    return result


def _describe(entity_df: Any) -> dict[str, Any]:
    """Where the entity rows came from, as far as a DataFrame tells."""
    import pandas as pd

    if isinstance(entity_df, pd.DataFrame):
        return {"kind": "pandas", "columns": [str(c) for c in entity_df.columns]}
    return {"kind": "spark", "columns": list(entity_df.columns)}
