"""spark-submit entry point: materialize a feature set (a range, incrementally, or a recorded run).

    spark-submit jobs/materialize.py --feature-set NAME --start 2024-01-01 --end 2024-02-01
    spark-submit jobs/materialize.py --feature-set NAME --incremental [--end …]
    python jobs/materialize.py --run-id ID        # execute a pending run recorded by the server

Thin: parse arguments, build the store from the environment, call the library,
print a one-line JSON summary, exit non-zero (the error's exit code) on failure.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

try:
    import fstore  # noqa: F401
except ImportError:  # run as a script from a checkout: the package sits beside jobs/
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="materialize", description=__doc__.splitlines()[0])
    parser.add_argument("--feature-set", help="feature set name or id")
    parser.add_argument("--start", help="range start, ISO 8601 (UTC unless an offset is given)")
    parser.add_argument("--end", help="range end (exclusive); with --incremental, default now")
    parser.add_argument("--incremental", action="store_true", help="from the set's watermark to --end")
    parser.add_argument("--run-id", help="execute this pending run recorded in the registry")
    parser.add_argument("--kind", default="full", choices=("full", "backfill", "scheduled"))
    parser.add_argument("--actor", default="job")
    parser.add_argument("--lock-ttl", type=float, default=None, help="seconds a silent run keeps the lock")
    args = parser.parse_args(argv)
    if args.run_id:
        if args.feature_set or args.start or args.incremental:
            parser.error("--run-id takes no --feature-set, --start or --incremental")
    elif not args.feature_set:
        parser.error("--feature-set (or --run-id) is required")
    elif not args.incremental and not (args.start and args.end):
        parser.error("--start and --end are required (or --incremental)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("py4j", "alembic"):  # keep the one-line JSON summary the last line of the output
        logging.getLogger(chatty).setLevel(logging.WARNING)
    from fstore.engine.session import get_spark
    from fstore.core.errors import FStoreError
    from fstore.compute.materialize import LOCK_TTL_SECONDS, execute_run, materialize, materialize_incremental
    from fstore.registry.runs import to_utc
    from fstore.core.settings import Settings
    from fstore.store import FeatureStore

    store = None
    try:
        settings = Settings.from_env()
        store = FeatureStore(settings)
        ttl = args.lock_ttl or LOCK_TTL_SECONDS

        def start_engine(app_name: str) -> None:
            """Under spark-submit, the session it made (its settings win); DuckDB needs nothing started."""
            if settings.compute_engine == "spark":
                store.use_spark(get_spark(settings, app_name=app_name))

        if args.run_id:
            start_engine(f"fstore-run-{args.run_id[:8]}")
            run = execute_run(store, args.run_id, lock_ttl=ttl)
        elif args.incremental:
            start_engine(f"fstore-materialize-{args.feature_set}")
            end = to_utc(args.end, field_name="end") if args.end else None
            run = materialize_incremental(store, args.feature_set, end=end, actor=args.actor)
        else:
            start, end = to_utc(args.start, field_name="start"), to_utc(args.end, field_name="end")
            start_engine(f"fstore-materialize-{args.feature_set}")
            run = materialize(store, args.feature_set, start, end, actor=args.actor, kind=args.kind, lock_ttl=ttl)
    except FStoreError as exc:
        print(json.dumps({"status": "failed", "run_id": args.run_id, **exc.to_dict()}), flush=True)
        return exc.exit_code
    finally:
        if store is not None:
            store.close()
    summary = {k: run.get(k) for k in ("id", "feature_set", "status", "start", "end", "rows_read", "rows_written",
                                       "rows_rejected", "online_rows", "offline_version", "duration_s", "stages",
                                       "reason") if k in run}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
