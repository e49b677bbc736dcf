"""The online store: the latest feature values per entity key, for serving in milliseconds.

``open_online_store(settings)`` gives the Redis store when ``settings.redis_url``
is set, else the embedded SQLite store (same contract, shared across processes);
``load_dataframe(df, fsv, settings)`` bulk-loads a computed feature DataFrame from
the Spark executors; ``fstore.online.load_arrow.load_arrow(table, fsv, settings)``
does the same for a pyarrow Table computed in this process (the DuckDB engine),
storing the same bytes. Layout and codecs: ``fstore.online.base``.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fstore.online.base import Codec, OnlineStore

if TYPE_CHECKING:
    from fstore.settings import Settings


def embedded_path(settings: "Settings") -> Path:
    """Where the embedded store's SQLite file lives: beside the registry in the storage folder; on S3 (no local
    storage folder) beside a SQLite registry's file, else in the working folder."""
    if settings.storage_backend == "local":
        return Path(settings.storage_path).resolve() / "online.db"
    beside = settings.secret_key_file  # a SQLite registry's folder
    return (beside.parent if beside is not None else Path.cwd().resolve()) / "fstore_online.db"


def open_online_store(settings: "Settings") -> OnlineStore:
    """Redis when ``settings.redis_url`` is set, else the embedded store under the storage path."""
    if settings.redis_url:
        from fstore.online.redis_store import RedisOnlineStore

        return RedisOnlineStore(settings.redis_url, pool_size=settings.redis_pool_size, timeout=settings.redis_timeout)
    from fstore.online.embedded import EmbeddedOnlineStore

    return EmbeddedOnlineStore(embedded_path(settings))


def load_dataframe(df, fsv, settings: "Settings", **kwargs) -> int:
    """Load the latest row per entity key of a computed DataFrame online; returns keys written."""
    from fstore.online.load import load_dataframe as _load

    return _load(df, fsv, settings, **kwargs)


__all__ = ["Codec", "OnlineStore", "embedded_path", "load_dataframe", "open_online_store"]
