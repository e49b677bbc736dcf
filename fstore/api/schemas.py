"""Pydantic models of the REST API: they validate requests and generate ``/openapi.json``.

Definition bodies (entities, feature sets, features) are deliberately permissive:
they check the JSON types of the fields users write and let unknown fields
through, because the domain model (``fstore.definitions.model``) is the one place that
decides what a definition may contain and names the field at fault. Views hand
the raw JSON object on, never a re-serialized model, so what the user wrote is
what the registry sees.
"""
from __future__ import annotations

import copy
import functools
from datetime import datetime, timezone
from typing import Annotated, Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fstore.core.errors import InvalidDefinition
from fstore.registry.repo import MAX_LIMIT
from fstore.compute.vacuum import DEFAULT_RETAIN_HOURS

_BODY = ConfigDict(strict=True, extra="allow")
_CLOSED_BODY = ConfigDict(strict=True, extra="forbid")
_QUERY = ConfigDict(extra="forbid")

# A reference in a path or filter: a numeric id or an identifier. Checked here, at the edge, so that a
# look-alike (a Unicode digit, a 30-digit number) is a 422 naming the parameter, never a database error.
REF_PATTERN = r"^(?:[0-9]{1,15}|[A-Za-z_][A-Za-z0-9_]{0,62})$"
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
FEATURE_REF_PATTERN = r"^(?:[A-Za-z_][A-Za-z0-9_]{0,62}(?:@[0-9]{1,9})?:)?[A-Za-z_][A-Za-z0-9_]{0,62}$"
# Search text and filters: printable (SQLite ends a LIKE pattern at NUL, so ``?q=%00`` matched every row).
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
IdNumber = Annotated[int, Field(ge=0, le=10**15)]
RefText = Annotated[str, Field(pattern=REF_PATTERN)]
FeatureRefText = Annotated[str, Field(pattern=FEATURE_REF_PATTERN)]

Tags = Union[dict[str, str], list[str]]
Duration = Union[int, str]


# -- path and query parameters ----------------------------------------------------------------

class RefPath(BaseModel):
    id_or_name: str = Field(description="numeric id or name", pattern=REF_PATTERN)


class RunPath(BaseModel):
    id_or_name: str = Field(description="numeric id or name of the feature set", pattern=REF_PATTERN)
    run_id: str = Field(pattern=ID_PATTERN)


class RunIdPath(BaseModel):
    run_id: str = Field(pattern=ID_PATTERN)


class JobPath(BaseModel):
    job_id: str = Field(pattern=ID_PATTERN)


