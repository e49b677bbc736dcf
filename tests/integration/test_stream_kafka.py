"""Kafka ingestion (#25 part 2) with a real broker: Kafka in KRaft mode from the cached jars, the stream job as its
own process (jobs/stream.py: Spark Structured Streaming with the cached Kafka source), the real Redis online store,
the offline Delta table on disk. Killed with SIGKILL mid-run and restarted: nothing lost, nothing doubled.

Without the jars (make setup) or the Kafka client the broker tests skip; with FSTORE_REQUIRE_SERVICES=1 they fail.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from fstore.core.errors import InvalidDefinition
from fstore.core.settings import Settings
from fstore.engine import jars
from fstore.ops.monitoring import data_freshness
from fstore.storage.offline import table_uri
from fstore.store import FeatureStore
from tests.conftest import REQUIRE_SERVICES, store_env
from tests.kafka_broker import KafkaBroker
from test_s3 import s3_server  # noqa: F401 - fixture (a loopback S3 server)

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 3, 1)
FEATURES = [{"name": "clicks_x2", "data_type": "int", "transformation": "clicks * 2"},
            {"name": "page_upper", "data_type": "string", "transformation": "upper(page)"}]
COLUMNS = ["user_id", "event_timestamp", "clicks_x2", "page_upper"]


def kafka_body(bootstrap: str, topic: str, name: str = "clicks_stream") -> dict:
    return {"name": name, "entities": ["user"],
            "source": {"kafka": {"bootstrap_servers": bootstrap, "topic": topic, "format": "json"},
                       "schema": {"user_id": "int", "ts": "timestamp", "clicks": "int", "page": "string"},
                       "event_timestamp_column": "ts"},
            "features": FEATURES}


def new_store(tmp_path: Path, **env: str) -> FeatureStore:
    store = FeatureStore(Settings.from_env(store_env(tmp_path, COMPUTE_ENGINE="duckdb", **env)), auto_upgrade=True)
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    return store


# -- the definition, without a broker -----------------------------------------------------------------

def test_apply_checks_the_keys_against_the_declared_schema_and_batch_runs_are_refused(tmp_path):
    store = new_store(tmp_path)
    try:
        body = kafka_body("127.0.0.1:9", "clicks")
        body["source"]["schema"] = {"uid": "int", "ts": "timestamp", "clicks": "int", "page": "string"}
        with pytest.raises(InvalidDefinition) as caught:
            store.create_feature_set(body)
        assert "'user_id'" in caught.value.message and caught.value.field == "entities"
        store.create_feature_set(kafka_body("127.0.0.1:9", "clicks"))
        for run in (lambda: store.materialize("clicks_stream", T0, T0 + timedelta(days=1)),
                    lambda: store.materialize_incremental("clicks_stream")):
            with pytest.raises(InvalidDefinition) as caught:
                run()
            assert "reads Kafka topic clicks" in caught.value.message and "fstore stream clicks_stream" in caught.value.message
    finally:
        store.close()


def test_the_warm_up_runs_the_batch_path_over_made_up_messages_and_writes_nothing(tmp_path, spark):
    """Before subscribing, the stream runs its own parse → Arrow → compute → online rows path over made-up messages
    of the declared schema (every key and event time parsed, so the JVM compiles the path real batches take), and
    stores nothing: no offline table, no online row, no stream totals."""
    from fstore.compute.stream import _BatchWriter, _parse, warm_rows

    store = new_store(tmp_path)
    try:
        store.create_feature_set(kafka_body("127.0.0.1:9", "clicks"))
        fsv = store.feature_set_version("clicks_stream")
        batch = _BatchWriter(store, fsv, str(tmp_path / "checkpoint"), None)
        source = fsv.feature_set.source
        messages = batch._read(_parse(warm_rows(spark, source, 500), source))
        table = batch._compute(messages)
        assert messages.num_rows == 500 and table.num_rows == 500
        assert table.column("user_id").null_count == 0 and table.column("event_timestamp").null_count == 0
        assert table.column("clicks_x2").to_pylist()[:3] == [0, 2, 4]
        assert batch.warm_up(spark, rows=500, rounds=2) > 0
        assert batch.totals["batches"] == 0 and not (tmp_path / "checkpoint").exists()
        assert not Path(table_uri(store.settings, "clicks_stream")).exists()
        answer = store.get_online_features(features=["clicks_stream:clicks_x2"], entities={"user_id": [0, 1]})
        assert {s["clicks_stream:clicks_x2"] for s in answer["statuses"].values()} == {"missing"}
    finally:
        store.close()


@pytest.fixture
def stream_log(caplog, monkeypatch):
    """``caplog`` of the stream module at INFO, whatever an earlier test's logging set-up left: a gunicorn or
    ``dictConfig`` set-up disables the loggers that already exist (the unit tests before these did)."""
    monkeypatch.setattr(logging.getLogger("fstore.compute.stream"), "disabled", False)
    caplog.set_level("INFO", logger="fstore.compute.stream")
    return caplog


def test_a_broker_that_never_answers_holds_the_warm_up_seconds_not_a_minute(tmp_path, spark, stream_log):
    """The warm-up's read of the topic (Kafka's client loaded before the first real batch) has its own short
    timeouts: against a broker that accepts connections and never answers, it gave up after 63 s with Kafka's
    defaults (the API timeout, 60 s). It logs why and the stream's start is left to report the broker."""
    import socket
    import threading

    from fstore.compute.stream import _BatchWriter

    frozen = socket.socket()
    frozen.bind(("127.0.0.1", 0))
    frozen.listen(16)
    held: list[socket.socket] = []
    threading.Thread(target=lambda: [held.append(frozen.accept()[0]) for _ in range(16)], daemon=True).start()
    store = new_store(tmp_path)
    try:
        store.create_feature_set(kafka_body(f"127.0.0.1:{frozen.getsockname()[1]}", "clicks"))
        batch = _BatchWriter(store, store.feature_set_version("clicks_stream"), str(tmp_path / "checkpoint"), None)
        assert batch.warm_up(spark, rows=100, rounds=1) < 30
        assert "warm-up read of the topic stopped" in stream_log.text
        assert held, "the warm-up never reached the frozen broker"
    finally:
        store.close()
        for connection in held:
            connection.close()
        frozen.close()


