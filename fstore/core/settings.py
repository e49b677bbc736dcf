"""Typed settings, read once from the environment and passed explicitly.

``Settings.from_env()`` is the only place that reads ``os.environ`` for
configuration. A bad value raises ``InvalidDefinition`` naming the variable and
the values it accepts, so a misconfigured process stops at start-up.
"""
from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from fstore.core.errors import InvalidDefinition

_TRUE = {"1", "true", "yes", "on"}
DEFAULT_PYTHON_FEATURE_MODULES = ("fstore.definitions.examples",)
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_FALSE = {"0", "false", "no", "off"}


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, default).strip().lower() or default
    if value not in allowed:
        raise InvalidDefinition(f"{name}={value!r} is not valid; use one of: {', '.join(allowed)}", field=name)
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidDefinition(f"{name}={raw!r} is not a boolean; use true or false", field=name)


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0, maximum: int = 2**31) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidDefinition(f"{name}={raw!r} is not an integer", field=name) from None
    if not minimum <= value <= maximum:
        raise InvalidDefinition(f"{name}={value} is out of range [{minimum}, {maximum}]", field=name)
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise InvalidDefinition(f"{name}={raw!r} is not a number", field=name) from None
    if value < minimum:
        raise InvalidDefinition(f"{name}={value} must be >= {minimum}", field=name)
    return value


def _fraction(env: Mapping[str, str], name: str, default: float) -> float:
    value = _float(env, name, default)
    if value > 1.0:
        raise InvalidDefinition(f"{name}={value} must be a fraction between 0 and 1", field=name)
    return value


def _session_secret(env: Mapping[str, str], name: str) -> str:
    """A secret of at least 32 characters, or "" (never echoed in the error)."""
    value = env.get(name, "").strip()
    if value and len(value) < 32:
        raise InvalidDefinition(f"{name} must be at least 32 characters long", field=name)
    return value


def _fernet_keys(env: Mapping[str, str], name: str) -> str:
    """Comma-separated Fernet keys (URL-safe base64 of 32 bytes each), checked without importing cryptography."""
    raw = env.get(name, "").strip()
    for number, key in enumerate(k.strip() for k in raw.split(",") if raw):
        try:
            ok = len(base64.urlsafe_b64decode(key.encode("ascii"))) == 32
        except (ValueError, UnicodeEncodeError):
            ok = False
        if not ok:  # never echo the value: it is a secret
            raise InvalidDefinition(f"{name} entry {number + 1} is not a Fernet key (URL-safe base64 of 32 bytes; "
                                    "make one with: python -c 'from cryptography.fernet import Fernet; "
                                    "print(Fernet.generate_key().decode())')", field=name)
    return ",".join(k.strip() for k in raw.split(",")) if raw else ""


def _patterns(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """Comma-separated environment variable names or glob patterns (``FSTORE_SOURCE_*``); "none" for none."""
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    if raw.strip().lower() == "none":
        return ()
    patterns = tuple(p.strip() for p in raw.split(",") if p.strip())
    for pattern in patterns:
        if not re.fullmatch(r"[A-Za-z_*?][A-Za-z0-9_*?]*", pattern):
            raise InvalidDefinition(f"{name} entry {pattern!r} is not a variable name or a glob pattern such as "
                                    "FSTORE_SOURCE_*", field=name)
    return patterns


def _modules(env: Mapping[str, str]) -> tuple[str, ...]:
    """PYTHON_FEATURE_MODULES: comma-separated dotted module names; unset is the default, empty is none."""
    raw = env.get("PYTHON_FEATURE_MODULES")
    if raw is None:
        return DEFAULT_PYTHON_FEATURE_MODULES
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    bad = [n for n in names if not _MODULE_RE.match(n)]
    if bad:
        raise InvalidDefinition(f"PYTHON_FEATURE_MODULES={raw!r}: {bad[0]!r} is not a dotted module name "
                                "(such as mycompany.features)", field="PYTHON_FEATURE_MODULES")
    return names


def _roots(env: Mapping[str, str]) -> tuple[str, ...] | None:
    """SOURCE_ROOTS: comma-separated folders (made absolute against the working folder) or URI prefixes."""
    raw = env.get("SOURCE_ROOTS")
    if raw is None or not raw.strip():
        return None
    roots = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        if "://" in part and not part.startswith("file:"):
            if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]+", part):
                raise InvalidDefinition(f"SOURCE_ROOTS={raw!r}: {part!r} names no host or bucket", field="SOURCE_ROOTS")
            roots.append(part)
        else:
            local = part.removeprefix("file://") if part.startswith("file://") else part.removeprefix("file:")
            roots.append(os.path.abspath(local))
    return tuple(roots)


