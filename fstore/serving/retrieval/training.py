"""Training sets: save a retrieval with everything needed to re-create it exactly.

Saving writes the entity rows (timestamps already normalized to UTC) and the
result as Parquet under ``<data_root>/training_sets/<name>/{entities,data}``
and records in the registry, per feature set, the set and feature versions,
the offline Delta version read (or the ``as_of`` timestamp) and the names the
features were answered under. Re-creating reads the saved entity rows and runs
the same retrieval pinned to those versions, so later materializations of the
offline store do not change the answer. Either engine writes the same layout
(Spark's writer, or pyarrow on ``COMPUTE_ENGINE=duckdb``) and re-creates a set
saved by the other.

Windowed features are evaluated at label time from a copy of the source's
events taken when the set is saved (``fstore.serving.retrieval.pinned``), never from
the live source: late events, new files and rewritten files do not change a
re-created set. A set whose feature set has a newer definition since is still
re-created with the saved version, and the answer says so (``meta["notes"]``).
"""
from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterator

from fstore.core.errors import NotFound
from fstore.registry.references import FeatureGroup
from fstore.serving.retrieval.entities import ROW, Entities, prepare_entities, prepare_local
from fstore.serving.retrieval.historical import retrieve
from fstore.serving.retrieval.plan import RetrievalResult, utc_timestamps

if TYPE_CHECKING:
    from fstore.core.context import StoreContext


def training_set_root(store: "StoreContext", name: str) -> str:
    return f"{store.settings.data_root.rstrip('/')}/training_sets/{name}"


@contextmanager
def saving(store: "StoreContext", name: str, entities: Entities, groups: list[FeatureGroup], *,
           as_of: int | datetime | None = None, actor: str = "") -> Iterator[tuple[dict[str, Any], Callable[..., dict[str, Any]]]]:
    """Reserve ``name``, pin the events each windowed set needs; yields ``(sources, save)``.

    With ``as_of`` the events are copied from what the run of that offline version read (as a retrieval
    ``as_of`` without saving computes its windows), not from the source as it is today.

    The caller computes the result with ``sources`` (the pinned copies) and calls
    ``save(result, ...)``; if anything fails, the reservation is dropped.
    """
    from fstore.registry.training_sets import create_training_set, drop_reservation
    from fstore.serving.retrieval.pinned import write_events
    from fstore.serving.retrieval.plan import pinned_read, plan_set

    root = training_set_root(store, name)
    # Reserve the name first: the unique row makes this save the only writer of the folder, so
    # overwriting can only replace leftovers of an earlier failed save of the same name.
    with store.transaction() as s:
        create_training_set(s, name, {"status": "writing"}, entity_count=0, output_path="", actor=actor)
    try:
        sources, events = {}, {}
        for group in groups:
            fsv = group.version
            windows = plan_set(fsv, group.features).windows
            if windows and fsv.name not in sources and fsv.feature_set.source is not None:
                path = f"{root}/events/{fsv.name}"
                longest = max(spec.size_seconds for spec in windows.values())
                snapshot = pinned_read(store, fsv, as_of, None)
                sources[fsv.name] = write_events(store, fsv, fsv.feature_set.source, entities, longest, path, snapshot)
                events[fsv.name] = path

        def save(result: RetrievalResult, **kwargs: Any) -> dict[str, Any]:
            return save_training_set(store, name, entities, result, events=events, actor=actor, **kwargs)

        yield sources, save
    except BaseException:
        with store.transaction() as s:
            drop_reservation(s, name)
        raise


def save_training_set(store: "StoreContext", name: str, entities: Entities, result: RetrievalResult, *,
                      features: list[str], feature_sets: list[str] | None, as_of: int | datetime | None,
                      entity_source: dict[str, Any], events: dict[str, str], actor: str = "") -> dict[str, Any]:
    """Write the entity rows and the result of a reserved training set as Parquet and record it (and audit it)."""
    from fstore.registry.training_sets import finish_training_set

    root = training_set_root(store, name)
    entities_path, data_path = f"{root}/entities", f"{root}/data"
    if result.arrow is not None:
        _write_arrow(store, entities, result, entities_path, data_path)
    else:
        _write_spark(entities, result, entities_path, data_path)
    spec = {
        "status": "ready",
        "features": list(features),
        "feature_sets": list(feature_sets) if feature_sets else None,
        "groups": result.meta["feature_sets"],
        "offline_versions": {g["feature_set"]: g["offline_version"] for g in result.meta["feature_sets"]},
        "as_of": as_of if isinstance(as_of, int) else (as_of.isoformat() + "Z" if as_of else None),
        "timestamp_column": entities.timestamp_column,
        "entity_source": entity_source,
        "entities_path": entities_path,
        "data_path": data_path,
        "events_paths": events,
        "columns": list(result.columns),
    }
    profiles = _profiles(store, result, data_path) if store.settings.profiles else {}
    with store.transaction() as s:
        saved = finish_training_set(s, name, spec, entity_count=entities.count, output_path=data_path)
        from fstore.registry.quality import save_profile

        for set_name, profile in profiles.items():
            save_profile(s, set_name, profile, training_set=name)
    from fstore.ops import audit

    # Saving is a write whatever the caller (SDK, CLI, or a POST that security's audit counts as a read).
    audit.record(store.engine, actor=actor, action="save_training_set", target=name, outcome="ok",
                 detail={"features": list(features), "entity_count": entities.count, "output_path": data_path,
                         "offline_versions": spec["offline_versions"]})
    result.meta["training_set"] = saved
    return saved


