"""Stream: a feature set whose source is a Kafka topic, computed by Spark Structured Streaming.

``run_stream(store, name)`` reads the topic with Spark's Kafka source (its jars cached at set-up:
``fstore.engine.jars.kafka_conf``), parses each message value as a JSON object of the source's declared
``schema`` and, per micro-batch (``foreachBatch``):

1. **computes** the set's row features: Spark reads the batch's messages into Arrow, and the set's compiled
   query runs over them in the driver on DuckDB, then its validation rules, as for pushed rows
   (``fstore.compute.push.compute_rows``; both engines give the same values, tested byte for byte);
2. **offline**: appends every event of the batch to the set's Delta table exactly once: one commit carrying
   Delta's idempotent-write ``txn`` action (app id = the stream's checkpoint id, version = the batch id;
   ``fstore.storage.offline_arrow.append_batch``). Spark replays the last batch after a crash with the same id and
   the same offsets, and the table then already holds that version: skipped. Each row's ``push_id`` is
   ``kafka:topic:partition:offset``;
3. **online**: the newest row per key of the batch, made ready as a bulk load makes it (the same bytes) and
   written with the online store's atomic newer-wins write (``load_arrow.write_latest``), so an event older than
   what a run or an earlier batch loaded is dropped;
4. **freshness**: each event's time → the end of its batch's online write, p50/p99 (``fstore.ops.stream_freshness``).

The checkpoint lives under the store (``STORAGE_PATH/_streams/NAME/checkpoint``, on S3 under the store's prefix); one stream per set at a time
(registry lock ``stream:ID``, renewed while it runs; a killed stream's lease ends after ``lock_ttl``, and a new
start waits that long for it before it refuses with ``Conflict``).
A set with windowed features goes through ``fstore.compute.stream_windows.apply_events`` instead of steps 1
and 3: each event's windows are exact over the entity's online record plus the batch, computed in the
driver on DuckDB, and written online with the record by compare-and-set (a replayed batch's events are
recognised by their ``kafka:topic:partition:offset`` ids and counted once); the rows it returns are
appended offline as in step 2.
A message whose value is not a JSON object, or lacks a key or event time (or a row a validation rule drops), is
counted (``dropped``), not written.
"""
from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from fstore.core.errors import ComputeError, Conflict, InvalidDefinition, Unavailable

if TYPE_CHECKING:
    from fstore.core.context import StoreContext
    from fstore.definitions.model import FeatureSetVersion

log = logging.getLogger(__name__)

STREAM_LOCK_TTL = 30.0
_ID = "__fs_event_id"
_KAFKA_TS = "__fs_kafka_ts"
# How long the broker may hold a fetch that finds no new message (Kafka's default: 500 ms), which a batch's read
# can wait for when it reaches the end of the log. Measured (bench/stream_latency.py, 10k events/s, trigger 1 s):
# the batch after the producer stopped read 2,985 events in 1.09 s at 500 ms, 9,712 in 0.32 s at 100 ms.
FETCH_MAX_WAIT_MS = 100
WARM_ROWS, WARM_ROUNDS = 20_000, 3  # made-up messages per warm-up batch, and batches, before subscribing
# Then the warm-up reads the topic's oldest messages (at most this many, each partition stopping there): the first
# real batch otherwise loads Kafka's consumer and Spark's Kafka reader for the first time.
WARM_TOPIC_ROWS = 10_000
# That read's own options. A broker that accepts and never answers held it 63 s (Kafka's API timeout, 60 s): bounded
# to a few seconds. The oldest messages may be deleted by retention while it reads: it reads what is left.
_WARM_READ_OPTIONS = {"kafka.default.api.timeout.ms": "3000", "kafka.request.timeout.ms": "3000",
                      "fetchOffset.numRetries": "1", "failOnDataLoss": "false"}
_SPARK_TYPES = {"int": "BIGINT", "float": "DOUBLE", "string": "STRING", "bool": "BOOLEAN", "timestamp": "TIMESTAMP"}


def checkpoint_dir(store: "StoreContext", name: str) -> str:
    """The stream's Spark checkpoint, under the store (never a fixed /tmp path)."""
    from fstore.ops.stream_freshness import stream_dir

    return f"{stream_dir(store.settings, name)}/checkpoint"