def _cold_path(env: Mapping[str, str], data_root: str) -> str:
    """COLD_STORAGE_PATH: a local folder (made absolute) or an ``s3://``/``s3a://`` bucket prefix (kept as
    ``s3a://bucket/prefix``, as ``data_root`` is); no other scheme, no '.' or '..' segments, and never
    overlapping STORAGE_PATH's data (the cold table of a set must not be a warm table, nor hold one)."""
    raw = env.get("COLD_STORAGE_PATH", "").strip()
    if not raw:
        return ""
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):", raw)
    kind = scheme.group(1).lower() if scheme else ""
    if kind in ("s3", "s3a"):
        bucket, _, prefix = raw.split("://", 1)[1].partition("/") if "://" in raw else ("", "", "")
        segments = [s for s in prefix.split("/") if s]
        if not bucket or any(s in (".", "..") for s in segments):
            raise InvalidDefinition(f"COLD_STORAGE_PATH={raw!r} is not s3://bucket/prefix (a bucket, no '.' or '..')",
                                    field="COLD_STORAGE_PATH")
        root = "/".join([f"s3a://{bucket.lower()}", *segments])
    elif kind in ("", "file"):
        local = raw[len("file://"):] if raw.startswith("file://") else raw[len("file:"):] if kind == "file" else raw
        root = os.path.realpath(local)
    else:
        raise InvalidDefinition(f"COLD_STORAGE_PATH={raw!r}: use a local folder or an s3://bucket/prefix",
                                field="COLD_STORAGE_PATH")
    warm = data_root.rstrip("/") if data_root.startswith("s3a://") else os.path.realpath(data_root)
    if root == warm or root.startswith(warm + "/") or warm.startswith(root + "/"):
        raise InvalidDefinition(f"COLD_STORAGE_PATH={raw!r} overlaps STORAGE_PATH (the warm offline store): "
                                "give a location outside it", field="COLD_STORAGE_PATH")
    return root


CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")


def _redis_url(env: Mapping[str, str]) -> str:
    """REDIS_URL: one Redis (``redis://``, ``rediss://``, ``unix://``) or a Redis Cluster
    (``redis+cluster://[user:password@]host:port[,host:port…][/0]``, ``rediss+cluster://`` over TLS),
    whose hosts are seeds: any one that answers gives the cluster's layout. A cluster has only database 0."""
    url = env.get("REDIS_URL", "").strip()
    if not url:
        return ""
    if url.startswith(CLUSTER_SCHEMES):
        rest = url.split("://", 1)[1]
        hosts, _, path = rest.split("?", 1)[0].rpartition("@")[2].partition("/")
        for host in hosts.split(","):
            name, _, port = host.rpartition(":")
            if not name or not port.isdigit() or not 0 < int(port) < 65536:
                raise InvalidDefinition(f"REDIS_URL={url!r}: cluster seed {host!r} is not host:port", field="REDIS_URL")
        if path not in ("", "0"):
            raise InvalidDefinition(f"REDIS_URL={url!r}: a Redis Cluster has only database 0, not {path!r}",
                                    field="REDIS_URL")
        return url
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise InvalidDefinition(f"REDIS_URL={url!r} must start with redis://, rediss://, unix:// or, for a Redis "
                                "Cluster, redis+cluster:// or rediss+cluster://", field="REDIS_URL")
    return url


def default_jars_dir(env: Mapping[str, str]) -> str:
    """Where set-up caches the jars Spark needs beyond pyspark's own (``$XDG_CACHE_HOME/fstore/jars``)."""
    cache = env.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return str(Path(cache) / "fstore" / "jars")


