"""spark-submit entry point: stream a feature set from its Kafka topic until SIGTERM (or Ctrl-C).

    spark-submit --jars "$(python -m fstore.engine.jars --print-jars)" jobs/stream.py --feature-set NAME [--trigger 1]
    python jobs/stream.py --feature-set NAME          # the same, with a Spark driver of its own

Thin: parse arguments, build the store from the environment, call ``fstore.compute.stream.run_stream``, print a
one-line JSON summary when stopped, exit non-zero (the error's exit code) on failure. SIGTERM stops the query
between or inside a batch; the checkpoint and Delta's idempotent writes make the next start go on where it left.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

try:
    import fstore  # noqa: F401
except ImportError:  # run as a script from a checkout: the package sits beside jobs/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="stream", description=__doc__.splitlines()[0])
    parser.add_argument("--feature-set", required=True, help="feature set name or id")
    parser.add_argument("--trigger", type=float, default=1.0, help="seconds between micro-batches (default 1)")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=None, help="cap on messages per micro-batch")
    parser.add_argument("--lock-ttl", type=float, default=None, help="seconds a killed stream keeps the set's stream lock")
    parser.add_argument("--quiet-batches", action="store_true", help="no line per micro-batch")
    parser.add_argument("--no-warm-up", action="store_true",
                        help="subscribe at once, without running the batch path over made-up messages first")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("py4j", "alembic"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    from fstore.compute.stream import STREAM_LOCK_TTL, run_stream
    from fstore.core.errors import FStoreError
    from fstore.core.settings import Settings
    from fstore.store import FeatureStore

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def batch_line(result: dict) -> None:
        if not args.quiet_batches:
            print(json.dumps({k: v for k, v in result.items() if k != "freshness"} | {
                "p99_seconds": (result.get("freshness") or {}).get("last_batch_p99_seconds")}), flush=True)

    store = None
    try:
        store = FeatureStore(Settings.from_env())
        totals = run_stream(store, args.feature_set, trigger_seconds=args.trigger, stop=stop,
                            lock_ttl=args.lock_ttl or STREAM_LOCK_TTL,
                            max_offsets_per_trigger=args.max_offsets_per_trigger, on_batch=batch_line,
                            warm=not args.no_warm_up)
        print(json.dumps({"status": "stopped", "feature_set": args.feature_set, **totals}), flush=True)
        return 0
    except FStoreError as exc:
        print(json.dumps({"status": "failed", "error": exc.message}), flush=True)
        return exc.exit_code
    finally:
        if store is not None:
            store.close()


if __name__ == "__main__":
    raise SystemExit(main())