class NoQuery(BaseModel):
    """For a route that takes no query parameters: any given is a 422 naming it, as on every other route."""

    model_config = _QUERY

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The model's JSON schema, made once per set of arguments: flask-openapi3 asks for it on every request
        of a route with a query model (~0.5 ms, a tenth of a push); a copy, so no caller changes the kept one."""
        return copy.deepcopy(_no_query_schema(cls, args, tuple(sorted(kwargs.items()))))


@functools.lru_cache(maxsize=32)
def _no_query_schema(cls: type, args: tuple, kwargs: tuple) -> dict[str, Any]:
    return BaseModel.model_json_schema.__func__(cls, *args, **dict(kwargs))


class Page(BaseModel):
    model_config = _QUERY
    limit: int = Field(50, ge=1, le=MAX_LIMIT, description="at most this many items")
    offset: int = Field(0, ge=0, le=10_000_000, description="skip this many items")


class EntityQuery(Page):
    q: Optional[str] = Field(None, max_length=200, pattern=PRINTABLE, description="text searched in name and description")


class FeatureSetQuery(EntityQuery):
    entity: Optional[str] = Field(None, pattern=REF_PATTERN)
    owner: Optional[str] = Field(None, max_length=200, pattern=PRINTABLE)
    tag: Optional[str] = Field(None, max_length=200, pattern=PRINTABLE)


class FeatureQuery(FeatureSetQuery):
    feature_set: Optional[str] = Field(None, pattern=REF_PATTERN)
    data_type: Optional[str] = Field(None, max_length=50, pattern=PRINTABLE)


class SearchQuery(Page):
    q: str = Field(min_length=1, max_length=200, pattern=PRINTABLE,
                   description="text searched in name, description, owner and tags")
    kinds: Optional[str] = Field(None, max_length=100, description="comma-separated: entity, feature_set, feature")

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, value: str | None) -> str | None:
        if value is None:
            return value
        allowed = {"entity", "feature_set", "feature"}
        given = [k.strip() for k in value.split(",") if k.strip()]
        unknown = [k for k in given if k not in allowed]
        if unknown or not given:
            raise ValueError(f"kinds must be a comma-separated list of {', '.join(sorted(allowed))}")
        return value

    def kind_tuple(self) -> tuple[str, ...]:
        if self.kinds is None:
            return ("entity", "feature_set", "feature")
        return tuple(k.strip() for k in self.kinds.split(",") if k.strip())


class VersionQuery(BaseModel):
    model_config = _QUERY
    version: Optional[int] = Field(None, ge=1, le=2**31 - 1)


class FeatureGetQuery(VersionQuery):
    feature_set: Optional[str] = Field(None, pattern=REF_PATTERN, description="the set, when the name is in several")


class FeatureSetRefQuery(BaseModel):
    model_config = _QUERY
    feature_set: Optional[str] = Field(None, pattern=REF_PATTERN, description="the set, when the name is in several")


class DefinitionQuery(BaseModel):
    """For a route that registers a definition: a source path that does not exist is refused unless allowed."""

    model_config = _QUERY
    allow_missing_sources: bool = Field(False, description="accept a local source path that does not exist yet "
                                                           "(its SQL is checked when a run of the set fails)")


class FeatureDefinitionQuery(DefinitionQuery):
    feature_set: Optional[str] = Field(None, pattern=REF_PATTERN, description="the set, when the name is in several")


# -- definitions --------------------------------------------------------------------------------

class EntityBody(BaseModel):
    """An entity: what features describe, and its join key column(s)."""

    model_config = _BODY
    name: str = Field(examples=["user"])
    join_keys: Optional[Union[list[str], str]] = Field(None, examples=[["user_id"]])
    join_key: Optional[Union[list[str], str]] = None
    value_type: Optional[str] = Field(None, examples=["int"])
    description: Optional[str] = None


class EntityPatch(EntityBody):
    name: Optional[str] = None  # type: ignore[assignment]


class SourceBody(BaseModel):
    """Where a feature set's rows come from: exactly one of path (+ format), table, query or kafka (+ schema)."""

    model_config = _BODY
    path: Optional[str] = None
    format: Optional[str] = Field(None, examples=["parquet"])
    table: Optional[str] = None
    query: Optional[str] = None
    event_timestamp_column: Optional[str] = None
    timestamp_column: Optional[str] = None
    created_timestamp_column: Optional[str] = None
    entity_columns: Optional[list[str]] = None
    options: Optional[dict[str, Any]] = None
    type: Optional[str] = None
    kafka: Optional[dict[str, Any]] = Field(None, examples=[{"bootstrap_servers": "127.0.0.1:9092", "topic": "clicks",
                                                             "format": "json"}])
    schema_: Optional[dict[str, str]] = Field(None, alias="schema", examples=[{"user_id": "int", "ts": "timestamp"}])


class FeatureSetBody(BaseModel):
    """A feature set: features computed together from one source, keyed by the same entities."""

    model_config = _BODY
    name: str = Field(examples=["user_profile"])
    entities: Union[list[str], str] = Field(examples=[["user_id"]])
    description: Optional[str] = None
    owner: Optional[str] = None
    source_type: Optional[str] = Field(None, examples=["batch"])
    offline_enabled: Optional[bool] = None
    online_enabled: Optional[bool] = None
    materialization_schedule: Optional[str] = Field(None, examples=["0 * * * *"])
    source: Optional[SourceBody] = None
    ttl: Optional[Duration] = Field(None, examples=["30d"])
    ttl_seconds: Optional[Duration] = None
    allowed_lateness: Optional[Duration] = Field(None, examples=["2d"], description="late events older than this "
                                                 "before the watermark are counted, not processed (default: any age)")
    allowed_lateness_seconds: Optional[Duration] = None
    retention: Optional[Duration] = Field(None, examples=["400d"], description="offline rows older than this "
                                          "(by event time) are deleted by `fstore retention apply` (default: kept)")
    retention_seconds: Optional[Duration] = None
    cold_after: Optional[Duration] = Field(None, examples=["90d"], description="offline days older than this move "
                                           "to the cold table (COLD_STORAGE_PATH) by `fstore tiers apply` (default: never)")
    cold_after_seconds: Optional[Duration] = None
    anomaly_policy: Optional[dict[str, Any]] = Field(None, examples=[{"on_anomaly": "fail", "window": 20}],
                                                     description="robust z-score anomaly rules of the set's runs")
    tags: Optional[Tags] = None
    features: Optional[list[dict[str, Any]]] = Field(None, description="features created with the set (version 1)")