def default_connect_dir(env: Mapping[str, str]) -> str:
    """Where ``fstore spark up`` records its Spark Connect server (``$XDG_CACHE_HOME/fstore/spark-connect``)."""
    cache = env.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return str(Path(cache) / "fstore" / "spark-connect")


PRICE_KEYS = ("cpu_hour", "gb_month_offline", "gb_month_online")


def _prices(env: Mapping[str, str], name: str) -> tuple[tuple[str, float], ...]:
    """COST_PRICES: a JSON object of prices (any of ``PRICE_KEYS``, each a number >= 0); unset = no money figures."""
    import json

    raw = env.get(name, "").strip()
    if not raw:
        return ()
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise InvalidDefinition(f"{name} is not JSON ({exc.msg}); use e.g. "
                                '{"cpu_hour": 0.05, "gb_month_offline": 0.023, "gb_month_online": 5}', field=name) from None
    if not isinstance(value, dict) or not value:
        raise InvalidDefinition(f"{name} must be a JSON object of prices with keys among {', '.join(PRICE_KEYS)}",
                                field=name)
    unknown = sorted(set(value) - set(PRICE_KEYS))
    if unknown:
        raise InvalidDefinition(f"{name} has unknown price(s) {', '.join(unknown)}; use {', '.join(PRICE_KEYS)}", field=name)
    for key, price in value.items():
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not 0 <= price < float("inf"):
            raise InvalidDefinition(f"{name}: price {key}={price!r} must be a number >= 0", field=name)
    return tuple(sorted((k, float(v)) for k, v in value.items()))


def _online_cache(env: Mapping[str, str], redis_url: str) -> str:
    """ONLINE_CACHE (off, ttl, tracking); unset: SERVING_CACHE_ENABLED's ttl or off. Tracking needs one Redis:
    the embedded store keeps TTL caching, and a Redis Cluster is refused (one tracking connection per node
    is not implemented)."""
    if not env.get("ONLINE_CACHE", "").strip():
        return "ttl" if _bool(env, "SERVING_CACHE_ENABLED", False) else "off"
    mode = _choice(env, "ONLINE_CACHE", "off", ("off", "ttl", "tracking"))
    if mode == "tracking" and not redis_url:
        raise InvalidDefinition("ONLINE_CACHE=tracking needs Redis (REDIS_URL); the embedded online store caches "
                                "with ONLINE_CACHE=ttl", field="ONLINE_CACHE")
    if mode == "tracking" and redis_url.startswith(CLUSTER_SCHEMES):
        raise InvalidDefinition("ONLINE_CACHE=tracking is not supported on a Redis Cluster (REDIS_URL=redis+cluster://"
                                "…): use ONLINE_CACHE=ttl or off", field="ONLINE_CACHE")
    return mode


