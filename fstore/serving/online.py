"""Online serving: entity keys → the latest feature values, in one online-store round trip.

Answer shape (the seed's, plus a parallel ``statuses`` map)::

    {"features": {entity_id: {feature: value}},
     "statuses": {entity_id: {feature: "present" | "missing" | "expired" | "dropped"}},
     "metadata": {"latency_ms", "cache_hit", "cache_hits", "cache_misses",
                  "feature_sets": {name: version}, "degraded"}}

- ``feature`` is the name as the request wrote it (``f``, ``set:f``, ``set@2:f``).
- ``entity_id`` is the key value as text for a single-key entity row (``"1"``);
  for a compound row it is ``key=value`` pairs joined by ``,`` in the row's order
  (``"user_id=1,merchant_id=7"``).
- ``present``: stored and not older than the set's TTL (age ``<= ttl``), value as
  stored (a stored null stays null). ``missing``: never stored for that key.
  ``expired``: stored, but older than the TTL. Missing and expired values are the
  feature's ``default_value`` (or null), never the stale value.
- ``dropped``: usage-based retention dropped the feature's online values (``fstore.ops.unused``): the value
  is null (not the default) and ``metadata.dropped`` maps the feature to the reason and how to restore it
  (present only when some asked feature is dropped).
- ``cache_hit`` is true when every lookup was answered by the in-process cache.
- ``degraded`` is true when the online store was unreachable and every lookup
  was answered from the cache (entries up to ``STALE_GRACE_SECONDS`` past their TTL),
  or when a requested set lost its online values (the store restarted empty: its
  answers say ``missing`` for keys that had values; ``fstore.storage.online.marker``),
  or when the registry was unreachable at the last snapshot refresh;
  ``degraded_reason`` says which, else it is null.

The lost-values check adds no round trip: at most every ``MARKER_CHECK_SECONDS`` per
set, a read carries the set's load marker and ``fsmeta`` lookups in its pipeline;
the registry is asked whether the set was ever loaded only when both are absent (a set
not loaded yet, or lost), and a "yes" (or a marker once seen) is kept.

Entities come as columns ``{"user_id": ["1", "2"]}`` (or by a single-key entity's name, ``{"user": [...]}``), one row ``{"user_id": "1"}``
or rows ``[{"user_id": "1", "merchant_id": "7"}]``; each requested feature set
takes the join keys it needs from each row, matched by the entity's value type.

Resolution of names to feature set versions comes from a registry snapshot per
store (``fstore.registry.snapshot``), refreshed in the background every
``RESOLVE_TTL_SECONDS``: a registry change becomes visible to serving within about
that time (and at once in a new process), and a request never waits for the
registry unless it asks a name never asked before. While refreshes fail, answers
come from the snapshot with ``degraded: true``.

Values are cached per (feature set, version, entity key) as ``ONLINE_CACHE`` says
(``settings.online_cache``): ``ttl`` keeps them ``SERVING_CACHE_TTL`` seconds (and answers
from them, degraded, while the store is down); ``tracking`` keeps them until Redis reports
their key changed (``fstore.storage.online.tracking``), so a hit is never stale. In
tracking mode the cache is used only while tracking is established: losing it empties
the cache and sends every lookup to Redis until it is back. A read that raced with an
invalidation is not cached: each key read is first marked with the read's own token,
an invalidation removes the mark, and the value replaces only its own token.
"""
from __future__ import annotations

import math
import operator
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import orjson

from fstore.core.errors import InvalidDefinition, TooLarge, Unavailable
from fstore.storage.online.base import NULL, Codec
from fstore.ops.usage import Coverage
from fstore.registry.snapshot import RegistrySnapshot

if TYPE_CHECKING:
    from fstore.core.context import StoreContext

RESOLVE_TTL_SECONDS = 2.0
MARKER_CHECK_SECONDS = 1.0  # how often a read also checks a set's load marker (per process)
STALE_GRACE_SECONDS = 60.0
CACHE_MAX_ENTRIES = 200_000
_MISSING, _PRESENT, _EXPIRED, _DROPPED = "missing", "present", "expired", "dropped"
_FLOAT_ONLY = frozenset((float,))  # _float_values: every parsed value a float (checked in C, not a generator)


@dataclass(frozen=True)
class _Group:
    """One feature set version's part of a request, prepared once and reused while cached."""

    codec: Codec
    read_fields: tuple[str, ...]  # the fields read from the store (every feature when the cache is on)
    picks: tuple[tuple[str, int, Callable[[bytes], Any], Any], ...]  # (output name, index, decoder, default)
    ttl_micros: int | None
    outs: tuple[str, ...] = ()  # output names, in request order
    features: tuple[str, ...] = ()  # the feature names behind ``outs``
    decoders: tuple[Callable[[bytes], Any], ...] = ()
    getter: Callable[[Any], Any] | None = None  # picks the asked fields out of the read ones (None: same order)
    present: dict[str, str] | None = None  # {output: "present"}, to update statuses in one call
    all_float: bool = False  # every asked feature is a float: the values of many rows decode in one parse
    aliases: tuple[tuple[str, str], ...] = ()  # (entity name, its join key) for single-key entities
    # windowed features asked: (pick index, window, combiner), answered at the request's time from the
    # stored record of their events, read as the last field (fstore.storage.online.windows)
    windows: tuple[tuple[int, Any], ...] = ()  # (pick index, OnlineWindow)
    window_values: Callable[[list, int], list] | None = None  # their values at a time from one record (``combiners``)
    window_outs: tuple[str, ...] = ()  # the windows' output names, in ``windows`` order
    composites: "_Composites | None" = None  # composites over windows, recomputed at the request's time
    row_picks: tuple[tuple[str, int, Callable[[bytes], Any], Any], ...] = ()  # the picks that are not windows
    # no composite asked and every row pick a float: those picks' raw values, for one parse of many rows
    row_floats: Callable[[Any], tuple] | None = None
    window_row_outs: tuple[str, ...] = ()  # window_outs then the row picks' outputs


