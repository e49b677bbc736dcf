"""The entity frame of a retrieval: checked, timestamps normalized to UTC, rows numbered.

A user hands a pandas or Spark DataFrame of entity rows (join keys, a
timestamp, any other columns). Here it gets a TIMESTAMP column ``__fs_ts``
(UTC) and a row number ``__fs_row`` that the result is ordered by, so every
row comes back in its place, duplicates kept: a Spark DataFrame for the Spark
engine (``prepare_entities``), a pandas frame for the DuckDB engine
(``prepare_local``; ``prepare_arrow`` for a batch job's rows). The checks and their errors are the same for both.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from fstore.compiler.dialect import quote
from fstore.core.errors import InvalidDefinition

if TYPE_CHECKING:
    from fstore.definitions.model import FeatureSetVersion

ROW = "__fs_row"
TS = "__fs_ts"
TIMESTAMP_CANDIDATES = ("event_timestamp", "timestamp", "ts")
RESERVED_PREFIX = "__fs_"
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


@dataclass(frozen=True)
class Entities:
    """The prepared entity rows and what the retrieval needs to know about them."""

    df: Any  # the user's columns + __fs_ts + __fs_row: a Spark DataFrame, or pandas (prepare_local)
    columns: tuple[str, ...]  # the user's columns, in order
    timestamp_column: str
    min_ts: datetime | None
    max_ts: datetime | None
    count: int
    # prepare_local, from a Spark frame: the Arrow types of its nested columns (maps, lists, structs), which
    # pandas holds as Python objects that Arrow could not type again (a map comes back as a list of pairs).
    arrow_types: Mapping[str, Any] = field(default_factory=dict)


def find_timestamp_column(columns: Sequence[str], timestamp_column: str | None) -> str:
    """The entity frame's timestamp column: the one named, or the first of the usual names present."""
    if timestamp_column is not None:
        if timestamp_column not in columns:
            raise InvalidDefinition(f"entity_df has no timestamp column {timestamp_column!r} (its columns: {', '.join(map(str, columns))})",
                                    field="timestamp_column")
        return timestamp_column
    for name in TIMESTAMP_CANDIDATES:
        if name in columns:
            return name
    raise InvalidDefinition(f"entity_df needs a timestamp column: name it with timestamp_column or call it one of "
                            f"{', '.join(TIMESTAMP_CANDIDATES)} (its columns: {', '.join(map(str, columns))})",
                            field="timestamp_column")


def _check_columns(columns: Sequence[Any]) -> None:
    for name in columns:
        if not isinstance(name, str):
            raise InvalidDefinition(f"entity_df column names must be strings, got {name!r}", field="entity_df")
        if name.startswith(RESERVED_PREFIX):
            raise InvalidDefinition(f"entity_df column {name!r} uses the reserved prefix {RESERVED_PREFIX}", field="entity_df")
    duplicates = sorted({c for c in columns if list(columns).count(c) > 1})
    if duplicates:
        raise InvalidDefinition(f"entity_df has duplicate columns: {', '.join(duplicates)}", field="entity_df")


def _utc_series(series, name: str):
    """A pandas series of instants as naive UTC ``datetime64[us]``; any offset normalized, naive taken as UTC."""
    import pandas as pd
    from pandas.api import types as ptypes

    if ptypes.is_datetime64_any_dtype(series.dtype):
        # Already instants (naive = UTC): only the zone changes (to_datetime would re-parse them, slowly).
        out = series.dt.tz_localize("UTC") if series.dt.tz is None else series.dt.tz_convert("UTC")
    elif ptypes.is_numeric_dtype(series.dtype) or ptypes.is_bool_dtype(series.dtype):
        raise InvalidDefinition(f"entity_df timestamp column {name!r} holds numbers; give datetimes or ISO 8601 strings",
                                field="timestamp_column")
    else:
        values = series.map(lambda v: v.isoformat() if isinstance(v, datetime) else v)
        try:
            out = pd.to_datetime(values, utc=True, format="ISO8601")
        except (ValueError, TypeError, OverflowError):
            raise _not_a_timestamp(values, name) from None
    nulls = int(out.isna().sum())
    if nulls:
        raise InvalidDefinition(f"entity_df timestamp column {name!r} has {nulls} empty value(s)", field="timestamp_column")
    return out.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]")