# -- with a broker --------------------------------------------------------------------------------

def _missing(why: str):
    if REQUIRE_SERVICES:
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    settings = Settings.from_env({k: os.environ[k] for k in ("SPARK_JARS_DIR", "XDG_CACHE_HOME") if k in os.environ})
    folder = jars.broker_jars(settings)
    if folder is None or jars.kafka_jars(settings) is None:
        _missing(f"the Kafka jars are not cached in {settings.spark_jars_dir} (python -m fstore.engine.jars)")
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        _missing("the Kafka client confluent-kafka is not installed (pip install -e '.[test]')")
    running = KafkaBroker(folder, tmp_path_factory.mktemp("kafka")).start()
    yield running
    running.stop()


def self_signed_127() -> tuple[str, str]:
    """A certificate for 127.0.0.1 (an IP SAN, so the host name check passes) and its PKCS#8 key, in PEM."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fstore test broker")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


@pytest.fixture(scope="module")
def sasl_broker(broker, tmp_path_factory):
    """A second broker that takes only SASL_SSL: TLS with a self-signed certificate for 127.0.0.1, then PLAIN
    logins (user ``fstore``, password ``fstore-secret``)."""
    settings = Settings.from_env({k: os.environ[k] for k in ("SPARK_JARS_DIR", "XDG_CACHE_HOME") if k in os.environ})
    running = KafkaBroker(jars.broker_jars(settings), tmp_path_factory.mktemp("kafka-sasl"),
                          sasl_users={"fstore": "fstore-secret"}, tls=self_signed_127()).start()
    yield running
    running.stop()


def produce(bootstrap: str, topic: str, events: list, key: str | None = None, conf: dict | None = None) -> None:
    """``events`` to ``topic``; with ``key``, each message keyed by that field (one partition per key value)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **(conf or {})})
    for event in events:
        value = event if isinstance(event, bytes) else event.encode() if isinstance(event, str) else json.dumps(event).encode()
        producer.produce(topic, value=value,
                         key=None if key is None else str(event[key]).encode())
    assert producer.flush(30) == 0


def event(i: int, user: int, minutes: int) -> dict:
    return {"user_id": user, "ts": (T0 + timedelta(minutes=minutes)).isoformat() + "Z", "clicks": i, "page": f"p{i}"}


