"""The compute engines: a compiled query run on Spark or on DuckDB, and the Spark session itself.

Owns ``spark`` and ``duckdb`` (read a source, run a compiled query, the same
rows either way), ``sources`` (UTC timestamps, local paths and data files, shared by both engines and the
offline store), ``python_stage`` (Python features applied in batches), ``check``
(a new version tried on a sample before it is stored), ``session`` / ``spark_env`` /
``jars`` / ``class_archive`` / ``spark_daemon`` (a Spark session that starts fast,
with delta-spark on its class path). May import ``compiler``, ``definitions`` and
``core``.
"""