class _State:
    """Per-store caches: resolved plans and values (both small, both bounded)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.plans: dict[tuple, tuple[int, list[_Group]]] = {}  # key -> (snapshot generation, groups)
        self.snapshot: RegistrySnapshot | None = None
        self.codecs: dict[tuple[str, int], Codec] = {}
        self.windows: dict[tuple[str, int], dict] = {}  # (set, version) -> {feature: OnlineWindow}
        self.values: dict[tuple[str, int, str], tuple[float, Any]] = {}
        self.lost: dict[str, str] = {}  # set name -> why its online values are lost (from the last check)
        self.checked: dict[str, float] = {}  # set name -> monotonic time of its last marker check
        self.loaded: set[str] = set()  # sets known to have been loaded online (marker seen, or the registry said so)
        self.versions: dict[str, set[int]] = {}  # set name -> versions with cached values (for invalidations)
        self.tracker = None  # ONLINE_CACHE=tracking: the online store's InvalidationTracker


_STATES: "weakref.WeakKeyDictionary[Any, _State]" = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child starts with no cached values: the parent's were tracked for the parent only."""
    global _STATES, _STATES_LOCK
    _STATES, _STATES_LOCK = weakref.WeakKeyDictionary(), threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def _state(store: Any) -> _State:
    state = _STATES.get(store)
    if state is None:
        with _STATES_LOCK:
            state = _STATES.get(store)
            if state is None:
                state = _State()
                if store.settings.online_cache == "tracking":  # raises, naming ONLINE_CACHE, off one Redis
                    state.tracker = store.online.track(lambda keys, ref=weakref.ref(store): _invalidated(ref, keys))
                state.snapshot = RegistrySnapshot(store, refresh_seconds=RESOLVE_TTL_SECONDS,
                                                  on_refresh=_count_refresh)
                _STATES[store] = state
    return state


def tracker(store: Any):
    """The store's invalidation tracker when ``ONLINE_CACHE=tracking`` (tests and tools), else None."""
    return _state(store).tracker


def _invalidated(store_ref: "weakref.ref", keys) -> None:
    """Redis says ``keys`` (Redis key names) changed, or (None) that everything must go: drop those entries.
    Runs on the tracker's thread."""
    store = store_ref()
    state = _STATES.get(store) if store is not None else None
    _metrics().observe_invalidation(None if keys is None else len(keys))
    if state is None:
        return
    with state.lock:
        values = state.values
        if keys is None:
            values.clear()
            return
        versions = state.versions
        for raw in keys:
            key = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            if key.startswith("fs:"):  # fs:<set>:<len>:<key>…; set names have no ':'
                name = key[3:key.find(":", 3)]
                for version in versions.get(name, ()):
                    values.pop((name, version, key), None)


def _count_refresh(ok: bool) -> None:
    from fstore.ops import metrics

    metrics.observe_registry_refresh(ok=ok)


def clear_caches(store: Any) -> None:
    """Forget resolved names and cached values of ``store`` (tests, or after a registry change)."""
    with _STATES_LOCK:
        _STATES.pop(store, None)


# -- request parsing -------------------------------------------------------------------------

def entity_rows(entities: Any) -> list[dict[str, Any]]:
    """The request's entities as rows of key → value (columns, one row, or rows)."""
    if isinstance(entities, Mapping):
        if not entities:
            raise InvalidDefinition("entities must name at least one entity key", field="entities")
        lists = {k: v for k, v in entities.items() if isinstance(v, list)}
        if not lists:
            return [dict(entities)]
        if len(lists) != len(entities):
            scalar = sorted(set(entities) - set(lists))
            raise InvalidDefinition(f"entities mixes lists and single values ({', '.join(scalar)}); "
                                    "give every key a list of the same length", field="entities")
        lengths = {len(v) for v in lists.values()}
        if len(lengths) != 1:
            raise InvalidDefinition("entities lists have different lengths: "
                                    + ", ".join(f"{k}={len(v)}" for k, v in lists.items()), field="entities")
        keys = list(lists)
        return [dict(zip(keys, values)) for values in zip(*lists.values())]
    if isinstance(entities, list):
        for index, row in enumerate(entities):
            if not isinstance(row, Mapping) or not row:
                raise InvalidDefinition(f"entities[{index}] must be an object of entity key to value", field="entities")
        return [dict(row) for row in entities]
    raise InvalidDefinition("entities must be an object of key → value(s) or a list of such objects", field="entities")