def _remote(env: Mapping[str, str]) -> str:
    value = env.get("SPARK_REMOTE", "").strip()
    if value and not value.startswith("sc://"):
        raise InvalidDefinition(f"SPARK_REMOTE={value!r} is not a Spark Connect URL; use sc://HOST:PORT", field="SPARK_REMOTE")
    return value


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything configurable about one fstore deployment."""

    storage_backend: str = "local"
    storage_path: str = field(default_factory=lambda: str(Path.cwd() / "fstore_data"))
    storage_format: str = "delta"
    database_url: str = ""
    redis_url: str = ""  # REDIS_URL: one Redis, or a Redis Cluster with redis+cluster:// (see _redis_url)
    s3_endpoint: str = ""
    s3_bucket: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    spark_master: str = "local[*]"
    spark_remote: str = ""  # SPARK_REMOTE: sc://HOST:PORT of a Spark Connect server every session uses
    # SPARK_CONNECT: "auto" uses the server `fstore spark up` recorded in SPARK_CONNECT_DIR when SPARK_REMOTE
    # is unset and that server runs for the same settings (fstore.engine.connect); "off" never looks for one.
    spark_connect: str = "auto"
    spark_connect_dir: str = field(default_factory=lambda: default_connect_dir(os.environ))
    # DELTA_WRITER: who commits Delta writes from Spark. "spark": delta-spark's format("delta") (its jars
    # fetched by set-up, fstore.engine.jars); "delta-rs": Spark writes Parquet, the deltalake package commits;
    # "auto": spark when the jars are on the session's class path, else delta-rs.
    delta_writer: str = "auto"
    spark_jars_dir: str = field(default_factory=lambda: default_jars_dir(os.environ))  # SPARK_JARS_DIR
    max_compute_threads: int = 0
    compute_engine: str = "spark"  # COMPUTE_ENGINE: spark (local or cluster) or duckdb (embedded, one process)
    # ONLINE_CACHE: online serving's value cache. "off"; "ttl": values kept SERVING_CACHE_TTL seconds (and
    # answered, degraded, up to a minute more while the store is down); "tracking": values kept until Redis
    # says they changed (RESP3-era CLIENT TRACKING; one Redis only, fstore.storage.online.tracking). Unset:
    # "ttl" when SERVING_CACHE_ENABLED is true, else "off".
    online_cache: str = "off"
    serving_cache_ttl: float = 5.0
    online_skew_sample: float = 0.0  # ONLINE_SKEW_SAMPLE: fraction of online requests checked against historical
    max_entities_per_request: int = 1000
    max_historical_rows: int = 1_000_000
    max_body_bytes: int = 16 * 1024 * 1024
    port: int = 8002
    auth_enabled: bool | None = None
    bind_host: str = ""  # where the server listens (FSTORE_BIND_HOST, set by server.py/gunicorn); "" = not bound
    redis_timeout: float = 0.25
    db_pool_size: int = 5
    redis_pool_size: int = 32
    # FSTORE_SECRET_KEY: Fernet key(s), comma separated (the first encrypts, all decrypt: rotation) for the
    # source options that are secrets; "" = a key file beside a SQLite registry, else secrets are refused.
    secret_key: str = field(default="", repr=False)
    # UI_SESSION_SECRET: signs and seals the monitoring UI's session cookie (at least 32 characters); "" = derived
    # from FSTORE_SECRET_KEY, and with neither the UI cannot log in while keys are required (fstore.api.ui.session).
    ui_session_secret: str = field(default="", repr=False)
    # SOURCE_ENV_ALLOW: which environment variables a source option may name as ${NAME} (glob patterns).
    source_env_allow: tuple[str, ...] = ("FSTORE_SOURCE_*",)
    spark_log_level: str = "error"  # SPARK_LOG_LEVEL: Spark's own log (the CLI sets OFF unless --debug)
    scheduler_concurrency: int = 2  # SCHEDULER_CONCURRENCY: due feature sets the scheduler runs at once
    scheduler_retries: int = 3  # SCHEDULER_RETRIES: tries again of a scheduled run that failed or was refused
    scheduler_retry_seconds: float = 30.0  # SCHEDULER_RETRY_SECONDS: first wait before a retry; doubles each time
    # A registry call never waits longer than these (PostgreSQL): connecting, and one statement. A frozen
    # server is cut off client-side after the statement timeout (fstore.registry.db).
    db_connect_timeout: float = 2.0
    db_statement_timeout: float = 5.0
    # PYTHON_FEATURE_MODULES: the module prefixes a ``python:`` feature may name (see fstore.definitions.guard);
    # nothing else is ever imported for a feature. Unset: the project's examples; set and empty: none.
    python_feature_modules: tuple[str, ...] = DEFAULT_PYTHON_FEATURE_MODULES
    # SOURCE_ROOTS: where sources may be read and batch outputs written; None = the default
    # (``default_source_roots``: STORAGE_PATH, and the bucket on S3), computed when asked.
    source_roots: tuple[str, ...] | None = None
    # PROFILES (on|off): a feature profile per run (quantiles, histogram, top values) for drift and anomalies.
    profiles: bool = True
    # ALERT_WEBHOOK_URL: where an anomaly alert is POSTed as JSON ("" = no webhook; alerts are still recorded).
    alert_webhook_url: str = ""
    # COST_PRICES: prices that turn the measured cost figures into money (fstore.ops.cost); () = figures only.
    cost_prices: tuple[tuple[str, float], ...] = ()
    # UNUSED_ONLINE_DROP_DAYS: features neither served online nor in a training set for this many days have
    # their online values dropped when the policy is applied (fstore.ops.unused); 0 = never drop, report only.
    unused_online_drop_days: int = 0
    # COLD_STORAGE_PATH: where feature sets' cold offline tables live (a local folder or an s3a:// prefix, kept
    # normalized; "" = no cold tier). Outside STORAGE_PATH; only fstore.storage.cold reads or writes it.
    cold_storage_path: str = ""

    def __post_init__(self) -> None:
        if not self.database_url:
            # The default registry is a SQLite file beside the data, so one folder is the whole store.
            if self.storage_backend == "local":
                url = f"sqlite:///{Path(self.storage_path).resolve() / 'registry.db'}"
            else:
                url = f"sqlite:///{Path.cwd().resolve() / 'fstore_registry.db'}"
            object.__setattr__(self, "database_url", url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        """Read the settings from ``env`` (default ``os.environ``); overrides win."""
        env = os.environ if env is None else env
        backend = _choice(env, "STORAGE_BACKEND", "local", ("local", "s3"))
        if backend == "s3" and not env.get("S3_BUCKET"):
            raise InvalidDefinition("STORAGE_BACKEND=s3 needs S3_BUCKET", field="S3_BUCKET")
        database_url = env.get("DATABASE_URL", "").strip()
        if database_url and not database_url.startswith(("sqlite:", "postgresql", "postgres:")):
            raise InvalidDefinition(
                f"DATABASE_URL={database_url!r} is not supported; use sqlite:///PATH or postgresql://…",
                field="DATABASE_URL",
            )
        if database_url.startswith("postgres:"):
            database_url = "postgresql:" + database_url[len("postgres:"):]
        redis_url = _redis_url(env)
        auth_raw = env.get("AUTH_ENABLED")
        values = dict(
            storage_backend=backend,
            storage_path=env.get("STORAGE_PATH", "").strip() or str(Path.cwd() / "fstore_data"),
            storage_format=_choice(env, "STORAGE_FORMAT", "delta", ("delta", "parquet")),
            database_url=database_url,
            redis_url=redis_url,
            s3_endpoint=env.get("S3_ENDPOINT", "").strip(),
            s3_bucket=env.get("S3_BUCKET", "").strip(),
            s3_access_key=env.get("S3_ACCESS_KEY", "").strip(),
            s3_secret_key=env.get("S3_SECRET_KEY", "").strip(),
            spark_master=env.get("SPARK_MASTER", "").strip() or "local[*]",
            spark_remote=_remote(env),
            spark_connect=_choice(env, "SPARK_CONNECT", "auto", ("auto", "off")),
            spark_connect_dir=env.get("SPARK_CONNECT_DIR", "").strip() or default_connect_dir(env),
            delta_writer=_choice(env, "DELTA_WRITER", "auto", ("auto", "spark", "delta-rs")),
            spark_jars_dir=env.get("SPARK_JARS_DIR", "").strip() or default_jars_dir(env),
            max_compute_threads=_int(env, "MAX_COMPUTE_THREADS", 0, maximum=1024),
            compute_engine=_choice(env, "COMPUTE_ENGINE", "spark", ("spark", "duckdb")),
            online_cache=_online_cache(env, redis_url),
            serving_cache_ttl=_float(env, "SERVING_CACHE_TTL", 5.0),
            online_skew_sample=_fraction(env, "ONLINE_SKEW_SAMPLE", 0.0),
            max_entities_per_request=_int(env, "MAX_ENTITIES_PER_REQUEST", 1000, minimum=1),
            max_historical_rows=_int(env, "MAX_HISTORICAL_ROWS", 1_000_000, minimum=1),
            max_body_bytes=_int(env, "MAX_BODY_BYTES", 16 * 1024 * 1024, minimum=1024),
            port=_int(env, "PORT", 8002, minimum=1, maximum=65535),
            bind_host=env.get("FSTORE_BIND_HOST", "").strip(),
            auth_enabled=None if auth_raw is None or not auth_raw.strip() else _bool(env, "AUTH_ENABLED", False),
            redis_timeout=_float(env, "REDIS_TIMEOUT", 0.25),
            db_pool_size=_int(env, "DB_POOL_SIZE", 5, minimum=1, maximum=1000),
            redis_pool_size=_int(env, "REDIS_POOL_SIZE", 32, minimum=1, maximum=10000),
            secret_key=_fernet_keys(env, "FSTORE_SECRET_KEY"),
            ui_session_secret=_session_secret(env, "UI_SESSION_SECRET"),
            source_env_allow=_patterns(env, "SOURCE_ENV_ALLOW", ("FSTORE_SOURCE_*",)),
            spark_log_level=_choice(env, "SPARK_LOG_LEVEL", "error", ("off", "fatal", "error", "warn", "info", "debug")),
            scheduler_concurrency=_int(env, "SCHEDULER_CONCURRENCY", 2, minimum=1, maximum=64),
            scheduler_retries=_int(env, "SCHEDULER_RETRIES", 3, maximum=100),
            scheduler_retry_seconds=_float(env, "SCHEDULER_RETRY_SECONDS", 30.0),
            db_connect_timeout=_float(env, "DB_CONNECT_TIMEOUT", 2.0, minimum=1.0),
            db_statement_timeout=_float(env, "DB_STATEMENT_TIMEOUT", 5.0, minimum=0.1),
            python_feature_modules=_modules(env),
            source_roots=_roots(env),
            profiles=_choice(env, "PROFILES", "on", ("on", "off")) == "on",
            alert_webhook_url=env.get("ALERT_WEBHOOK_URL", "").strip(),
            cost_prices=_prices(env, "COST_PRICES"),
            unused_online_drop_days=_int(env, "UNUSED_ONLINE_DROP_DAYS", 0, maximum=36500),
        )
        values.update(overrides)
        if "cold_storage_path" not in overrides:
            probe = cls(**{k: v for k, v in values.items() if k != "cold_storage_path"})
            values["cold_storage_path"] = _cold_path(env, probe.data_root)
        return cls(**values)

    @property
    def serving_cache_enabled(self) -> bool:
        """True when online serving caches values (``ONLINE_CACHE`` ttl or tracking)."""
        return self.online_cache != "off"

    def with_(self, **changes) -> "Settings":
        """A copy with some fields changed (tests and tools)."""
        return replace(self, **changes)

    @property
    def data_root(self) -> str:
        """Where offline tables live: a local folder or an ``s3a://`` bucket prefix."""
        if self.storage_backend == "s3":
            return f"s3a://{self.s3_bucket}/{self.storage_path.strip('/') or 'fstore'}"
        return str(Path(self.storage_path).resolve())

    @property
    def redis_cluster(self) -> bool:
        """True when REDIS_URL names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
        return self.redis_url.startswith(CLUSTER_SCHEMES)

    @property
    def embedded_online_path(self) -> Path:
        """Where the embedded online store's SQLite file lives: beside the registry in the storage folder; on S3
        (no local storage folder) beside a SQLite registry's file, else in the working folder."""
        if self.storage_backend == "local":
            return Path(self.storage_path).resolve() / "online.db"
        beside = self.secret_key_file  # in a SQLite registry's folder
        return (beside.parent if beside is not None else Path.cwd().resolve()) / "fstore_online.db"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def secret_key_file(self) -> Path | None:
        """Where a SQLite registry keeps its generated source-secret key (``secret.key`` beside the file);
        None for a server registry (PostgreSQL) or an in-memory one, which need ``FSTORE_SECRET_KEY``."""
        if not self.is_sqlite or "///" not in self.database_url:
            return None
        database = self.database_url.split("///", 1)[1].split("?", 1)[0]
        if not database or database == ":memory:":
            return None
        return Path(database).resolve().parent / "secret.key"

    @property
    def allowed_source_roots(self) -> tuple[str, ...]:
        """SOURCE_ROOTS, or by default where the store keeps its data: the storage folder, or on S3 the bucket
        (there STORAGE_PATH is a key prefix, not a local folder)."""
        if self.source_roots is not None:
            return self.source_roots
        if self.storage_backend == "s3":
            return (f"s3://{self.s3_bucket}/",)
        return (str(Path(self.storage_path).resolve()),)
