"""The online store: the latest feature values per entity key, for serving in milliseconds.

``open_online_store(settings)`` gives the Redis store when ``settings.redis_url``
is set (a Redis Cluster for ``redis+cluster://``: ``fstore.storage.online.redis_cluster``), else the embedded SQLite store (same contract, shared across processes);
``load_dataframe(df, fsv, settings)`` bulk-loads a computed feature DataFrame from
the Spark executors; ``fstore.storage.online.load_arrow.load_arrow(table, fsv, settings)``
does the same for a pyarrow Table computed in this process (the DuckDB engine),
storing the same bytes. Layout and codecs: ``fstore.storage.online.base``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from fstore.storage.online.base import Codec, OnlineStore

if TYPE_CHECKING:
    from fstore.core.settings import Settings


def open_online_store(settings: "Settings") -> OnlineStore:
    """Redis when ``settings.redis_url`` is set, else the embedded store under the storage path."""
    if settings.redis_url:  # one Redis, or a Redis Cluster for redis+cluster:// (redis_cluster.py)
        return open_redis(settings.redis_url, pool_size=settings.redis_pool_size, timeout=settings.redis_timeout)
    from fstore.storage.online.embedded import EmbeddedOnlineStore

    return EmbeddedOnlineStore(settings.embedded_online_path)


def open_redis(url: str, **kwargs) -> OnlineStore:
    """The Redis store for ``url``: ``RedisClusterOnlineStore`` for ``redis+cluster://``/``rediss+cluster://``
    (``fstore.storage.online.redis_cluster``), else ``RedisOnlineStore``; ``kwargs`` as ``RedisOnlineStore`` takes them."""
    from fstore.core.settings import CLUSTER_SCHEMES

    if url.startswith(CLUSTER_SCHEMES):
        from fstore.storage.online.redis_cluster import RedisClusterOnlineStore

        return RedisClusterOnlineStore(url, **kwargs)
    from fstore.storage.online.redis_store import RedisOnlineStore

    return RedisOnlineStore(url, **kwargs)


def load_dataframe(df, fsv, settings: "Settings", **kwargs) -> int:
    """Load the latest row per entity key of a computed DataFrame online; returns keys written."""
    from fstore.storage.online.load import load_dataframe as _load

    return _load(df, fsv, settings, **kwargs)


__all__ = ["Codec", "OnlineStore", "open_redis", "load_dataframe", "open_online_store"]
