"""Settings are read once from the environment; every bad value names its variable."""
from __future__ import annotations

from pathlib import Path

import pytest

from fstore.errors import InvalidDefinition
from fstore.settings import Settings


def test_defaults_are_the_embedded_store(tmp_path):
    s = Settings.from_env({"STORAGE_PATH": str(tmp_path)})
    assert s.storage_backend == "local" and s.storage_format == "delta" and s.spark_master == "local[*]"
    assert s.database_url == f"sqlite:///{tmp_path.resolve() / 'registry.db'}" and s.is_sqlite
    assert s.redis_url == "" and s.port == 8002 and s.auth_enabled is None and not s.serving_cache_enabled
    assert s.data_root == str(tmp_path.resolve())


def test_every_variable_is_read(tmp_path):
    env = {
        "STORAGE_BACKEND": "S3", "STORAGE_PATH": "features", "STORAGE_FORMAT": "parquet",
        "DATABASE_URL": "postgres://u:p@db:5432/fs", "REDIS_URL": "redis://cache:6379/2",
        "S3_ENDPOINT": "http://minio:9000", "S3_BUCKET": "bucket", "S3_ACCESS_KEY": "ak", "S3_SECRET_KEY": "sk",
        "SPARK_MASTER": "spark://m:7077", "SPARK_REMOTE": "sc://connect:15002", "MAX_COMPUTE_THREADS": "4",
        "SERVING_CACHE_ENABLED": "yes", "SERVING_CACHE_TTL": "2.5", "MAX_ENTITIES_PER_REQUEST": "50",
        "MAX_HISTORICAL_ROWS": "1000", "MAX_BODY_BYTES": "4096", "PORT": "9000", "AUTH_ENABLED": "off",
        "REDIS_TIMEOUT": "0.1", "DB_POOL_SIZE": "3", "REDIS_POOL_SIZE": "8",
        "DELTA_WRITER": "Delta-RS", "SPARK_JARS_DIR": "/opt/jars",
    }
    s = Settings.from_env(env)
    assert s.storage_backend == "s3" and s.storage_format == "parquet"
    assert s.database_url == "postgresql://u:p@db:5432/fs" and not s.is_sqlite
    assert s.data_root == "s3a://bucket/features"
    assert (s.max_compute_threads, s.serving_cache_enabled, s.serving_cache_ttl) == (4, True, 2.5)
    assert (s.max_entities_per_request, s.max_historical_rows, s.max_body_bytes, s.port) == (50, 1000, 4096, 9000)
    assert (s.auth_enabled, s.redis_timeout, s.db_pool_size, s.redis_pool_size) == (False, 0.1, 3, 8)
    assert (s.spark_master, s.spark_remote, s.s3_endpoint) == ("spark://m:7077", "sc://connect:15002", "http://minio:9000")
    assert (s.delta_writer, s.spark_jars_dir) == ("delta-rs", "/opt/jars")


def test_the_jars_cache_defaults_under_the_user_cache(tmp_path):
    assert Settings.from_env({}).delta_writer == "auto"
    assert Settings.from_env({"XDG_CACHE_HOME": str(tmp_path)}).spark_jars_dir == str(tmp_path / "fstore" / "jars")
    assert Settings.from_env({}).spark_jars_dir == str(Path.home() / ".cache" / "fstore" / "jars")


@pytest.mark.parametrize(("name", "value", "message"), [
    ("STORAGE_BACKEND", "gcs", "use one of: local, s3"),
    ("STORAGE_FORMAT", "orc", "use one of: delta, parquet"),
    ("DELTA_WRITER", "deltalake", "use one of: auto, spark, delta-rs"),
    ("DATABASE_URL", "mysql://db/fs", "not supported"),
    ("REDIS_URL", "localhost:6379", "must start with redis://"),
    ("MAX_COMPUTE_THREADS", "many", "not an integer"),
    ("MAX_COMPUTE_THREADS", "-1", "out of range"),
    ("SERVING_CACHE_ENABLED", "maybe", "not a boolean"),
    ("SERVING_CACHE_TTL", "soon", "not a number"),
    ("SERVING_CACHE_TTL", "-1", "must be >= 0"),
    ("MAX_ENTITIES_PER_REQUEST", "0", "out of range"),
    ("MAX_HISTORICAL_ROWS", "1e6", "not an integer"),
    ("MAX_BODY_BYTES", "100", "out of range"),
    ("PORT", "70000", "out of range"),
    ("PORT", "http", "not an integer"),
    ("AUTH_ENABLED", "sometimes", "not a boolean"),
    ("REDIS_TIMEOUT", "fast", "not a number"),
    ("DB_POOL_SIZE", "0", "out of range"),
    ("REDIS_POOL_SIZE", "20000", "out of range"),
])
def test_bad_values_name_the_variable(name, value, message):
    with pytest.raises(InvalidDefinition, match=message) as info:
        Settings.from_env({name: value})
    assert info.value.field == name and name in info.value.message


def test_s3_needs_a_bucket():
    with pytest.raises(InvalidDefinition, match="S3_BUCKET") as info:
        Settings.from_env({"STORAGE_BACKEND": "s3"})
    assert info.value.field == "S3_BUCKET"


def test_blank_values_mean_the_default():
    s = Settings.from_env({"PORT": " ", "SERVING_CACHE_ENABLED": "", "STORAGE_FORMAT": "", "AUTH_ENABLED": ""})
    assert (s.port, s.serving_cache_enabled, s.storage_format, s.auth_enabled) == (8002, False, "delta", None)


def test_overrides_win_and_with_copies(tmp_path):
    s = Settings.from_env({"PORT": "9000"}, port=9100, storage_path=str(tmp_path))
    assert s.port == 9100
    t = s.with_(port=9200)
    assert (s.port, t.port) == (9100, 9200)


def test_reads_os_environ_only_when_no_mapping_is_given(monkeypatch, tmp_path):
    monkeypatch.setenv("PORT", "8123")
    monkeypatch.setenv("STORAGE_PATH", str(tmp_path))
    assert Settings.from_env().port == 8123
    assert Settings.from_env({}).port == 8002
    assert Path(Settings.from_env({}).storage_path).name == "fstore_data"
