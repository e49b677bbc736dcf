"""A driver process of ``test_spark_cluster.py`` (no tests of its own): on the Spark master that ``SPARK_MASTER``
names, materialize one feature set through the library, retrieve history for the entity rows in a Parquet
folder, run a batch retrieval job over them, and report what ran where.

    python spark_cluster_driver.py SET START END ENTITIES FEATURES HISTORY.parquet BATCH_OUTPUT

Its Spark application is named ``fstore-cluster-test``. Prints one JSON line: the session's master, the run,
the batch job, and, from each executor, the ``fstore`` and the Python it ran.
"""
from __future__ import annotations

import json
import sys

import pandas as pd

from fstore.engine.session import get_spark
from fstore.registry.runs import to_utc
from fstore.core.settings import Settings
from fstore.store import FeatureStore

APP_NAME = "fstore-cluster-test"
SHUFFLE = {"spark.sql.shuffle.partitions": "4"}  # small data on two 1-core executors: few tasks


def batch_job(store: FeatureStore, entities: str, features: list[str], output_path: str) -> dict:
    """Record a batch retrieval job and run it here, as its job process would (``fstore.serving.retrieval.batch``)."""
    from fstore.registry.jobs import create_job
    from fstore.serving.retrieval.batch import check_entity_source, check_output, run_batch_job

    path, fmt = check_output(store.settings, output_path, "delta")
    params = {"entity_source": check_entity_source(store.settings, {"path": entities}), "features": features,
              "feature_sets": None, "output_path": path, "output_format": fmt}
    with store.transaction() as s:
        job = create_job(s, "batch_retrieval", params, actor="cluster-test")
    return run_batch_job(store, job["id"])


def executors_view(spark) -> list[dict]:
    """One row per task of a small job spread over the executors: where fstore and the Python came from."""
    def probe(rows):
        import fstore

        for _ in rows:
            yield {"fstore": fstore.__file__, "python": sys.executable}

    count = spark.sparkContext.defaultParallelism * 2
    return spark.sparkContext.parallelize(range(count), count).mapPartitions(probe).collect()


def main(argv: list[str]) -> int:
    name, start, end, entities, features, history, batch_output = argv
    settings = Settings.from_env()
    store = FeatureStore(settings).use_spark(get_spark(settings, app_name=APP_NAME, extra=SHUFFLE))
    try:
        run = store.materialize(name, to_utc(start, field_name="start"), to_utc(end, field_name="end"),
                                actor="cluster-test")
        frame = pd.read_parquet(entities)
        store.get_historical_features(entity_df=frame, features=features.split(",")).to_df().to_parquet(history, index=False)
        job = batch_job(store, entities, features.split(","), batch_output)
        spark = store.spark
        report = {"master": spark.sparkContext.master, "job": job["status"],
                  "run": {k: run.get(k) for k in ("status", "rows_written", "online_rows", "error")},
                  "executors": executors_view(spark)}
    finally:
        store.close()
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
