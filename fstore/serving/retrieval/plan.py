"""What a historical retrieval computes, whatever the engine: the plan per feature set and the result.

``plan_set`` decides how each feature of a set is answered at label time (read
point-in-time from the offline store, a window evaluated at ``t``, or a composite
recomputed from them); ``output_columns`` and ``output_name`` name the result's
columns; ``RetrievalResult`` holds the rows (a Spark plan, or an Arrow table on
DuckDB); ``normalize_as_of`` and ``pinned_read`` turn ``as_of`` into what to read.
The engines (``historical`` on Spark, ``historical_duckdb``) and training sets
build on these.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable

from fstore.compiler.dialect import quote
from fstore.core.errors import InvalidDefinition
from fstore.compiler import features_read, reads_only_features
from fstore.registry.references import FeatureGroup
from fstore.serving.retrieval.entities import ROW, TS, Entities, check_keys

if TYPE_CHECKING:
    from fstore.definitions.model import FeatureSetVersion
    from fstore.core.context import StoreContext


def output_name(written: str) -> str:
    """The column a requested feature is answered under (see the module docstring)."""
    if ":" not in written:
        return written
    set_part, name = written.split(":", 1)
    return f"{set_part.split('@', 1)[0]}__{name}"


@dataclass
class RetrievalResult:
    """The features of each entity row: a Spark plan computed when asked for, or (DuckDB) an Arrow table."""

    spark_df: Any  # Spark engine: unordered, with the row number column; None when ``arrow`` holds the rows
    columns: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    arrow: Any = None  # DuckDB engine: a pyarrow Table of ``columns``, in the entity frame's order
    spark_session: Callable[[], Any] | None = None  # where ``to_spark`` turns ``arrow`` into a DataFrame

    def to_spark(self, spark=None):
        """A Spark DataFrame of the rows in the entity frame's order (in ``spark``, default the store's session)."""
        if self.arrow is not None:
            return _arrow_to_spark(spark or self.spark_session(), self.arrow)
        return self.spark_df.orderBy(ROW).selectExpr(*[quote(c) for c in self.columns])

    def to_df(self):
        """A pandas DataFrame of the rows in the entity frame's order (index 0..n-1)."""
        if self.arrow is not None:
            return arrow_to_pandas(self.arrow)
        frame = self.spark_df.selectExpr(ROW, *[quote(c) for c in self.columns]).toPandas()
        frame = frame.sort_values(ROW, kind="stable").reset_index(drop=True)
        return frame.drop(columns=[ROW])


def arrow_to_pandas(table):
    """An Arrow result as Spark's ``toPandas`` gives it: timestamps naive UTC ``datetime64[ns]``, maps as dicts,
    nulls as Spark's."""
    import pandas as pd
    import pyarrow as pa

    frame = table.to_pandas(maps_as_pydicts="strict")
    for name, arrow_type in zip(table.column_names, table.schema.types):
        if pa.types.is_timestamp(arrow_type):
            values = frame[name]
            if isinstance(values.dtype, pd.DatetimeTZDtype):
                values = values.dt.tz_convert("UTC").dt.tz_localize(None)
            frame[name] = values.astype("datetime64[ns]")
    return frame


def utc_timestamps(table):
    """``table`` with every naive timestamp column marked UTC (what it means), as Spark writes timestamps."""
    import pyarrow as pa

    for i, arrow_type in enumerate(table.schema.types):
        if pa.types.is_timestamp(arrow_type) and arrow_type.tz is None:
            table = table.set_column(i, table.schema.field(i).name,
                                     table.column(i).cast(pa.timestamp(arrow_type.unit, tz="UTC")))
    return table


def _arrow_to_spark(spark, table):
    return spark.createDataFrame(utc_timestamps(table))


def normalize_as_of(as_of: Any, set_names: list[str]) -> int | datetime | None:
    """``as_of`` as a Delta version (one set only) or a naive UTC timestamp."""
    from fstore.engine.sources import to_utc_naive

    if as_of is None or as_of == "":
        return None
    if isinstance(as_of, bool):
        raise InvalidDefinition("as_of must be a Delta version or a timestamp", field="as_of")
    if isinstance(as_of, str) and as_of.strip().isascii() and as_of.strip().isdigit():
        as_of = int(as_of.strip())
    if isinstance(as_of, int):
        if as_of < 0:
            raise InvalidDefinition("as_of version must be >= 0", field="as_of")
        if len(set(set_names)) != 1:
            raise InvalidDefinition(f"as_of as a Delta version applies to one feature set; this request reads "
                                    f"{', '.join(sorted(set(set_names)))}: give a timestamp instead", field="as_of")
        return as_of
    if isinstance(as_of, (str, datetime)):
        try:
            return to_utc_naive(as_of)
        except InvalidDefinition:
            raise InvalidDefinition(f"as_of {as_of!r} is neither a Delta version nor an ISO 8601 timestamp",
                                    field="as_of") from None
    raise InvalidDefinition("as_of must be a Delta version or a timestamp", field="as_of")


