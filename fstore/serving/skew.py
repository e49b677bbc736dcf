"""Training–serving skew: online answers compared with historical retrieval at the same instant.

A model is trained on historical features and served online ones; the two must agree. ``compare``
asks historical retrieval for the entity rows of an online answer at the instant that answer was
for, and counts per feature set the entity rows where some feature differs:

- a value the online store answered as ``present`` must equal the historical one (floats to a
  relative 1e-9: float sums are added in different orders by different engines);
- a ``missing``/``expired`` answer (the feature's default, or null) is skew only when historical
  retrieval has a value there;
- a ``dropped`` answer (usage-based retention removed the feature's online values) is never skew.

Continuous, in the server (``ONLINE_SKEW_SAMPLE``, a fraction, off by default): ``SkewMonitor.offer``
draws a random number per online request and, for the sampled ones, puts the answer on a bounded queue
(full: the sample is dropped and counted, never waited for); one daemon thread runs the historical
retrievals and records the counts (``fstore.ops.metrics.observe_skew``: Prometheus counters and the
``fstore_online_skew_rate`` gauge; ``/monitoring/statistics`` shows them as ``online_skew``).
On demand: ``fstore.serving.skew_check.check_skew`` (``fstore monitor skew NAME --sample N``) samples N entity keys of a set's
offline table and compares their online answer at now.
"""
from __future__ import annotations

import logging
import math
import queue
import random
import threading
import time
import weakref
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from fstore.storage.online.base import iso_from_micros, to_micros

if TYPE_CHECKING:
    from fstore.core.context import StoreContext

log = logging.getLogger(__name__)
QUEUE_SIZE = 64
_ROW = "skew_check_row"  # the reserved __fs_ prefix is refused in entity rows


def _plain(value: Any) -> Any:
    """A historical value as the online answer writes it (numpy scalars, NaN, timestamps, arrays)."""
    if value is None:
        return None
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (datetime, date)) or type(value).__name__ == "Timestamp":
        return iso_from_micros(to_micros(value))
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def same(online: Any, offline: Any) -> bool:
    """Whether an online value equals a historical one (floats to a relative 1e-9)."""
    offline = _plain(offline)
    if isinstance(online, float) or isinstance(offline, float):
        if online is None or offline is None or isinstance(online, (bool, str)) or isinstance(offline, (bool, str)):
            return online is None and offline is None
        return math.isclose(online, offline, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(online, list) and isinstance(offline, list):
        return len(online) == len(offline) and all(same(a, b) for a, b in zip(online, offline))
    return online == offline


def compare(store: "StoreContext", *, features: list[str], rows: list[dict[str, Any]], ids: list[str],
            feature_sets: list[str] | None, answer: dict, at_micros: int) -> dict[str, dict[str, Any]]:
    """Per feature set of the request: ``{"compared": rows, "skewed": rows, "features": {name: rows}}``.

    ``rows``: the request's entity rows as serving parsed them, ``ids`` their keys in ``answer``.
    """
    import pandas as pd

    from fstore.registry.references import resolve
    from fstore.serving.retrieval.request import get_historical_features

    at = datetime(1970, 1, 1) + timedelta(microseconds=at_micros)
    out: dict[str, dict[str, Any]] = {}
    for group in resolve(store, features, feature_sets):
        fsv = group.version
        keys = fsv.join_keys
        try:
            frame = pd.DataFrame([{k: row[k] for k in keys} for row in rows])
        except KeyError:  # the request named the entity, not its join key: nothing to compare against
            continue
        frame["event_timestamp"] = at
        frame[_ROW] = range(len(frame))
        asked = [f"{fsv.name}:{f}" for f in group.features]
        result = get_historical_features(store, entity_df=frame, features=asked).to_df().sort_values(_ROW)
        columns = [f"{fsv.name}__{f}" for f in group.features]
        stats = out.setdefault(fsv.name, {"compared": 0, "skewed": 0, "features": {}})
        for (_, hist), eid in zip(result.iterrows(), ids):
            got, statuses = answer["features"][eid], answer["statuses"][eid]
            differs = False
            for out_name, column in zip(group.output_names, columns):
                offline = _plain(hist[column])
                online = got[out_name]
                if statuses[out_name] == "dropped" or (statuses[out_name] != "present" and offline is None):
                    continue  # dropped: usage-based retention took the values out on purpose (fstore.ops.unused)
                if not same(online, offline):
                    differs = True
                    stats["features"][out_name] = stats["features"].get(out_name, 0) + 1
            stats["compared"] += 1
            stats["skewed"] += differs
    return out


class SkewMonitor:
    """A sampled, background comparison of online answers with historical retrieval (one thread, bounded queue)."""

    def __init__(self, store: "StoreContext", sample: float, *, queue_size: int = QUEUE_SIZE) -> None:
        self._store = weakref.ref(store)
        self.sample = sample
        self.queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.dropped = 0
        self.errors = 0
        self.checked = 0
        self._thread = threading.Thread(target=self._run, name="fstore-skew", daemon=True)
        self._thread.start()

    def offer(self, features: list[str], rows: list[dict[str, Any]], ids: list[str], feature_sets: list[str] | None,
              answer: dict, at_micros: int) -> bool:
        """Queue this answer for comparison with probability ``sample``; never blocks. True when queued."""
        if random.random() >= self.sample:
            return False
        try:
            self.queue.put_nowait((features, rows, ids, feature_sets, answer, at_micros))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _run(self) -> None:
        from fstore.ops import metrics

        while True:
            item = self.queue.get()
            if item is None:
                return
            store = self._store()
            if store is None:
                return
            features, rows, ids, feature_sets, answer, at = item
            try:
                for name, stats in compare(store, features=features, rows=rows, ids=ids, feature_sets=feature_sets,
                                           answer=answer, at_micros=at).items():
                    metrics.observe_skew(name, stats["compared"], stats["skewed"])
                self.checked += 1
            except Exception:  # noqa: BLE001 - a failed check is logged and counted, serving goes on
                self.errors += 1
                log.exception("online skew check failed")
            finally:
                del store
                self.queue.task_done()

    def join(self, timeout: float = 60.0) -> bool:
        """Wait until every queued check ran (tests); False on timeout."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        try:
            self.queue.put_nowait(None)
        except queue.Full:
            pass


_MONITORS: "weakref.WeakKeyDictionary[Any, SkewMonitor]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def monitor_for(store: "StoreContext") -> SkewMonitor | None:
    """The store's skew monitor (started on first use), or None when ``ONLINE_SKEW_SAMPLE`` is 0."""
    sample = store.settings.online_skew_sample
    if sample <= 0:
        return None
    monitor = _MONITORS.get(store)
    if monitor is None:
        with _LOCK:
            monitor = _MONITORS.get(store)
            if monitor is None:
                monitor = _MONITORS[store] = SkewMonitor(store, sample)
    return monitor