class StreamJob:
    """jobs/stream.py as a process of its own, its output in a file."""

    def __init__(self, store: FeatureStore, tmp_path: Path, name: str, store_vars: dict | None = None) -> None:
        self.log = tmp_path / f"stream-{time.monotonic_ns()}.log"
        env = {**os.environ, **(store_vars or store_env(tmp_path)), "REDIS_URL": store.settings.redis_url,
               "SPARK_MASTER": "local[2]", "SPARK_CONNECT": "off", "PYTHONPATH": str(ROOT)}
        env.pop("SPARK_REMOTE", None)
        self.process = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "stream.py"), "--feature-set", name,
                                         "--trigger", "1", "--lock-ttl", "3"], stdout=open(self.log, "wb"),
                                        stderr=open(self.log.with_suffix(".err"), "wb"), env=env,
                                        start_new_session=True)

    def lines(self) -> list[dict]:
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.startswith("{")]

    def output(self) -> str:
        """Its JSON lines (stdout) and the last of Spark's and the logger's (stderr), for failure messages."""
        return self.log.read_text()[-3000:] + self.log.with_suffix(".err").read_text()[-3000:]

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int) -> int:
        """SIGKILL: the whole job dies at once, its Spark JVM too (its process group: a JVM left alive for a moment
        would still write Spark's checkpoint). SIGTERM: to the job, which stops its query and the JVM."""
        if sig == signal.SIGKILL:
            os.killpg(self.process.pid, sig)
            code = self.process.wait(60)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.killpg(self.process.pid, 0)
                except ProcessLookupError:
                    return code
                time.sleep(0.1)
            pytest.fail("the stream job's processes outlived SIGKILL")
        os.kill(self.process.pid, sig)
        return self.process.wait(60)


def offline_rows(store: FeatureStore, name: str) -> pd.DataFrame:
    uri = table_uri(store.settings, name)
    if not DeltaTable.is_deltatable(uri):
        return pd.DataFrame(columns=COLUMNS + ["push_id"])
    return DeltaTable(uri).to_pandas()