def refuse_set(fsv: "FeatureSetVersion") -> None:
    """What a stream cannot do for this set, refused before Spark starts, naming the cause."""
    fs = fsv.feature_set
    if fs.source is None or not fs.source.is_stream:
        raise InvalidDefinition(f"feature set {fsv.name} has no kafka source: `fstore stream` reads a Kafka topic "
                                "(source.kafka); materialize batch sources instead", field="source.kafka")
    if not fs.online_enabled and not fs.offline_enabled:
        raise InvalidDefinition(f"feature set {fsv.name} has offline_enabled and online_enabled both false: a stream "
                                "would store nothing", field="offline_enabled")


def windowed_features(fsv: "FeatureSetVersion") -> list[str]:
    """The set's windowed features and the features built on them, at any depth (what a row alone cannot compute)."""
    windowed = [f.name for f in fsv.features if f.window is not None]
    grew = bool(windowed)
    while grew:
        built = [f.name for f in fsv.features if f.name not in windowed and set(f.source_features) & set(windowed)]
        windowed += built
        grew = bool(built)
    return windowed


def run_stream(store: "StoreContext", ref: str | int, *, trigger_seconds: float = 1.0,
               stop: threading.Event | None = None, lock_ttl: float = STREAM_LOCK_TTL,
               max_offsets_per_trigger: int | None = None,
               on_batch: Callable[[dict], None] | None = None, warm: bool = True) -> dict[str, Any]:
    """Stream feature set ``ref`` from its Kafka topic until ``stop`` is set (or the query fails: ``ComputeError``).
    Returns totals: batches, events, appended offline, written online, dropped. ``on_batch`` gets each batch's figures.
    ``warm``: run the batch path over made-up messages before subscribing (``_BatchWriter.warm_up``)."""
    from fstore.registry import runs
    from fstore.registry.repo import load_feature_set_version

    if trigger_seconds <= 0:
        raise InvalidDefinition(f"the trigger interval must be positive, not {trigger_seconds}", field="trigger")
    with store.transaction() as s:
        fs_id = runs.feature_set_row(s, ref).id
        fsv = load_feature_set_version(s, fs_id, secrets=store.secrets)
    refuse_set(fsv)
    stop = stop or threading.Event()
    lock, owner = f"stream:{fs_id}", f"stream:{uuid.uuid4()}"
    deadline = time.monotonic() + lock_ttl + 1  # a killed stream's lease ends within lock_ttl: wait that long
    holder = runs.try_acquire_lock(store.engine, lock, owner, lock_ttl)
    while holder is not None and not holder.get("taken_over") and time.monotonic() < deadline and not stop.is_set():
        time.sleep(0.5)
        holder = runs.try_acquire_lock(store.engine, lock, owner, lock_ttl)
    if holder is not None and not holder.get("taken_over"):
        raise Conflict(f"feature set {fsv.name} is already streaming ({holder['owner']}, since "
                       f"{runs.iso(holder['acquired_at'])}); one stream per set")
    try:
        with runs.keep_lease(store.engine, lock, owner, lock_ttl) as lost:
            return _run(store, fsv, trigger_seconds, stop, lost, max_offsets_per_trigger, on_batch, warm)
    finally:
        runs.release_lock(store.engine, lock, owner)


