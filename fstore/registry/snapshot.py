"""The registry as online serving last saw it: lookups answered from memory, refreshed in the background.

Online serving resolves feature names to feature set versions on every request. Asking
the registry each time ties serving to the database: stopped, every request fails;
frozen, every request hangs. ``RegistrySnapshot`` remembers each lookup serving made
(a feature set's latest or a pinned version, the sets holding a feature name, and the
"not found" answers too) and answers from memory. Every ``refresh_seconds`` one
background thread asks the registry again for all of them in one transaction; a request
never waits for it. When a refresh fails, the previous answers stay in use and ``stale``
is true (serving marks its answers ``degraded``) until a refresh succeeds.

Only a lookup never made before goes to the registry inside the request (bounded by the
registry's timeouts, ``fstore.registry.guard``); during an outage that request is a 503.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from fstore.core.errors import FStoreError, Unavailable

if TYPE_CHECKING:
    from fstore.definitions.model import FeatureSetVersion
    from fstore.core.context import StoreContext

log = logging.getLogger("fstore.serving.online")
MAX_LOOKUPS = 10_000  # names come from requests: keep what is remembered bounded
_ABSENT = object()


class RegistrySnapshot:
    """Remembered registry lookups for one store; ``generation`` moves when a refresh changed any."""

    def __init__(self, store: "StoreContext", *, refresh_seconds: float,
                 on_refresh: Callable[[bool], None] = lambda ok: None) -> None:
        self._store = store
        self._on_refresh = on_refresh  # told each background refresh's outcome (serving counts it in metrics)
        self.refresh_seconds = refresh_seconds
        self._versions: dict[tuple[str, int | None], Any] = {}  # FeatureSetVersion or the FStoreError it raised
        self._names: dict[str, Any] = {}  # feature name -> tuple of set names (or the error)
        self._drops: dict[str, Any] = {}  # set name -> {feature: reason} of its dropped online values
        self._lock = threading.Lock()
        self._next = time.monotonic() + refresh_seconds
        self._refreshing = False
        self.generation = 0
        self.stale = False  # the last refresh failed: answers come from older lookups
        self.refreshed_at = time.monotonic()

    # -- lookups (what fstore.registry.references.resolve asks) ----------------------------------------

    def version(self, name: str, version: int | None = None) -> "FeatureSetVersion":
        """A feature set's version (latest when ``version`` is None), from memory when asked before."""
        key = (name, version)
        hit = self._versions.get(key, _ABSENT)
        if hit is _ABSENT:
            with self._store.transaction() as s:
                hit = _load_version(s, key)
            self._remember(self._versions, key, hit)
        return _answer(hit)

    def names_with_feature(self, feature: str) -> list[str]:
        """The feature sets holding a feature called ``feature``, from memory when asked before."""
        hit = self._names.get(feature, _ABSENT)
        if hit is _ABSENT:
            with self._store.transaction() as s:
                hit = _load_names(s, feature)
            self._remember(self._names, feature, hit)
        return list(_answer(hit))

    def dropped(self, name: str) -> dict[str, str]:
        """The features of set ``name`` whose online values usage-based retention dropped, with the reason."""
        hit = self._drops.get(name, _ABSENT)
        if hit is _ABSENT:
            with self._store.transaction() as s:
                hit = _load_drops(s, name)
            self._remember(self._drops, name, hit)
        return hit

    def _remember(self, table: dict, key: Any, value: Any) -> None:
        with self._lock:
            if len(table) >= MAX_LOOKUPS:
                table.clear()  # names asked of a live registry come back on the next request
            table[key] = value

    # -- background refresh ---------------------------------------------------------------------

    def tick(self) -> None:
        """Start a background refresh when one is due (cheap: called on every request)."""
        if time.monotonic() < self._next or self._refreshing:
            return
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True
        threading.Thread(target=self.refresh, name="fstore-registry-snapshot", daemon=True).start()

    def refresh(self) -> bool:
        """Ask the registry again for every remembered lookup, in one transaction; True when it answered."""
        self._refreshing = True
        versions_keys = [k for k, v in self._versions.items() if k[1] is None or isinstance(v, FStoreError)]
        names_keys = list(self._names)
        drops_keys = list(self._drops)
        try:
            with self._store.transaction() as s:
                versions = {key: _load_version(s, key) for key in versions_keys}
                names = {feature: _load_names(s, feature) for feature in names_keys}
                drops = {name: _load_drops(s, name) for name in drops_keys}
        except Exception as exc:  # noqa: BLE001 — any failure keeps the last snapshot; the guard logged it
            if not self.stale:
                log.warning("online serving answers from its registry snapshot (degraded) until the registry "
                            "answers again: %s", getattr(exc, "message", None) or exc)
            self.stale = True
            self._on_refresh(False)
            return False
        finally:
            self._next = time.monotonic() + self.refresh_seconds
            self._refreshing = False
        with self._lock:
            changed = (any(not _same(self._versions.get(k, _ABSENT), v) for k, v in versions.items())
                       or any(not _same(self._names.get(k, _ABSENT), v) for k, v in names.items())
                       or any(self._drops.get(k) != v for k, v in drops.items()))
            self._versions.update(versions)
            self._names.update(names)
            self._drops.update(drops)
            if changed:
                self.generation += 1
        if self.stale:
            log.warning("online serving's registry snapshot is fresh again")
        self.stale = False
        self.refreshed_at = time.monotonic()
        self._on_refresh(True)
        return True


def _load_version(s, key: tuple[str, int | None]) -> Any:
    from fstore.registry import repo

    try:
        return repo.load_feature_set_version(s, key[0], version=key[1])
    except Unavailable:
        raise
    except FStoreError as exc:  # not found, not valid: an answer too, remembered like one
        return exc


def _load_names(s, feature: str) -> Any:
    from fstore.registry import repo

    return tuple(repo.feature_set_names_with_feature(s, feature))


def _load_drops(s, name: str) -> dict[str, str]:
    from fstore.registry.drops import dropped_reasons

    return dropped_reasons(s, name)


def _answer(hit: Any) -> Any:
    if isinstance(hit, FStoreError):
        raise type(hit)(hit.message, field=hit.field)  # a new instance: the remembered one keeps no traceback
    return hit


def _same(old: Any, new: Any) -> bool:
    if isinstance(old, FStoreError) or isinstance(new, FStoreError):
        return type(old) is type(new) and getattr(old, "message", None) == getattr(new, "message", None)
    return old == new
