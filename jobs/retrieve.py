"""spark-submit entry point: run a recorded batch retrieval job.

    python jobs/retrieve.py --job-id ID                 # what start_batch_retrieval starts
    spark-submit --properties-file spark-defaults.conf jobs/retrieve.py --job-id ID

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="retrieve", description=__doc__.splitlines()[0])
    parser.add_argument("--job-id", required=True, help="the pending batch retrieval job recorded in the registry")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from fstore.core.errors import FStoreError
    from fstore.serving.retrieval import run_batch_job
    from fstore.core.settings import Settings
    from fstore.store import FeatureStore

    store = None
    try:
        store = FeatureStore(Settings.from_env())
        job = run_batch_job(store, args.job_id)
        print(json.dumps({"job_id": job["id"], "status": job["status"], "result": job["result"]}))
        return 0
    except FStoreError as exc:
        print(json.dumps({"job_id": args.job_id, "status": "failed", "error": exc.message}))
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the job records it; the exit code says it failed
        print(json.dumps({"job_id": args.job_id, "status": "failed", "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    finally:
        if store is not None:
            store.close()
            if store._spark is not None:
                store._spark.stop()


if __name__ == "__main__":
    sys.exit(main())