def entity_id(row: Mapping[str, Any]) -> str:
    """The answer's key for one entity row (see the module docstring)."""
    if len(row) == 1:
        return _text(next(iter(row.values())))
    return ",".join(f"{k}={_text(v)}" for k, v in row.items())


def _entity_ids(rows: list[dict[str, Any]]) -> list[str]:
    """``entity_id`` of every row; single-key rows (the common case) without the general path."""
    try:
        return [v if type(v) is str else _text(v) for (v,) in (row.values() for row in rows)]
    except ValueError:  # a row with several keys
        return [entity_id(row) for row in rows]


def _keys(codec: Codec, rows: list[dict[str, Any]]) -> list[str]:
    """The hash keys of ``codec`` for every row, in row order."""
    if len(codec.key_columns) != 1:
        return [codec.key_of(row) for row in rows]
    column = codec.key_columns[0]
    normalize = codec.normalizers[0][1]
    prefix = f"fs:{codec.name}:"
    try:
        texts = [normalize(row[column]) for row in rows]
    except KeyError:
        raise InvalidDefinition(f"feature set {codec.name} needs entity key {column}", field="entities") from None
    return [f"{prefix}{len(t)}:{t}" for t in texts]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _float_values(g: _Group, results: list[Any], now: int) -> list[float] | None:
    """The asked values of every present, unexpired row of an all-float group, in row order, or None.

    One ``orjson`` parse of the stored texts joined as a JSON array: 1,000 values in
    about 50 µs, where ``float(bytes)`` one by one takes about 290 µs (measured). None
    (the caller decodes row by row) when any value is a stored null, missing, not JSON
    (``NaN``, ``Infinity``) or not written as a float; so the values are exactly what
    ``float`` gives, and the rare rows keep their one careful path.
    """
    ttl, getter = g.ttl_micros, g.getter
    texts: list[bytes] = []
    for result in results:
        if result is None or (ttl is not None and now - result[0] > ttl):
            continue
        texts.extend(result[1] if getter is None else getter(result[1]))
    return _parse_floats(texts)


def _parse_floats(texts: list[bytes]) -> list[float] | None:
    """``texts`` parsed as floats at once (see ``_float_values``), or None when any is not a float's text."""
    try:
        values = orjson.loads(b"[" + b",".join(texts) + b"]")
    except (TypeError, orjson.JSONDecodeError):
        return None
    if len(values) != len(texts) or not _FLOAT_ONLY.issuperset(map(type, values)):
        return None
    return values


def _windowed_rows(g: _Group, results: list[Any], records: list, now: int) -> tuple[list[bool], list[float]] | None:
    """The one-parse path of a windowed group whose other asked features are floats (``g.row_floats``): which
    rows take it (stored, their record usable, not past the TTL), and those rows' other values parsed at once,
    in row order; None (every row then goes through ``_windowed_row``) when any is not a float's text."""
    from fstore.storage.online.windows import usable

    ttl, version, pick = g.ttl_micros, g.codec.version, g.row_floats
    fast: list[bool] = []
    texts: list[bytes] = []
    for result, record in zip(results, records):
        ok = (result is not None and record is not None and usable(record, result[0], version)
              and (ttl is None or now - result[0] <= ttl))
        fast.append(ok)
        if ok:
            texts.extend(pick(result[1]))
    values = _parse_floats(texts)
    return None if values is None else (fast, values)


@dataclass(frozen=True)
class _Composites:
    """A group's composites over windows (``fstore.serving.online_composites``), prepared for its picks."""

    spec: Any  # OnlineComposites
    window_values: Callable[[list, int], list]  # the windows they read, from one record
    stored: tuple[tuple[str, int, Callable[[bytes], Any]], ...]  # (input, read index, decoder) of the other inputs
    outs: tuple[tuple[int, int], ...]  # (pick index, position in spec.names) of the asked composites


def _composite_parts(composites: Any, features: Sequence[str], picks: tuple, index: dict[str, int],
                     codec: Codec) -> _Composites | None:
    if composites is None:
        return None
    from fstore.storage.online.windows import combiners

    position = {name: i for i, name in enumerate(composites.names)}
    return _Composites(spec=composites, window_values=combiners(composites.windows),
                       stored=tuple((n, index[n], codec.decoders[n]) for n in composites.stored),
                       outs=tuple((pi, position[name]) for pi, name in enumerate(features) if name in position))


def _picker(indexes: Sequence[int]) -> Callable[[Any], tuple]:
    """A function giving the tuple of ``raw``'s values at ``indexes``."""
    if len(indexes) == 1:
        return lambda raw, i=indexes[0]: (raw[i],)
    return operator.itemgetter(*indexes) if indexes else (lambda raw: ())


def _window_parts(picks: tuple, win: tuple, composites: _Composites | None) -> dict:
    """A group's window fields: its windows, their combined evaluation, its composites over windows, the
    picks answered as stored when the record is usable and, when those are all floats and no composite is
    asked, what ``_windowed_rows``'s one-parse path needs."""
    if not win and composites is None:
        return {}
    from fstore.storage.online.windows import combiners

    computed = {pi for pi, _ in win} | ({pi for pi, _ in composites.outs} if composites else set())
    row_picks = tuple(p for pi, p in enumerate(picks) if pi not in computed)
    window_outs = tuple(picks[pi][0] for pi, _ in win)
    floats = composites is None and all(p[2] is float for p in row_picks)
    return {"windows": win, "window_values": combiners([w for _, w in win]), "window_outs": window_outs,
            "composites": composites, "row_picks": row_picks,
            "row_floats": _picker(tuple(p[1] for p in row_picks)) if floats else None,
            "window_row_outs": window_outs + tuple(p[0] for p in row_picks)}