def wait_for(check, job: StreamJob, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        if job is not None and not job.alive():
            pytest.fail(f"the stream job exited {job.process.returncode} waiting for {what}: {job.output()}")
        time.sleep(0.5)
    pytest.fail(f"no {what} within {timeout:.0f} s: {job.output() if job else ''}")


def digest(frame: pd.DataFrame) -> tuple[int, str]:
    rows = frame[COLUMNS].copy()
    rows["event_timestamp"] = pd.to_datetime(rows["event_timestamp"]).dt.tz_localize(None).astype("datetime64[us]")
    rows = rows.sort_values(COLUMNS).reset_index(drop=True)
    return len(rows), hashlib.sha256(rows.to_csv(index=False).encode()).hexdigest()


def online(store: FeatureStore, users: list[int]) -> dict:
    got = store.get_online_features(features=["clicks_stream:clicks_x2", "clicks_stream:page_upper"],
                                    entities={"user_id": users})["features"]
    return {int(k): v for k, v in got.items()}


def test_the_warm_up_reads_the_topics_oldest_messages_and_writes_nothing(broker, tmp_path, spark, stream_log,
                                                                         monkeypatch):
    """The warm-up's last step reads the topic's oldest messages (at most ``WARM_TOPIC_ROWS``) into Arrow, so the
    first real batch finds Kafka's client loaded; what it read is dropped: no offline table, no online row, no
    checkpoint, no stream totals."""
    import re

    from fstore.compute import stream

    broker.create_topic("warm", partitions=4)
    produce(broker.bootstrap, "warm", [event(i, i % 8, i) for i in range(40)], key="user_id")
    store = new_store(tmp_path)
    try:
        store.create_feature_set(kafka_body(broker.bootstrap, "warm"))
        batch = stream._BatchWriter(store, store.feature_set_version("clicks_stream"), str(tmp_path / "checkpoint"), None)
        batch.warm_up(spark, rows=100, rounds=1)
        monkeypatch.setattr(stream, "WARM_TOPIC_ROWS", 10)
        batch.warm_up(spark, rows=100, rounds=1)
        assert re.findall(r"warm-up read (\d+) message", stream_log.text) == ["40", "10"]
        assert batch.totals["batches"] == 0 and not (tmp_path / "checkpoint").exists()
        assert not Path(table_uri(store.settings, "clicks_stream")).exists()
        answer = store.get_online_features(features=["clicks_stream:clicks_x2"], entities={"user_id": list(range(8))})
        assert {s["clicks_stream:clicks_x2"] for s in answer["statuses"].values()} == {"missing"}
    finally:
        store.close()


def test_stream_to_online_and_offline_exactly_once_across_a_kill(broker, tmp_path, redis_url):
    topic = f"clicks-{time.monotonic_ns()}"
    broker.create_topic(topic, partitions=2)
    store = new_store(tmp_path, REDIS_URL=redis_url)
    store.create_feature_set(kafka_body(broker.bootstrap, topic))
    # Ten users, events out of order in time; user 7's newest event is at minute 900.
    first = [event(i, i % 10, (i * 37) % 600) for i in range(200)] + [event(200, 7, 900), event(201, 7, 899)]
    produce(broker.bootstrap, topic, first)
    produce(broker.bootstrap, topic, ["not json", {"user_id": 1, "clicks": 3}])  # neither is written, both counted
    job = StreamJob(store, tmp_path, "clicks_stream")
    try:
        wait_for(lambda: len(offline_rows(store, "clicks_stream")) == len(first), job, "the first events offline")
        wait_for(lambda: sum(line.get("dropped", 0) for line in job.lines()) == 2, job, "the two bad messages counted")
        # Online: the newest event per key (user 7: minute 900, clicks 200, not the later-produced minute 899).
        assert online(store, [7])[7] == {"clicks_stream:clicks_x2": 400, "clicks_stream:page_upper": "P200"}
        newest = {}
        for e in first:
            if e["user_id"] not in newest or e["ts"] > newest[e["user_id"]]["ts"]:
                newest[e["user_id"]] = e
        assert online(store, list(newest)) == {u: {"clicks_stream:clicks_x2": e["clicks"] * 2,
                                                    "clicks_stream:page_upper": e["page"].upper()}
                                               for u, e in newest.items()}
        # Newer wins against a newer row loaded online (as a run's load writes it): an older event does not replace it.
        _load_newer_row(store, user=3, minutes=5000)
        produce(broker.bootstrap, topic, [event(300, 3, 4000), event(301, 4, 4000)])
        wait_for(lambda: online(store, [4])[4]["clicks_stream:clicks_x2"] == 602, job, "user 4's new event online")
        assert online(store, [3])[3] == {"clicks_stream:clicks_x2": -1, "clicks_stream:page_upper": "LOADED"}
        # Kill it (SIGKILL) while events flow in, then restart: every event offline once.
        more = [event(1000 + i, i % 13, 6000 + i) for i in range(3000)]
        produce(broker.bootstrap, topic, more[:1500])
        before = len(offline_rows(store, "clicks_stream"))
        wait_for(lambda: len(offline_rows(store, "clicks_stream")) > before, job, "a batch of the second events")
        produce(broker.bootstrap, topic, more[1500:])
        assert job.signal(signal.SIGKILL) == -signal.SIGKILL
    finally:
        if job.alive():
            job.signal(signal.SIGKILL)
    total = len(first) + 2 + len(more)
    assert len(offline_rows(store, "clicks_stream")) < total, "the kill came too late to prove anything"
    # The worst moment to die: after a batch's Delta commit, before Spark recorded the batch done. Its state is the
    # checkpoint without that batch's commit file: Spark replays the batch (same id, same offsets) on restart.
    # (When the kill itself came inside a batch, its commit file is missing already: that is the real thing.)
    checkpoint = Path(store.settings.storage_path) / "_streams" / "clicks_stream" / "checkpoint"
    last = max(int(p.name) for p in (checkpoint / "offsets").iterdir() if p.name.isdigit())
    committed = (checkpoint / "commits" / str(last)).is_file()
    for done in (checkpoint / "commits" / str(last), checkpoint / "commits" / f".{last}.crc"):
        done.unlink(missing_ok=True)
    again = StreamJob(store, tmp_path, "clicks_stream")  # waits out the killed job's stream lock (3 s lease)
    try:
        wait_for(lambda: len(offline_rows(store, "clicks_stream")) >= total, again, "every event offline")
        time.sleep(3)  # a doubled batch would land in the next trigger or two
        assert again.signal(signal.SIGTERM) == 0  # SIGTERM: a clean stop
    finally:
        if again.alive():
            again.signal(signal.SIGKILL)
    assert again.lines()[-1]["status"] == "stopped"
    replayed = [line for line in again.lines() if line.get("batch_id") == last]
    assert replayed, f"the restart did not run the unfinished batch {last} again: {again.output()}"
    if committed:  # its Delta commit was there: the replay is skipped whole
        assert replayed[0]["replayed"] is True and replayed[0]["appended"] == 0
    stored = offline_rows(store, "clicks_stream")
    assert stored["push_id"].is_unique and stored["push_id"].str.startswith(f"kafka:{topic}:").all()

    # The same events through a batch run of a parquet source: the same rows, counted and digested.
    produced = pd.DataFrame(first + [event(300, 3, 4000), event(301, 4, 4000)] + more)
    produced["event_timestamp"] = pd.to_datetime(produced.pop("ts")).dt.tz_localize(None).astype("datetime64[us]")
    source = tmp_path / "source" / "clicks"
    source.mkdir(parents=True)
    produced.to_parquet(source / "part-0.parquet", index=False)
    store.create_feature_set({"name": "clicks_batch", "entities": ["user"], "online_enabled": False,
                              "source": {"path": str(source), "format": "parquet"}, "features": FEATURES})
    store.materialize("clicks_batch", T0 - timedelta(days=1), T0 + timedelta(days=30))
    assert digest(stored) == digest(offline_rows(store, "clicks_batch"))
    assert len(stored) == total

    # Freshness of what the stream made visible, for the server's /monitoring/data-freshness and /metrics.
    item = next(i for i in data_freshness(store)["items"] if i["feature_set"] == "clicks_stream")
    assert item["stream"]["p99_seconds"] >= item["stream"]["p50_seconds"] > 0
    assert item["stream"]["events"] > 0
    from fstore.ops import metrics

    text = metrics.render(store)[0].decode()
    assert 'fstore_stream_freshness_seconds{feature_set="clicks_stream",quantile="0.99"}' in text
    store.close()


def _load_newer_row(store: FeatureStore, *, user: int, minutes: int) -> None:
    """A row newer than anything streamed, written through the online store's own newer-wins write."""
    from fstore.registry.repo import load_feature_set_version
    from fstore.registry.runs import feature_set_row

    with store.transaction() as s:
        fsv = load_feature_set_version(s, feature_set_row(s, "clicks_stream").id, secrets=store.secrets)
    store.online.write_rows(fsv, [{"user_id": user, "event_timestamp": T0 + timedelta(minutes=minutes),
                                   "created_timestamp": T0 + timedelta(minutes=minutes),
                                   "clicks_x2": -1, "page_upper": "LOADED"}])


def test_a_failing_batch_stops_the_job_with_one_line_and_writes_nothing(broker, tmp_path, redis_url):
    from fstore.core.errors import ComputeError

    topic = f"fail-{time.monotonic_ns()}"
    broker.create_topic(topic)
    store = new_store(tmp_path, REDIS_URL=redis_url)
    body = kafka_body(broker.bootstrap, topic)
    body["features"] = [{"name": "ratio", "data_type": "int", "transformation": "clicks DIV (clicks - clicks)"}]
    store.create_feature_set(body)
    produce(broker.bootstrap, topic, [event(1, 1, 0)])
    job = StreamJob(store, tmp_path, "clicks_stream")
    try:
        assert job.process.wait(240) == ComputeError.exit_code
    finally:
        if job.alive():
            job.signal(signal.SIGKILL)
    said = job.lines()[-1]
    assert said["status"] == "failed" and said["error"].startswith("the stream of clicks_stream failed: ")
    # Computed on DuckDB in the driver: the error names the set, that its rows broke it, and DuckDB's reason.
    assert "feature set clicks_stream v1 failed on its rows: " in said["error"], said["error"]
    assert "Division by zero" in said["error"]
    assert len(offline_rows(store, "clicks_stream")) == 0
    store.close()


def test_a_stream_logs_in_with_sasl_over_tls_its_password_sealed_at_rest_and_never_shown(sasl_broker, tmp_path,
                                                                                         redis_url):
    """``source.options`` SASL_SSL with the broker's CA, by PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512: the events stream in (the
    certificate and its host checked); the password is encrypted in the registry, redacted in every answer; a wrong password stops the job
    with an error that does not show it."""
    topic = f"sasl-{time.monotonic_ns()}"
    sasl_broker.create_topic(topic)
    store = new_store(tmp_path, REDIS_URL=redis_url)
    login = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "fstore",
             "ssl.ca.pem": sasl_broker.tls[0]}
    body = kafka_body(sasl_broker.bootstrap, topic)
    body["source"]["options"] = {**login, "sasl.password": "fstore-secret"}
    store.create_feature_set(body)
    wrong = kafka_body(sasl_broker.bootstrap, topic, name="clicks_wrong")
    wrong["source"]["options"] = {**login, "sasl.password": "not-the-password"}
    store.create_feature_set(wrong)
    scram = kafka_body(sasl_broker.bootstrap, topic, name="clicks_scram")
    scram["source"]["options"] = {**login, "sasl.mechanism": "SCRAM-SHA-256", "sasl.password": "fstore-secret"}
    store.create_feature_set(scram)
    scram512 = kafka_body(sasl_broker.bootstrap, topic, name="clicks_scram512")
    scram512["source"]["options"] = {**login, "sasl.mechanism": "SCRAM-SHA-512", "sasl.password": "fstore-secret"}
    store.create_feature_set(scram512)
    untrusted = kafka_body(sasl_broker.bootstrap, topic, name="clicks_untrusted")  # the JVM's CAs only
    untrusted["source"]["options"] = {k: v for k, v in body["source"]["options"].items() if k != "ssl.ca.pem"}
    store.create_feature_set(untrusted)
    assert store.get_feature_set("clicks_stream")["source"]["options"]["sasl.password"] == "<redacted>"
    registry = b"".join(p.read_bytes() for p in (tmp_path / "store").rglob("*.db*"))
    assert b"fernet:" in registry  # the registry's file, its passwords sealed
    assert b"fstore-secret" not in registry and b"not-the-password" not in registry
    events = [event(i, i % 5, i) for i in range(50)]
    produce(sasl_broker.bootstrap, topic, events, conf=sasl_broker.client_conf)
    for name in ("clicks_stream", "clicks_scram", "clicks_scram512"):  # PLAIN, then SCRAM-SHA-256 and -512
        job = StreamJob(store, tmp_path, name)
        try:
            wait_for(lambda: len(offline_rows(store, name)) == len(events), job, f"the events, logged in ({name})")
            assert job.signal(signal.SIGTERM) == 0
        finally:
            if job.alive():
                job.signal(signal.SIGKILL)
    for name, why in (("clicks_wrong", ("Authentication failed", "SaslAuthenticationException")),
                      ("clicks_untrusted", ("PKIX", "SSLHandshakeException", "certification path"))):
        refused = StreamJob(store, tmp_path, name)
        try:
            code = refused.process.wait(240)
        finally:
            if refused.alive():
                refused.signal(signal.SIGKILL)
        said = refused.output()
        assert code != 0 and "not-the-password" not in said and "fstore-secret" not in said, said
        error = refused.lines()[-1]["error"]  # the job's one line names the cause, not Spark's wrapper
        assert any(w in error for w in why), (name, error)
        assert len(offline_rows(store, name)) == 0
    store.close()


