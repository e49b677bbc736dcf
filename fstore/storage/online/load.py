"""Bulk load of a computed feature DataFrame into the online store, from the Spark executors.

The plan, all in Spark:

1. drop rows without a key or event time, and (when the set has a TTL) rows already
   older than the TTL, which would never be served;
2. keep the latest row per key: ``max(struct(event_timestamp, created_timestamp, …))``
   grouped by the keys cast to their entity's value type (map-side partial
   aggregation first; grouping on longs rather than text keeps the sort cheap);
3. build each surviving row's hash key in SQL (keys normalized by entity value
   type and length-prefixed, exactly as ``fstore.storage.online.base.redis_key`` does);
4. encode every value in SQL to the online text form (``base`` module docstring);
   for Redis even the RESP framing of each key and each row's arguments is built in
   SQL, so the Python side only joins ready bytes;
5. ``mapInArrow``: each task receives its rows as Arrow batches (no per-row
   pickling: 2 s less than ``foreachPartition`` on 100k keys, measured), opens its own
   client from picklable config (URL or file path, the ``Codec``) and writes pipelined
   batches through the newer-wins Lua script (Redis) or upsert (embedded). Each task
   returns how many keys it actually wrote (a key whose stored value is newer is not
   counted); the driver sums those one-row answers;
6. the driver writes the set's load marker (``fstore.storage.online.marker``), from the state
   it read before step 5.

Nothing is collected to the driver.
"""
from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from fstore.compiler.dialect import quote
from fstore.core.errors import ComputeError, InvalidDefinition, Unavailable
from fstore.storage.online.base import Codec, as_codec, key_prefix
from fstore.storage.online.marker import LoadInfo, LoadState, marker_fields

if TYPE_CHECKING:
    from fstore.definitions.model import FeatureSetVersion
    from fstore.core.settings import Settings

REDIS_BATCH = 500
EMBEDDED_BATCH = 5000


def key_native_sql(column: str, value_type: str) -> str:
    """SQL of one key column as its entity's value type (compact to group by: a long for ints and times)."""
    c = quote(column)
    return {
        "int": f"CAST({c} AS BIGINT)",
        "string": f"CAST({c} AS STRING)",
        "float": f"CAST({c} AS DOUBLE)",
        "bool": f"CAST({c} AS BOOLEAN)",
        "timestamp": f"unix_micros(CAST({c} AS TIMESTAMP))",
    }[value_type]


def key_text_sql(native: str, value_type: str) -> str:
    """SQL text of a native key value, normalized like ``base.normalize_key_value``."""
    if value_type == "string":
        return native
    if value_type == "bool":
        return f"CASE WHEN {native} THEN '1' ELSE '0' END"
    return f"CAST({native} AS STRING)"


def value_text_sql(expr: str, data_type: str) -> str:
    """SQL text of one feature value in the online text form (NULL stays NULL)."""
    if data_type == "float":
        return f"CAST(CAST({expr} AS DOUBLE) AS STRING)"
    if data_type == "int":
        return f"CAST(CAST({expr} AS BIGINT) AS STRING)"
    if data_type == "bool":
        return f"CASE WHEN {expr} THEN '1' WHEN NOT {expr} THEN '0' END"
    if data_type == "string":
        return f"CAST({expr} AS STRING)"
    if data_type == "timestamp":
        return f"CAST(unix_micros(CAST({expr} AS TIMESTAMP)) AS STRING)"
    if data_type == "list<timestamp>":
        return f"to_json(transform({expr}, x -> unix_micros(CAST(x AS TIMESTAMP))))"
    if data_type.startswith("list<"):
        return f"to_json({expr})"
    raise InvalidDefinition(f"data type {data_type} has no online codec", field="data_type")


def _resp_sql(binary_expr: str) -> str:
    """SQL building the RESP bulk string ``$<len>\\r\\n<bytes>\\r\\n`` of a binary value."""
    return (f"concat(encode(concat('$', CAST(octet_length({binary_expr}) AS STRING)), 'UTF-8'), "
            f"X'0D0A', {binary_expr}, X'0D0A')")


def require_columns(columns: Iterable[str], codec: Codec, what: str) -> None:
    """Refuse input lacking a join key, ``event_timestamp`` or a feature (``what``: DataFrame, table…)."""
    present = set(columns)
    missing = [c for c in (*codec.key_columns, "event_timestamp", *codec.feature_names) if c not in present]
    if missing:
        raise InvalidDefinition(f"cannot load feature set {codec.name} online: the {what} lacks column(s) "
                                f"{', '.join(missing)}", field=missing[0])


