"""``Grant``: which feature sets and features an API key may touch (the keys themselves: ``fstore.ops.auth``).

A plain value, so that the registry's listings can filter by it without knowing
about keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Grant:
    """Which feature sets and features a key may touch; both empty means all of them.

    ``features`` entries are ``set:feature`` (one feature of one set) or a bare
    ``feature`` (that feature in any set). A feature set named in ``feature_sets``
    grants all its features.
    """

    feature_sets: frozenset[str] = frozenset()
    features: frozenset[str] = frozenset()

    @property
    def unrestricted(self) -> bool:
        return not self.feature_sets and not self.features

    def allows_feature_set(self, name: str) -> bool:
        """True when at least part of the set is granted (so the set may be named and listed)."""
        if self.unrestricted or name in self.feature_sets:
            return True
        return any(f.split(":", 1)[0] == name for f in self.features if ":" in f)

    def allows_whole_set(self, name: str) -> bool:
        """True when every feature of the set is granted (needed to change or materialize it)."""
        return self.unrestricted or name in self.feature_sets

    def allows_feature(self, feature_set: str | None, name: str) -> bool:
        """True when feature ``name`` of ``feature_set`` (None: of an unknown set) is granted."""
        if self.unrestricted or name in self.features:
            return True
        if feature_set is None:
            return False
        return feature_set in self.feature_sets or f"{feature_set}:{name}" in self.features

    def to_dict(self) -> dict[str, list[str]]:
        return {"feature_sets": sorted(self.feature_sets), "features": sorted(self.features)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Grant":
        data = data or {}
        return cls(feature_sets=frozenset(data.get("feature_sets") or ()), features=frozenset(data.get("features") or ()))
