"""``make demo``: the whole flow on the embedded defaults, printed step by step.

1. write the example sources (``fstore.definitions.examples``) under ``STORAGE_PATH``;
2. plan and apply ``conf/examples`` (entities, ``user_profile``, ``user_activity``);
3. materialize both feature sets over the data's range and print each run's figures;
4. show a few offline rows, online values for a few users, and a small training set.

Each step says what it did; a step whose part is missing or fails stops the demo
with a clear line and a non-zero exit code. Running it again changes nothing
(the data are the same bytes, apply is idempotent, a range re-run replaces itself).
"""
from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

from fstore.core.errors import FStoreError

EXAMPLES = Path(__file__).resolve().parents[1] / "conf" / "examples"
SETS = ("user_profile", "user_activity")


class StepFailed(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def step(title: str):
    """Run one numbered step; a missing module or an fstore error ends the demo with its message."""

    def decorate(fn):
        def run(*args, **kwargs):
            print(f"\n== {title}", flush=True)
            try:
                return fn(*args, **kwargs)
            except ModuleNotFoundError as exc:
                raise StepFailed(f"{title}: not available yet ({exc.name} is missing)", 2) from None
            except ImportError as exc:
                raise StepFailed(f"{title}: not available yet ({exc})", 2) from None
            except FStoreError as exc:
                raise StepFailed(f"{title} failed: {exc.message}", exc.exit_code) from None

        return run

    return decorate


@step("1. example data")
def make_data(settings):
    from fstore.definitions.examples import write_example_sources

    data = write_example_sources(Path(settings.storage_path) / "example_sources")
    print(f"{data.users} users in {data.users_path}")
    print(f"{data.purchases} purchases from {data.start:%Y-%m-%d} to {data.end:%Y-%m-%d} in {data.purchases_path}")
    return data


@step("2. plan and apply conf/examples")
def apply_examples(store):
    from fstore.registry.apply import describe

    print(describe(store.plan(str(EXAMPLES))))
    result = store.apply(str(EXAMPLES), actor="demo")
    print(describe(result).splitlines()[-1])


@step("3. materialize")
def materialize(store, data):
    for name in SETS:
        run = store.materialize(name, data.start, data.end, actor="demo")
        print(f"{name}: run {run['id']} {run['status']}: read {run.get('rows_read')} rows, wrote {run.get('rows_written')}, "
              f"rejected {run.get('rows_rejected')}, online {run.get('online_rows')}, "
              f"offline version {run.get('offline_version')}, {run.get('duration_s') or 0:.1f}s")


@step("4. offline store")
def offline_rows(store):
    """Read back with pyarrow, whatever the engine: the tables are plain Delta (or Parquet) files."""
    import pyarrow.dataset as ds

    from fstore.storage.offline_arrow import read_files

    for name in SETS:
        files = read_files(store.settings, name)
        table = files.dataset if files.dataset is not None else ds.dataset(files.paths, format="parquet")
        frame = table.to_table().to_pandas().sort_values(["user_id", "event_timestamp"])
        print(f"{name} (version {files.version}): {len(frame)} rows; the first few:")
        print(frame.head(4).to_string(index=False))


@step("5. online features")
def online(store):
    features = ["user_profile:user_age", "user_profile:account_balance", "user_profile:user_segment",
                "user_profile:purchase_count", "user_profile:last_login",
                "user_activity:purchases_last_30d", "user_activity:purchase_frequency"]
    answer = store.get_online_features(features=features, entities={"user": ["user_123", "user_456", "user_1003", "user_1004"]})
    for entity, values in answer["features"].items():
        shown = {k: (v.get("value") if isinstance(v, dict) else v) for k, v in values.items()}
        print(f"user {entity}: {shown}")
    print(f"metadata: {answer.get('metadata')}")


@step("6. training set (point-in-time)")
def training(store, data):
    import pandas as pd

    labels = pd.DataFrame({
        "user_id": ["user_123", "user_456", "user_1018", "user_1018"],
        "event_timestamp": [data.end - timedelta(days=1), data.end - timedelta(days=10),
                            data.end - timedelta(days=30), data.end],
        "label": [0, 1, 1, 0],
    })
    result = store.get_historical_features(
        entity_df=labels,
        features=["user_profile:account_balance", "user_activity:purchases_last_30d", "user_activity:spend_last_7d"])
    print(result.to_df().to_string(index=False))


def next_steps(settings, env=None) -> str:
    """What to do after the demo: the commands that look at its store, serve it, and the API docs.

    The commands carry the settings the demo used that are not the defaults (``STORAGE_PATH`` …), so
    they read the demo's store when pasted into a shell as they are."""
    import os
    import shlex

    env = os.environ if env is None else env
    names = ("STORAGE_PATH", "DATABASE_URL", "REDIS_URL", "COMPUTE_ENGINE", "STORAGE_FORMAT")
    prefix = " ".join(f"{n}={shlex.quote(env[n])}" for n in names if env.get(n))
    fstore = f"{prefix} fstore" if prefix else "fstore"
    port = settings.port
    lines = [
        "next steps (from this folder, with the same settings):",
        "  look at the store",
        f"    {fstore} feature-sets list",
        f"    {fstore} features list --feature-set user_activity",
        f"    {fstore} runs list",
        f"    {fstore} get-online-features --features user_activity:purchases_last_30d --entity user_id=user_123",
        "  serve it over HTTP",
        f"    {fstore} serve --host 127.0.0.1 --port {port}",
        f"  then open http://127.0.0.1:{port}/docs for the API (try GET /api/v1/feature-sets)",
        f"  define your own: copy {EXAMPLES} and run `{fstore} apply YOUR_FOLDER`",
    ]
    return "\n".join(lines)


def main() -> int:
    from fstore.core.settings import Settings
    from fstore.store import FeatureStore

    try:
        settings = Settings.from_env()
    except FStoreError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    print(f"fstore demo: storage at {settings.data_root}, registry {settings.database_url.split('@')[-1]}, "
          f"online store {'Redis' if settings.redis_url else 'embedded'}, compute engine {settings.compute_engine}")
    store = None
    try:
        data = make_data(settings)
        store = FeatureStore(settings)
        apply_examples(store)
        materialize(store, data)
        offline_rows(store)
        online(store)
        training(store, data)
    except StepFailed as exc:
        print(f"\ndemo stopped: {exc}", file=sys.stderr)
        return exc.code
    finally:
        if store is not None:
            if store._spark is not None:
                store._spark.stop()
            store.close()
    print("\ndemo done\n")
    print(next_steps(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