def _not_a_timestamp(values, name: str) -> InvalidDefinition:
    """The error naming the first value pandas cannot read as an ISO 8601 instant (pandas' own runs to a page)."""
    import pandas as pd

    try:
        unreadable = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce").isna() & values.notna()
    except (ValueError, TypeError, OverflowError):
        unreadable = pd.Series([False] * len(values))
    if unreadable.any():
        position = int(unreadable.to_numpy().argmax())
        return InvalidDefinition(f"entity_df timestamp column {name!r} has a value that is not a timestamp: "
                                 f"{values.iloc[position]!r} (row {position})", field="timestamp_column")
    return InvalidDefinition(f"entity_df timestamp column {name!r} has a value that is not a timestamp",
                             field="timestamp_column")


def key_types(versions: Iterable["FeatureSetVersion"]) -> dict[str, tuple[str, str]]:
    """Each join key of the sets: its entity's value type and the set, the first declaration winning (as online)."""
    types: dict[str, tuple[str, str]] = {}
    for fsv in versions:
        for entity in fsv.entities:
            for key in entity.join_keys:
                types.setdefault(key, (entity.value_type, fsv.name))
    return types


def _is_null(value: Any) -> bool:
    """None, NaN, ``pd.NA`` or ``pd.NaT`` (a null of an object column), without importing pandas per value."""
    return value is None or (isinstance(value, float) and value != value) or type(value).__name__ in ("NAType", "NaTType")


def _key_value_error(column: str, value: Any, value_type: str, feature_set: str,
                     normalize: Callable[[Any], str] | None = None) -> InvalidDefinition | None:
    """Why ``value`` cannot be a key of ``value_type`` (the online lookup's rule, and 64 bits for an int); None if it can.

    ``normalize`` is the column's ``key_normalizer``, made once for all its values.
    """
    from fstore.storage.online.base import KeyOutOfRange, key_normalizer

    try:
        text = (normalize or key_normalizer(value_type, column))(value)
    except KeyOutOfRange:
        return _out_of_range(column, value)
    except InvalidDefinition:
        return InvalidDefinition(f"entity_df column {column} value {value!r} is not a {value_type} "
                                 f"(a join key of feature set {feature_set})", field=column)
    if value_type == "int" and len(text) > 18 and not INT64_MIN <= int(text) <= INT64_MAX:
        return _out_of_range(column, value)
    return None


def _out_of_range(column: str, value: Any) -> InvalidDefinition:
    return InvalidDefinition(f"entity_df column {column} value {value!r} is out of the 64-bit integer range "
                             f"[{INT64_MIN}, {INT64_MAX}]", field=column)


def check_values(frame: Any, keys: Mapping[str, tuple[str, str]], *, skip: str | None = None) -> None:
    """Refuse what no engine can read or match, naming the column and the value (nulls are allowed).

    An integer outside 64 bits, in any column, cannot become a column of Spark or Arrow; a join key
    value that cannot be its key's value type (``keys``: column → (value type, feature set)) would
    match no feature row and answer NULL, where the online lookup refuses it. ``skip`` is the
    timestamp column, checked by its own rules.
    """
    from pandas.api import types as ptypes

    from fstore.storage.online.base import key_normalizer

    for column in frame.columns:
        if column == skip:
            continue
        series = frame[column]
        value_type, feature_set = keys.get(column, (None, ""))
        if ptypes.is_unsigned_integer_dtype(series.dtype) and len(series) and series.max() > INT64_MAX:
            raise _out_of_range(column, int(series.max()))
        if value_type == "int" and ptypes.is_float_dtype(series.dtype):
            # A column of ints with a null becomes float: whole numbers in range are the ints they were.
            values = series.dropna()
            bad = values[~((values % 1 == 0) & (values >= -2.0**63) & (values < 2.0**63))]
            if len(bad):
                value = float(bad.iloc[0])
                raise _key_value_error(column, value, value_type, feature_set) or _out_of_range(column, value)
            continue
        if series.dtype != object and (value_type is None or _dtype_fits(series.dtype, value_type)):
            continue
        normalize = key_normalizer(value_type, column) if value_type is not None else None
        for value in series:
            if type(value) is int and not INT64_MIN <= value <= INT64_MAX:
                raise _out_of_range(column, value)
            if normalize is None or (type(value) is str and value_type == "string") or _is_null(value):
                continue  # nulls give null features; text is a string key as it is
            error = _key_value_error(column, value, value_type, feature_set, normalize)
            if error is not None:
                raise error


