"""API keys: creation (shown once), verification, expiry, revocation, scopes and grants.

A key is ``fsk_`` + 43 URL-safe characters from ``secrets`` (256 random bits).
Only ``sha256(key)`` is stored, with the first 12 characters as a public prefix
for listing and audit. A slow password hash (bcrypt, scrypt) exists to stretch
low-entropy secrets that a human chose; a 256-bit random key cannot be guessed
from its SHA-256 by any amount of stretching, and a fast hash lets every
request be verified without a 100 ms key-derivation cost. For the same reason no
salt is needed: two keys never share a value, so there is nothing to precompute.

Scopes say *what* a key may do; grants say *on which* feature sets and features.
An empty grant means every feature set. ``admin`` implies every other scope.
"""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fstore.definitions.grants import Grant
from fstore.definitions.model import check_name, parse_duration
from fstore.core.errors import InvalidDefinition, NotFound, Unauthorized
from fstore.registry.models import ApiKeyRow, FeatureRow, FeatureSetRow, utcnow

SCOPES: tuple[str, ...] = ("read_registry", "write_registry", "materialize", "serve_online", "serve_historical", "push",
                           "admin")
KEY_PREFIX = "fsk_"
PREFIX_LENGTH = 12
MAX_LIFETIME_SECONDS = 10 * 365 * 86400  # ten years: anything longer is a typo (and overflows a timestamp)
_INVALID = "missing or invalid API key"


