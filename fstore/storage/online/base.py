"""The online store contract, its key layout and its value codecs.

Layout (DESIGN.md "Online store layout"): one hash per (feature set, entity key),
one field per feature plus ``@ts``, the event timestamp in epoch microseconds
(``@`` cannot start a feature name, so it never collides with one).

Keys: ``fs:<set>:`` then each key part length-prefixed, ``<len>:<text>`` in join
key order, so any key value (colons, spaces, empty strings) gives a distinct key.
Key parts are normalized by the entity's ``value_type`` first, so a user id sent
as ``1`` or ``"1"`` is the same key.

Values are typed by the registry and stored as short text, never pickled:
``int``/``float`` as their decimal text, ``bool`` as ``1``/``0``, ``string`` as
UTF-8, ``timestamp`` as epoch micros, lists as JSON (timestamps inside as micros).
A null value is the single byte ``0xFF``, which no UTF-8 text contains, so a null
differs from a missing field (absent) and from an empty string.

A ``Codec`` is the picklable description of one feature set version that
writers (also inside Spark executors) and readers share; ``decoders`` are
prepared once per codec.
"""
from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import date, datetime, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from fstore.core.errors import InvalidDefinition

if TYPE_CHECKING:
    from fstore.definitions.model import FeatureSetVersion
    from fstore.storage.online.marker import LoadState

NULL = b"\xff"
TS_FIELD = "@ts"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


# -- timestamps ---------------------------------------------------------------------------

def to_micros(value: Any, *, field_name: str = "timestamp") -> int:
    """Epoch microseconds of a datetime (naive = UTC), an ISO 8601 string or a number of micros."""
    if isinstance(value, bool):
        raise InvalidDefinition(f"{field_name} {value!r} is not a timestamp", field=field_name)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidDefinition(f"{field_name} {value!r} is not an ISO 8601 timestamp", field=field_name) from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        delta = value - _EPOCH
        return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds
    if isinstance(value, date):
        return to_micros(datetime(value.year, value.month, value.day), field_name=field_name)
    if hasattr(value, "value") and type(value).__name__ == "Timestamp":  # pandas.Timestamp, without importing pandas
        return to_micros(value.to_pydatetime(), field_name=field_name)
    raise InvalidDefinition(f"{field_name} {value!r} is not a timestamp", field=field_name)


def iso_from_micros(micros: int) -> str:
    """ISO 8601 UTC with ``Z`` (the JSON form of every timestamp fstore answers)."""
    seconds, micro = divmod(int(micros), 1_000_000)
    text = datetime.fromtimestamp(seconds, timezone.utc).replace(tzinfo=None, microsecond=micro).isoformat()
    return text + "Z"


# -- keys ---------------------------------------------------------------------------------

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class KeyOutOfRange(InvalidDefinition):
    """An ``int`` key value beyond 64 bits: a number, but one no stored (BIGINT) key can equal."""


def _int64(number: int, key: str) -> str:
    """An ``int`` key's text; beyond 64 bits no stored key can match (keys are BIGINT), so it is refused, not missed."""
    if not INT64_MIN <= number <= INT64_MAX:
        text = str(number) if len(str(number)) <= 40 else f"{str(number)[:20]}… ({len(str(number))} digits)"
        raise KeyOutOfRange(f"entity key {key} value {text} is outside the 64-bit integer range of int keys",
                            field="entities")
    return str(number)


