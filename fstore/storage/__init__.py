"""Store: the offline store (versioned Delta tables partitioned by day) and the online store.

Owns ``offline`` (table paths, versions, reads, the delta-rs writer and the
Parquet/Delta file layout), ``offline_arrow`` (writing a pyarrow table computed in
this process), ``offline_spark_delta`` (writing through delta-spark) and
``online`` (Redis or the embedded SQLite store, their bulk loads and load markers).
May import ``engine``, ``compiler``, ``definitions`` and ``core``; knows nothing of
the registry or of runs.
"""