CLICK_AVRO = {"type": "record", "name": "Click", "fields": [
    {"name": "user_id", "type": "long"}, {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "clicks", "type": ["null", "int"]}, {"name": "page", "type": "string"}]}


def avro_message(e: dict) -> bytes:
    """``e`` in Confluent's wire format, written by fastavro (not by Spark, which reads it): a zero byte, a 4-byte
    schema id, then the Avro body."""
    import io
    import struct

    from fastavro import parse_schema, schemaless_writer

    out = io.BytesIO()
    out.write(b"\x00" + struct.pack(">I", 42))
    ts = datetime.fromisoformat(e["ts"].rstrip("Z"))
    schemaless_writer(out, parse_schema(CLICK_AVRO), {**e, "ts": int((ts - datetime(1970, 1, 1)).total_seconds() * 1e6)})
    return out.getvalue()


def test_avro_values_in_confluents_wire_format_stream_like_json_ones(broker, tmp_path, redis_url):
    """``format: confluent_avro`` with the writer's schema: the columns come from it, the warm-up writes Avro of its
    own, every event lands offline once and the newest per user online; a message that is not Avro is dropped
    and counted, not fatal."""
    topic = f"avro-{time.monotonic_ns()}"
    broker.create_topic(topic, partitions=2)
    store = new_store(tmp_path, REDIS_URL=redis_url)
    body = kafka_body(broker.bootstrap, topic)
    body["source"]["kafka"].update(format="confluent_avro", avro_schema=json.dumps(CLICK_AVRO))
    del body["source"]["schema"]
    store.create_feature_set(body)
    assert store.feature_set_version("clicks_stream").feature_set.source.schema == {"user_id": "int", "ts": "timestamp", "clicks": "int", "page": "string"}
    events = [event(i, i % 7, (i * 37) % 600) for i in range(120)]
    produce(broker.bootstrap, topic, [avro_message(e) for e in events] + [b"\x00\x00\x00\x00\x2a\xff\xff\xff"])
    job = StreamJob(store, tmp_path, "clicks_stream")
    try:
        wait_for(lambda: len(offline_rows(store, "clicks_stream")) == len(events), job, "the Avro events offline")
        wait_for(lambda: sum(line.get("dropped", 0) for line in job.lines()) == 1, job, "the bad message counted")
        newest = {}
        for e in events:
            if e["user_id"] not in newest or e["ts"] > newest[e["user_id"]]["ts"]:
                newest[e["user_id"]] = e
        assert online(store, list(newest)) == {u: {"clicks_stream:clicks_x2": e["clicks"] * 2,
                                                    "clicks_stream:page_upper": e["page"].upper()}
                                               for u, e in newest.items()}
        assert job.signal(signal.SIGTERM) == 0
    finally:
        if job.alive():
            job.signal(signal.SIGKILL)
    rows = offline_rows(store, "clicks_stream")
    assert sorted(rows["clicks_x2"]) == sorted(e["clicks"] * 2 for e in events)
    assert "batch path warmed up" in job.output()  # the warm-up's own Avro messages read back
    store.close()


