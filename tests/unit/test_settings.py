"""Settings are read once from the environment; every bad value names its variable."""
from __future__ import annotations

from pathlib import Path

import pytest

from fstore.core.errors import InvalidDefinition
from fstore.core.settings import Settings

KEY_A = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # Fernet keys: URL-safe base64 of 32 bytes
KEY_B = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="


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
        "FSTORE_SECRET_KEY": f"{KEY_A}, {KEY_B}", "SOURCE_ENV_ALLOW": "DB_PASSWORD, VAULT_*",
        "SCHEDULER_CONCURRENCY": "3", "SCHEDULER_RETRIES": "0", "SCHEDULER_RETRY_SECONDS": "1.5",
        "SPARK_LOG_LEVEL": "WARN",
        "DB_CONNECT_TIMEOUT": "3", "DB_STATEMENT_TIMEOUT": "1.5",
        "PYTHON_FEATURE_MODULES": "acme.features, acme.udfs", "SOURCE_ROOTS": f"{tmp_path}/data, s3a://lake/raw, relative",
        "DELTA_WRITER": "Delta-RS", "SPARK_JARS_DIR": "/opt/jars", "UI_SESSION_SECRET": "s" * 40,
        "ONLINE_SKEW_SAMPLE": "0.25", "PROFILES": "OFF", "ALERT_WEBHOOK_URL": "http://hooks:8080/fstore",
        "SPARK_CONNECT": "OFF", "SPARK_CONNECT_DIR": "/run/fstore-connect", "ONLINE_CACHE": "Tracking",
        "COLD_STORAGE_PATH": "s3://Archive/cold/",
        "COST_PRICES": '{"cpu_hour": 0.05, "gb_month_offline": 0.023, "gb_month_online": 5}',
        "UNUSED_ONLINE_DROP_DAYS": "90",
    }
    s = Settings.from_env(env)
    assert s.profiles is False and s.alert_webhook_url == "http://hooks:8080/fstore"
    assert s.cold_storage_path == "s3a://archive/cold" and Settings.from_env({}).cold_storage_path == ""
    assert s.python_feature_modules == ("acme.features", "acme.udfs")
    assert s.source_roots == s.allowed_source_roots == (f"{tmp_path}/data", "s3a://lake/raw", str(Path.cwd() / "relative"))
    assert s.storage_backend == "s3" and s.storage_format == "parquet"
    assert s.database_url == "postgresql://u:p@db:5432/fs" and not s.is_sqlite
    assert s.data_root == "s3a://bucket/features"
    assert (s.max_compute_threads, s.serving_cache_enabled, s.serving_cache_ttl) == (4, True, 2.5)
    assert s.online_cache == "tracking"
    assert (s.max_entities_per_request, s.max_historical_rows, s.max_body_bytes, s.port) == (50, 1000, 4096, 9000)
    assert (s.auth_enabled, s.redis_timeout, s.db_pool_size, s.redis_pool_size) == (False, 0.1, 3, 8)
    assert (s.db_connect_timeout, s.db_statement_timeout) == (3.0, 1.5)
    assert (s.spark_master, s.spark_remote, s.s3_endpoint) == ("spark://m:7077", "sc://connect:15002", "http://minio:9000")
    assert s.secret_key == f"{KEY_A},{KEY_B}" and s.source_env_allow == ("DB_PASSWORD", "VAULT_*")
    assert s.ui_session_secret == "s" * 40 and "s" * 40 not in repr(s)
    assert KEY_A not in repr(s)  # a settings dump in a log never shows the key
    assert s.secret_key_file is None  # PostgreSQL: no key file, FSTORE_SECRET_KEY or no secrets
    assert (s.scheduler_concurrency, s.scheduler_retries, s.scheduler_retry_seconds) == (3, 0, 1.5)
    assert s.spark_log_level == "warn"
    assert (s.delta_writer, s.spark_jars_dir) == ("delta-rs", "/opt/jars")
    assert s.online_skew_sample == 0.25 and Settings.from_env({}).online_skew_sample == 0.0
    assert (s.spark_connect, s.spark_connect_dir) == ("off", "/run/fstore-connect")
    assert dict(s.cost_prices) == {"cpu_hour": 0.05, "gb_month_offline": 0.023, "gb_month_online": 5.0}
    assert s.unused_online_drop_days == 90
    assert (Settings.from_env({}).cost_prices, Settings.from_env({}).unused_online_drop_days) == ((), 0)