@dataclass(frozen=True)
class _SetPlan:
    """How each feature of one set is computed at label time."""

    windows: dict[str, Any]        # name -> WindowSpec
    recompute: list[str]           # composites over windows, in dependency order
    offline: list[str]             # read point-in-time from the offline store


def plan_set(fsv: "FeatureSetVersion", wanted: tuple[str, ...]) -> _SetPlan:
    """Split the wanted features (and what their recomputation needs) into the three kinds.

    The set's SQL passes the policy first (``fstore.compiler.sql_policy``): a retrieval recomputes
    windows and composites from the stored definitions, which must not run refused SQL either.
    """
    from fstore.compiler.sql_policy import check_feature_set
    from fstore.compiler.windows import window_spec

    check_feature_set(fsv)
    specs = {f.name: window_spec(fsv, f, event_time=TS) for f in fsv.features}
    windowed = {n for n, s in specs.items() if s is not None}
    deps = {f.name: features_read(fsv, f) for f in fsv.features}
    over_windows: dict[str, bool] = {}

    def depends_on_window(name: str, seen: frozenset = frozenset()) -> bool:
        if name not in over_windows:
            feature = fsv.feature(name)
            if name in windowed:
                over_windows[name] = True
            elif feature.python or name in seen or not reads_only_features(fsv, feature):
                # A composite that also reads source columns has no source row at label time:
                # it keeps its point-in-time value from the offline store.
                over_windows[name] = False
            else:
                over_windows[name] = any(depends_on_window(d, seen | {name}) for d in deps[name])
        return over_windows[name]

    needed: set[str] = set()

    def need(name: str) -> None:
        if name in needed:
            return
        needed.add(name)
        if name not in windowed and depends_on_window(name):
            for d in deps[name]:
                need(d)

    for name in wanted:
        need(name)
    recompute = {n for n in needed if n not in windowed and depends_on_window(n)}
    ordered: list[str] = []

    def visit(name: str) -> None:
        if name in ordered or name not in recompute:
            return
        for d in sorted(deps[name]):
            visit(d)
        ordered.append(name)

    for f in fsv.features:
        visit(f.name)
    return _SetPlan(windows={f.name: specs[f.name] for f in fsv.features if f.name in needed and f.name in windowed},
                    recompute=ordered,
                    offline=[f.name for f in fsv.features if f.name in needed and f.name not in windowed
                             and f.name not in recompute])


def offline_hint(fsv: "FeatureSetVersion", as_of: Any) -> str:
    """Why a set may have no offline data to read, for the error saying so."""
    if not fsv.feature_set.offline_enabled:
        return "its offline_enabled is false, so its runs keep no offline data: enable it, then materialize"
    return "materialize it first" + ("; or the as_of is before its first version" if as_of is not None else "")


def pinned_read(store: "StoreContext", fsv: "FeatureSetVersion", as_of: int | datetime | None,
                version: int | None) -> dict[str, Any] | None:
    """For a retrieval ``as_of`` an offline version: what of the source the run that wrote that version read
    (``fstore.compute.source_read``), so windows at label time see the events that version saw, not today's."""
    if as_of is None:
        return None
    from fstore.storage import offline
    from fstore.registry import runs

    if version is None:
        try:
            version = offline.delta_table(store.settings, fsv.name, as_of).version()
        except Exception:  # noqa: BLE001 - no table at that time: nothing recorded to pin to
            return None
    with store.transaction() as s:
        return runs.source_read_at(s, runs.feature_set_row(s, fsv.name).id, int(version))


def output_columns(entities: Entities, groups: list[FeatureGroup]) -> list[tuple[str, str]]:
    """``(internal column, output name)`` per requested feature, after checking keys and names (both engines)."""
    outputs: list[tuple[str, str]] = []
    for group in groups:
        check_keys(entities, group.version.join_keys, group.version.name)
    for group in groups:
        for written in group.output_names:
            out = output_name(written)
            if out in entities.columns:
                raise InvalidDefinition(f"feature {written} would be answered as column {out}, which the entity_df "
                                        "already has; rename that column", field="features")
            if out in [o for _, o in outputs]:
                raise InvalidDefinition(f"two requested features would both be answered as column {out}", field="features")
            outputs.append((f"__fs_o{len(outputs)}", out))
    return outputs


def set_meta(group: FeatureGroup, plan: _SetPlan, version: int | None, as_of: int | datetime | None) -> dict[str, Any]:
    """What a retrieval records of one feature set (``meta["feature_sets"]``, training sets)."""
    fsv = group.version
    return {
        "feature_set": fsv.name, "version": fsv.version, "features": list(group.features),
        "output_names": list(group.output_names),
        "feature_versions": {n: fsv.feature_versions.get(n) for n in group.features},
        "offline_version": version,
        "as_of": as_of.isoformat() + "Z" if isinstance(as_of, datetime) else None,
        "exact_windows": sorted(plan.windows), "recomputed": plan.recompute,
    }
