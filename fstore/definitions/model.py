"""The domain model: entities, feature sets, features, windows, validation rules.

Small frozen, keyword-only dataclasses that validate themselves on construction
and do no I/O. ``from_dict`` reads the JSON/YAML shape a user writes (REST body,
YAML file) and names the offending field in every error; ``to_dict`` gives the
canonical shape the registry stores as a version's spec.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Mapping

from croniter import CroniterBadDateError, croniter

from fstore.core.errors import InvalidDefinition

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
SCALAR_TYPES = ("int", "float", "string", "bool", "timestamp")
DATA_TYPES = SCALAR_TYPES + tuple(f"list<{t}>" for t in SCALAR_TYPES)
_TYPE_ALIASES = {
    "integer": "int", "int32": "int", "int64": "int", "long": "int", "bigint": "int",
    "double": "float", "float64": "float", "float32": "float", "decimal": "float",
    "str": "string", "text": "string", "varchar": "string",
    "boolean": "bool", "datetime": "timestamp",
}
AGGREGATIONS = ("count", "sum", "avg", "min", "max", "stddev", "count_distinct", "last")
VIOLATION_POLICIES = ("null", "default", "drop_row", "fail")
DIALECTS = ("spark", "postgres")
SOURCE_FORMATS = ("parquet", "csv", "delta", "json")
SOURCE_TYPES = ("batch", "stream", "request")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)\s*$", re.ASCII)
_LONG_UNITS = {"second": "s", "minute": "m", "hour": "h", "day": "d", "week": "w"}
MAX_DURATION_SECONDS = 100 * 365 * 86_400  # TTLs and windows: beyond this, time arithmetic overflows somewhere


def check_name(value: Any, *, field_name: str = "name") -> str:
    """An identifier: letters, digits, underscore, at most 63 characters, not starting with a digit."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise InvalidDefinition(
            f"{field_name} {value!r} is not a valid name: use letters, digits and underscores, "
            "start with a letter or underscore, at most 63 characters",
            field=field_name,
        )
    return value


def normalize_data_type(value: Any, *, field_name: str = "data_type") -> str:
    """Canonical data type name (``int``, ``list<float>``…) from the spellings users write."""
    if not isinstance(value, str):
        raise InvalidDefinition(f"{field_name} must be a string, one of: {', '.join(DATA_TYPES)}", field=field_name)
    text = value.strip().lower().replace(" ", "")
    inner = None
    for open_, close in (("list<", ">"), ("list[", "]"), ("array<", ">"), ("array[", "]")):
        if text.startswith(open_) and text.endswith(close):
            inner = text[len(open_):-1]
            break
    if inner is not None:
        inner = _TYPE_ALIASES.get(inner, inner)
        text = f"list<{inner}>"
    else:
        text = _TYPE_ALIASES.get(text, text)
    if text not in DATA_TYPES:
        raise InvalidDefinition(f"{field_name} {value!r} is not a data type; use one of: {', '.join(DATA_TYPES)}", field=field_name)
    return text


