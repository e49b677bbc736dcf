"""``FeatureStore``: the one object the SDK, the server, the CLI and the jobs hold.

It binds a ``Settings`` to the registry engine, a lazily created Spark session
and a lazily opened online store, and exposes every operation as a method. Each
method is a thin delegation to the module that owns the behaviour (``registry``,
``materialize``, ``serving``, ``retrieval`` …), so a newcomer finds a behaviour
by its name. Registry methods run in one transaction each and return plain
JSON-ready dicts.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterator

from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session

from fstore.core.errors import Unavailable

from fstore.registry.db import at_head, make_engine, upgrade
from fstore.core.settings import Settings

if TYPE_CHECKING:
    from fstore.definitions.model import FeatureSetVersion


class FeatureStore:
    """A feature store for one ``Settings``: registry, offline store, online store, Spark."""

    def __init__(self, settings: Settings | None = None, *, auto_upgrade: bool | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self.engine = make_engine(self.settings)
        # An embedded SQLite registry upgrades itself; a shared PostgreSQL one is upgraded on purpose
        # (`fstore db upgrade`), so two versions of the code never race to migrate it.
        if (auto_upgrade if auto_upgrade is not None else self.settings.is_sqlite) and not at_head(self.engine):
            upgrade(self.settings)
        self._spark = None
        self._online = None
        self._secrets = None
        self._lock = threading.Lock()

    # -- plumbing ---------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One registry transaction: committed when the block ends, rolled back on any error.

        An unreachable registry raises ``Unavailable`` (``fstore.registry.guard``), waiting for a
        pooled connection included.
        """
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                yield session
        except PoolTimeout:
            raise Unavailable(f"registry database unavailable: no free connection within "
                              f"{self.settings.db_connect_timeout:g} s (DB_POOL_SIZE={self.settings.db_pool_size})") from None

    @property
    def spark(self):
        """The Spark session, created on first use (the active one under spark-submit)."""
        if self._spark is None:
            with self._lock:
                if self._spark is None:
                    from fstore.engine.session import get_spark

                    self._spark = get_spark(self.settings)
        return self._spark

    def use_spark(self, spark) -> "FeatureStore":
        """Use an existing Spark session (tests, notebooks); on S3 it is given the bucket's settings."""
        from fstore.engine.session import configure_s3a

        configure_s3a(spark, self.settings)
        self._spark = spark
        return self

    @property
    def online(self):
        """The online store (Redis when ``REDIS_URL`` is set, else the embedded one), opened on first use."""
        if self._online is None:
            with self._lock:
                if self._online is None:
                    from fstore.storage.online import open_online_store

                    self._online = open_online_store(self.settings)
        return self._online

    @property
    def secrets(self):
        """The ``SecretBox`` that seals and opens source secrets with this deployment's key."""
        if self._secrets is None:
            from fstore.definitions.secrets import SecretBox

            self._secrets = SecretBox.from_settings(self.settings)
        return self._secrets

    def close(self) -> None:
        """Write the audit rows still queued, release connections (the Spark session is left to its owner)."""
        from fstore.ops import audit

        audit.close(self.engine)
        if self._online is not None:
            self._online.close()
        self.engine.dispose()

    # -- registry ---------------------------------------------------------------------------

    def create_entity(self, body: dict, *, actor: str = "") -> dict:
        from fstore.registry import repo

        with self.transaction() as s:
            return repo.create_entity(s, body, actor=actor)

    def update_entity(self, ref: str | int, changes: dict, *, actor: str = "") -> dict:
        from fstore.registry import repo

        with self.transaction() as s:
            return repo.update_entity(s, ref, changes, actor=actor)

    def get_entity(self, ref: str | int, *, version: int | None = None) -> dict:
        from fstore.registry import repo

        with self.transaction() as s:
            return repo.get_entity(s, ref, version=version)

    def list_entities(self, *, query: str | None = None, limit: int = 50, offset: int = 0) -> dict:
        from fstore.registry import repo

        with self.transaction() as s:
            return repo.list_entities(s, query=query, limit=limit, offset=offset)

    def delete_entity(self, ref: str | int, *, actor: str = "") -> None:
        from fstore.registry import repo

        with self.transaction() as s:
            repo.delete_entity(s, ref, actor=actor)

    def entity_versions(self, ref: str | int) -> list[dict]:
        from fstore.registry import repo

        with self.transaction() as s:
            return repo.entity_versions(s, ref)

    def create_feature_set(self, body: dict, *, actor: str = "", allow_missing_sources: bool = False) -> dict:
        from fstore.registry import repo

        with self.transaction() as s:
            return repo.create_feature_set(s, body, actor=actor, store=self, allow_missing_sources=allow_missing_sources)

    def update_feature_set(self, ref: str | int, changes: dict, *, actor: str = "", allow_missing_sources: bool = False) -> dict:
        from fstore.registry import repo

        with self.transaction() as s:
            return repo.update_feature_set(s, ref, changes, actor=actor, store=self, allow_missing_sources=allow_missing_sources)

    def get_feature_set(self, ref: str | int, *, version: int | None = None) -> dict:
        from fstore.registry import repo

        with self.transaction() as s:
            return repo.get_feature_set(s, ref, version=version)

    def list_feature_sets(self, *, query: str | None = None, entity: str | None = None, owner: str | None = None,
                          tag: str | None = None, limit: int = 50, offset: int = 0, grant=None) -> dict:
        """Feature sets matching the filters; with ``grant`` (an ``auth.Grant``) only those it allows."""
        from fstore.registry import repo

        with self.transaction() as s:
            return repo.list_feature_sets(s, query=query, entity=entity, owner=owner, tag=tag, limit=limit, offset=offset,
                                          grant=grant)

    def delete_feature_set(self, ref: str | int, *, actor: str = "") -> None:
        """Delete a set from the registry and its values from the online store (never served again);
        its offline table stays for the training sets that read it."""
        from fstore.serving import online as serving
        from fstore.registry import repo

        with self.transaction() as s:
            name = repo.delete_feature_set(s, ref, actor=actor)
            self.online.delete_feature_set(name)  # fails before the registry commits: nothing half-deleted
        serving.clear_caches(self)

    def feature_set_versions(self, ref: str | int) -> list[dict]:
        from fstore.registry import repo

        with self.transaction() as s:
            return repo.feature_set_versions(s, ref)

    def create_feature(self, body: dict, *, actor: str = "", allow_missing_sources: bool = False) -> dict:
        from fstore.registry import repo

        with self.transaction() as s:
            return repo.create_feature(s, body, actor=actor, store=self, allow_missing_sources=allow_missing_sources)

    def update_feature(self, ref: str | int, changes: dict, *, feature_set: str | None = None, actor: str = "", allow_missing_sources: bool = False) -> dict:
        from fstore.registry import repo

        with self.transaction() as s:
            return repo.update_feature(s, ref, changes, feature_set=feature_set, actor=actor, store=self, allow_missing_sources=allow_missing_sources)

    def get_feature(self, ref: str | int, *, feature_set: str | None = None, version: int | None = None) -> dict:
        from fstore.registry import repo

        with self.transaction() as s:
            return repo.get_feature(s, ref, feature_set=feature_set, version=version)

    def list_features(self, *, query: str | None = None, feature_set: str | None = None, entity: str | None = None,
                      owner: str | None = None, data_type: str | None = None, tag: str | None = None,
                      limit: int = 50, offset: int = 0, grant=None) -> dict:
        """Features matching the filters; with ``grant`` (an ``auth.Grant``) only those it allows."""
        from fstore.registry import repo

        with self.transaction() as s:
            return repo.list_features(s, query=query, feature_set=feature_set, entity=entity, owner=owner,
                                      data_type=data_type, tag=tag, limit=limit, offset=offset, grant=grant)

    def delete_feature(self, ref: str | int, *, feature_set: str | None = None, actor: str = "") -> None:
        from fstore.registry import repo

        with self.transaction() as s:
            repo.delete_feature(s, ref, feature_set=feature_set, actor=actor)

    def feature_versions(self, ref: str | int, *, feature_set: str | None = None) -> list[dict]:
        from fstore.registry import repo

        with self.transaction() as s:
            return repo.feature_versions(s, ref, feature_set=feature_set)

    def search(self, text: str, *, kinds: tuple[str, ...] = ("entity", "feature_set", "feature"),
               limit: int = 50, offset: int = 0, grant=None) -> dict:
        """Search; with ``grant`` (an ``auth.Grant``) only the sets and features it allows."""
        from fstore.registry import repo

        with self.transaction() as s:
            return repo.search(s, text, kinds=kinds, limit=limit, offset=offset, grant=grant)

    def plan(self, path: str, *, allow_missing_sources: bool = False) -> dict:
        """What ``apply(path)`` would change, without changing anything."""
        from fstore.registry.apply import plan

        return plan(self, path, allow_missing_sources=allow_missing_sources)

    def apply(self, path: str, *, actor: str = "", allow_missing_sources: bool = False) -> dict:
        """Apply a YAML file or folder of definitions declaratively, in one transaction."""
        from fstore.registry.apply import apply

        return apply(self, path, actor=actor, allow_missing_sources=allow_missing_sources)

    def feature_set_version(self, ref: str | int, version: int | None = None) -> "FeatureSetVersion":
        """The resolved domain object of a feature set version (the compiler's and the engine's input: its
        source's secrets decrypted and ``${...}`` references replaced, in memory only)."""
        from fstore.registry import repo

        with self.transaction() as s:
            return repo.load_feature_set_version(s, ref, version=version, secrets=self.secrets)

    # -- computation ------------------------------------------------------------------------

    def compile(self, ref: str | int, *, version: int | None = None) -> str:
        """The Spark SQL that computes a feature set version, as a user can read it."""
        from fstore.compiler import compile_feature_set

        return compile_feature_set(self.feature_set_version(ref, version)).sql

    def materialize(self, ref: str | int, start: datetime, end: datetime, *, actor: str = "",
                    kind: str = "full", progress: Callable[[dict], None] | None = None) -> dict:
        """Compute ``[start, end)`` into the offline and online stores; returns the finished run.
        ``progress`` receives an event as each stage starts and ends (``fstore.compute.materialize.Progress``)."""
        from fstore.compute.materialize import materialize

        return materialize(self, ref, start, end, actor=actor, kind=kind, progress=progress)

    def push(self, name: str | int, rows, *, to: str = "online", actor: str = "") -> dict:
        """Compute source rows of a feature set at once (row features, DuckDB in process) and write them
        ``to`` ``online`` (newer-wins, visible on return), ``offline`` (an idempotent Delta append) or
        ``online_and_offline``. See ``fstore.compute.push``."""
        from fstore.compute.push import push

        return push(self, name, rows, to=to, actor=actor)

    def materialize_many(self, refs: list[str | int], start: datetime, end: datetime, *, actor: str = "",
                         progress: Callable[[dict], None] | None = None) -> list[dict]:
        """Materialize several sets over ``[start, end)``, one run each, sets over the same source reading it
        once (``fstore.compute.materialize.materialize_many``). Returns one record per set in order: its run
        (``succeeded`` or ``failed`` with the error; one failing does not stop the others), or ``refused``."""
        from fstore.compute.materialize import materialize_many

        return materialize_many(self, refs, start, end, actor=actor, progress=progress)

    def start_materialization(self, ref: str | int, start: datetime, end: datetime, *, actor: str = "") -> dict:
        """Start a run in the background and return it at once (status ``pending``/``running``)."""
        from fstore.compute.materialize import start_materialization

        return start_materialization(self, ref, start, end, actor=actor)

    def materialize_incremental(self, ref: str | int, *, end: datetime | None = None, actor: str = "",
                                progress: Callable[[dict], None] | None = None) -> dict:
        """Compute from the set's watermark to ``end`` (default now); ``progress`` as for ``materialize``."""
        from fstore.compute.materialize import materialize_incremental

        return materialize_incremental(self, ref, end=end, actor=actor, progress=progress)

    def backfill(self, ref: str | int, start: datetime, end: datetime, *, chunk_seconds: int = 86400,
                 actor: str = "", progress: Callable[[dict], None] | None = None) -> dict:
        """Materialize a long range chunk by chunk, resuming after the last chunk done."""
        from fstore.compute.backfill import backfill

        return backfill(self, ref, start, end, chunk_seconds=chunk_seconds, actor=actor, progress=progress)

    def vacuum_offline(self, ref: str | int, *, retain_hours: int | None = None, dry_run: bool = False,
                       actor: str = "") -> dict:
        """Delete offline files older versions no longer need (training sets' versions kept); see ``fstore.compute.vacuum``."""
        from fstore.compute.vacuum import DEFAULT_RETAIN_HOURS, vacuum_offline

        return vacuum_offline(self, ref, retain_hours=DEFAULT_RETAIN_HOURS if retain_hours is None else retain_hours,
                              dry_run=dry_run, actor=actor)

    def apply_retention(self, ref: str | int | None = None, *, dry_run: bool = False, retain_hours: int | None = None,
                        now: "datetime | None" = None, actor: str = "") -> list[dict]:
        """Delete offline rows older than each set's ``retention``, then vacuum; see ``fstore.compute.retention``."""
        from fstore.compute.retention import apply_retention
        from fstore.compute.vacuum import DEFAULT_RETAIN_HOURS

        return apply_retention(self, ref, dry_run=dry_run, actor=actor, now=now,
                               retain_hours=DEFAULT_RETAIN_HOURS if retain_hours is None else retain_hours)

    def apply_tiers(self, ref: str | int | None = None, *, dry_run: bool = False, now: "datetime | None" = None,
                    actor: str = "") -> list[dict]:
        """Move offline days older than each set's ``cold_after`` to the cold tier; see ``fstore.compute.tiers``."""
        from fstore.compute.tiers import apply_tiers

        return apply_tiers(self, ref, dry_run=dry_run, now=now, actor=actor)

    def reload_online(self, ref: str | int, *, actor: str = "") -> dict:
        """Rebuild a set's online values from its offline table (newest row per key), without recomputing:
        what to run when the online store restarted empty. See ``fstore.compute.reload``."""
        from fstore.compute.reload import reload_online
        from fstore.serving import online as serving

        done = reload_online(self, ref, actor=actor)
        serving.clear_caches(self)  # this process stops reporting the set degraded at once
        return done

    def cost_report(self, days: int = 30) -> dict:
        """Cost per feature set and in total over ``days`` days; see ``fstore.ops.cost``."""
        from fstore.ops.cost import cost_report

        return cost_report(self, days)

    def unused_features(self, days: int) -> dict:
        """Features neither served online nor used in a training set for ``days`` days; see ``fstore.ops.unused``."""
        from fstore.ops.unused import unused_features

        return unused_features(self, days)

    def drop_unused_online(self, *, days: int | None = None, actor: str = "", dry_run: bool = False) -> dict:
        """Apply usage-based retention (``UNUSED_ONLINE_DROP_DAYS``): drop unused features' online values."""
        from fstore.ops.unused import drop_unused
        from fstore.serving import online as serving

        done = drop_unused(self, days=days, actor=actor, dry_run=dry_run)
        serving.clear_caches(self)  # this process answers the drop at once
        return done

    def restore_online_feature(self, set_name: str, feature: str, *, actor: str = "") -> dict:
        """Undo a drop of usage-based retention: forget it, then reload the set's online values from offline."""
        from fstore.registry.drops import restore

        with self.transaction() as s:
            restore(s, set_name, feature)
        return {"feature_set": set_name, "feature": feature, "reload": self.reload_online(set_name, actor=actor)}

    def get_run(self, run_id: str) -> dict:
        from fstore.registry import runs

        with self.transaction() as s:
            return runs.get_run(s, run_id)

    def list_runs(self, ref: str | int | None = None, *, limit: int = 50, offset: int = 0) -> dict:
        from fstore.registry import runs

        with self.transaction() as s:
            return runs.list_runs(s, ref, limit=limit, offset=offset)

    # -- serving ----------------------------------------------------------------------------

    def get_online_features(self, *, features: list[str], entities: dict | list,
                            feature_sets: list[str] | None = None, at: "datetime | str | int | None" = None) -> dict:
        """Latest values per entity from the online store: ``{"features": …, "metadata": …}``.

        ``at`` (a datetime, ISO text or epoch micros; default now) is the instant the answer is for:
        windowed features are their window at ``at`` and TTLs are judged at ``at``. The server always
        answers at now; ``at`` lets a caller (a test, the skew check) compare with historical retrieval
        at the same instant. It is meant for instants at or after the data loaded online.
        """
        from fstore.storage.online.base import to_micros
        from fstore.serving.online import get_online_features

        return get_online_features(self, features=features, entities=entities, feature_sets=feature_sets,
                                   now_micros=None if at is None else to_micros(at, field_name="at"))

    def get_historical_features(self, *, entity_df: Any = None, features: list[str] | None = None,
                                feature_sets: list[str] | None = None,
                                as_of: int | str | datetime | None = None, timestamp_column: str | None = None,
                                save_as: str | None = None, actor: str = "", entities: Any = None,
                                start: Any = None, end: Any = None, every: Any = None,
                                output_path: str | None = None, output_format: str = "parquet"):
        """Point-in-time-correct features for each entity row; ``.to_df()`` / ``.to_spark()``.

        Without entity rows: ``feature_sets=[…], start=…, end=…, every="1d"`` answers every entity of
        the sets at each instant of ``[start, end)`` (``fstore.serving.retrieval.snapshots``; ``features``
        default to all of the sets'), written to ``output_path`` (Parquet or Delta) when given.

        ``entities`` is another name for ``entity_df`` (the spec's SDK example writes
        ``entities=train_df[["user_id", "timestamp"]]``); the time column is found by name
        (``event_timestamp``, ``timestamp``, ``ts``) unless ``timestamp_column`` names it. A
        feature asked by its bare name is the column of that name in the result.
        """
        from fstore.core.errors import InvalidDefinition
        from fstore.serving.retrieval import get_historical_features

        if every is not None or start is not None or end is not None:
            if entity_df is not None or entities is not None or save_as is not None or as_of is not None:
                raise InvalidDefinition("start, end and every stand for the entity rows: give no entity_df, "
                                        "as_of or save_as with them", field="every")
            from fstore.serving.retrieval.snapshots import get_snapshot_features

            return get_snapshot_features(self, feature_sets=feature_sets, features=features, start=start, end=end,
                                         every=every, output_path=output_path, output_format=output_format)
        if output_path is not None:
            raise InvalidDefinition("output_path goes with start, end and every; for entity rows of your own "
                                    "use start_batch_retrieval", field="output_path")
        if not features:
            raise InvalidDefinition("features must be a non-empty list of feature names", field="features")
        if (entity_df is None) == (entities is None):
            raise InvalidDefinition("give the entity rows once: entity_df or entities", field="entity_df")
        entity_df = entities if entity_df is None else entity_df

        return get_historical_features(self, entity_df=entity_df, features=features, feature_sets=feature_sets,
                                       as_of=as_of, timestamp_column=timestamp_column, save_as=save_as, actor=actor)

    def start_batch_retrieval(self, *, entity_source: dict, features: list[str], output_path: str,
                              output_format: str = "delta", feature_sets: list[str] | None = None,
                              actor: str = "") -> dict:
        """Run a large retrieval as a job writing Delta/Parquet; returns the job at once."""
        from fstore.serving.retrieval import start_batch_retrieval

        return start_batch_retrieval(self, entity_source=entity_source, features=features, output_path=output_path,
                                     output_format=output_format, feature_sets=feature_sets, actor=actor)

    def get_job(self, job_id: str) -> dict:
        from fstore.registry import jobs

        with self.transaction() as s:
            return jobs.get_job(s, job_id)

    # -- training sets ----------------------------------------------------------------------

    def list_training_sets(self, *, limit: int = 50, offset: int = 0, grant=None) -> dict:
        """Saved training sets, newest first: ``{"items", "total", "limit", "offset"}``; with ``grant``, only
        those reading nothing outside it."""
        from fstore.registry import training_sets

        with self.transaction() as s:
            return training_sets.list_training_sets(s, limit=limit, offset=offset, grant=grant)

    def get_training_set(self, name: str | int) -> dict:
        """A saved training set: features, versions, Delta versions, entity count, output path."""
        from fstore.registry import training_sets

        with self.transaction() as s:
            return training_sets.get_training_set(s, name)

    def recreate_training_set(self, name: str | int):
        """Re-run a saved training set's retrieval pinned to its recorded versions; ``.to_df()`` / ``.to_spark()``."""
        from fstore.serving.retrieval import recreate_training_set

        return recreate_training_set(self, name)