def _dtype_fits(dtype: Any, value_type: str) -> bool:
    """Whether every value of a (non-object) pandas dtype is a key of ``value_type``."""
    from pandas.api import types as ptypes

    if ptypes.is_bool_dtype(dtype):
        return value_type in ("bool", "string")
    if ptypes.is_integer_dtype(dtype):
        return value_type in ("int", "float", "string")
    if ptypes.is_float_dtype(dtype):
        return value_type in ("float", "string")
    if ptypes.is_datetime64_any_dtype(dtype):
        return value_type == "timestamp"
    return False


def prepare_pandas(entity_df: Any, timestamp_column: str | None, *, max_rows: int | None = None,
                   keys: Mapping[str, tuple[str, str]] | None = None) -> Entities:
    """Check a pandas entity frame; ``df`` is a copy numbered by ``__fs_row`` with ``__fs_ts`` (naive UTC).

    The engine-independent part of ``prepare_entities``: the DuckDB engine uses it as it is, the Spark
    engine hands its ``df`` to Spark. ``keys`` (``key_types``) are the join keys whose values are checked.
    """
    columns = list(entity_df.columns)
    _check_columns(columns)
    ts_name = find_timestamp_column(columns, timestamp_column)
    if max_rows is not None and len(entity_df) > max_rows:
        _too_large(len(entity_df), max_rows)
    if len(entity_df) == 0:
        raise InvalidDefinition("entity_df has no rows", field="entity_df")
    check_values(entity_df, keys or {}, skip=ts_name)
    frame = entity_df.reset_index(drop=True).copy()
    ts_values = _utc_series(frame[ts_name], ts_name)
    frame[TS] = ts_values
    frame[ROW] = range(len(frame))
    # The user's timestamp column comes back normalized to UTC as well.
    frame[ts_name] = ts_values
    return Entities(df=frame, columns=tuple(columns), timestamp_column=ts_name,
                    min_ts=ts_values.min().to_pydatetime(), max_ts=ts_values.max().to_pydatetime(), count=len(frame))


def _too_large(rows: int, max_rows: int) -> None:
    from fstore.core.errors import TooLarge

    raise TooLarge(f"entity_df has {rows} rows, over the limit of {max_rows} (MAX_HISTORICAL_ROWS); "
                   "run it as a batch retrieval job", field="entity_df")