def test_a_sqlite_registry_keeps_its_secret_key_beside_it(tmp_path):
    s = Settings.from_env({"STORAGE_PATH": str(tmp_path)})
    assert s.secret_key == "" and s.source_env_allow == ("FSTORE_SOURCE_*",)
    assert s.secret_key_file == tmp_path.resolve() / "secret.key"
    assert Settings.from_env({"SOURCE_ENV_ALLOW": "none"}).source_env_allow == ()


def test_the_jars_cache_defaults_under_the_user_cache(tmp_path):
    assert Settings.from_env({}).delta_writer == "auto"
    assert Settings.from_env({"XDG_CACHE_HOME": str(tmp_path)}).spark_jars_dir == str(tmp_path / "fstore" / "jars")
    assert Settings.from_env({}).spark_jars_dir == str(Path.home() / ".cache" / "fstore" / "jars")


def test_the_spark_connect_record_defaults_under_the_user_cache(tmp_path):
    s = Settings.from_env({"XDG_CACHE_HOME": str(tmp_path)})
    assert (s.spark_connect, s.spark_remote) == ("auto", "")
    assert s.spark_connect_dir == str(tmp_path / "fstore" / "spark-connect")


@pytest.mark.parametrize(("name", "value", "message"), [
    ("STORAGE_BACKEND", "gcs", "use one of: local, s3"),
    ("STORAGE_FORMAT", "orc", "use one of: delta, parquet"),
    ("DELTA_WRITER", "deltalake", "use one of: auto, spark, delta-rs"),
    ("SPARK_CONNECT", "on", "use one of: auto, off"),
    ("SPARK_REMOTE", "127.0.0.1:15002", "not a Spark Connect URL"),
    ("DATABASE_URL", "mysql://db/fs", "not supported"),
    ("REDIS_URL", "localhost:6379", "must start with redis://"),
    ("REDIS_URL", "redis+cluster://127.0.0.1:7000/2", "only database 0"),
    ("REDIS_URL", "redis+cluster://127.0.0.1:7000,127.0.0.1/0", "'127.0.0.1' is not host:port"),
    ("REDIS_URL", "redis+cluster://", "is not host:port"),
    ("MAX_COMPUTE_THREADS", "many", "not an integer"),
    ("MAX_COMPUTE_THREADS", "-1", "out of range"),
    ("SCHEDULER_CONCURRENCY", "0", "out of range"),
    ("SCHEDULER_RETRIES", "some", "not an integer"),
    ("SCHEDULER_RETRY_SECONDS", "-2", "must be >= 0"),
    ("SERVING_CACHE_ENABLED", "maybe", "not a boolean"),
    ("SERVING_CACHE_TTL", "soon", "not a number"),
    ("ONLINE_CACHE", "lru", "use one of: off, ttl, tracking"),
    ("ONLINE_CACHE", "tracking", "needs Redis"),
    ("SERVING_CACHE_TTL", "-1", "must be >= 0"),
    ("ONLINE_SKEW_SAMPLE", "1.5", "between 0 and 1"),
    ("ONLINE_SKEW_SAMPLE", "-0.1", "must be >= 0"),
    ("ONLINE_SKEW_SAMPLE", "some", "not a number"),
    ("MAX_ENTITIES_PER_REQUEST", "0", "out of range"),
    ("MAX_HISTORICAL_ROWS", "1e6", "not an integer"),
    ("MAX_BODY_BYTES", "100", "out of range"),
    ("PORT", "70000", "out of range"),
    ("PORT", "http", "not an integer"),
    ("AUTH_ENABLED", "sometimes", "not a boolean"),
    ("REDIS_TIMEOUT", "fast", "not a number"),
    ("DB_POOL_SIZE", "0", "out of range"),
    ("REDIS_POOL_SIZE", "20000", "out of range"),
    ("FSTORE_SECRET_KEY", "not-a-key", "not a Fernet key"),
    ("UI_SESSION_SECRET", "too-short", "at least 32 characters"),
    ("FSTORE_SECRET_KEY", f"{'QUJD' * 8}", "not a Fernet key"),
    ("SOURCE_ENV_ALLOW", "A B", "not a variable name"),
    ("DB_CONNECT_TIMEOUT", "0.5", ">= 1"),
    ("DB_STATEMENT_TIMEOUT", "soon", "not a number"),
    ("PYTHON_FEATURE_MODULES", "acme.features,os:system", "not a dotted module name"),
    ("PYTHON_FEATURE_MODULES", "acme..x", "not a dotted module name"),
    ("SOURCE_ROOTS", "s3a:///no-bucket", "names no host or bucket"),
    ("COST_PRICES", "cpu_hour=0.05", "not JSON"),
    ("COST_PRICES", "[0.05]", "JSON object of prices"),
    ("COST_PRICES", '{"cpu_hours": 0.05}', "unknown price"),
    ("COST_PRICES", '{"cpu_hour": -1}', "must be a number >= 0"),
    ("COST_PRICES", '{"cpu_hour": "cheap"}', "must be a number >= 0"),
    ("UNUSED_ONLINE_DROP_DAYS", "-3", "out of range"),
    ("UNUSED_ONLINE_DROP_DAYS", "soon", "not an integer"),
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


def test_python_features_and_source_roots_default_to_the_stores_own(tmp_path):
    s = Settings.from_env({"STORAGE_PATH": str(tmp_path)})
    assert s.python_feature_modules == ("fstore.definitions.examples",) and s.source_roots is None
    assert s.allowed_source_roots == (str(tmp_path.resolve()),)
    assert s.with_(storage_path=str(tmp_path / "other")).allowed_source_roots == (str((tmp_path / "other").resolve()),)
    assert Settings.from_env({"STORAGE_BACKEND": "s3", "S3_BUCKET": "lake"}).allowed_source_roots == ("s3://lake/",)
    assert Settings.from_env({"PYTHON_FEATURE_MODULES": ""}).python_feature_modules == ()  # set and empty: none


def test_a_redis_cluster_is_chosen_by_the_url_scheme():
    """REDIS_URL alone selects a cluster, so everything that passes REDIS_URL on (job processes, executors) agrees."""
    assert not Settings.from_env({"REDIS_URL": "redis://cache:6379/2"}).redis_cluster
    assert not Settings.from_env({}).redis_cluster
    for url in ("redis+cluster://10.0.0.1:7000", "rediss+cluster://u:p@10.0.0.1:7000,10.0.0.2:7001/0",
                "redis+cluster://[::1]:7000/"):
        s = Settings.from_env({"REDIS_URL": url})
        assert s.redis_cluster and s.redis_url == url


@pytest.mark.parametrize(("value", "problem"), [
    ("ftp://host/cold", "use a local folder or an s3://bucket/prefix"),
    ("s3:///no-bucket", "is not s3://bucket/prefix"),
    ("s3://bucket/a/../b", "is not s3://bucket/prefix"),
    ("{warm}", "overlaps STORAGE_PATH"),
    ("{warm}/offline/cold", "overlaps STORAGE_PATH"),
    ("{parent}", "overlaps STORAGE_PATH"),
])
def test_a_cold_storage_path_that_could_read_elsewhere_is_refused(tmp_path, value, problem):
    """The cold tier's root comes from the operator; still, it never overlaps the warm store (a cold table
    must not be a warm one) and names one bucket or one folder."""
    warm = tmp_path / "warm"
    env = {"STORAGE_PATH": str(warm), "COLD_STORAGE_PATH": value.format(warm=warm, parent=tmp_path)}
    with pytest.raises(InvalidDefinition, match=problem) as err:
        Settings.from_env(env)
    assert err.value.field == "COLD_STORAGE_PATH"


def test_a_local_cold_storage_path_is_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({"STORAGE_PATH": str(tmp_path / "warm"), "COLD_STORAGE_PATH": "archive"})
    assert s.cold_storage_path == str((tmp_path / "archive").resolve())


@pytest.mark.parametrize(("env", "mode"), [
    ({}, "off"),
    ({"SERVING_CACHE_ENABLED": "true"}, "ttl"),
    ({"ONLINE_CACHE": "TTL"}, "ttl"),
    ({"ONLINE_CACHE": "off", "SERVING_CACHE_ENABLED": "true"}, "off"),  # ONLINE_CACHE wins
    ({"ONLINE_CACHE": "tracking", "REDIS_URL": "redis://127.0.0.1:6379/0"}, "tracking"),
])
def test_online_cache_mode(env, mode):
    s = Settings.from_env(env)
    assert s.online_cache == mode and s.serving_cache_enabled == (mode != "off")


def test_online_cache_tracking_refuses_a_redis_cluster():
    with pytest.raises(InvalidDefinition, match="not supported on a Redis Cluster") as info:
        Settings.from_env({"ONLINE_CACHE": "tracking", "REDIS_URL": "redis+cluster://127.0.0.1:7000"})
    assert info.value.field == "ONLINE_CACHE"