class FeatureSetPatch(FeatureSetBody):
    name: Optional[str] = None  # type: ignore[assignment]
    entities: Optional[Union[list[str], str]] = None  # type: ignore[assignment]


class FeatureBody(BaseModel):
    """A feature: a SQL expression, a window aggregation, a composite of other features, or a Python function."""

    model_config = _BODY
    name: str = Field(examples=["user_age"])
    feature_set_id: Optional[Union[IdNumber, RefText]] = Field(None, examples=["user_profile"])
    feature_set: Optional[Union[IdNumber, RefText]] = None
    data_type: Optional[str] = Field(None, examples=["int"])
    type: Optional[str] = None
    description: Optional[str] = None
    transformation: Optional[str] = Field(None, examples=["EXTRACT(YEAR FROM AGE(current_date, date_of_birth))"])
    python: Optional[str] = None
    dialect: Optional[str] = Field(None, examples=["postgres"])
    validation_rules: Optional[dict[str, Any]] = None
    default_value: Any = None
    window_size: Optional[Duration] = None
    aggregation: Optional[str] = None
    window_filter: Optional[str] = None
    source_features: Optional[list[str]] = None
    tags: Optional[Tags] = None
    owner: Optional[str] = None


class FeaturePatch(FeatureBody):
    name: Optional[str] = None  # type: ignore[assignment]


# -- computation ----------------------------------------------------------------------------------

def parse_instant(value: Any, field: str) -> datetime:
    """An ISO 8601 date or timestamp with any offset (naive means UTC), as an aware UTC datetime."""
    if not isinstance(value, str):
        raise InvalidDefinition(f"{field} must be an ISO 8601 string such as 2024-01-01T00:00:00Z", field=field)
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidDefinition(f"{field} {value!r} is not an ISO 8601 date or timestamp", field=field) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


class VacuumBody(BaseModel):
    """What an offline vacuum keeps: files removed less than ``retain_hours`` ago (and training sets' versions)."""

    model_config = _CLOSED_BODY
    retain_hours: int = Field(DEFAULT_RETAIN_HOURS, ge=0, le=1_000_000, description="keep files removed less than this many hours ago")
    dry_run: bool = Field(False, description="only list the files that would be deleted")


class ReloadBody(BaseModel):
    """An online reload takes no options: the body is ``{}``."""

    model_config = _CLOSED_BODY


class MaterializeBody(BaseModel):
    """The range to compute, ``[start_date, end_date)``; ``start``/``end`` are accepted too."""

    model_config = _CLOSED_BODY
    start_date: Optional[str] = Field(None, examples=["2024-01-01T00:00:00Z"])
    end_date: Optional[str] = Field(None, examples=["2024-02-01T00:00:00Z"])
    start: Optional[str] = None
    end: Optional[str] = None

    def range(self) -> tuple[datetime, datetime]:
        """The parsed ``[start, end)``; ``InvalidDefinition`` naming the field when it is missing or bad."""
        if self.start_date is not None and self.start is not None:
            raise InvalidDefinition("give start_date or start, not both", field="start")
        if self.end_date is not None and self.end is not None:
            raise InvalidDefinition("give end_date or end, not both", field="end")
        start = self.start_date if self.start_date is not None else self.start
        end = self.end_date if self.end_date is not None else self.end
        if start is None:
            raise InvalidDefinition("start_date is required", field="start_date")
        if end is None:
            raise InvalidDefinition("end_date is required", field="end_date")
        start_at, end_at = parse_instant(start, "start_date"), parse_instant(end, "end_date")
        if start_at >= end_at:
            raise InvalidDefinition(f"end_date {end} must be after start_date {start}", field="end_date")
        return start_at, end_at