def normalize_key_value(value: Any, value_type: str, *, key: str) -> str:
    """The canonical text of one entity key value for its ``value_type`` (``1`` and ``"1"`` agree)."""
    if value is None:
        raise InvalidDefinition(f"entity key {key} is null", field="entities")
    try:
        if value_type == "int":
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                return _int64(int(value), key)
            if isinstance(value, str) and len(value) > 64:  # before int() meets thousands of digits
                return _int64(10**64, key)
            return _int64(int(str(value).strip()) if isinstance(value, str) else int(value), key)
        if value_type == "string":
            if isinstance(value, (dict, list)):
                raise ValueError
            return value if isinstance(value, str) else str(value)
        if value_type == "float":
            if isinstance(value, bool):
                raise ValueError
            return repr(float(value))
        if value_type == "bool":
            if isinstance(value, bool):
                return "1" if value else "0"
            text = str(value).strip().lower()
            if text in ("true", "1"):
                return "1"
            if text in ("false", "0"):
                return "0"
            raise ValueError
        if value_type == "timestamp":
            return str(to_micros(value, field_name=f"entities.{key}"))
    except (ValueError, TypeError, OverflowError):
        raise InvalidDefinition(f"entity key {key} value {value!r} is not a {value_type}", field="entities") from None
    raise InvalidDefinition(f"entity key {key} has unsupported value type {value_type}", field="entities")


def key_normalizer(value_type: str, key: str) -> Callable[[Any], str]:
    """A fast ``normalize_key_value`` for one key column: the common exact types skip the general path."""
    if value_type == "string":
        return lambda v: v if type(v) is str else normalize_key_value(v, value_type, key=key)
    if value_type == "int":
        def int_text(v: Any) -> str:
            if type(v) is int and INT64_MIN <= v <= INT64_MAX:
                return str(v)
            if type(v) is str and v.isascii() and v.isdigit() and (v[0] != "0" or v == "0") and len(v) < 19:
                return v
            return normalize_key_value(v, value_type, key=key)

        return int_text
    return lambda v: normalize_key_value(v, value_type, key=key)


def redis_key(feature_set: str, parts: Sequence[str]) -> str:
    """The hash key of one entity key in one feature set (parts length-prefixed, so always distinct)."""
    return f"fs:{feature_set}:" + "".join(f"{len(p)}:{p}" for p in parts)


def key_prefix(feature_set: str) -> str:
    return f"fs:{feature_set}:"


# -- value codecs -------------------------------------------------------------------------

def _scalar_to_json(value: Any, data_type: str) -> Any:
    if value is None:
        return None
    if data_type == "timestamp":
        return to_micros(value)
    if data_type == "float":
        return float(value)
    if data_type == "int":
        return int(value)
    if data_type == "bool":
        return bool(value)
    return str(value)


def encode_value(value: Any, data_type: str, *, field_name: str = "value") -> bytes:
    """The stored bytes of one value of ``data_type`` (``NULL`` for None)."""
    if value is None:
        return NULL
    if isinstance(value, float) and math.isnan(value) and data_type != "float":
        return NULL  # pandas uses NaN for a missing value in an object or int column
    try:
        if data_type == "float":
            if isinstance(value, bool):
                raise TypeError
            return repr(float(value)).encode()
        if data_type == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return str(int(value)).encode()
        if data_type == "bool":
            if isinstance(value, str) or not isinstance(value, (bool, int)) and type(value).__name__ != "bool_":
                raise TypeError
            return b"1" if value else b"0"
        if data_type == "string":
            return value.encode() if isinstance(value, str) else str(value).encode()
        if data_type == "timestamp":
            return str(to_micros(value, field_name=field_name)).encode()
        if data_type.startswith("list<"):
            inner = data_type[5:-1]
            if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
                raise TypeError
            return json.dumps([_scalar_to_json(v, inner) for v in value], separators=(",", ":")).encode()
    except InvalidDefinition:
        raise
    except (TypeError, ValueError, OverflowError):
        pass
    raise InvalidDefinition(f"{field_name} {value!r} is not a {data_type}", field=field_name)


def _list_decoder(inner: str) -> Callable[[bytes], Any]:
    if inner == "timestamp":
        return lambda raw: [None if v is None else iso_from_micros(v) for v in json.loads(raw)]
    if inner == "float":
        # Spark's to_json writes NaN/Infinity as strings; give them back as floats.
        return lambda raw: [v if v is None else float(v) for v in json.loads(raw)]
    return json.loads