def test_a_stream_on_an_s3_store_keeps_its_checkpoint_in_the_bucket_and_survives_a_kill(broker, s3_server, tmp_path,
                                                                                        redis_url):
    """STORAGE_BACKEND=s3: the checkpoint and the freshness file live under the store's prefix in the bucket (a job
    moved to another machine finds them), nothing under the working folder; killed mid-run and restarted, every
    event is offline exactly once (the restart reads its query id back from S3)."""
    from deltalake import DeltaTable

    from fstore.engine.s3 import delta_options, filesystem
    from fstore.ops.stream_freshness import read as read_freshness
    from test_s3 import s3_env

    topic = f"s3-{time.monotonic_ns()}"
    broker.create_topic(topic, partitions=2)
    variables = s3_env(s3_server, tmp_path, COMPUTE_ENGINE="duckdb")
    store = FeatureStore(Settings.from_env({**variables, "REDIS_URL": redis_url}), auto_upgrade=True)
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_feature_set(kafka_body(broker.bootstrap, topic))
    settings = store.settings

    def offline() -> int:
        uri = table_uri(settings, "clicks_stream")
        try:
            return len(DeltaTable(uri, storage_options=delta_options(settings)).to_pandas())
        except Exception:  # noqa: BLE001 - no table yet
            return 0

    first = [event(i, i % 9, i) for i in range(300)]
    produce(broker.bootstrap, topic, first)
    job = StreamJob(store, tmp_path, "clicks_stream", variables)
    try:
        wait_for(lambda: offline() == len(first), job, "the first events offline on S3")
        more = [event(1000 + i, i % 9, 1000 + i) for i in range(2000)]
        produce(broker.bootstrap, topic, more[:1000])
        wait_for(lambda: offline() > len(first), job, "a batch of the second events")
        produce(broker.bootstrap, topic, more[1000:])
        assert job.signal(signal.SIGKILL) == -signal.SIGKILL
    finally:
        if job.alive():
            job.signal(signal.SIGKILL)
    prefix = f"{settings.s3_bucket}/{settings.storage_path}/_streams/clicks_stream"
    from pyarrow import fs

    on_s3 = [i.path for i in filesystem(settings).get_file_info(fs.FileSelector(prefix, recursive=True))]
    assert f"{prefix}/checkpoint/metadata" in on_s3 and f"{prefix}/freshness.json" in on_s3
    assert not list(tmp_path.rglob("_streams"))  # nothing of the stream on the local disk
    again = StreamJob(store, tmp_path, "clicks_stream", variables)
    try:
        wait_for(lambda: offline() >= len(first) + len(more), again, "every event offline on S3")
        time.sleep(3)  # a doubled batch would land in the next trigger or two
        assert again.signal(signal.SIGTERM) == 0
    finally:
        if again.alive():
            again.signal(signal.SIGKILL)
    assert offline() == len(first) + len(more)
    assert read_freshness(settings, "clicks_stream")["events"] > 0
    store.close()