# -- serving -----------------------------------------------------------------------------------------

class OnlineBody(BaseModel):
    """Latest feature values for entity keys: ``entities`` as ``{"user_id": [1, 2]}`` or a list of key rows."""

    model_config = _CLOSED_BODY
    feature_sets: Optional[list[RefText]] = Field(None, examples=[["user_profile"]])
    entities: Union[dict[str, Any], list[dict[str, Any]]] = Field(examples=[{"user_id": [1001, 1002]}])
    features: list[FeatureRefText] = Field(examples=[["user_age", "account_balance"]])


class PushBody(BaseModel):
    """Rows of a feature set's source to compute at once and write ``to`` online, offline or both
    (``fstore.compute.push``); a row may carry a ``push_id`` (its event id; default: a hash of the row)."""

    model_config = _CLOSED_BODY
    feature_set: RefText = Field(examples=["user_clicks"])
    rows: list[dict[str, Any]] = Field(min_length=1, examples=[[{"user_id": 1001, "event_timestamp": "2024-01-15T00:00:00Z",
                                                                   "clicks": 3}]])
    to: str = Field("online", examples=["online_and_offline"])


class EntityFrame(BaseModel):
    """Entity rows as a table: column names and rows of values."""

    model_config = _CLOSED_BODY
    columns: list[str] = Field(min_length=1, examples=[["user_id", "event_timestamp"]])
    data: list[list[Any]] = Field(examples=[[[1001, "2024-01-15T00:00:00Z"]]])

    @model_validator(mode="after")
    def _rectangular(self) -> "EntityFrame":
        width = len(self.columns)
        if len(set(self.columns)) != width:
            raise InvalidDefinition("entity_df.columns lists a name twice", field="entity_df.columns")
        for number, row in enumerate(self.data):
            if len(row) != width:
                raise InvalidDefinition(f"entity_df row {number} has {len(row)} values for {width} columns",
                                        field="entity_df.data")
        return self

    def to_pandas(self):
        """The rows as a pandas DataFrame; retrieval itself checks the columns and normalizes timestamps."""
        import pandas as pd

        return pd.DataFrame(self.data, columns=self.columns)


class HistoricalBody(BaseModel):
    """Point-in-time-correct features for each entity row."""

    model_config = _CLOSED_BODY
    feature_sets: Optional[list[RefText]] = Field(None, examples=[["user_profile"]])
    entity_df: EntityFrame
    features: list[FeatureRefText] = Field(examples=[["user_age", "purchases_last_30d"]])
    as_of: Optional[Union[int, str]] = Field(None, description="a Delta version or a timestamp")
    timestamp_column: Optional[str] = Field(None, max_length=63)
    save_as: Optional[str] = Field(None, max_length=63, description="record the result as a training set")


class SnapshotBody(BaseModel):
    """Features of every entity of the sets at each instant of ``[start, end)`` spaced ``every`` (no entity rows)."""

    model_config = _CLOSED_BODY
    feature_sets: list[RefText] = Field(min_length=1, examples=[["user_profile"]])
    features: Optional[list[FeatureRefText]] = Field(None, description="default: every feature of the sets")
    start: str = Field(min_length=1, max_length=64, examples=["2026-07-01T00:00:00Z"])
    end: str = Field(min_length=1, max_length=64, examples=["2026-08-01T00:00:00Z"])
    every: Union[int, str] = Field(examples=["1d"], description="a duration like 1d, 6h, or seconds")
    output_path: Optional[str] = Field(None, min_length=1, description="write the rows here instead of answering them")
    output_format: str = Field("parquet", examples=["parquet", "delta"])


class BatchBody(BaseModel):
    """A large retrieval run as a job: entity rows from a path or table, output to a path."""

    model_config = _CLOSED_BODY
    entity_source: dict[str, Any] = Field(examples=[{"path": "/data/entities.parquet", "format": "parquet"}])
    features: list[FeatureRefText]
    output_path: str = Field(min_length=1)
    output_format: str = Field("delta", examples=["delta", "parquet"])
    feature_sets: Optional[list[RefText]] = None
