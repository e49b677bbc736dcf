"""Feast 0.67's side of the benchmark: the same work as fstore, on the same data and Redis.

Run as a subprocess (``python -m bench.feast_side <command> …``) that prints one
JSON object on its last stdout line, so Feast's Python process never shares a
heap with fstore's JVM and the orchestrator can use another interpreter
(``$FEAST_PYTHON``) if Feast ever has to live in its own venv.

Commands:
  setup        write a Feast repo (Redis online store, file/dask offline store) and apply the definitions
  materialize  in-process ``FeatureStore.materialize`` over the whole range (timed)
  historical   ``get_historical_features`` for entity Parquet files (``bench.retrieval_calls``' order), results saved

``feast materialize`` (the CLI) and ``feast serve`` are started by the orchestrator
as subprocesses of Feast's own console script; see ``cli_materialize_command`` and
``serve_command``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

FEATURE_VIEW = "user_events"
FEATURES = tuple(f"f{i}" for i in range(10))


def feast_python() -> str:
    """The interpreter that has Feast (``$FEAST_PYTHON``, default: this one)."""
    return os.environ.get("FEAST_PYTHON") or sys.executable


def feast_version() -> str | None:
    """Feast's version under ``feast_python()``, or None when Feast is not installed there."""
    probe = subprocess.run([feast_python(), "-c", "import feast, sys; sys.stdout.write(feast.__version__)"],
                           capture_output=True, text=True, timeout=120)
    return probe.stdout.strip() if probe.returncode == 0 else None


def feast_cli() -> list[str]:
    """How to run Feast's CLI with ``feast_python()``."""
    return [feast_python(), "-m", "feast.cli.cli"]


def feature_refs() -> list[str]:
    return [f"{FEATURE_VIEW}:{name}" for name in FEATURES]


def write_repo(repo: Path, events_path: str, redis_db: int, redis_port: int = 6379) -> None:
    """A Feast repo folder: ``feature_store.yaml`` with a local registry, Redis online, file offline store."""
    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        "project: bench\n"
        f"registry: {repo / 'registry.db'}\n"
        "provider: local\n"
        "entity_key_serialization_version: 3\n"
        "online_store:\n"
        "  type: redis\n"
        f"  connection_string: 127.0.0.1:{redis_port},db={redis_db}\n"
        "offline_store:\n"
        "  type: file\n"
    )
    (repo / "EVENTS_PATH").write_text(events_path)


def apply_definitions(repo: Path) -> None:
    """Register entity ``user_id`` (INT64) and feature view ``user_events`` (f0..f9 Float64, no TTL)."""
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64

    events_path = (repo / "EVENTS_PATH").read_text()
    user = Entity(name="user_id", join_keys=["user_id"], value_type=ValueType.INT64)
    source = FileSource(name="user_events_source", path=events_path, timestamp_field="event_timestamp")
    view = FeatureView(name=FEATURE_VIEW, entities=[user], ttl=timedelta(0), online=True,
                       schema=[Field(name=name, dtype=Float64) for name in FEATURES], source=source)
    FeatureStore(repo_path=str(repo)).apply([user, view])


def materialize(repo: Path, start: datetime, end: datetime) -> dict:
    """In-process ``FeatureStore.materialize`` (no CLI start-up), wall time in seconds."""
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    began = time.perf_counter()
    store.materialize(start_date=start, end_date=end, feature_views=[FEATURE_VIEW])
    return {"seconds": time.perf_counter() - began}


def cli_materialize_command(repo: Path, start: datetime, end: datetime) -> list[str]:
    """``feast materialize START END`` for the whole range."""
    return [*feast_cli(), "-c", str(repo), "materialize", start.isoformat(), end.isoformat(), "--views", FEATURE_VIEW]


def serve_command(repo: Path, port: int, workers: int, *, access_log: bool = True) -> list[str]:
    """``feast serve`` with its defaults, except the port, the workers and (when asked) its access log."""
    command = [*feast_cli(), "-c", str(repo), "serve", "-h", "127.0.0.1", "-p", str(port)]
    if workers != 1:
        command += ["-w", str(workers)]
    if not access_log:
        command.append("--no-access-log")
    return command


def historical(repo: Path, entity_files: list[str], outputs: list[str], repeats: int, long_lived: int) -> dict:
    """``get_historical_features(...).to_df()`` per entity Parquet, in ``time_retrievals``' order; results saved."""
    import pandas as pd
    from feast import FeatureStore

    from bench.retrieval_calls import time_retrievals

    store = FeatureStore(repo_path=str(repo))
    frames = []
    for path in entity_files:
        entity_df = pd.read_parquet(path)
        entity_df.insert(0, "row_id", range(len(entity_df)))  # carried through, so rows can be matched later
        frames.append(entity_df)
    figures, results = time_retrievals(
        lambda frame: store.get_historical_features(entity_df=frame, features=feature_refs()).to_df(),
        frames, repeats=repeats, long_lived=long_lived)
    out: dict = {"files": {}}
    for path, output, frame, result, figure in zip(entity_files, outputs, frames, results, figures):
        result[["row_id", "user_id", "event_timestamp", *FEATURES]].to_parquet(output, index=False)
        out["files"][path] = {"rows_in": len(frame), "rows_out": len(result), **figure}
    return out


def _date(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.feast_side", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("setup")
    p.add_argument("--repo", required=True)
    p.add_argument("--events", required=True)
    p.add_argument("--redis-db", type=int, required=True)
    p = sub.add_parser("materialize")
    p.add_argument("--repo", required=True)
    p.add_argument("--start", type=_date, required=True)
    p.add_argument("--end", type=_date, required=True)
    p = sub.add_parser("historical")
    p.add_argument("--repo", required=True)
    p.add_argument("--entities", nargs="+", required=True)
    p.add_argument("--outputs", nargs="+", required=True)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--long-lived", type=int, default=0, help="calls per file in all (see bench.retrieval_calls)")
    args = parser.parse_args(argv)
    repo = Path(args.repo)
    if args.command == "setup":
        write_repo(repo, args.events, args.redis_db)
        began = time.perf_counter()
        apply_definitions(repo)
        out = {"seconds": time.perf_counter() - began}
    elif args.command == "materialize":
        out = materialize(repo, args.start, args.end)
    else:
        out = historical(repo, args.entities, args.outputs, args.repeats, args.long_lived)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