def _window_records(results: list[Any]) -> list[list | None]:
    """Each stored row's decoded record of window events (the last field read), None where there is none:
    one ``orjson`` parse of them all joined as a JSON array (row by row if that parse does not line up)."""
    texts = [None if r is None or r[1][-1] == NULL else r[1][-1] for r in results]
    present = [t for t in texts if t is not None]
    try:
        parsed = orjson.loads(b"[" + b",".join(present) + b"]")
    except orjson.JSONDecodeError:
        parsed = None
    if parsed is None or len(parsed) != len(present):
        parsed = [orjson.loads(t) for t in present]
    records = iter(parsed)
    return [None if t is None else next(records) for t in texts]


# -- resolution ------------------------------------------------------------------------------

def _plan(store: "StoreContext", state: _State, features: Any, feature_sets: Any, cache_all: bool) -> list[_Group]:
    try:
        key = (tuple(features), tuple(feature_sets) if feature_sets is not None else None, cache_all)
        hash(key)
    except TypeError:
        key = None
    snapshot = state.snapshot
    snapshot.tick()
    generation = snapshot.generation
    if key is not None:
        hit = state.plans.get(key)
        if hit is not None and hit[0] == generation:
            return hit[1]
    from fstore.registry.references import resolve

    groups = []
    for group in resolve(store, features, feature_sets, registry=snapshot):
        fsv = group.version
        if not fsv.feature_set.online_enabled:
            raise InvalidDefinition(f"feature set {fsv.name} is not online-enabled (online_enabled: false)", field="features")
        codec_key = (fsv.name, fsv.version)
        codec = state.codecs.get(codec_key)
        if codec is None:
            codec = state.codecs[codec_key] = Codec.from_version(fsv)
            with state.lock:
                state.versions.setdefault(fsv.name, set()).add(fsv.version)
        windows = state.windows.get(codec_key)
        if windows is None:
            from fstore.storage.online.windows import online_windows

            windows = state.windows[codec_key] = online_windows(fsv)
        composites = None
        if windows:  # composites over windows are recomputed at the request's time from every input
            from fstore.serving.online_composites import online_composites

            composites = online_composites(fsv, group.features, windows)
        read_fields = codec.feature_names if cache_all or composites else group.features
        index = {name: i for i, name in enumerate(read_fields)}
        picks = tuple((out, index[name], codec.decoders[name], fsv.feature(name).default_value)
                      for name, out in zip(group.features, group.output_names))
        win = ()
        # a cached read serves any later request of the set: it carries the record whenever the set has windows
        if windows and (cache_all or composites or any(name in windows for name in group.features)):
            from fstore.storage.online.windows import FIELD

            read_fields = (*read_fields, FIELD)  # one record of every window's events, after the features
            win = tuple((pi, windows[name]) for pi, name in enumerate(group.features) if name in windows)
        ttl = fsv.ttl_seconds * 1_000_000 if fsv.ttl_seconds else None
        indexes = tuple(p[1] for p in picks)
        getter = None if indexes == tuple(range(len(read_fields))) else _picker(indexes)
        groups.append(_Group(codec=codec, read_fields=tuple(read_fields), picks=picks, ttl_micros=ttl,
                             outs=tuple(p[0] for p in picks), features=tuple(group.features), decoders=tuple(p[2] for p in picks), getter=getter,
                             present=dict.fromkeys((p[0] for p in picks), _PRESENT),
                             all_float=not win and all(p[2] is float for p in picks),
                             **_window_parts(picks, win, _composite_parts(composites, group.features, picks, index, codec)),
                             aliases=tuple((e.name, e.join_keys[0]) for e in fsv.entities
                                           if len(e.join_keys) == 1 and e.name != e.join_keys[0])))
    if key is not None:
        with state.lock:
            if len(state.plans) > 1000:
                state.plans.clear()
            state.plans[key] = (generation, groups)
    return groups


# -- serving ---------------------------------------------------------------------------------


def get_online_features(store: "StoreContext", *, features: list[str], entities: dict | list,
                        feature_sets: list[str] | None = None, now_micros: int | None = None) -> dict:
    """The latest values of ``features`` for ``entities`` (shape in the module docstring).

    ``now_micros`` fixes "now" for the TTL status (tests); by default the wall clock.
    """
    return answer_online(store, features=features, entities=entities, feature_sets=feature_sets,
                         now_micros=now_micros)[0]