def _run(store, fsv, trigger_seconds, stop, lost, max_offsets, on_batch, warm) -> dict[str, Any]:
    from fstore.engine import jars
    from fstore.engine.session import get_spark

    spark = get_spark(store.settings, app_name=f"fstore-stream-{fsv.name}", extra=jars.kafka_conf(store.settings))
    if type(spark).__module__.startswith("pyspark.sql.connect"):
        raise Unavailable("a stream runs on a Spark driver of its own (local or a cluster), not over Spark Connect: "
                          "unset SPARK_REMOTE (or SPARK_CONNECT=off)")
    batch = _BatchWriter(store, fsv, checkpoint_dir(store, fsv.name), on_batch)
    if warm:
        log.info("stream %s: batch path warmed up in %.1f s", fsv.name, batch.warm_up(spark))
    query = _start(spark, fsv, batch, trigger_seconds, max_offsets)
    log.info("streaming %s from Kafka topic %s (trigger %s s, checkpoint %s)", fsv.name,
             fsv.feature_set.source.kafka.topic, trigger_seconds, batch.checkpoint)
    from pyspark.errors import StreamingQueryException

    try:
        while query.isActive and not stop.is_set():
            if lost.is_set():
                raise Conflict(f"the stream of {fsv.name} lost its lock (registry unreachable or taken over): stopped")
            query.awaitTermination(0.5)
    except StreamingQueryException as exc:  # a batch failed (Spark's or ours): one line, the query is over
        cause = _cause(str(exc), getattr(exc, "_stackTrace", None) or "")
        raise ComputeError(f"the stream of {fsv.name} failed: {cause or type(exc).__name__}") from None
    finally:
        if query.isActive:
            query.stop()  # between batches' commits or inside one: Spark replays an unfinished batch on restart
    return dict(batch.totals)


def _start(spark, fsv: "FeatureSetVersion", batch: "_BatchWriter", trigger_seconds: float, max_offsets: int | None):
    """The streaming query: Kafka → the source's columns (parsed JSON) → ``batch`` per micro-batch."""
    from pyspark.errors import PySparkException

    source = fsv.feature_set.source
    reader = (spark.readStream.format("kafka").options(**_kafka_options(source))
              .option("startingOffsets", source.kafka.starting_offsets))
    if max_offsets:
        reader = reader.option("maxOffsetsPerTrigger", str(int(max_offsets)))
    try:
        parsed = _parse(reader.load(), source)
        return (parsed.writeStream.foreachBatch(batch).queryName(f"fstore_stream_{fsv.name}")
                .option("checkpointLocation", batch.checkpoint)
                .trigger(processingTime=f"{trigger_seconds} seconds").start())
    except PySparkException as exc:
        text = str(exc).strip().splitlines()[0]
        if "kafka" in text.lower() and ("not find" in text.lower() or "failed to find" in text.lower()):
            raise Unavailable(f"Spark's Kafka source is not on this session's class path ({text}); run the stream in "
                              "a process of its own (`fstore stream`, jobs/stream.py) after `make setup`") from None
        raise ComputeError(f"the stream of {fsv.name} does not start: {text}") from None


def _kafka_options(source) -> dict[str, str]:
    """Spark's Kafka source options of ``source``, the stream's and its warm-up read's: the broker, SASL and TLS
    (resolved secrets, allow-listed), the topic, the fetch wait."""
    from fstore.definitions.kafka_security import client_options

    return {"kafka.bootstrap.servers": source.kafka.bootstrap_servers, **client_options(source.options),
            "subscribe": source.kafka.topic, "kafka.fetch.max.wait.ms": str(FETCH_MAX_WAIT_MS)}


def _parse(raw, source):
    """Kafka's rows (``value``, ``topic``, ``partition``, ``offset``, ``timestamp``) → the source's columns, the
    event id and the broker's time. Timestamps are parsed as text, then cast: Spark's cast reads ISO 8601 with any
    fraction and offset."""
    from pyspark.sql import functions as F

    from fstore.compiler.dialect import quote

    if source.kafka.avro_schema is not None:  # Avro records (fstore.definitions.avro); a malformed one: all null
        from pyspark.sql.avro.functions import from_avro

        body = F.expr("substring(value, 6)") if source.kafka.format == "confluent_avro" else F.col("value")
        parsed = from_avro(body, source.kafka.avro_schema, {"mode": "PERMISSIVE"})
        columns = [F.expr(f"CAST(v.{quote(c)} AS {_SPARK_TYPES[t]})").alias(c) for c, t in source.schema.items()]
    else:
        ddl = ", ".join(f"{quote(c)} {'STRING' if t == 'timestamp' else _SPARK_TYPES[t]}" for c, t in source.schema.items())
        parsed = F.from_json(F.col("value").cast("string"), ddl)
        columns = [F.expr(f"CAST(v.{quote(c)} AS TIMESTAMP)" if t == "timestamp" else f"v.{quote(c)}").alias(c)
                   for c, t in source.schema.items()]
    return (raw.select(parsed.alias("v"),
                       F.concat_ws(":", F.lit("kafka"), "topic", F.col("partition").cast("string"),
                                   F.col("offset").cast("string")).alias(_ID),
                       F.col("timestamp").alias(_KAFKA_TS))
            .select(*columns, _ID, _KAFKA_TS))