def hash_key(key: str) -> str:
    """The stored form of a key: hex SHA-256 (see the module docstring for why this is enough)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, kw_only=True)
class ApiKey:
    """A verified key as a request sees it (never the secret itself)."""

    id: int
    prefix: str
    owner: str
    scopes: frozenset[str]
    grant: Grant = field(default_factory=Grant)
    expires_at: datetime | None = None

    @property
    def actor(self) -> str:
        """How the audit log names whoever used this key."""
        return f"{self.owner} ({self.prefix}…)"

    def has_scope(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes


def _check_scopes(scopes: Any) -> list[str]:
    if isinstance(scopes, str):
        scopes = [s for s in scopes.replace(",", " ").split() if s]
    if not isinstance(scopes, (list, tuple)) or not scopes:
        raise InvalidDefinition(f"scopes must be a non-empty list of: {', '.join(SCOPES)}", field="scopes")
    unknown = [s for s in scopes if s not in SCOPES]
    if unknown:
        raise InvalidDefinition(f"unknown scope(s) {', '.join(map(str, unknown))}; use: {', '.join(SCOPES)}", field="scopes")
    return sorted(set(scopes))


def _check_names(values: Any, what: str) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [v for v in values.replace(",", " ").split() if v]
    if not isinstance(values, (list, tuple)):
        raise InvalidDefinition(f"{what} must be a list of names", field=what)
    out = []
    for value in values:
        if not isinstance(value, str):
            raise InvalidDefinition(f"{what} must be a list of names, got {value!r}", field=what)
        parts = value.split(":")
        if len(parts) > (2 if what == "features" else 1):
            raise InvalidDefinition(f"{what} entry {value!r} is not a name" + (" or set:feature" if what == "features" else ""),
                                    field=what)
        for part in parts:
            check_name(part, field_name=what)
        out.append(value)
    return sorted(set(out))


def key_lifetime(expires_in: Any) -> int:
    """Seconds in ``expires_in`` (``30d``, ``12h`` or a number of seconds), at most ``MAX_LIFETIME_SECONDS``."""
    if isinstance(expires_in, str) and len(expires_in) > 40:  # before int() meets thousands of digits
        raise InvalidDefinition("expires_in is too long to be a duration; write e.g. 30d, 12h or a number of seconds",
                                field="expires_in")
    seconds = parse_duration(expires_in, field_name="expires_in")
    if seconds > MAX_LIFETIME_SECONDS:
        raise InvalidDefinition(f"expires_in {expires_in!r} is over the longest key lifetime, 10 years "
                                f"({MAX_LIFETIME_SECONDS} seconds)", field="expires_in")
    return seconds


def _expiry(expires_in: Any, expires_at: datetime | None) -> datetime | None:
    if expires_in is not None and expires_in != "":
        return utcnow() + timedelta(seconds=key_lifetime(expires_in))
    if expires_at is not None:
        if expires_at.tzinfo is not None:
            expires_at = expires_at.astimezone(timezone.utc).replace(tzinfo=None)
        if expires_at <= utcnow():
            raise InvalidDefinition("expires_at is in the past", field="expires_at")
    return expires_at


def key_to_dict(row: ApiKeyRow) -> dict:
    """A key's public record: never the hash, never the secret."""
    now = utcnow()
    status = "revoked" if row.revoked_at else "expired" if row.expires_at and row.expires_at <= now else "active"
    return {
        "id": row.id, "prefix": row.prefix, "owner": row.owner, "scopes": list(row.scopes),
        "grants": Grant.from_dict(row.grants).to_dict(), "status": status,
        "created_at": _iso(row.created_at), "expires_at": _iso(row.expires_at),
        "revoked_at": _iso(row.revoked_at), "last_used_at": _iso(row.last_used_at),
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds") + "Z"


def create_key(s: Session, *, owner: Any, scopes: Any, feature_sets: Any = None, features: Any = None,
               expires_in: Any = None, expires_at: datetime | None = None, registered_only: bool = False) -> dict:
    """Create a key; the answer's ``key`` field is the only time the secret is ever shown.

    With ``registered_only`` (the API's rule) a grant may name only feature sets and
    features the registry holds: a misspelt name would otherwise grant nothing, silently.
    """
    if not isinstance(owner, str) or not owner.strip() or len(owner) > 200:
        raise InvalidDefinition("owner must be a non-empty string of at most 200 characters", field="owner")
    scopes = _check_scopes(scopes)
    grants = {"feature_sets": _check_names(feature_sets, "feature_sets"), "features": _check_names(features, "features")}
    expires_at = _expiry(expires_in, expires_at)
    if registered_only:
        _check_registered(s, grants)
    row = ApiKeyRow(owner=owner.strip(), scopes=scopes, grants=grants, expires_at=expires_at, created_at=utcnow())
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row.prefix = key[:PREFIX_LENGTH]
    row.key_hash = hash_key(key)
    s.add(row)
    s.flush()
    return {**key_to_dict(row), "key": key}


def _check_registered(s: Session, grants: dict[str, list[str]]) -> None:
    """``NotFound`` naming the first feature set or feature in ``grants`` that the registry does not hold."""
    sets = set(s.scalars(select(FeatureSetRow.name).where(FeatureSetRow.name.in_(grants["feature_sets"]))))
    for name in grants["feature_sets"]:
        if name not in sets:
            raise NotFound(f"feature set {name!r} not found; a grant names registered feature sets", field="feature_sets")
    wanted = {entry.rpartition(":")[2] for entry in grants["features"]}
    held = set(s.execute(select(FeatureSetRow.name, FeatureRow.name)
                         .join(FeatureSetRow, FeatureRow.feature_set_id == FeatureSetRow.id)
                         .where(FeatureRow.name.in_(wanted))).tuples())
    names = {feature for _, feature in held}
    for entry in grants["features"]:
        set_name, _, feature = entry.rpartition(":")
        if ((set_name, feature) not in held) if set_name else (feature not in names):
            where = f"in feature set {set_name!r}" if set_name else "in any feature set"
            raise NotFound(f"feature {feature!r} not found {where}; a grant names registered features", field="features")


def _find(s: Session, ref: Any) -> ApiKeyRow:
    text = str(ref).strip()
    if text.isascii() and text.isdigit():
        row = s.get(ApiKeyRow, int(text))
    else:
        rows = s.scalars(select(ApiKeyRow).where(ApiKeyRow.prefix == text)).all()
        row = rows[0] if len(rows) == 1 else None
    if row is None:
        raise NotFound(f"API key {text!r} not found (give its id or its prefix)", field="key")
    return row


def get_key(s: Session, ref: Any) -> dict:
    return key_to_dict(_find(s, ref))


def list_keys(s: Session, *, owner: str | None = None, include_inactive: bool = True,
              limit: int = 50, offset: int = 0) -> dict:
    """Keys, newest first, without secrets or hashes."""
    query = select(ApiKeyRow)
    if owner:
        query = query.where(ApiKeyRow.owner == owner)
    if not include_inactive:
        query = query.where(ApiKeyRow.revoked_at.is_(None))
    total = s.scalar(select(func.count()).select_from(query.subquery()))
    rows = s.scalars(query.order_by(ApiKeyRow.id.desc()).limit(limit).offset(offset)).all()
    items = [key_to_dict(r) for r in rows]
    if not include_inactive:
        items = [i for i in items if i["status"] == "active"]
    return {"items": items, "total": total, "limit": limit, "offset": offset}


def revoke_key(s: Session, ref: Any) -> dict:
    """Revoke a key for good (revoking twice keeps the first time)."""
    row = _find(s, ref)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return key_to_dict(row)


def verify_key(s: Session, key: str | None, *, touch_after: float = 60.0) -> ApiKey:
    """The key's record if it exists, is not revoked and has not expired; else ``Unauthorized``.

    The message is the same for every failure, so a caller learns nothing about which keys exist.
    """
    if not key or not isinstance(key, str) or len(key) > 256:
        raise Unauthorized(_INVALID)
    row = s.scalar(select(ApiKeyRow).where(ApiKeyRow.key_hash == hash_key(key)))
    now = utcnow()
    if row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        raise Unauthorized(_INVALID)
    if row.last_used_at is None or (now - row.last_used_at).total_seconds() >= touch_after:
        row.last_used_at = now
    return ApiKey(id=row.id, prefix=row.prefix, owner=row.owner, scopes=frozenset(row.scopes),
                  grant=Grant.from_dict(row.grants), expires_at=row.expires_at)


class KeyVerifier:
    """Verifies keys against the registry with a short in-process cache.

    Online serving cannot afford a registry round trip per request, so a verified
    key is remembered for ``ttl`` seconds: a revocation made in another process
    takes effect within that time (at once in this one, through ``forget``).
    Expiry is checked on every request.
    """

    def __init__(self, session_factory, *, ttl: float = 10.0) -> None:
        self._session_factory = session_factory
        self._ttl = ttl
        self._cache: dict[str, tuple[ApiKey, float]] = {}
        self._lock = threading.Lock()

    def verify(self, key: str | None) -> ApiKey:
        if not key or not isinstance(key, str) or len(key) > 256:
            raise Unauthorized(_INVALID)
        # Keyed by the presented key itself, so a hit costs one dict lookup (no hashing); the
        # secret lives only in this process's memory, where the request carrying it already is.
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[1] < self._ttl:
            api_key = hit[0]
            if api_key.expires_at is None or api_key.expires_at > utcnow():
                return api_key
        with self._session_factory() as s:
            api_key = verify_key(s, key)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = (api_key, now)
        return api_key

    def forget(self, key_ids: Iterable[int] | None = None) -> None:
        """Drop cached keys (all of them, or those with these ids) after a revocation."""
        with self._lock:
            if key_ids is None:
                self._cache.clear()
                return
            ids = set(key_ids)
            for digest in [d for d, (k, _) in self._cache.items() if k.id in ids]:
                self._cache.pop(digest, None)