def answer_online(store: "StoreContext", *, features: list[str], entities: dict | list,
                  feature_sets: list[str] | None = None,
                  now_micros: int | None = None) -> tuple[dict, Coverage | None]:
    """``get_online_features``'s answer, and its ``Coverage``.

    Steps: the entity rows checked and their keys named as the sets name them; each set's keys hashed;
    the value cache asked; one online-store round trip for the rest (or the stale cache when the store
    is down); every value decoded (windows evaluated at ``now``); the metadata and metrics.
    """
    started = time.perf_counter()
    settings = store.settings
    rows = entity_rows(entities)
    if len(rows) > settings.max_entities_per_request:
        raise TooLarge(f"{len(rows)} entities requested; at most {settings.max_entities_per_request} per request "
                       "(MAX_ENTITIES_PER_REQUEST); use historical or batch retrieval for more", field="entities")
    state = _state(store)
    cache_on = settings.serving_cache_enabled
    groups = _plan(store, state, features, feature_sets, cache_on)
    rows = _rows_by_join_keys(groups, rows)
    mono = time.monotonic()
    tracked = None
    if state.tracker is not None:  # tracking: the cache only while tracking is established
        tracked = state.tracker.state
        cache_on = tracked is not None
    results, wanted, hits, misses = _cached(state, groups, _keys_per_group(groups, rows), len(rows), cache_on, mono)

    degraded = state.snapshot.stale
    reason = "the registry was unreachable at the last refresh: names resolved from the last snapshot" if degraded else None
    metrics = _metrics()
    if cache_on:
        metrics.observe_cache_keys(hits, misses)
    if wanted and _read_store(store, state, groups, wanted, results, cache_on, mono, metrics, tracked):
        degraded, reason = True, "the online store is unreachable: answered from the cache"

    now = now_micros if now_micros is not None else time.time_ns() // 1000
    out_features: dict[str, dict[str, Any]] = {}
    out_status: dict[str, dict[str, str]] = {}
    ids = _entity_ids(rows)
    found: dict[str, int] = {}
    for gi, g in enumerate(groups):
        found.update(_decode_group(g, results[gi], ids, now, out_features, out_status))
    dropped = _dropped(state.snapshot, groups, out_features, out_status)
    seconds = time.perf_counter() - started
    missed = {gi for gi, _, _ in wanted}
    for gi, g in enumerate(groups):
        metrics.observe_online(g.codec.name, seconds, cache_hit=gi not in missed)
    lost = [state.lost[g.codec.name] for g in groups if g.codec.name in state.lost] if state.lost else []
    if lost:
        degraded = True
        reason = "; ".join(([reason] if reason else []) + lost)
    cache_hit = hits > 0 and misses == 0
    answer = {
        "features": out_features,
        "statuses": out_status,
        "metadata": {
            "latency_ms": round(seconds * 1000, 3),
            "cache_hit": cache_hit,
            "cache_hits": hits,
            "cache_misses": misses,
            "feature_sets": {g.codec.name: g.codec.version for g in groups},
            "degraded": degraded,
            "degraded_reason": reason,
        },
    }
    if dropped:
        answer["metadata"]["dropped"] = dropped
    if settings.online_skew_sample > 0:  # a sampled comparison with historical retrieval, in the background
        from fstore.serving.skew import monitor_for

        monitor_for(store).offer(features, rows, ids, feature_sets, answer, now)
    return answer, (Coverage(len(ids), found, cache_hit) if len(out_features) == len(ids) else None)


def _dropped(snapshot: RegistrySnapshot, groups: list[_Group], out_features: dict[str, dict[str, Any]],
             out_status: dict[str, dict[str, str]]) -> dict[str, str]:
    """Features whose online values usage-based retention dropped (``fstore.ops.unused``): null, status
    ``dropped``, never the default (a default would look like a real value); returns ``{output name: reason}``."""
    out: dict[str, str] = {}
    for g in groups:
        try:
            reasons = snapshot.dropped(g.codec.name)
        except Exception:  # noqa: BLE001 - a registry that cannot answer a first lookup: the values read stand
            reasons = None
        if not reasons:
            continue
        for name, feature in zip(g.outs, g.features):
            if feature in reasons:
                out[name] = reasons[feature]
                for eid, values in out_features.items():
                    values[name] = None
                    out_status[eid][name] = _DROPPED
    return out


def _rows_by_join_keys(groups: list[_Group], rows: list[dict]) -> list[dict]:
    """``rows`` keyed by the sets' join keys: the spec's ``{"user": [...]}`` names an entity for its one join
    key; any other key that no requested set joins on is refused, naming it."""
    used = set()
    for g in groups:
        used.update(g.codec.key_columns)
    unknown = sorted({k for row in rows for k in row} - used)
    if unknown:
        aliases = {name: key for g in groups for name, key in g.aliases}
        if all(k in aliases for k in unknown):
            rows = [{aliases.get(k, k): v for k, v in row.items()} for row in rows]
            unknown = sorted({k for row in rows for k in row} - used) if all(
                len(row) == len({aliases.get(k, k) for k in row}) for row in rows) else unknown
    if unknown:
        raise InvalidDefinition(f"entity key(s) {', '.join(unknown)} are not join keys of the requested feature sets "
                                f"(which use {', '.join(sorted(used))})", field="entities")
    return rows


def _keys_per_group(groups: list[_Group], rows: list[dict]) -> list[list[str]]:
    """Each set's online keys for the rows, in row order; a key value of the wrong kind names the set."""
    keys_per_group = []
    for g in groups:
        codec = g.codec
        try:
            keys_per_group.append(_keys(codec, rows))
        except InvalidDefinition as exc:
            raise InvalidDefinition(f"{exc.message} (feature set {codec.name} is keyed by "
                                    f"{', '.join(codec.key_columns)})", field="entities") from None
    return keys_per_group