_WARM_VALUES = {"int": lambda i: i, "float": lambda i: i * 0.5, "string": lambda i: f"w{i % 97}",
                "bool": lambda i: i % 2 == 0, "timestamp": lambda i: f"2026-01-01T00:00:{i % 60:02d}.{i % 1000:03d}Z"}


def warm_rows(spark, source, rows: int):
    """``rows`` Kafka-shaped rows (JSON values of the source's schema) as a static DataFrame: what the stream's
    first batches will read, to run through the batch's path before subscribing."""
    import json
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc).replace(tzinfo=None)
    if source.kafka.avro_schema is not None:
        return _warm_avro_rows(spark, source, rows, now)
    data = [(json.dumps({c: _WARM_VALUES[t](i) for c, t in source.schema.items()}).encode(), "warm-up", i % 4, i, now)
            for i in range(rows)]
    return spark.createDataFrame(data, "value BINARY, topic STRING, partition INT, offset LONG, timestamp TIMESTAMP")


def _warm_avro_rows(spark, source, rows: int, now):
    """``warm_rows`` with Avro values: the same made-up values, written by Spark's ``to_avro`` with the source's
    schema (each column cast to its Avro field's exact type; Confluent's 5-byte header in front when declared)."""
    from pyspark.sql import functions as F
    from pyspark.sql.avro.functions import to_avro

    from fstore.compiler.dialect import quote
    from fstore.definitions.avro import spark_types

    types = spark_types(source.kafka.avro_schema)
    ddl = ", ".join(f"{quote(c)} {'STRING' if t == 'timestamp' else _SPARK_TYPES[t]}" for c, t in source.schema.items())
    values = spark.createDataFrame([tuple(_WARM_VALUES[t](i) for t in source.schema.values()) for i in range(rows)], ddl)
    value = to_avro(F.struct(*[F.expr(f"CAST({quote(c)} AS {types[c]})").alias(c) for c in source.schema]),
                    source.kafka.avro_schema)
    if source.kafka.format == "confluent_avro":
        value = F.concat(F.unhex(F.lit("0000000000")), value)
    return values.select(value.alias("value"), F.lit("warm-up").alias("topic"),
                         (F.monotonically_increasing_id() % 4).cast("int").alias("partition"),
                         F.monotonically_increasing_id().alias("offset"), F.lit(now).cast("timestamp").alias("timestamp"))


