"""Kafka → online visibility latency (#25 part 2): p50/p99 at a target event rate with a 1 s trigger.

A single-node Kafka (KRaft, from the jars set-up cached), a row-feature set on a 4-partition topic, and the
stream job (``jobs/stream.py``) as its own process. A producer sends JSON events at ``--rate`` per second for
``--seconds``, each stamped with its send time as its event time; the stream job measures, per micro-batch,
each event's time to the end of its batch's online write (``fstore.ops.stream_freshness``). Reported: p50/p99
over the steady state (every batch but the first with events), the worst batch's p99, events per
batch, whether every event reached the offline table, and the machine's load average.

    python -m bench.stream_latency --redis redis://127.0.0.1:6379/3 [--rate 10000 --seconds 60 --trigger 1]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from fstore.core.settings import Settings
from fstore.engine import jars
from fstore.store import FeatureStore

ROOT = Path(__file__).resolve().parents[1]


def _quantile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default=None, help="REDIS_URL of the online store (default: embedded)")
    parser.add_argument("--rate", type=int, default=10_000, help="events per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long to produce")
    parser.add_argument("--trigger", type=float, default=1.0)
    parser.add_argument("--keys", type=int, default=10_000, help="distinct users")
    parser.add_argument("--no-warm-up", action="store_true", help="the stream job subscribes without warming up first")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from confluent_kafka import Producer

    from tests.kafka_broker import KafkaBroker

    with tempfile.TemporaryDirectory(prefix="fstore-stream-bench-") as tmp:
        root = Path(tmp)
        env = {"STORAGE_PATH": str(root / "store"), "SOURCE_ROOTS": str(root), "SPARK_MASTER": "local[2]",
               "SPARK_CONNECT": "off", **({"REDIS_URL": args.redis} if args.redis else {})}
        settings = Settings.from_env(env)
        folder = jars.broker_jars(settings)
        if folder is None:
            raise SystemExit("the Kafka broker's jars are not cached: python -m fstore.engine.jars")
        broker = KafkaBroker(folder, root / "kafka").start()
        job = None
        try:
            broker.create_topic("events", partitions=4)
            store = FeatureStore(settings, auto_upgrade=True)
            store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
            store.create_feature_set({
                "name": "events_stream", "entities": ["user"],
                "source": {"kafka": {"bootstrap_servers": broker.bootstrap, "topic": "events", "format": "json",
                                     "starting_offsets": "latest"},
                           "schema": {"user_id": "int", "ts": "timestamp", "amount": "float", "page": "string"},
                           "event_timestamp_column": "ts"},
                "features": [{"name": "amount_x2", "data_type": "float", "transformation": "amount * 2"},
                             {"name": "page_upper", "data_type": "string", "transformation": "upper(page)"}]})
            log = root / "stream.log"
            job = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "stream.py"), "--feature-set", "events_stream",
                                    "--trigger", str(args.trigger), *(["--no-warm-up"] if args.no_warm_up else [])], stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                                   env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, start_new_session=True)
            deadline = time.monotonic() + 180
            waiting = Producer({"bootstrap.servers": broker.bootstrap})  # one message every 2 s until the query is up
            while "\"batch_id\"" not in log.read_text() and time.monotonic() < deadline:  # the query is up
                if job.poll() is not None:
                    raise SystemExit(f"the stream job exited: {log.read_text()[-2000:]}")
                waiting.produce("events", value=json.dumps(
                    {"user_id": 0, "ts": datetime.now(timezone.utc).isoformat(), "amount": 0.0, "page": "warm"}))
                waiting.flush(10)
                time.sleep(2)
            producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5, "batch.num.messages": 10_000,
                                 "queue.buffering.max.messages": 1_000_000})
            began, sent, tick = time.monotonic(), 0, 0.01
            while time.monotonic() - began < args.seconds:
                due = int((time.monotonic() - began) * args.rate)
                now = datetime.now(timezone.utc).isoformat()
                for i in range(sent, due):
                    producer.produce("events", value=json.dumps({"user_id": i % args.keys, "ts": now,
                                                                 "amount": float(i % 100), "page": "p"}).encode())
                sent = max(sent, due)
                producer.poll(0)
                time.sleep(tick)
            producer.flush(30)
            produced_for = time.monotonic() - began
            load = os.getloadavg()
            import pyarrow as pa
            import pyarrow.compute as pc
            from deltalake import DeltaTable

            from fstore.storage.offline import table_uri

            def offline_rows() -> int:
                """Rows in the offline table, from the commits' file statistics: reading the table itself every
                second took a core from the stream it measures (its last batches were 2 s slower)."""
                actions = DeltaTable(table_uri(settings, "events_stream")).get_add_actions(flatten=True)
                return int(pc.sum(pa.table(actions).column("num_records")).as_py() or 0)

            drained = time.monotonic() + 300  # the backlog: every event produced reaches the offline table
            while offline_rows() < sent and time.monotonic() < drained and job.poll() is None:
                time.sleep(args.trigger)
            drain_seconds = round(time.monotonic() - began - produced_for, 1)
            job.send_signal(signal.SIGTERM)
            job.wait(120)
            lines = [json.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
            batches = [x for x in lines if "batch_id" in x]
            # The first batch with events waited for the JVM to warm up (and the query to find the topic): left out.
            steady = [x for x in batches if x.get("p99_seconds") is not None and x["events"] > 1][1:]
            stored = offline_rows()
            freshness = json.loads((root / "store" / "_streams" / "events_stream" / "freshness.json").read_text())
            result = {
                "rate_target": args.rate, "produced": sent, "produced_seconds": round(produced_for, 1),
                "rate_achieved": round(sent / produced_for), "trigger_seconds": args.trigger,
                "batches": len(batches), "events_streamed": sum(x["events"] for x in batches),
                "offline_rows": stored, "backlog_drained_seconds_after_producing": drain_seconds,
                "batch_p99_seconds_after_warmup": [round(x["p99_seconds"], 3) for x in steady],
                "median_batch_p99_seconds": _quantile([x["p99_seconds"] for x in steady], 0.5),
                "worst_batch_p99_seconds": max((round(x["p99_seconds"], 3) for x in steady), default=None),
                "last_minute_p50_seconds": freshness["p50_seconds"], "last_minute_p99_seconds": freshness["p99_seconds"],
                "last_minute_events": freshness.get("window_events"),
                "events_per_batch_median": _quantile([x["events"] for x in steady], 0.5),
                "loadavg_1_5_15": [round(v, 2) for v in load],
                "online_store": "redis" if args.redis else "embedded",
                "warm_up": (re.findall(r"warmed up in ([0-9.]+ s)|warm-up stopped.*", log.read_text()) or ["off"])[0],
                "warm_up_topic_messages": int((re.findall(r"warm-up read (\d+) message", log.read_text()) or [0])[0]),
                "batches_detail": [{k: x.get(k) for k in ("batch_id", "events", "seconds", "stages", "p99_seconds")}
                                   for x in batches],
            }
            print(json.dumps(result, indent=1))
            store.close()
        finally:
            if job is not None and job.poll() is None:
                job.kill()
            broker.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