def _cached(state: _State, groups: list[_Group], keys_per_group: list[list[str]], n_rows: int, cache_on: bool,
            mono: float) -> tuple[list[list[Any]], list[tuple[int, Any, list[str]]], int, int]:
    """What the value cache answers: ``(results, wanted, hits, misses)``; ``wanted`` is, per set with keys
    left to read, ``(set index, row indexes, keys)``."""
    results: list[list[Any]] = [[None] * n_rows for _ in groups]
    hits = misses = 0
    wanted: list[tuple[int, Any, list[str]]] = []
    values = state.values
    for gi, (g, keys) in enumerate(zip(groups, keys_per_group)):
        if not cache_on:
            wanted.append((gi, range(len(keys)), keys))
            misses += len(keys)
            continue
        todo_idx, todo_keys = [], []
        for ri, key in enumerate(keys):
            entry = values.get((g.codec.name, g.codec.version, key))
            if entry is not None and entry[0] > mono:
                results[gi][ri] = entry[1]
                hits += 1
                continue
            todo_idx.append(ri)
            todo_keys.append(key)
        if todo_keys:
            wanted.append((gi, todo_idx, todo_keys))
            misses += len(todo_keys)
    return results, wanted, hits, misses


def _read_store(store: "StoreContext", state: _State, groups: list[_Group], wanted: list, results: list[list[Any]],
                cache_on: bool, mono: float, metrics, tracked: tuple[int, int] | None = None) -> bool:
    """Read the ``wanted`` keys in one online-store round trip (with the due load-marker checks) into
    ``results``, caching what came back. True when the store was unreachable and the answers came from
    the stale cache instead (never cached as fresh); without a cache, ``Unavailable`` propagates.
    ``tracked``: the tracker's state when the request began (tracking mode, see the module docstring)."""
    if tracked is not None:
        return _read_tracked(store, state, groups, wanted, results, mono, metrics, tracked)
    checks = _due_checks(state, groups, mono)
    from_stale_cache = False
    try:
        trip = time.perf_counter()
        answers, states = store.online.read_checked(
            [(groups[gi].codec.name, todo_keys, groups[gi].read_fields) for gi, _, todo_keys in wanted], checks)
        metrics.observe_online_store(time.perf_counter() - trip, "read")
    except Unavailable:
        answers = _from_stale_cache(state, groups, wanted, mono) if cache_on else None
        if answers is None:
            raise
        from_stale_cache = True
    else:
        _record_checks(store, state, checks, states, mono)
    values = state.values
    expires = mono + store.settings.serving_cache_ttl
    for (gi, todo_idx, todo_keys), answer in zip(wanted, answers):
        codec = groups[gi].codec
        if not cache_on:
            results[gi] = answer
            continue
        for ri, key, result in zip(todo_idx, todo_keys, answer):
            results[gi][ri] = result
            if not from_stale_cache:
                values[(codec.name, codec.version, key)] = (expires, result)
    if cache_on and len(values) > CACHE_MAX_ENTRIES:
        _evict(state, mono)
    return from_stale_cache


def _read_tracked(store: "StoreContext", state: _State, groups: list[_Group], wanted: list, results: list[list[Any]],
                  mono: float, metrics, tracked: tuple[int, int]) -> bool:
    """``_read_store`` in tracking mode: each key marked with this read's token before the read; a value is
    cached only where its token survived (no invalidation meanwhile) and tracking is still the same."""
    token = (-math.inf, object())  # never a hit: expired at any time
    values = state.values
    marks = [(groups[gi].codec.name, groups[gi].codec.version, key) for gi, _, keys in wanted for key in keys]
    with state.lock:
        for mark in marks:
            values[mark] = token
    checks = _due_checks(state, groups, mono)
    try:
        trip = time.perf_counter()
        answers, states = store.online.read_checked(
            [(groups[gi].codec.name, todo_keys, groups[gi].read_fields) for gi, _, todo_keys in wanted], checks)
        metrics.observe_online_store(time.perf_counter() - trip, "read")
    except BaseException:
        with state.lock:
            for mark in marks:
                if values.get(mark) is token:
                    del values[mark]
        raise
    _record_checks(store, state, checks, states, mono)
    at = 0
    with state.lock:
        keep = state.tracker.state == tracked
        for (gi, todo_idx, _), answer in zip(wanted, answers):
            for ri, result in zip(todo_idx, answer):
                results[gi][ri] = result
                mark = marks[at]
                at += 1
                if values.get(mark) is token:
                    if keep:
                        values[mark] = (math.inf, result)
                    else:
                        del values[mark]
    if len(values) > CACHE_MAX_ENTRIES:
        _evict(state, mono)
    return False