def _profiles(store: "StoreContext", result: RetrievalResult, data_path: str) -> dict[str, dict[str, Any]]:
    """The profile of the saved rows per feature set (``fstore.compute.profile``): the reference a model's
    live features are compared with (``fstore monitor drift --baseline training_set:NAME``). Best effort:
    a profile that cannot be computed is logged, the set is saved without it."""
    import logging

    from fstore.compute.profile_rows import profile_rows
    from fstore.serving.retrieval.plan import output_name

    out = {}
    try:
        if result.arrow is None:
            rows, con = store.spark.read.parquet(data_path), None
        else:
            from fstore.engine import duckdb as engine

            rows, con = result.arrow, engine.connect(store.settings.max_compute_threads)
        try:
            for g in result.meta["feature_sets"]:
                fsv = store.feature_set_version(g["feature_set"], g["version"])
                columns = {f: output_name(o) for f, o in zip(g["features"], g["output_names"])}
                out[fsv.name] = profile_rows(rows, fsv, columns, con=con)
        finally:
            if con is not None:
                con.close()
    except Exception:  # noqa: BLE001 - a training set is worth saving without its profile
        logging.getLogger(__name__).warning("could not profile the training set's rows", exc_info=True)
    return out


def _write_spark(entities: Entities, result: RetrievalResult, entities_path: str, data_path: str) -> None:
    from pyspark.sql import functions as F

    # One ordered file: reading it back numbers the rows in the same order.
    (entities.df.orderBy(ROW).select(*[F.col(f"`{c}`") for c in entities.columns])
     .coalesce(1).write.mode("overwrite").parquet(entities_path))
    result.to_spark().write.mode("overwrite").parquet(data_path)


def _write_arrow(store: "StoreContext", entities: Entities, result: RetrievalResult, entities_path: str,
                 data_path: str) -> None:
    """The DuckDB engine's save: the same two folders, one ordered Parquet file each, written by pyarrow.

    Timestamps are written as UTC instants, as Spark writes them, so either engine reads a set back.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fstore.storage.offline import filesystem

    fs, path_of = filesystem(store.settings)
    rows = pa.Table.from_pandas(entities.df[list(entities.columns)], preserve_index=False)
    for folder, table in ((entities_path, rows), (data_path, result.arrow)):
        path = path_of(folder)
        fs.create_dir(path, recursive=True)
        fs.delete_dir_contents(path)  # leftovers of an earlier failed save of this name (the name is reserved)
        pq.write_table(utc_timestamps(table), f"{path}/part-00000.parquet", filesystem=fs)


def _read_entities(store: "StoreContext", path: str):
    """A saved entity folder (written by either engine) as a pandas frame, rows in their saved order."""
    import pyarrow.parquet as pq

    from fstore.storage.offline import filesystem

    fs, path_of = filesystem(store.settings)
    return pq.read_table(path_of(path), filesystem=fs).to_pandas()


def recreate_training_set(store: "StoreContext", name: str) -> RetrievalResult:
    """Run a saved training set's retrieval again, pinned to its recorded versions."""
    from fstore.engine.sources import to_utc_naive
    from fstore.registry.training_sets import get_training_set

    with store.transaction() as s:
        saved = get_training_set(s, name)
    if saved.get("status") != "ready":
        from fstore.core.errors import Conflict

        raise Conflict(f"training set {saved['name']} is still being written; try again when it is ready", field="name")
    groups, as_of, notes = [], {}, []
    for g in saved["groups"]:
        try:
            fsv = store.feature_set_version(g["feature_set"], g["version"])
        except NotFound:
            raise NotFound(f"training set {saved['name']} reads version {g['version']} of feature set {g['feature_set']}, "
                           "which no longer exists (the set was deleted); it cannot be re-created", field="name") from None
        groups.append(FeatureGroup(version=fsv, features=tuple(g["features"]), output_names=tuple(g["output_names"])))
        if g["offline_version"] is not None:
            as_of[fsv.name] = int(g["offline_version"])
        elif g.get("as_of"):
            as_of[fsv.name] = to_utc_naive(g["as_of"])
        else:
            as_of[fsv.name] = None
        current = store.feature_set_version(g["feature_set"]).version
        if current != fsv.version:
            notes.append(f"feature set {fsv.name} is at version {current} now; this set was saved with version "
                         f"{fsv.version} and is re-created with it, definitions included")
    sources = _pinned_sources(saved, groups, notes)
    if store.settings.compute_engine == "duckdb":
        from fstore.serving.retrieval import historical_duckdb

        entities = prepare_local(_read_entities(store, saved["entities_path"]), saved["timestamp_column"])
        result = historical_duckdb.retrieve(store, entities, groups, as_of, sources)
    else:
        entity_df = store.spark.read.parquet(saved["entities_path"])
        entities = prepare_entities(store.spark, entity_df, saved["timestamp_column"])
        result = retrieve(store, entities, groups, as_of, sources)
    result.meta["training_set"] = saved
    result.meta["notes"] = notes
    return result


def _pinned_sources(saved: dict[str, Any], groups: list[FeatureGroup], notes: list[str]) -> dict[str, Any]:
    """The pinned event copies a saved set's windows read; a set saved before they existed reads its source."""
    from fstore.serving.retrieval.plan import plan_set
    from fstore.serving.retrieval.pinned import pinned_source

    paths = saved.get("events_paths")
    sources = {}
    for group in groups:
        fsv = group.version
        if not plan_set(fsv, group.features).windows or fsv.feature_set.source is None:
            continue
        if paths is not None and fsv.name in paths:
            sources[fsv.name] = pinned_source(fsv.feature_set.source, paths[fsv.name])
        else:
            notes.append(f"training set {saved['name']} was saved without a copy of the events of {fsv.name}: its "
                         "windows are computed from the live source and may differ from the saved rows")
    return sources