def parse_duration(value: Any, *, field_name: str) -> int:
    """Seconds in a duration written ``30s``, ``15m``, ``1h``, ``7d``, ``2w``, ``30 days`` or a number of seconds."""
    if isinstance(value, bool):
        raise InvalidDefinition(f"{field_name} must be a duration like 30d or a number of seconds", field=field_name)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise InvalidDefinition(f"{field_name} must be a finite number of seconds", field=field_name)
        seconds = int(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        long = re.match(r"^(\d+)\s*(second|minute|hour|day|week)s?$", text, re.ASCII)
        if long:
            text = f"{long.group(1)}{_LONG_UNITS[long.group(2)]}"
        match = _DURATION_RE.match(text)
        if match:
            seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        elif text.isascii() and text.isdigit():
            seconds = int(text)
        else:
            raise InvalidDefinition(f"{field_name} {value!r} is not a duration; write e.g. 30s, 15m, 1h, 7d", field=field_name)
    else:
        raise InvalidDefinition(f"{field_name} must be a duration like 30d or a number of seconds", field=field_name)
    if seconds <= 0:
        raise InvalidDefinition(f"{field_name} must be positive", field=field_name)
    return seconds


def format_duration(seconds: int) -> str:
    """The shortest exact spelling of a duration (``86400`` → ``1d``)."""
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


def check_cron(value: Any, *, field_name: str = "materialization_schedule") -> str | None:
    """A five-field cron expression (or None); anything croniter cannot read is refused."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value.split()) != 5 or not croniter.is_valid(value):
        raise InvalidDefinition(f"{field_name} {value!r} is not a valid cron expression (five fields, e.g. '0 * * * *')", field=field_name)
    return value.strip()


def _check_fires(cron: str | None, field_name: str = "materialization_schedule") -> None:
    """Refuse a schedule no date matches (``0 0 30 2 *``: 30 February)."""
    if cron is None:
        return
    try:
        croniter(cron, datetime(2000, 1, 1)).get_next(datetime)
    except CroniterBadDateError:
        raise InvalidDefinition(f"{field_name} {cron!r} never fires: no date matches it", field=field_name) from None


def _check_length(seconds: int, field_name: str) -> None:
    if seconds > MAX_DURATION_SECONDS:
        raise InvalidDefinition(f"{field_name} of {format_duration(seconds)} is longer than 100 years", field=field_name)


def _check_rules_fit(feature: "Feature") -> None:
    """Refuse validation rules that cannot apply to the feature's type (they would reject every value)."""
    rules, data_type = feature.validation, feature.data_type
    where = f"feature {feature.name} is {data_type}"
    if rules.regex is not None and data_type != "string":
        raise InvalidDefinition(f"validation_rules.regex applies to string features; {where}", field="validation_rules.regex")
    for key in ("min_value", "max_value"):
        value = getattr(rules, key)
        if value is None:
            continue
        if data_type not in ("int", "float"):
            raise InvalidDefinition(f"validation_rules.{key} applies to int and float features; {where}",
                                    field=f"validation_rules.{key}")
        try:
            finite = math.isfinite(float(value))
        except OverflowError:
            finite = False
        if not finite:
            raise InvalidDefinition(f"validation_rules.{key} {value!r} is not a finite number within a double's range",
                                    field=f"validation_rules.{key}")
    if rules.allowed_values is not None:
        if not rules.allowed_values:
            raise InvalidDefinition("validation_rules.allowed_values must list at least one value",
                                    field="validation_rules.allowed_values")
        for value in rules.allowed_values:
            check_value_type(value, data_type, field_name="validation_rules.allowed_values")


def check_new(item: "FeatureSet | Feature") -> None:
    """The checks a new or changed definition must also pass.

    Kept out of ``from_dict``, which also reads stored definitions: one stored before a check
    existed stays readable (and can be changed), while no new one can break runs or retrieval.
    """
    if any(not name.strip() for name in item.tags):
        raise InvalidDefinition("a tag needs a name (tags has an empty one)", field="tags")
    if isinstance(item, FeatureSet):
        _check_fires(item.materialization_schedule)
        if item.ttl_seconds is not None:
            _check_length(item.ttl_seconds, "ttl")
    else:
        if item.window is not None:
            _check_length(item.window.size_seconds, "window_size")
        _check_rules_fit(item)


def _reject_unknown(data: Mapping[str, Any], allowed: set[str], what: str) -> None:
    if not isinstance(data, Mapping):
        raise InvalidDefinition(f"{what} must be an object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidDefinition(f"unknown field(s) for {what}: {', '.join(unknown)}", field=unknown[0])


def _aliased(data: Mapping[str, Any], name: str, alias: str, *, field_name: str | None = None) -> Any:
    """The value given under ``name`` or under its alias; both, with different values, is refused."""
    value, other = data.get(name), data.get(alias)
    if value is not None and other is not None and value != other:
        raise InvalidDefinition(f"{name} and {alias} name the same thing and disagree ({value!r}, {other!r}); "
                                f"give one of them", field=field_name or name)
    return value if value is not None else other


def _str(data: Mapping[str, Any], key: str, default: str = "", *, required: bool = False) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise InvalidDefinition(f"{key} is required", field=key)
        return default
    if not isinstance(value, str):
        raise InvalidDefinition(f"{key} must be a string", field=key)
    return value


def _bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidDefinition(f"{key} must be true or false", field=key)
    return value


def _tags(value: Any) -> dict[str, str]:
    """Tags as a string map; a list of labels becomes ``{label: ""}``."""
    if value is None:
        return {}
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return {v: "" for v in value}
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: "" if v is None else str(v) for k, v in value.items()}
    raise InvalidDefinition("tags must be an object of strings or a list of strings", field="tags")


def _name_list(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise InvalidDefinition(f"{key} must be a list of names", field=key)
    names = tuple(check_name(v, field_name=key) for v in value)
    if len(set(names)) != len(names):
        raise InvalidDefinition(f"{key} lists a name twice", field=key)
    return names


@dataclass(frozen=True, kw_only=True)
class Entity:
    """What features describe (a user, a merchant): a name and the key column(s) that identify it."""

    name: str
    join_keys: tuple[str, ...]
    value_type: str = "string"
    description: str = ""

    def __post_init__(self) -> None:
        check_name(self.name)
        if not self.join_keys:
            raise InvalidDefinition("an entity needs at least one join key", field="join_keys")
        for key in self.join_keys:
            check_name(key, field_name="join_keys")
        if normalize_data_type(self.value_type, field_name="value_type") not in SCALAR_TYPES:
            raise InvalidDefinition("an entity's value_type must be a scalar type", field="value_type")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Entity":
        _reject_unknown(data, {"name", "join_keys", "join_key", "value_type", "description"}, "entity")
        name = check_name(data.get("name"))
        keys = _aliased(data, "join_keys", "join_key")
        return cls(
            name=name,
            join_keys=_name_list(keys, "join_keys") if keys is not None else (name,),
            value_type=normalize_data_type(data.get("value_type") or "string", field_name="value_type"),
            description=_str(data, "description"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "join_keys": list(self.join_keys), "value_type": self.value_type, "description": self.description}


KAFKA_FORMATS = ("json", "avro", "confluent_avro")
STARTING_OFFSETS = ("earliest", "latest")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_SERVER_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$")


@dataclass(frozen=True, kw_only=True)
class KafkaSource:
    """A Kafka topic whose message values are a feature set's source rows (``fstore.compute.stream`` reads it
    with Spark Structured Streaming). ``format``: how a value is encoded: ``json`` objects, or Avro records
    (``avro``; ``confluent_avro``: Confluent's wire format) written with ``avro_schema`` (``fstore.definitions.avro``).
    ``starting_offsets``: where a stream's first start reads from (later starts go on from their checkpoint)."""

    bootstrap_servers: str
    topic: str
    format: str = "json"
    starting_offsets: str = "earliest"
    avro_schema: str | None = None  # compact JSON text of the writer's record schema (Avro formats only)

    def __post_init__(self) -> None:
        servers = [s.strip() for s in str(self.bootstrap_servers or "").split(",")]
        bad = [s for s in servers if not _SERVER_RE.match(s)]
        if not self.bootstrap_servers or bad:
            raise InvalidDefinition(f"source.kafka.bootstrap_servers must be host:port[,host:port…], not "
                                    f"{self.bootstrap_servers!r}", field="source.kafka.bootstrap_servers")
        if not isinstance(self.topic, str) or not _TOPIC_RE.match(self.topic) or self.topic in (".", ".."):
            raise InvalidDefinition(f"source.kafka.topic {self.topic!r} is not a Kafka topic name (1-249 of "
                                    "letters, digits, '.', '_', '-')", field="source.kafka.topic")
        if self.format not in KAFKA_FORMATS:
            raise InvalidDefinition(f"source.kafka.format {self.format!r} is not supported; use one of: "
                                    f"{', '.join(KAFKA_FORMATS)}", field="source.kafka.format")
        if self.starting_offsets not in STARTING_OFFSETS:
            raise InvalidDefinition(f"source.kafka.starting_offsets {self.starting_offsets!r} is not one of: "
                                    f"{', '.join(STARTING_OFFSETS)}", field="source.kafka.starting_offsets")
        if (self.format == "json") != (self.avro_schema is None):
            raise InvalidDefinition("source.kafka.avro_schema is required with format avro or confluent_avro, and "
                                    "only then", field="source.kafka.avro_schema")

    @classmethod
    def from_dict(cls, data: Any) -> "KafkaSource":
        if not isinstance(data, Mapping):
            raise InvalidDefinition("source.kafka must be an object {bootstrap_servers, topic, format}", field="source.kafka")
        _reject_unknown(data, {"bootstrap_servers", "topic", "format", "starting_offsets", "avro_schema"}, "source.kafka")
        for key in ("bootstrap_servers", "topic"):
            if not isinstance(data.get(key), str) or not data[key].strip():
                raise InvalidDefinition(f"source.kafka.{key} is required (a string)", field=f"source.kafka.{key}")
        from fstore.definitions.avro import schema_text

        return cls(bootstrap_servers=data["bootstrap_servers"].strip(), topic=data["topic"].strip(),
                   format=str(data.get("format") or "json").lower(),
                   starting_offsets=str(data.get("starting_offsets") or "earliest").lower(),
                   avro_schema=schema_text(data["avro_schema"]) if data.get("avro_schema") is not None else None)

    def to_dict(self) -> dict[str, Any]:
        out = {"bootstrap_servers": self.bootstrap_servers, "topic": self.topic, "format": self.format,
               "starting_offsets": self.starting_offsets}
        if self.avro_schema is not None:
            out["avro_schema"] = self.avro_schema
        return out


def _schema(value: Any) -> dict[str, str]:
    """A kafka source's declared value columns: ``{column: scalar type}``, in the order given."""
    if not isinstance(value, Mapping) or not value:
        raise InvalidDefinition("source.schema must be a non-empty object of column -> type "
                                f"({', '.join(SCALAR_TYPES)}): a kafka source's JSON values are parsed by it",
                                field="source.schema")
    out = {}
    for column, kind in value.items():
        check_name(column, field_name="source.schema")
        kind = normalize_data_type(kind, field_name=f"source.schema.{column}")
        if kind not in SCALAR_TYPES:
            raise InvalidDefinition(f"source.schema.{column}: {kind} is not a scalar type ({', '.join(SCALAR_TYPES)})",
                                    field=f"source.schema.{column}")
        out[column] = kind
    return out


@dataclass(frozen=True, kw_only=True)
class Source:
    """Where a feature set's rows come from: a path (with format), a Spark table, a SQL query, or a Kafka topic
    (``kafka``, with the ``schema`` of its JSON values: ``{column: type}``)."""

    path: str | None = None
    format: str = "parquet"
    table: str | None = None
    query: str | None = None
    event_timestamp_column: str = "event_timestamp"
    created_timestamp_column: str | None = None
    entity_columns: tuple[str, ...] = ()
    options: dict[str, str] = field(default_factory=dict)
    kafka: KafkaSource | None = None
    schema: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        given = [k for k in ("path", "table", "query", "kafka") if getattr(self, k)]
        if len(given) != 1:
            raise InvalidDefinition("a source needs exactly one of path, table, query or kafka", field="source")
        if self.kafka is not None:
            self._check_kafka()
        elif self.schema:
            raise InvalidDefinition("source.schema declares a kafka source's value columns; a path, table or query "
                                    "source brings its own schema", field="source.schema")
        if self.format not in SOURCE_FORMATS:
            raise InvalidDefinition(f"source format {self.format!r} is not supported; use one of: {', '.join(SOURCE_FORMATS)}", field="source.format")
        if self.table is not None and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$", self.table):
            raise InvalidDefinition(f"source table {self.table!r} is not a valid table name", field="source.table")
        check_name(self.event_timestamp_column, field_name="source.event_timestamp_column")
        if self.created_timestamp_column is not None:
            check_name(self.created_timestamp_column, field_name="source.created_timestamp_column")
        for column in self.entity_columns:
            check_name(column, field_name="source.entity_columns")

    def _check_kafka(self) -> None:
        """A kafka source's schema names its event time (a timestamp or ISO 8601 text), created time and entity columns.
        With Avro values, the schema is the Avro schema's columns (declared too, it must say the same)."""
        if self.kafka.avro_schema is not None:
            from fstore.definitions.avro import avro_columns

            columns = avro_columns(self.kafka.avro_schema)
            internal = {c: t for c, t in self.schema.items() if c.startswith("__fs_")}  # fstore's own (the stream's)
            if self.schema and {c: t for c, t in self.schema.items() if c not in internal} != columns:
                raise InvalidDefinition(f"source.schema {self.schema} is not what source.kafka.avro_schema gives "
                                        f"({columns}); leave source.schema out with Avro values", field="source.schema")
            object.__setattr__(self, "schema", {**columns, **internal})
        if not self.schema:
            raise InvalidDefinition("a kafka source needs source.schema: {column: type} of its JSON values",
                                    field="source.schema")
        if self.options:  # how the stream authenticates (SASL) and checks certificates (TLS), from an allow-list
            from fstore.definitions.kafka_security import check_options

            check_options(self.options)
        named = [("source.event_timestamp_column", self.event_timestamp_column)]
        named += [("source.created_timestamp_column", self.created_timestamp_column)] if self.created_timestamp_column else []
        named += [("source.entity_columns", c) for c in self.entity_columns]
        for where, column in named:
            if column not in self.schema:
                raise InvalidDefinition(f"{where}: {column!r} is not in source.schema ({', '.join(self.schema)})",
                                        field=where)
        for where, column in named[:2 if self.created_timestamp_column else 1]:
            if self.schema[column] not in ("timestamp", "string"):
                raise InvalidDefinition(f"{where}: {column!r} is {self.schema[column]} in source.schema; it must be a "
                                        "timestamp (or ISO 8601 text: string)", field=where)

    @property
    def is_stream(self) -> bool:
        """A source only a stream reads (``fstore stream``), never a batch run."""
        return self.kafka is not None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Source":
        allowed = {"path", "format", "table", "query", "event_timestamp_column", "timestamp_column",
                   "created_timestamp_column", "entity_columns", "options", "type", "kafka", "schema"}
        _reject_unknown(data, allowed, "source")
        options = data.get("options") or {}
        if not isinstance(options, Mapping):
            raise InvalidDefinition("source.options must be an object", field="source.options")
        kind = _str(data, "type", "").lower()
        if kind and kind not in (*SOURCE_FORMATS, "table", "query", "sql"):
            raise InvalidDefinition(f"source.type {kind!r} is not a source type; use one of: "
                                    f"{', '.join((*SOURCE_FORMATS, 'table', 'query'))}", field="source.type")
        fmt = _str(data, "format", "").lower()
        if fmt and kind in SOURCE_FORMATS and kind != fmt:
            raise InvalidDefinition(f"source.format {fmt!r} and source.type {kind!r} disagree; give one of them",
                                    field="source.format")
        fmt = fmt or (kind if kind in SOURCE_FORMATS else "") or "parquet"
        return cls(
            path=data.get("path"),
            format=fmt.lower(),
            table=data.get("table"),
            query=data.get("query"),
            event_timestamp_column=_aliased(data, "event_timestamp_column", "timestamp_column",
                                            field_name="source.event_timestamp_column") or "event_timestamp",
            created_timestamp_column=data.get("created_timestamp_column"),
            entity_columns=_name_list(data.get("entity_columns"), "source.entity_columns"),
            options={str(k): str(v) for k, v in options.items()},
            kafka=KafkaSource.from_dict(data["kafka"]) if data.get("kafka") is not None else None,
            schema=_schema(data["schema"]) if data.get("schema") is not None else {},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"event_timestamp_column": self.event_timestamp_column}
        for key in ("path", "table", "query"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.path:
            out["format"] = self.format
        if self.created_timestamp_column:
            out["created_timestamp_column"] = self.created_timestamp_column
        if self.entity_columns:
            out["entity_columns"] = list(self.entity_columns)
        if self.options:
            out["options"] = dict(self.options)
        if self.kafka is not None:
            out["kafka"] = self.kafka.to_dict()
            out["schema"] = dict(self.schema)
        return out


@dataclass(frozen=True, kw_only=True)
class FeatureSet:
    """Features computed together from one source, keyed by the same entities, materialized on one schedule."""

    name: str
    entities: tuple[str, ...]
    description: str = ""
    owner: str = ""
    source_type: str = "batch"
    offline_enabled: bool = True
    online_enabled: bool = True
    materialization_schedule: str | None = None
    source: Source | None = None
    ttl_seconds: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    # How far before the watermark an event arriving in new source data is still picked up (None: any age);
    # older ones are counted by the run (late_events_dropped), never silently lost.
    allowed_lateness_seconds: int | None = None
    # Anomaly detection on the set's run-level series (fstore.ops.quality); None = the defaults, alerting only.
    anomaly_policy: "AnomalyPolicy | None" = None
    # How long the offline store keeps a row after its event time (None: forever); older rows are deleted by
    # ``fstore retention apply`` and after each scheduled run (fstore.compute.retention).
    retention_seconds: int | None = None
    # How long a row stays in the warm offline table after its event time (None: always); older days move to the
    # cold table under COLD_STORAGE_PATH by ``fstore tiers apply`` and the scheduler (fstore.compute.tiers).
    cold_after_seconds: int | None = None

    def __post_init__(self) -> None:
        check_name(self.name)
        if not self.entities:
            raise InvalidDefinition("a feature set needs at least one entity", field="entities")
        for entity in self.entities:
            check_name(entity, field_name="entities")
        if self.source_type not in SOURCE_TYPES:
            raise InvalidDefinition(f"source_type {self.source_type!r} is not supported; use one of: {', '.join(SOURCE_TYPES)}", field="source_type")
        check_cron(self.materialization_schedule)
        lateness = self.allowed_lateness_seconds
        if lateness is not None and (isinstance(lateness, bool) or not isinstance(lateness, int) or lateness <= 0):
            raise InvalidDefinition(f"allowed_lateness_seconds must be a positive whole number of seconds, not {lateness!r}",
                                    field="allowed_lateness_seconds")

    FIELDS = frozenset({"name", "entities", "description", "owner", "source_type", "offline_enabled", "online_enabled",
                        "materialization_schedule", "source", "ttl", "ttl_seconds", "tags", "allowed_lateness",
                        "allowed_lateness_seconds", "anomaly_policy", "retention",
                        "retention_seconds", "cold_after", "cold_after_seconds"})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureSet":
        _reject_unknown(data, set(cls.FIELDS), "feature set")
        source = data.get("source")
        ttl = data.get("ttl_seconds", data.get("ttl"))
        if data.get("ttl_seconds") is not None and data.get("ttl") is not None \
                and parse_duration(data["ttl_seconds"], field_name="ttl_seconds") != parse_duration(data["ttl"], field_name="ttl"):
            raise InvalidDefinition(f"ttl ({data['ttl']!r}) and ttl_seconds ({data['ttl_seconds']!r}) disagree; give one of them",
                                    field="ttl")
        return cls(
            name=check_name(data.get("name")),
            entities=_name_list(data.get("entities"), "entities"),
            description=_str(data, "description"),
            owner=_str(data, "owner"),
            source_type=_str(data, "source_type", "") or ("stream" if isinstance(source, Mapping) and source.get("kafka")
                                                          else "batch"),
            offline_enabled=_bool(data, "offline_enabled", True),
            online_enabled=_bool(data, "online_enabled", True),
            materialization_schedule=check_cron(data.get("materialization_schedule")),
            source=Source.from_dict(source) if source is not None else None,
            ttl_seconds=parse_duration(ttl, field_name="ttl_seconds" if data.get("ttl_seconds") is not None else "ttl")
            if ttl is not None else None,
            tags=_tags(data.get("tags")),
            allowed_lateness_seconds=_lateness(data),
            retention_seconds=_duration(data, "retention"),
            cold_after_seconds=_duration(data, "cold_after"),
            anomaly_policy=AnomalyPolicy.from_dict(data["anomaly_policy"]) if data.get("anomaly_policy") is not None else None,
        )

    def to_dict(self) -> dict[str, Any]:
        lateness = self.allowed_lateness_seconds
        return {
            **({"allowed_lateness_seconds": lateness} if lateness is not None else {}),
            **({"anomaly_policy": self.anomaly_policy.to_dict()} if self.anomaly_policy is not None else {}),
            **({"retention_seconds": self.retention_seconds} if self.retention_seconds is not None else {}),
            **({"cold_after_seconds": self.cold_after_seconds} if self.cold_after_seconds is not None else {}),
            "name": self.name,
            "entities": list(self.entities),
            "description": self.description,
            "owner": self.owner,
            "source_type": self.source_type,
            "offline_enabled": self.offline_enabled,
            "online_enabled": self.online_enabled,
            "materialization_schedule": self.materialization_schedule,
            "source": self.source.to_dict() if self.source else None,
            "ttl_seconds": self.ttl_seconds,
            "tags": dict(self.tags),
        }


@dataclass(frozen=True, kw_only=True)
class AnomalyPolicy:
    """How a set's runs are checked for anomalies: a robust z-score (median/MAD) of each run-level figure over
    the last ``window`` succeeded runs (once ``min_runs`` exist); ``|z| >= warning_z`` is a warning,
    ``>= critical_z`` critical. ``on_anomaly``: ``alert`` (record and notify) or ``fail`` (a critical anomaly
    also fails the run before it writes, as validation's ``on_violation: fail``)."""

    on_anomaly: str = "alert"
    window: int = 20
    min_runs: int = 5
    warning_z: float = 3.5
    critical_z: float = 6.0

    FIELDS = frozenset({"on_anomaly", "window", "min_runs", "warning_z", "critical_z"})

    def __post_init__(self) -> None:
        if self.on_anomaly not in ("alert", "fail"):
            raise InvalidDefinition(f"anomaly_policy.on_anomaly {self.on_anomaly!r} is not one of: alert, fail",
                                    field="anomaly_policy.on_anomaly")
        for name in ("window", "min_runs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 1000:
                raise InvalidDefinition(f"anomaly_policy.{name} must be an integer between 2 and 1000",
                                        field=f"anomaly_policy.{name}")
        if self.min_runs > self.window:
            raise InvalidDefinition("anomaly_policy.min_runs must not exceed window", field="anomaly_policy.min_runs")
        for name in ("warning_z", "critical_z"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1e6:
                raise InvalidDefinition(f"anomaly_policy.{name} must be a positive number", field=f"anomaly_policy.{name}")
        if self.critical_z < self.warning_z:
            raise InvalidDefinition("anomaly_policy.critical_z must be at least warning_z", field="anomaly_policy.critical_z")

    @classmethod
    def from_dict(cls, data: Any) -> "AnomalyPolicy":
        if not isinstance(data, Mapping):
            raise InvalidDefinition("anomaly_policy must be an object", field="anomaly_policy")
        _reject_unknown(data, set(cls.FIELDS), "anomaly_policy")
        return cls(**{k: data[k] for k in cls.FIELDS if data.get(k) is not None})

    def to_dict(self) -> dict[str, Any]:
        return {"on_anomaly": self.on_anomaly, "window": self.window, "min_runs": self.min_runs,
                "warning_z": self.warning_z, "critical_z": self.critical_z}


def _lateness(data: Mapping[str, Any]) -> int | None:
    """``allowed_lateness`` (a duration such as ``2d``) or ``allowed_lateness_seconds`` of a feature set body."""
    key = "allowed_lateness_seconds" if data.get("allowed_lateness_seconds") is not None else "allowed_lateness"
    value = data.get(key)
    return parse_duration(value, field_name=key) if value is not None else None


def _duration(data: Mapping[str, Any], name: str) -> int | None:
    """``NAME`` (a duration such as ``400d``) or ``NAME_seconds`` of a feature set body (retention, cold_after)."""
    key = f"{name}_seconds" if data.get(f"{name}_seconds") is not None else name
    value = data.get(key)
    return parse_duration(value, field_name=key) if value is not None else None


@dataclass(frozen=True, kw_only=True)
class ValidationRules:
    """Checks on a feature's values, and what to do with a value that fails them."""

    min_value: float | None = None
    max_value: float | None = None
    allowed_values: tuple[Any, ...] | None = None
    not_null: bool = False
    regex: str | None = None
    on_violation: str = "null"

    def __post_init__(self) -> None:
        for key in ("min_value", "max_value"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise InvalidDefinition(f"validation_rules.{key} must be a number", field=f"validation_rules.{key}")
        if self.min_value is not None and self.max_value is not None and self.min_value > self.max_value:
            raise InvalidDefinition("validation_rules.min_value is greater than max_value", field="validation_rules.min_value")
        if self.regex is not None:
            try:
                re.compile(self.regex)
            except re.error as exc:
                raise InvalidDefinition(f"validation_rules.regex does not compile: {exc}", field="validation_rules.regex") from None
        if self.on_violation not in VIOLATION_POLICIES:
            raise InvalidDefinition(f"validation_rules.on_violation {self.on_violation!r} is not a policy; use one of: {', '.join(VIOLATION_POLICIES)}",
                                    field="validation_rules.on_violation")

    @property
    def is_empty(self) -> bool:
        return (self.min_value is None and self.max_value is None and self.allowed_values is None
                and not self.not_null and self.regex is None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "ValidationRules":
        if data is None:
            return cls()
        allowed = {"min_value", "max_value", "min", "max", "allowed_values", "not_null", "nullable", "regex", "pattern", "on_violation", "policy"}
        _reject_unknown(data, allowed, "validation_rules")
        values = data.get("allowed_values")
        if values is not None and not isinstance(values, list):
            raise InvalidDefinition("validation_rules.allowed_values must be a list", field="validation_rules.allowed_values")
        not_null = data.get("not_null", None)
        if not_null is None and "nullable" in data:
            not_null = not data["nullable"]
        if not_null is not None and not isinstance(not_null, bool):
            raise InvalidDefinition("validation_rules.not_null must be true or false", field="validation_rules.not_null")
        regex = data.get("regex", data.get("pattern"))
        if regex is not None and not isinstance(regex, str):
            raise InvalidDefinition("validation_rules.regex must be a string", field="validation_rules.regex")
        return cls(
            min_value=data.get("min_value", data.get("min")),
            max_value=data.get("max_value", data.get("max")),
            allowed_values=tuple(values) if values is not None else None,
            not_null=bool(not_null),
            regex=regex,
            on_violation=str(data.get("on_violation", data.get("policy", "null"))),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"on_violation": self.on_violation}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "on_violation" and value is not None and value is not False:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True, kw_only=True)
class Window:
    """A time-windowed aggregation per entity over ``(t - size, t]`` on the event timestamp."""

    size_seconds: int
    function: str
    filter: str | None = None

    def __post_init__(self) -> None:
        if self.function not in AGGREGATIONS:
            raise InvalidDefinition(f"aggregation {self.function!r} is not supported; use one of: {', '.join(AGGREGATIONS)}", field="aggregation")
        if self.size_seconds <= 0:
            raise InvalidDefinition("window_size must be positive", field="window_size")


@dataclass(frozen=True, kw_only=True)
class Feature:
    """One named value computed per entity and event time.

    Exactly one way of computing it: ``transformation`` (a SQL expression over the
    source columns, or over ``source_features`` for a composite feature, or the
    column a window aggregates), or ``python`` (``module:function``).
    """

    name: str
    feature_set: str
    data_type: str
    description: str = ""
    transformation: str | None = None
    python: str | None = None
    dialect: str = "spark"
    validation: ValidationRules = field(default_factory=ValidationRules)
    default_value: Any = None
    window: Window | None = None
    source_features: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    owner: str = ""

    def __post_init__(self) -> None:
        check_name(self.name)
        check_name(self.feature_set, field_name="feature_set")
        if normalize_data_type(self.data_type) != self.data_type:
            raise InvalidDefinition(f"data_type {self.data_type!r} is not canonical", field="data_type")
        if self.dialect not in DIALECTS:
            raise InvalidDefinition(f"dialect {self.dialect!r} is not supported; use one of: {', '.join(DIALECTS)}", field="dialect")
        if self.python is not None:
            if self.transformation:
                raise InvalidDefinition("a feature has either a transformation or a python function, not both", field="python")
            if not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", self.python):
                raise InvalidDefinition(f"python {self.python!r} must be 'module:function'", field="python")
        if self.window is None and self.python is None and not self.transformation and not self.source_features:
            raise InvalidDefinition("a feature needs a transformation (or a python function, or a window aggregation)", field="transformation")
        if self.window is not None and self.window.function != "count" and not self.transformation:
            raise InvalidDefinition(f"a {self.window.function} window needs the column or expression it aggregates in transformation", field="transformation")
        if self.name in self.source_features:
            raise InvalidDefinition(f"feature {self.name} cannot depend on itself", field="source_features")
        if self.default_value is not None:
            check_value_type(self.default_value, self.data_type, field_name="default_value")
        elif self.validation.on_violation == "default":
            raise InvalidDefinition(f"feature {self.name} has on_violation: default but no default_value to put in "
                                    "place of a violating value; give default_value, or another policy",
                                    field="default_value")

    FIELDS = frozenset({"name", "feature_set", "feature_set_id", "data_type", "description", "transformation", "python",
                        "dialect", "validation_rules", "allowed_values", "default_value", "window_size", "aggregation",
                        "window_filter", "source_features", "tags", "owner", "type"})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, feature_set: str | None = None) -> "Feature":
        """Read a feature; ``feature_set`` is the resolved set name when the body names it by id.

        As the product spec writes features: one with nothing to compute it from (no
        transformation, python, window or source features) is the source column of its own
        name, and ``allowed_values`` may stand at the top level (the same rule as under
        ``validation_rules``).
        """
        _reject_unknown(data, set(cls.FIELDS), "feature")
        set_name = feature_set or data.get("feature_set")
        if set_name is None and isinstance(data.get("feature_set_id"), str):
            set_name = data["feature_set_id"]
        if set_name is None:
            raise InvalidDefinition("feature_set (or feature_set_id) is required", field="feature_set")
        window = None
        if data.get("window_filter") and data.get("window_size") is None:
            raise InvalidDefinition("window_filter needs window_size (it filters a window's events)", field="window_filter")
        if data.get("window_size") is not None or data.get("aggregation") is not None:
            if data.get("window_size") is None:
                raise InvalidDefinition("aggregation needs window_size", field="window_size")
            window = Window(
                size_seconds=parse_duration(data["window_size"], field_name="window_size"),
                function=str(data.get("aggregation") or "count").lower(),
                filter=_str(data, "window_filter") or None,
            )
        transformation = data.get("transformation")
        if transformation is not None and not isinstance(transformation, str):
            raise InvalidDefinition("transformation must be a string", field="transformation")
        python = data.get("python")
        if python is not None and not isinstance(python, str):
            raise InvalidDefinition("python must be a string 'module:function'", field="python")
        rules = data.get("validation_rules")
        if rules is not None and not isinstance(rules, Mapping):
            raise InvalidDefinition("validation_rules must be an object", field="validation_rules")
        rules = _top_level_allowed_values(data, rules)
        name = check_name(data.get("name"))
        if window is None and not transformation and python is None and not data.get("source_features"):
            transformation = name  # the source column of the same name
        return cls(
            name=name,
            feature_set=check_name(set_name, field_name="feature_set"),
            data_type=normalize_data_type(_aliased(data, "data_type", "type"), field_name="data_type")
            if (data.get("data_type") or data.get("type")) else _missing("data_type"),
            description=_str(data, "description"),
            transformation=transformation.strip() if transformation else None,
            python=python,
            dialect=(_str(data, "dialect", "spark") or "spark").lower(),
            validation=ValidationRules.from_dict(rules),
            default_value=data.get("default_value"),
            window=window,
            source_features=_name_list(data.get("source_features"), "source_features"),
            tags=_tags(data.get("tags")),
            owner=_str(data, "owner"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "feature_set": self.feature_set,
            "data_type": self.data_type,
            "description": self.description,
            "transformation": self.transformation,
            "dialect": self.dialect,
            "validation_rules": self.validation.to_dict(),
            "default_value": self.default_value,
            "source_features": list(self.source_features),
            "tags": dict(self.tags),
            "owner": self.owner,
        }
        if self.python:
            out["python"] = self.python
        if self.window:
            out["window_size"] = format_duration(self.window.size_seconds)
            out["aggregation"] = self.window.function
            if self.window.filter:
                out["window_filter"] = self.window.filter
        return out


def _top_level_allowed_values(data: Mapping[str, Any], rules: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """``validation_rules`` with a top-level ``allowed_values`` moved in; both given and different is refused."""
    if "allowed_values" not in data:
        return rules
    values = data["allowed_values"]
    inner = (rules or {}).get("allowed_values")
    if inner is not None and inner != values:
        raise InvalidDefinition("allowed_values and validation_rules.allowed_values differ: give one of them",
                                field="allowed_values")
    if values is not None and not isinstance(values, list):
        raise InvalidDefinition("allowed_values must be a list", field="allowed_values")
    return {**(rules or {}), "allowed_values": values}


def _missing(key: str):
    raise InvalidDefinition(f"{key} is required", field=key)


def check_value_type(value: Any, data_type: str, *, field_name: str) -> Any:
    """Refuse a literal (a default value) that does not fit ``data_type``."""
    if data_type.startswith("list<"):
        if not isinstance(value, list):
            raise InvalidDefinition(f"{field_name} must be a list for type {data_type}", field=field_name)
        inner = data_type[5:-1]
        for item in value:
            check_value_type(item, inner, field_name=field_name)
        return value
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "bool": isinstance(value, bool),
        "timestamp": isinstance(value, str),
    }[data_type]
    if not ok:
        raise InvalidDefinition(f"{field_name} {value!r} is not a {data_type}", field=field_name)
    return value


def composite_order(features: list[Feature]) -> list[Feature]:
    """Features in an order where each comes after the features it depends on.

    A missing source feature or a cycle is refused, naming the features involved.
    """
    by_name = {f.name: f for f in features}
    for f in features:
        missing = [s for s in f.source_features if s not in by_name]
        if missing:
            raise InvalidDefinition(
                f"feature {f.name} depends on {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not in feature set {f.feature_set}",
                field="source_features",
            )
    ordered: list[Feature] = []
    state: dict[str, int] = {}

    def visit(f: Feature, path: list[str]) -> None:
        if state.get(f.name) == 2:
            return
        if state.get(f.name) == 1:
            cycle = path[path.index(f.name):] + [f.name]
            raise InvalidDefinition(f"features depend on each other in a cycle: {' -> '.join(cycle)}", field="source_features")
        state[f.name] = 1
        for source in f.source_features:
            visit(by_name[source], path + [f.name])
        state[f.name] = 2
        ordered.append(f)

    for f in features:
        visit(f, [])
    return ordered


@dataclass(frozen=True, kw_only=True)
class FeatureSetVersion:
    """One immutable version of a feature set, resolved: what the compiler and the jobs work from."""

    feature_set: FeatureSet
    version: int
    entities: tuple[Entity, ...]
    features: tuple[Feature, ...]
    feature_versions: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.feature_set.name

    @property
    def join_keys(self) -> tuple[str, ...]:
        """The entity key columns, in entity order, each once."""
        keys: list[str] = []
        for entity in self.entities:
            keys.extend(k for k in entity.join_keys if k not in keys)
        return tuple(keys)

    @property
    def ttl_seconds(self) -> int | None:
        return self.feature_set.ttl_seconds

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)