def ttl_cutoff(codec: Codec, now_micros: int | None) -> int | None:
    """The oldest event time (micros) still worth loading, or None when the set has no TTL.

    A windowed feature answers its window at the request's time whatever the TTL (as historical
    retrieval does), so a set with windows keeps rows up to its longest window when that is longer
    (``Codec.keep_cutoff``, which ``OnlineStore.write_rows`` applies too).
    """
    return codec.keep_cutoff(now_micros)


def latest_rows(df, codec: Codec, *, now_micros: int | None = None):
    """One row per hash key: ``k`` (key text), ``ts`` (event micros), then each feature's text."""
    columns = set(df.columns)
    require_columns(columns, codec, "DataFrame")
    # Group by the keys as native values (a sort on longs, not on strings) and reduce with the raw
    # feature values; only the surviving row per key is turned into text.
    natives = [f"{key_native_sql(c, t)} AS `_k{i}`" for i, (c, t) in enumerate(zip(codec.key_columns, codec.key_types))]
    order = ["unix_micros(CAST(event_timestamp AS TIMESTAMP)) AS ts"]
    if "created_timestamp" in columns:
        order.append("CAST(created_timestamp AS TIMESTAMP) AS created")
    raw = [f"{quote(name)} AS `v{i}`" for i, name in enumerate(codec.feature_names)]
    conditions = ["ts IS NOT NULL", *(f"`_k{i}` IS NOT NULL" for i in range(len(natives)))]
    cutoff = ttl_cutoff(codec, now_micros)
    if cutoff is not None:
        conditions.append(f"ts >= {cutoff}")
    selected = df.selectExpr(*natives, *order, *raw).where(" AND ".join(conditions))
    struct_fields = ", ".join(["ts", *(["created"] if "created_timestamp" in columns else []),
                               *(f"`v{i}`" for i in range(len(codec.features)))])
    group = [f"_k{i}" for i in range(len(natives))]
    parts = [f"CAST(length({key_text_sql(f'`_k{i}`', t)}) AS STRING), ':', {key_text_sql(f'`_k{i}`', t)}"
             for i, t in enumerate(codec.key_types)]
    key_sql = f"concat('{key_prefix(codec.name)}', {', '.join(parts)})"
    values = [f"{value_text_sql(f'r.`v{i}`', dt)} AS `v{i}`" for i, (_, dt) in enumerate(codec.features)]
    from pyspark.sql import functions as F

    return (selected.selectExpr(*group, f"struct({struct_fields}) AS r").groupBy(*group).agg(F.max("r").alias("r"))
            .selectExpr(f"{key_sql} AS k", "r.ts AS ts", *values))


def redis_packed(latest, codec: Codec):
    """Per key: ``kr`` (the key as a RESP bulk string) and ``p`` (RESP of ``@ts`` then every value)."""
    payload = [_resp_sql("encode(CAST(ts AS STRING), 'UTF-8')")]
    payload += [_resp_sql(f"coalesce(encode(`v{i}`, 'UTF-8'), X'FF')") for i in range(len(codec.features))]
    key = _resp_sql("encode(k, 'UTF-8')")
    return latest.selectExpr(f"{key} AS kr", f"concat({', '.join(payload)}) AS p")


def _written(count: int):
    """The one-row Arrow batch a loading task returns: how many keys it wrote."""
    import pyarrow as pa

    return pa.RecordBatch.from_pydict({"written": [count]}, schema=pa.schema([("written", pa.int64())]))


def packed_pieces(batches: Iterable) -> Iterator[tuple[list[bytes], list[bytes]]]:
    """Arrow batches of (RESP key, RESP payload) cut into ``write_packed`` calls of ``REDIS_BATCH`` keys."""
    for batch in batches:
        # to_numpy gives the bytes objects several times faster than to_pylist
        keys, payloads = (batch.column(i).to_numpy(zero_copy_only=False).tolist() for i in (0, 1))
        for start in range(0, len(keys), REDIS_BATCH):
            yield keys[start:start + REDIS_BATCH], payloads[start:start + REDIS_BATCH]


def _redis_tasks(config: dict[str, Any], codec: Codec, batches: Iterable) -> Iterator:
    """``mapInArrow`` body: write one task's packed rows (``kr``, ``p``) to Redis; yield the count written."""
    from fstore.storage.online import open_redis

    store = open_redis(config["url"], pool_size=1, timeout=config["timeout"])
    try:
        written = store.write_packed(codec, packed_pieces(batches))
    finally:
        store.close()
    yield _written(written)