def _decode_group(g: _Group, results: list[Any], ids: list[str], now: int, out_features: dict[str, dict[str, Any]],
                  out_status: dict[str, dict[str, str]]) -> dict[str, int]:
    """One set's stored rows decoded into the answer's features and statuses per entity; returns, per
    output name, how many entity rows have a value (present and not null), for usage's coverage."""
    picks = g.picks
    ttl = g.ttl_micros
    floats = _float_values(g, results, now) if g.all_float else None
    records = _window_records(results) if g.windows or g.composites else None
    windowed = _windowed_rows(g, results, records, now) if records is not None and g.row_floats is not None else None
    fast, row_values = windowed if windowed is not None else ((), ())
    row_width = len(g.row_picks)
    recompute: list[tuple[int, dict, list | None]] = []  # (row, inputs, stored row) of the composites recomputed
    width, at = len(g.outs), 0
    full = 0  # rows with every asked value present and not null
    partial: dict[str, int] = {}
    for ri, result in enumerate(results):
        eid = ids[ri]
        fo = out_features.get(eid)
        if fo is None:
            fo = out_features[eid] = {}
            out_status[eid] = {}
        so = out_status[eid]
        if result is None:
            for out, _, _, default in picks:
                fo[out] = default
                so[out] = _MISSING
            for pi, window in g.windows:  # never stored: the empty window, as historical retrieval answers
                out, _, _, default = picks[pi]
                fo[out] = window.empty if default is None else default
            if g.composites is not None:  # and its composites over those empty windows
                c = g.composites
                recompute.append((ri, {**{w.feature: w.empty for w in c.spec.windows}, **{n: None for n, _, _ in c.stored}},
                                  None))
            continue
        ts, raw = result
        if fast and fast[ri]:  # every window at `now` and the other values parsed at once: one update each
            values = g.window_values(records[ri], now)
            if None in values:  # an empty window of an aggregation without a value (sum, avg, min, max...)
                for out, value in zip(g.window_row_outs, values + [0.0] * row_width):
                    if value is not None:
                        partial[out] = partial.get(out, 0) + 1
            else:
                full += 1
            values.extend(row_values[at:at + row_width])
            at += row_width
            fo.update(zip(g.window_row_outs, values))
            so.update(g.present)
            continue
        if records is not None:  # the windows answered at `now`; the other features as usual
            if _windowed_row(g, ts, raw, records[ri], now, fo, so, partial) and g.composites is not None:
                recompute.append((ri, _composite_inputs(g, ts, raw, records[ri], now), raw))
            continue
        if ttl is not None and now - ts > ttl:
            for out, i, _, default in picks:
                fo[out] = default
                so[out] = _EXPIRED if raw[i] is not None else _MISSING
            continue
        if floats is not None:  # every live row's values, parsed at once (see _float_values)
            fo.update(zip(g.outs, floats[at:at + width]))
            at += width
            so.update(g.present)
            full += 1
            continue
        try:  # the common case: every asked value stored and not null (decoders raise otherwise)
            fo.update(zip(g.outs, [d(v) for d, v in zip(g.decoders, raw if g.getter is None else g.getter(raw))]))
            so.update(g.present)
            full += 1
            continue
        except (ValueError, TypeError, KeyError):
            pass
        for out, i, decode, default in picks:
            value = raw[i]
            if value is None:
                fo[out] = default
                so[out] = _MISSING
            else:
                fo[out] = None if value == NULL else decode(value)
                so[out] = _PRESENT
                if fo[out] is not None:
                    partial[out] = partial.get(out, 0) + 1
    if recompute:
        _recompute_composites(g, recompute, ids, now, out_features, out_status, partial)
    return {out: full + partial.get(out, 0) for out in g.outs}


def _composite_inputs(g: _Group, ts: int, raw: list, record: list, now: int) -> dict[str, Any]:
    """A row's inputs of its composites over windows: the windows at ``now``; the others as stored, null past
    the set's TTL (what historical retrieval's point-in-time read gives)."""
    c = g.composites
    inputs = dict(zip((w.feature for w in c.spec.windows), c.window_values(record, now)))
    expired = g.ttl_micros is not None and now - ts > g.ttl_micros
    for name, i, decode in c.stored:
        value = raw[i]
        inputs[name] = None if expired or value is None or value == NULL else decode(value)
    return inputs


def _recompute_composites(g: _Group, rows: list[tuple[int, dict, list | None]], ids: list[str], now: int,
                          out_features: dict, out_status: dict, found: dict[str, int]) -> None:
    """The asked composites over windows of ``rows``, recomputed at ``now`` in one query (an entity never stored:
    over its empty windows, as historical retrieval answers). Should the query fail (a value out of DuckDB's
    range), the stored values answer, and the failure is logged: serving keeps answering."""
    import duckdb

    from fstore.serving.online_composites import evaluate, log

    try:
        values = evaluate(g.composites.spec, [inputs for _, inputs, _ in rows], now)
    except duckdb.Error as exc:
        log.warning("online: %s's composites over windows answered as stored: %s", g.codec.name, exc)
        values = []
        for _, _, raw in rows:
            stored = [None] * len(g.composites.spec.names)
            for pi, position in g.composites.outs:
                stored[position] = _stored(g.picks[pi], raw)
            values.append(stored)
    for (ri, _, _), computed in zip(rows, values):
        fo, so = out_features[ids[ri]], out_status[ids[ri]]
        for pi, position in g.composites.outs:
            out, value = g.picks[pi][0], computed[position]
            fo[out] = value
            if so.get(out) != _MISSING:  # an entity never stored stays missing, its composites over empty windows
                so[out] = _PRESENT
                if value is not None:
                    found[out] = found.get(out, 0) + 1