class _BatchWriter:
    """``foreachBatch``'s function: compute one micro-batch, append it offline once, write its newest rows online."""

    def __init__(self, store: "StoreContext", fsv: "FeatureSetVersion", checkpoint: str,
                 on_batch: Callable[[dict], None] | None) -> None:
        from fstore.ops.stream_freshness import FreshnessRecorder
        from fstore.storage.online.base import Codec

        self.store, self.checkpoint, self.on_batch = store, checkpoint, on_batch
        self.fsv = fsv  # what is stored (the set's version)
        source = fsv.feature_set.source
        if not source.created_timestamp_column:  # the broker's time orders rows of one event time, as a run's created time
            source = replace(source, created_timestamp_column=_KAFKA_TS, schema={**source.schema, _KAFKA_TS: "timestamp"})
        self.computing = replace(fsv, feature_set=replace(fsv.feature_set, source=source))
        self.codec = Codec.from_version(fsv)  # the online rows' layout, made once (it parses every feature's SQL)
        self.recorder = FreshnessRecorder(store.settings, fsv.name)
        self.windowed = bool(windowed_features(fsv))
        self.app_id: str | None = None
        self.totals = {"batches": 0, "events": 0, "appended": 0, "online_rows": 0, "dropped": 0, "replayed": 0}

    def __call__(self, df, batch_id: int) -> None:
        from fstore.storage.offline_arrow import append_batch

        began = time.perf_counter()
        fs = self.fsv.feature_set
        messages = self._read(df)
        stages = {"read": round(time.perf_counter() - began, 3)}
        events, applied = messages.num_rows, None
        if self.windowed:  # exact windows over the online records: computed and written online in the driver
            from fstore.compute.stream_windows import apply_events

            applied = apply_events(self.store, self.fsv, messages.drop_columns([_ID]),
                                   ids=messages.column(_ID).to_pylist(), online=fs.online_enabled)
            table = applied.rows
        else:
            table = self._compute(messages)
        stages["compute"] = round(time.perf_counter() - began - sum(stages.values()), 3)
        valid = _valid_rows(table, list(self.fsv.join_keys))
        dropped = events - valid.num_rows
        ids = valid.column(_ID).to_pylist()
        rows = valid.drop_columns([_ID])
        result: dict[str, Any] = {"feature_set": self.fsv.name, "batch_id": batch_id, "events": events,
                                  "dropped": dropped}
        if applied is not None:
            result.update(late_events=applied.late, duplicate_events=applied.duplicates)
        if fs.offline_enabled:
            wrote = append_batch(self.store.settings, self.fsv, rows, ids, app_id=self._app_id(), version=batch_id)
            result.update(appended=wrote["appended"], replayed=wrote["replayed"], offline_version=wrote["offline_version"])
        stages["offline"] = round(time.perf_counter() - began - sum(stages.values()), 3)
        online = 0
        if applied is not None:
            online = applied.online_rows
        elif fs.online_enabled and rows.num_rows:
            from fstore.storage.online.load_arrow import write_latest

            online = write_latest(self.store.online, rows, self.codec, self.store.settings)
        visible = time.time()
        stages["online"] = round(time.perf_counter() - began - sum(stages.values()), 3)
        result.update(online_rows=online, seconds=round(time.perf_counter() - began, 3), stages=stages)
        if rows.num_rows:
            latencies = [visible - t for t in _epoch_seconds(rows.column("event_timestamp"))]
            result["freshness"] = self.recorder.record(batch_id, latencies, events=events,
                                                       seconds=time.perf_counter() - began)
        self._count(result)
        if dropped:
            log.warning("stream %s batch %d: %d message(s) without a parsable key or event time were not written",
                        self.fsv.name, batch_id, dropped)
        if self.on_batch is not None:
            self.on_batch(result)

    def _read(self, df):
        """The batch's parsed messages, read from Kafka once into Arrow: every message, counted (one without an
        event time or key is dropped later, never silently lost). A windowed set's come in event-time order
        (``apply_events`` takes a key's events in the order given, and one older than an earlier one of its key
        counts as late): a batch arrives at once, whatever its partitions."""
        if not self.windowed:
            return df.toArrow()
        source = self.fsv.feature_set.source
        return df.select(*source.schema, _ID).toArrow().sort_by(source.event_timestamp_column)

    def _compute(self, messages):
        """The computed rows of a batch of a set without windows, in this process as pushed rows are
        (``push.compute_rows``: the set's compiled query on DuckDB, then its validation rules). A micro-batch is
        small: a second Spark job over its messages cost more than the computation (0.17 s a batch of 10,000)."""
        from fstore.compute.push import ID_COLUMN, compute_rows

        source_columns = messages.select(list(self.computing.feature_set.source.schema))
        computed = compute_rows(self.store, self.computing, source_columns, messages.column(_ID).to_pylist())
        return computed.rename_columns([_ID if c == ID_COLUMN else c for c in computed.column_names])

    def warm_up(self, spark, rows: int = WARM_ROWS, rounds: int = WARM_ROUNDS) -> float:
        """Run ``rounds`` batches of ``rows`` made-up messages through the batch's own path (parse, read into Arrow,
        compute, validate, the online rows made ready) and write nothing: the JVM compiles that path before the
        first real batch, which otherwise waits for it (first batches at 10,000 events/s: up to 7.3 s). Then it
        reads the topic's oldest ``WARM_TOPIC_ROWS`` messages into Arrow, and drops them: Kafka's consumer and
        Spark's Kafka reader are loaded before the first real batch needs them. Seconds taken.

        Made-up values may break a transformation that real ones never do (``x DIV (x - x)``): the warm-up then
        stops there, and the stream starts as it would have without it (a real batch that fails says so itself).
        A topic that cannot be read (a broker down, a refused login) is left to the stream's start to report."""
        from fstore.storage.online.load_arrow import ready_batches

        began = time.perf_counter()
        source = self.fsv.feature_set.source
        try:
            for _ in range(rounds):
                messages = self._read(_parse(warm_rows(spark, source, rows), source))
                if not self.windowed:
                    computed = _valid_rows(self._compute(messages), list(self.fsv.join_keys)).drop_columns([_ID])
                    for _ in ready_batches(computed, self.codec, self.store.settings):
                        pass
        except Exception as exc:  # noqa: BLE001 - a warm-up never stops a stream (see above)
            log.info("stream %s: warm-up stopped on made-up messages (%s)", self.fsv.name, _first_line(exc))
        try:
            oldest = (spark.read.format("kafka").options(**{**_kafka_options(source), **_WARM_READ_OPTIONS})
                      .option("startingOffsets", "earliest").option("endingOffsets", "latest").load())
            read = self._read(_parse(oldest.limit(WARM_TOPIC_ROWS), source))
            log.info("stream %s: warm-up read %d message(s) of the topic", self.fsv.name, read.num_rows)
        except Exception as exc:  # noqa: BLE001 - nor does its read of the topic: the stream's own start says why
            log.info("stream %s: warm-up read of the topic stopped (%s)", self.fsv.name, _first_line(exc))
        return time.perf_counter() - began

    def _app_id(self) -> str:
        """The idempotent writes' app id: the checkpoint's query id (Spark writes it before the first batch), so a
        new checkpoint (its batch ids starting at 0 again) never matches an old one's versions."""
        if self.app_id is None:
            import json

            from fstore.ops.stream_freshness import read_text

            try:
                query_id = json.loads(read_text(self.store.settings, f"{self.checkpoint}/metadata"))["id"]
            except (OSError, ValueError, KeyError) as exc:
                raise ComputeError(f"the stream's checkpoint {self.checkpoint} has no readable query id: {exc}") from None
            self.app_id = f"fstore-stream:{self.fsv.name}:{query_id}"
        return self.app_id

    def _count(self, result: dict) -> None:
        t = self.totals
        t["batches"] += 1
        t["events"] += result["events"]
        t["dropped"] += result["dropped"]
        t["appended"] += result.get("appended", 0)
        t["online_rows"] += result["online_rows"]
        t["replayed"] += 1 if result.get("replayed") else 0