def decoder(data_type: str) -> Callable[[bytes], Any]:
    """A function from stored bytes to the JSON-ready value.

    Given ``NULL`` or ``None`` every decoder raises (``ValueError``, ``TypeError`` or
    ``KeyError``) rather than inventing a value, so a caller may decode a whole row
    optimistically and handle nulls and missing fields only when that fails.
    """
    if data_type == "float":
        return float
    if data_type == "int":
        return int
    if data_type == "bool":
        # strict: anything but b"1"/b"0" (a NULL, a missing None) raises, which serving's fast path relies on
        return {b"1": True, b"0": False}.__getitem__
    if data_type == "string":
        return bytes.decode
    if data_type == "timestamp":
        return lambda raw: iso_from_micros(int(raw))
    if data_type.startswith("list<"):
        return _list_decoder(data_type[5:-1])
    raise InvalidDefinition(f"data type {data_type} has no online codec", field="data_type")


@dataclass(frozen=True, kw_only=True)
class Codec:
    """What a reader or writer needs of one feature set version; picklable for Spark executors."""

    name: str
    version: int
    key_columns: tuple[str, ...]
    key_types: tuple[str, ...]
    features: tuple[tuple[str, str], ...]  # (feature name, data type) in registry order
    ttl_seconds: int | None = None
    window_seconds: int = 0  # the longest window of a windowed feature (they age events out at read time)

    @classmethod
    def from_version(cls, fsv: "FeatureSetVersion") -> "Codec":
        key_types: dict[str, str] = {}
        for entity in fsv.entities:
            for key in entity.join_keys:
                key_types.setdefault(key, entity.value_type)
        keys = fsv.join_keys
        return cls(name=fsv.name, version=fsv.version, key_columns=keys,
                   key_types=tuple(key_types.get(k, "string") for k in keys),
                   features=tuple((f.name, f.data_type) for f in fsv.features), ttl_seconds=fsv.ttl_seconds,
                   window_seconds=_longest_window(fsv))

    def __getstate__(self) -> dict[str, Any]:
        # The prepared decoders (lambdas) stay behind; an executor or another process rebuilds them.
        return {k: v for k, v in self.__dict__.items() if k not in ("decoders", "normalizers")}

    @property
    def keep_seconds(self) -> int:
        """How long after its event time a row can still be served (0: forever, no TTL): the TTL, or the
        longest window when that is longer (a window answers at the request's time whatever the TTL).
        Redis keys expire then (``PEXPIREAT``); the embedded store deletes older rows on each load."""
        return max(self.ttl_seconds, self.window_seconds) if self.ttl_seconds else 0

    def keep_cutoff(self, now_micros: int | None = None) -> int | None:
        """The oldest event time (micros) still worth storing at ``now_micros`` (default: the wall clock), or
        None without a TTL. Every write path (bulk loads, ``write_rows``, so pushes too) drops older rows:
        serving would call them expired, and Redis would drop them at once (their expiry is past)."""
        if not self.keep_seconds:
            return None
        now = now_micros if now_micros is not None else time.time_ns() // 1000
        return now - self.keep_seconds * 1_000_000

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.features)

    @cached_property
    def decoders(self) -> dict[str, Callable[[bytes], Any]]:
        """Per-feature decoders, built once per codec (a codec is built once per set version)."""
        return {name: decoder(data_type) for name, data_type in self.features}

    @cached_property
    def normalizers(self) -> tuple[tuple[str, Callable[[Any], str]], ...]:
        return tuple((c, key_normalizer(t, c)) for c, t in zip(self.key_columns, self.key_types))

    def key_of(self, values: Mapping[str, Any]) -> str:
        """The hash key of a row or entity mapping (each key normalized by its value type)."""
        key = f"fs:{self.name}:"
        for column, normalize in self.normalizers:
            try:
                text = normalize(values[column])
            except KeyError:
                raise InvalidDefinition(f"feature set {self.name} needs entity key {column}", field="entities") from None
            key += f"{len(text)}:{text}"
        return key


