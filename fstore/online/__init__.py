"""The online store: the latest feature values per entity key, for serving in milliseconds.

``open_online_store(settings)`` gives the Redis store when ``settings.redis_url``
is set (a Redis Cluster for ``redis+cluster://``: ``fstore.online.redis_cluster``), else the embedded SQLite store (same contract, shared across processes);
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
    """Where the embedded store's SQLite file lives: beside the registry in the storage folder."""
    if settings.storage_backend == "local":
        return Path(settings.storage_path).resolve() / "online.db"
    return Path.cwd().resolve() / "fstore_online.db"


def open_online_store(settings: "Settings") -> OnlineStore:
    """Redis when ``settings.redis_url`` is set, else the embedded store under the storage path."""
    if settings.redis_url:  # one Redis, or a Redis Cluster for redis+cluster:// (fstore.online.redis_cluster)
        from fstore.online.redis_store import open_redis

        return open_redis(settings.redis_url, pool_size=settings.redis_pool_size, timeout=settings.redis_timeout)
    from fstore.online.embedded import EmbeddedOnlineStore

    return EmbeddedOnlineStore(embedded_path(settings))


def load_dataframe(df, fsv, settings: "Settings", **kwargs) -> int:
    """Load the latest row per entity key of a computed DataFrame online; returns keys written."""
    from fstore.online.load import load_dataframe as _load

    return _load(df, fsv, settings, **kwargs)


__all__ = ["Codec", "OnlineStore", "embedded_path", "load_dataframe", "open_online_store"]