def _valid_rows(table, keys: list[str]):
    """The rows with every join key and an event time (a message that did not parse has neither)."""
    import pyarrow.compute as pc

    mask = pc.is_valid(table.column("event_timestamp"))
    for key in keys:
        mask = pc.and_(mask, pc.is_valid(table.column(key)))
    return table.filter(mask)


def _epoch_seconds(column) -> list[float]:
    """Seconds since the epoch of an Arrow timestamp column (naive values are UTC, as everywhere in fstore)."""
    import pyarrow as pa

    micros = column.cast(pa.timestamp("us", tz=None) if column.type.tz is None else pa.timestamp("us", tz="UTC"))
    return [m / 1e6 for m in micros.cast(pa.int64()).to_pylist()]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _cause(text: str, trace: str = "") -> str:
    """The line of a failed query's message that names the cause: the innermost error of the Python traceback or
    of Spark's (``...Exception: [DIVIDE_BY_ZERO] ...``), not Spark's wrapper line (which ends in "Traceback").
    When the message names none (``[STREAM_FAILED] Query … terminated with error``: the Kafka source failed), the
    JVM's innermost ``Caused by:`` of ``trace`` (e.g. ``SSLHandshakeException: PKIX path building failed``).
    fstore's own errors are told as they are written, without their class's path."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    causes = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b:?", line) and "Traceback" not in line]
    if not causes:
        causes = [line.strip()[len("Caused by:"):].strip() for line in trace.splitlines()
                  if line.strip().startswith("Caused by:")]
    cause = causes[-1] if causes else lines[0] if lines else ""
    return re.sub(r"^fstore\.[\w.]+Error: ", "", cause)[:500]