def _longest_window(fsv: "FeatureSetVersion") -> int:
    """The longest window of ``fsv``'s windowed features in seconds (0 without any)."""
    from fstore.compiler import EVENT_TIME
    from fstore.compiler.windows import window_spec

    try:
        specs = [window_spec(fsv, f, event_time=EVENT_TIME) for f in fsv.features]
    except InvalidDefinition:  # a definition that no longer parses serves what it stored
        return 0
    return max((spec.size_seconds for spec in specs if spec is not None), default=0)


def as_codec(feature_set: "Codec | FeatureSetVersion") -> Codec:
    return feature_set if isinstance(feature_set, Codec) else Codec.from_version(feature_set)


@dataclass(frozen=True)
class EncodedRow:
    """One entity's write: its hash key, event time in micros, and values in the codec's feature order."""

    key: str
    ts: int
    values: tuple[bytes, ...]


def encode_rows(codec: Codec, rows: Iterable[Mapping[str, Any]]) -> list[EncodedRow]:
    """Rows as dicts (keys, ``event_timestamp``, every feature) → encoded writes; bad values are refused."""
    out = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InvalidDefinition(f"row {index} must be a mapping of column to value", field="rows")
        if row.get("event_timestamp") is None:
            raise InvalidDefinition(f"row {index} has no event_timestamp", field="event_timestamp")
        missing = [name for name, _ in codec.features if name not in row]
        if missing:
            raise InvalidDefinition(f"row {index} lacks feature(s) {', '.join(missing)} of feature set {codec.name}",
                                    field=missing[0])
        ts = to_micros(row["event_timestamp"], field_name="event_timestamp")
        values = tuple(encode_value(row[name], data_type, field_name=name) for name, data_type in codec.features)
        out.append(EncodedRow(codec.key_of(row), ts, values))
    return out


# -- the contract -------------------------------------------------------------------------

# A read result per key: None when the hash does not exist, else (event micros, raw values) with
# raw values in the order asked; a raw value is None for a missing field and ``NULL`` for a null.
ReadResult = "tuple[int, list[bytes | None]] | None"