def _embedded_tasks(config: dict[str, Any], codec: Codec, batches: Iterable) -> Iterator:
    """``mapInArrow`` body: upsert one task's latest rows (``k``, ``ts``, values) into the embedded store."""
    from fstore.storage.online.embedded import EmbeddedOnlineStore, data_json

    store = EmbeddedOnlineStore(config["path"])
    fields = codec.feature_names
    written = 0
    try:
        for batch in batches:
            columns = [column.to_pylist() for column in batch.columns]
            rows = list(zip(*columns))
            for start in range(0, len(rows), EMBEDDED_BATCH):
                chunk = rows[start:start + EMBEDDED_BATCH]
                params = [(codec.name, row[0], row[1], data_json(fields, row[2:])) for row in chunk]
                written += store.write_params(codec.name, params, max(row[1] for row in chunk))
    finally:
        store.close()
    yield _written(written)


def load_dataframe(df, fsv: "FeatureSetVersion | Codec", settings: "Settings", *, now_micros: int | None = None,
                   info: LoadInfo | None = None) -> int:
    """Load the latest row per entity key of ``df`` into the online store; returns keys written.

    ``df`` has the compiler's output columns (join keys, ``event_timestamp``,
    optionally ``created_timestamp``, the features). A key whose stored event time
    is newer than the loaded one keeps its value and is not counted. The driver then
    writes the set's load marker (``fstore.storage.online.marker``; ``info`` says what it records).
    """
    from fstore.storage.online import open_online_store
    from fstore.storage.online.embedded import EmbeddedOnlineStore

    from pyspark.sql import functions as F

    codec = as_codec(fsv)
    latest = latest_rows(df, codec, now_micros=now_micros)
    online = open_online_store(settings)
    try:
        before = state_before(online, codec)
        try:
            if settings.redis_url:
                config = {"url": settings.redis_url, "timeout": max(settings.redis_timeout, 30.0)}
                tasks = redis_packed(latest, codec).mapInArrow(partial(_redis_tasks, config, codec), "written long")
            else:
                config = {"path": str(settings.embedded_online_path)}
                EmbeddedOnlineStore(config["path"]).close()  # file, WAL mode and tables made once, before the executors
                tasks = latest.mapInArrow(partial(_embedded_tasks, config, codec), "written long")
            total = tasks.agg(F.sum("written")).collect()[0][0]
        except Exception as exc:  # a Spark job failure wraps the executor's error in Py4J/PySpark types
            if type(exc).__module__.startswith(("pyspark", "py4j")):
                text = str(exc)
                marker = "fstore.core.errors.Unavailable: "
                if marker in text:  # the store was unreachable from an executor: say so, as a 503 / exit 7
                    reason = text[text.index(marker) + len(marker):].splitlines()[0]
                    raise Unavailable(f"online load of feature set {codec.name} failed: {reason}") from None
                raise ComputeError(f"online load of feature set {codec.name} failed: {_first_line(text, exc)}") from exc
            raise
        written = int(total or 0)
        mark_loaded(online, codec, written, info, before)
    finally:
        online.close()
    return written


def state_before(online, codec: Codec) -> LoadState:
    """The set's load state before a load writes (what its marker will say depends on it)."""
    try:
        return online.load_states([codec.name])[codec.name]
    except Unavailable as exc:
        raise Unavailable(f"online load of feature set {codec.name} failed: {exc}") from None


def mark_loaded(online, codec: Codec, written: int, info: LoadInfo | None, before: LoadState) -> None:
    """Write the set's load marker after a load's rows (fields: ``fstore.storage.online.marker.marker_fields``),
    once the store dropped the rows its TTL expired (the embedded store; Redis keys expire by themselves)."""
    try:
        online.expire(codec)
        online.write_marker(codec.name, marker_fields(codec.version, written, info or LoadInfo(), before))
    except Unavailable as exc:
        raise Unavailable(f"online load of feature set {codec.name} wrote its rows but not its marker: {exc}") from None


def _first_line(text: str, exc: BaseException) -> str:
    """The executor's own error line from a Spark failure, else the first line."""
    for line in text.splitlines():
        if line.startswith("fstore.core.errors.") or line.startswith(("ValueError", "TypeError", "redis.exceptions.")):
            return line
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