def _stored(pick: tuple, raw: list | None) -> Any:
    """A pick's stored value (its default when absent)."""
    out, i, decode, default = pick
    value = None if raw is None else raw[i]
    return default if value is None else None if value == NULL else decode(value)


def _windowed_row(g: _Group, ts: int, raw: list, record: list | None, now: int, fo: dict, so: dict,
                  found: dict[str, int]) -> bool:
    """One stored row of a group with windowed features: each window at ``now`` from the row's ``record`` of
    events (the TTL does not apply to them: a window ages events out itself, as in historical retrieval);
    the other features, and the windows when the record is absent or of an older row or version, as stored.
    Counts into ``found`` the outputs answered with a value; True when the record was usable (the caller then
    recomputes the composites over windows, left out here)."""
    picks = g.picks
    usable = record is not None and record[0] == ts and record[1] == g.codec.version
    if usable:
        for out, value in zip(g.window_outs, g.window_values(record, now)):
            fo[out] = value
            so[out] = _PRESENT
            if value is not None:
                found[out] = found.get(out, 0) + 1
        picks = g.row_picks
    expired = g.ttl_micros is not None and now - ts > g.ttl_micros
    if not expired:
        try:  # the common case: every other value stored and not null (decoders raise otherwise)
            decoded = [decode(raw[i]) for _, i, decode, _ in picks]
        except (ValueError, TypeError, KeyError):
            decoded = None
        if decoded is not None:
            for (out, _, _, _), value in zip(picks, decoded):
                fo[out] = value
                so[out] = _PRESENT
                found[out] = found.get(out, 0) + 1
            return usable
    for out, i, decode, default in picks:
        value = raw[i]
        if expired:
            fo[out] = default
            so[out] = _EXPIRED if value is not None else _MISSING
        elif value is None:
            fo[out] = default
            so[out] = _MISSING
        else:
            fo[out] = None if value == NULL else decode(value)
            so[out] = _PRESENT
            if fo[out] is not None:
                found[out] = found.get(out, 0) + 1
    return usable


_METRICS = None


def _metrics():
    """``fstore.ops.metrics``, imported on first use (its multi-process set-up must precede the import)."""
    global _METRICS
    if _METRICS is None:
        from fstore.ops import metrics

        _METRICS = metrics
    return _METRICS


def _due_checks(state: _State, groups: list[_Group], mono: float) -> list[str]:
    """The requested sets whose load marker was not checked in the last ``MARKER_CHECK_SECONDS``."""
    checked = state.checked
    due = [g.codec.name for g in groups if checked.get(g.codec.name, -1e9) + MARKER_CHECK_SECONDS <= mono]
    return list(dict.fromkeys(due)) if len(due) > 1 else due


def _record_checks(store: "StoreContext", state: _State, names: list[str], states: list, mono: float) -> None:
    """Remember which of the checked sets lost their online values (``fstore.storage.online.marker.lost_reason``)."""
    from fstore.storage.online.marker import lost_reason

    for name, load_state in zip(names, states):
        if load_state is None:  # not checked (a Redis Cluster node holding its marker is down): next request
            continue
        state.checked[name] = mono
        if load_state.complete is not None:  # a load wrote this marker: the set was loaded
            state.loaded.add(name)
        unknown = load_state.complete is None and not load_state.has_values
        why = lost_reason(name, load_state, loaded_in_registry=unknown and _registry_loaded(store, state, name))
        if why is None:
            state.lost.pop(name, None)
        else:
            state.lost[name] = why


def _registry_loaded(store: "StoreContext", state: _State, name: str) -> bool:
    """Whether ``name`` was ever loaded: a marker seen by this process, else the registry's runs.

    Asked only when a check finds neither marker nor values (a set not loaded yet, or lost), so at
    most once per ``MARKER_CHECK_SECONDS`` per set; a "yes" is kept.
    """
    if name in state.loaded:
        return True
    from fstore.registry import runs

    with store.transaction() as s:
        loaded = bool(runs.loaded_online(s, [name]))
    if loaded:
        state.loaded.add(name)
    return loaded


def _from_stale_cache(state: _State, groups: list[_Group], wanted, mono: float) -> list[list[Any]] | None:
    """Answers from cache entries past their TTL (within the grace); None unless every key has one."""
    answers = []
    for gi, _, keys in wanted:
        codec = groups[gi].codec
        answer = []
        for key in keys:
            entry = state.values.get((codec.name, codec.version, key))
            if entry is None or entry[0] + STALE_GRACE_SECONDS < mono:
                return None
            answer.append(entry[1])
        answers.append(answer)
    return answers


def _evict(state: _State, mono: float) -> None:
    """Drop entries past their grace, then the oldest inserted until the cache is back to 3/4 of its bound."""
    with state.lock:
        values = state.values
        snapshot = list(values.items())  # one C-level copy: other threads may insert meanwhile
        for key in [k for k, (exp, _) in snapshot if exp + STALE_GRACE_SECONDS < mono]:
            values.pop(key, None)
        excess = len(values) - CACHE_MAX_ENTRIES * 3 // 4
        if excess > 0:
            for key, _ in snapshot[:excess]:
                values.pop(key, None)