class OnlineStore(ABC):
    """Latest feature values per entity key, never moved backwards in event time."""

    @abstractmethod
    def write_encoded(self, codec: Codec, rows: Sequence[EncodedRow]) -> int:
        """Write encoded rows; a row older than the stored one is dropped. Returns rows written."""

    def write_rows(self, feature_set: "Codec | FeatureSetVersion", rows: Iterable[Mapping[str, Any]]) -> int:
        """Write rows given as dicts (join keys, ``event_timestamp``, every feature). Returns rows written.

        All rows are encoded (and so checked) before anything is written. A row already past the set's TTL
        (``Codec.keep_cutoff``) is not written nor counted, as in a bulk load (``past_ttl`` counts them).
        """
        codec = as_codec(feature_set)
        encoded = encode_rows(codec, rows)
        cutoff = codec.keep_cutoff()
        if cutoff is not None:
            encoded = [r for r in encoded if r.ts >= cutoff]
        return self.write_encoded(codec, encoded)

    @abstractmethod
    def write_at(self, name: str, fields: Sequence[str], rows: Sequence[tuple[str, int, Sequence[bytes]]]) -> int:
        """Set ``fields`` of each ``(hash key, event micros, values)`` only where the stored ``@ts`` equals
        that event time (the window contributions computed for that very row; ``fstore.storage.online.windows``).
        Returns keys written."""

    def swap(self, name: str, fields: Sequence[str], guard: str,
             rows: Sequence[tuple[str, int | None, bytes | None, int, Sequence[bytes]]], *,
             keep_ms: int = 0) -> list[bool]:
        """Compare-and-set per key, atomically: for each ``(hash key, expected @ts, expected guard value, new @ts,
        values)`` set ``@ts`` and ``fields`` only where the stored ``@ts`` and ``guard`` field still equal what the
        caller read (None: absent), so a read-modify-write loses no concurrent writer's update (the loser reads
        again; ``fstore.compute.stream_windows``). Returns per row whether it was written. ``keep_ms``: as in
        writes, a written key expires that long after its new event time (Redis ``PEXPIREAT``; 0: never)."""
        raise NotImplementedError(f"{type(self).__name__} has no compare-and-set (swap)")

    @abstractmethod
    def read_many(self, requests: Sequence[tuple[str, Sequence[str], Sequence[str]]]) -> list[list[Any]]:
        """One round trip: for each ``(feature set, hash keys, fields)`` the ``ReadResult`` per key."""

    def read(self, feature_set: "Codec | FeatureSetVersion", keys: Sequence[str],
             fields: Sequence[str] | None = None) -> list[Any]:
        """Raw ``ReadResult`` per hash key of one feature set (all features unless ``fields``)."""
        codec = as_codec(feature_set)
        return self.read_many([(codec.name, keys, tuple(fields) if fields is not None else codec.feature_names)])[0]

    def read_checked(self, requests: Sequence[tuple[str, Sequence[str], Sequence[str]]],
                     names: Sequence[str]) -> tuple[list[list[Any]], list["LoadState"]]:
        """``read_many`` and the ``LoadState`` of each set in ``names``, in the same round trip
        (serving's check for a store that lost its values: ``fstore.storage.online.marker``); a state is
        None when the store could not check it now (a Redis Cluster node holding its marker is down)."""
        results = self.read_many(requests)
        states = self.load_states(names)
        return results, [states[n] for n in names]

    @abstractmethod
    def load_states(self, names: Sequence[str]) -> dict[str, "LoadState"]:
        """Per set: its load marker's ``complete`` flag and whether any of its values is stored (one round trip)."""

    @abstractmethod
    def read_marker(self, name: str) -> dict[str, Any] | None:
        """The set's load marker (``marker.parse_marker``), None when absent."""

    @abstractmethod
    def write_marker(self, name: str, fields: Mapping[str, str]) -> None:
        """Replace the set's load marker with ``fields`` (written once per load, after its rows)."""

    @abstractmethod
    def ping(self) -> None:
        """Raise ``Unavailable`` when the store cannot be reached."""

    def track(self, on_invalidate: Callable[[Sequence[bytes] | None], None]) -> Any:
        """Start invalidation tracking (``ONLINE_CACHE=tracking``): ``on_invalidate`` is called with the names
        of changed keys read before, or None when everything must be dropped; returns the tracker
        (``fstore.storage.online.tracking.InvalidationTracker``). Only one Redis (not a cluster) tracks."""
        raise InvalidDefinition(f"ONLINE_CACHE=tracking needs one Redis (REDIS_URL=redis://…); "
                                f"{type(self).__name__} cannot track invalidations: use ONLINE_CACHE=ttl",
                                field="ONLINE_CACHE")

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    @abstractmethod
    def delete_feature_set(self, name: str) -> int:
        """Remove every key of a feature set (and its load marker); returns how many were removed."""

    def expire(self, codec: Codec, now_micros: int | None = None) -> int:
        """Delete the set's rows older than ``codec.keep_seconds`` before now; returns how many. Redis needs
        none of this (each write sets the key's ``PEXPIREAT``), so by default nothing is done."""
        return 0

    @abstractmethod
    def newest_timestamp(self, name: str) -> datetime | None:
        """The newest event timestamp stored for a feature set (naive UTC), for freshness monitoring."""

    @abstractmethod
    def memory_usage(self, name: str, *, sample: int = 100) -> dict[str, Any]:
        """What a feature set takes in the store: ``{"keys", "bytes", "method"}`` (cost tracking)."""

    @abstractmethod
    def drop_fields(self, name: str, fields: Sequence[str]) -> int:
        """Remove ``fields`` (features) from every key of a feature set, keeping the others (usage-based
        retention); returns how many keys held one of them."""

    def __enter__(self) -> "OnlineStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