WINDOWED = [{"name": "clicks_30m", "data_type": "int", "transformation": "clicks", "aggregation": "sum",
             "window_size": "30m"},
            {"name": "events_2h", "data_type": "int", "aggregation": "count", "window_size": "2h"},
            {"name": "max_clicks_1h", "data_type": "int", "transformation": "clicks", "aggregation": "max",
             "window_size": "1h"}]


def test_windowed_features_stream_exactly_as_a_batch_run_computes_them(broker, tmp_path, redis_url):
    """A set with windows streamed in several micro-batches: offline rows equal a batch run's over the same events,
    and the online answers at instants after the last event (windows ageing out included) equal historical
    retrieval at those instants."""
    topic = f"windows-{time.monotonic_ns()}"
    broker.create_topic(topic, partitions=2)
    store = new_store(tmp_path, REDIS_URL=redis_url)
    body = kafka_body(broker.bootstrap, topic, name="clicks_windows")
    body["features"] = FEATURES + WINDOWED
    store.create_feature_set(body)
    users = list(range(6))
    # per user, events 7 minutes apart; keyed by user, so each user's events stay in order in one partition
    first = [event(i, u, 7 * (i // 6)) for i, u in zip(range(120), users * 20)]   # minutes 0..133
    second = [event(200 + i, u, 140 + 7 * (i // 6)) for i, u in zip(range(60), users * 10)]  # minutes 140..203
    produced = first + second
    job = StreamJob(store, tmp_path, "clicks_windows")
    try:
        done = 0
        for wave in (first, second):  # two waves: the second batch(es) extend the records the first wrote
            produce(broker.bootstrap, topic, wave, key="user_id")
            done += len(wave)
            wait_for(lambda: len(offline_rows(store, "clicks_windows")) >= done, job, f"{done} events offline")
        assert sum(line.get("late_events", 0) for line in job.lines()) == 0
        assert job.signal(signal.SIGTERM) == 0
    finally:
        if job.alive():
            job.signal(signal.SIGKILL)
    stored = offline_rows(store, "clicks_windows")
    assert len(stored) == len(produced) and stored["push_id"].is_unique

    frame = pd.DataFrame(produced)
    frame["event_timestamp"] = pd.to_datetime(frame.pop("ts")).dt.tz_localize(None).astype("datetime64[us]")
    source = tmp_path / "source" / "windows"
    source.mkdir(parents=True)
    frame.to_parquet(source / "part-0.parquet", index=False)
    store.create_feature_set({"name": "windows_batch", "entities": ["user"], "online_enabled": False,
                              "source": {"path": str(source), "format": "parquet"}, "features": FEATURES + WINDOWED})
    store.materialize("windows_batch", T0 - timedelta(days=1), T0 + timedelta(days=1))
    columns = ["user_id", "event_timestamp"] + [f["name"] for f in FEATURES + WINDOWED]

    def rows(table: pd.DataFrame) -> list[tuple]:
        table = table[columns].copy()
        table["event_timestamp"] = pd.to_datetime(table["event_timestamp"]).dt.tz_localize(None)
        return sorted(tuple(None if pd.isna(v) else v for v in r) for r in table.itertuples(index=False))

    assert rows(stored) == rows(offline_rows(store, "windows_batch"))

    last = T0 + timedelta(minutes=203)
    ats = [last, last + timedelta(minutes=20), last + timedelta(minutes=30), last + timedelta(minutes=30, microseconds=1),
           last + timedelta(minutes=59), last + timedelta(hours=2), last + timedelta(hours=3)]
    asked = pd.DataFrame([{"user_id": u, "event_timestamp": t} for t in ats for u in users])
    history = store.get_historical_features(entity_df=asked, features=[f"windows_batch:{f['name']}" for f in WINDOWED]
                                            ).to_df()
    want = {(int(r["user_id"]), pd.Timestamp(r["event_timestamp"]).tz_localize(None)
             if pd.Timestamp(r["event_timestamp"]).tzinfo else pd.Timestamp(r["event_timestamp"])):
            {f["name"]: r[f"windows_batch__{f['name']}"] for f in WINDOWED} for r in history.to_dict("records")}
    non_empty = 0
    for t in ats:
        got = store.get_online_features(features=[f"clicks_windows:{f['name']}" for f in WINDOWED],
                                        entities={"user_id": users}, at=t)["features"]
        for u in users:
            for f in WINDOWED:
                expected = want[(u, pd.Timestamp(t))][f["name"]]
                expected = None if expected is None or pd.isna(expected) else int(expected)
                assert got[str(u)][f"clicks_windows:{f['name']}"] == expected, (u, t, f["name"])
                non_empty += expected not in (None, 0)
    assert non_empty > len(users) * 3  # the windows compared hold events, not only empty answers
    store.close()