def _spark_timestamp(entity_df: Any, ts_name: str):
    """The Spark frame's timestamp column as a TIMESTAMP expression (strings parsed, other types refused)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    field = entity_df.schema[ts_name]
    if isinstance(field.dataType, (T.TimestampType, T.TimestampNTZType, T.DateType, T.StringType)):
        # try_cast: an unreadable string becomes NULL and is reported, not a Spark stack trace.
        return F.col(ts_name).try_cast(T.TimestampType())
    raise InvalidDefinition(f"entity_df timestamp column {ts_name!r} has type {field.dataType.simpleString()}; "
                            "give a timestamp or ISO 8601 strings", field="timestamp_column")


def _unreadable(ts_name: str, count: int) -> InvalidDefinition:
    return InvalidDefinition(f"entity_df timestamp column {ts_name!r} has {count} empty or unreadable value(s)",
                             field="timestamp_column")


def _is_spark_frame(entity_df: Any) -> bool:
    """Whether ``entity_df`` is a Spark DataFrame (classic or Connect), without importing pyspark otherwise."""
    return any(c.__module__.startswith("pyspark.sql.") and c.__name__ == "DataFrame" for c in type(entity_df).__mro__)


def prepare_local(entity_df: Any, timestamp_column: str | None, *, max_rows: int | None = None,
                  keys: Mapping[str, tuple[str, str]] | None = None) -> Entities:
    """``prepare_entities`` for an engine running in this process: ``df`` is a numbered pandas frame.

    A Spark DataFrame is checked as ``prepare_entities`` checks it (its timestamp parsed by Spark),
    then collected through Arrow, so instants stay exact whatever the session's time zone.
    """
    import pandas as pd

    if isinstance(entity_df, pd.DataFrame):
        return prepare_pandas(entity_df, timestamp_column, max_rows=max_rows, keys=keys)
    if not _is_spark_frame(entity_df):
        raise InvalidDefinition(f"entity_df must be a pandas or Spark DataFrame, not {type(entity_df).__name__}",
                                field="entity_df")
    columns = list(entity_df.columns)
    _check_columns(columns)
    ts_name = find_timestamp_column(columns, timestamp_column)
    if max_rows is not None:
        rows = entity_df.limit(max_rows + 1).count()
        if rows > max_rows:
            _too_large(rows, max_rows)
    import pyarrow as pa

    table = entity_df.withColumn(ts_name, _spark_timestamp(entity_df, ts_name)).toArrow()
    frame = table.to_pandas()
    nulls = int(frame[ts_name].isna().sum())
    if nulls:
        raise _unreadable(ts_name, nulls)
    nested = {f.name: f.type for f in table.schema if pa.types.is_nested(f.type)}
    return replace(prepare_pandas(frame, ts_name, keys=keys), arrow_types=nested)


def prepare_arrow(table: Any, timestamp_column: str | None, *,
                  keys: Mapping[str, tuple[str, str]] | None = None) -> Entities:
    """``prepare_local`` for entity rows read as an Arrow table (a batch job's entity source on DuckDB).

    The nested columns keep their Arrow types, as ``prepare_local`` keeps a Spark frame's.
    """
    import pyarrow as pa

    _check_columns(table.column_names)
    nested = {f.name: f.type for f in table.schema if pa.types.is_nested(f.type)}
    return replace(prepare_pandas(table.to_pandas(), timestamp_column, keys=keys), arrow_types=nested)


def prepare_entities(spark, entity_df: Any, timestamp_column: str | None, *, max_rows: int | None = None,
                     keys: Mapping[str, tuple[str, str]] | None = None) -> Entities:
    """Check the entity frame and turn it into numbered Spark rows with a UTC timestamp.

    ``keys`` (``key_types``): join keys whose values must fit their key's value type.
    """
    import pandas as pd
    from pyspark.sql import DataFrame as SparkDataFrame
    from pyspark.sql import functions as F

    if isinstance(entity_df, pd.DataFrame):
        entities = prepare_pandas(entity_df, timestamp_column, max_rows=max_rows, keys=keys)
        try:
            # A pandas frame reaches Spark as a LocalRelation holding every row, and Catalyst walks those
            # rows each time it optimizes a plan over them (a 100,000-row retrieval's query: 125-150 ms,
            # again at each adaptive re-plan). A lazy local checkpoint puts an RDD in the plan instead,
            # computed by the query's first job.
            df = spark.createDataFrame(entities.df).localCheckpoint(eager=False)
        except Exception as exc:  # noqa: BLE001 - pyarrow/Spark type errors name the column
            raise InvalidDefinition(f"entity_df cannot be read by Spark: {exc}", field="entity_df") from None
        return replace(entities, df=df)
    if isinstance(entity_df, SparkDataFrame):
        columns = list(entity_df.columns)
        _check_columns(columns)
        ts_name = find_timestamp_column(columns, timestamp_column)
        ts_col = _spark_timestamp(entity_df, ts_name)
        bad_keys = _spark_bad_keys(entity_df, keys or {})
        # The user's timestamp column comes back as a UTC TIMESTAMP, as for pandas frames.
        df = entity_df.withColumn(ts_name, ts_col).withColumn(TS, F.col(ts_name)).withColumn(ROW, F.monotonically_increasing_id())
        # Number the rows once: a later recomputation must give every row the same number.
        df = df.localCheckpoint(eager=True)
        stats = df.agg(F.unix_micros(F.min(TS)).alias("lo"), F.unix_micros(F.max(TS)).alias("hi"), F.count(F.lit(1)).alias("n"),
                       F.count(TS).alias("n_ts"),
                       *[F.first(bad, ignorenulls=True).alias(f"__fs_bad{i}") for i, (_, _, bad) in enumerate(bad_keys)]).first()
        if stats["n"] == 0:
            raise InvalidDefinition("entity_df has no rows", field="entity_df")
        if max_rows is not None and stats["n"] > max_rows:
            _too_large(stats["n"], max_rows)
        if stats["n_ts"] != stats["n"]:
            raise _unreadable(ts_name, stats["n"] - stats["n_ts"])
        for i, (column, (value_type, feature_set), _) in enumerate(bad_keys):
            if stats[f"__fs_bad{i}"] is not None:
                raise _key_value_error(column, stats[f"__fs_bad{i}"], value_type, feature_set) \
                    or InvalidDefinition(f"entity_df column {column} value {stats[f'__fs_bad{i}']!r} is not a {value_type} "
                                         f"(a join key of feature set {feature_set})", field=column)
        return Entities(df=df, columns=tuple(columns), timestamp_column=ts_name, min_ts=_from_micros(stats["lo"]), max_ts=_from_micros(stats["hi"]),
                        count=int(stats["n"]))
    raise InvalidDefinition(f"entity_df must be a pandas or Spark DataFrame, not {type(entity_df).__name__}", field="entity_df")


def _spark_bad_keys(entity_df: Any, keys: Mapping[str, tuple[str, str]]) -> list[tuple[str, tuple[str, str], Any]]:
    """Per join key column of a Spark frame whose type may hold values its key cannot be: an expression
    giving such a value (else NULL). A column of a type that can hold none is refused here."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    numeric = (T.IntegralType, T.FractionalType)
    checks = []
    for column, (value_type, feature_set) in keys.items():
        if column not in entity_df.columns:
            continue
        data_type = entity_df.schema[column].dataType
        value = F.col(quote(column))
        if value_type == "string" and isinstance(data_type, (T.StringType, T.IntegralType, T.DecimalType, T.BooleanType)):
            continue
        if value_type == "int" and isinstance(data_type, T.IntegralType):
            continue
        if value_type == "float" and isinstance(data_type, numeric):
            continue
        if value_type == "bool" and isinstance(data_type, T.BooleanType):
            continue
        if value_type == "timestamp" and isinstance(data_type, (T.TimestampType, T.TimestampNTZType, T.DateType)):
            continue
        if value_type == "int" and isinstance(data_type, T.FractionalType):
            whole = value.cast("double")
            bad = F.isnan(whole) | (whole != F.floor(whole)) | (whole < -2.0**63) | (whole >= 2.0**63)
        elif value_type in ("int", "float") and isinstance(data_type, T.StringType):
            bad = F.trim(value).try_cast("bigint" if value_type == "int" else "double").isNull()
        else:
            raise InvalidDefinition(f"entity_df column {column} has type {data_type.simpleString()}, which cannot hold "
                                    f"a {value_type} (a join key of feature set {feature_set})", field=column)
        checks.append((column, (value_type, feature_set), F.when(value.isNotNull() & bad, value.cast("string"))))
    return checks


def _from_micros(value: int | None) -> datetime | None:
    """Naive UTC from Unix microseconds (collecting a TIMESTAMP would apply the driver's local zone)."""
    if value is None:
        return None
    return (datetime(1970, 1, 1) + timedelta(microseconds=value))


def ts_lit(value: datetime):
    """A Spark TIMESTAMP literal for a naive UTC datetime, independent of the driver's local zone."""
    from pyspark.sql import functions as F

    micros = (value - datetime(1970, 1, 1)) // timedelta(microseconds=1)
    return F.timestamp_micros(F.lit(micros))


def check_keys(entities: Entities, keys: Sequence[str], feature_set: str) -> None:
    """Every join key of a feature set must be a column of the entity frame."""
    missing = [k for k in keys if k not in entities.columns]
    if missing:
        raise InvalidDefinition(f"entity_df has no column {', '.join(missing)}, the join key(s) of feature set {feature_set}",
                                field=missing[0])
