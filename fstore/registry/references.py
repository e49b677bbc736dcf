"""Feature references as users write them: ``feature``, ``set:feature``, ``set@3:feature``.

Serving and retrieval both turn a request's feature list (plus an optional list
of feature sets) into groups ``(feature set version, [feature names])``. A bare
name found in several sets is refused with the candidates listed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fstore.core.errors import InvalidDefinition, NotFound

if TYPE_CHECKING:
    from fstore.definitions.model import FeatureSetVersion
    from fstore.registry.snapshot import RegistrySnapshot
    from fstore.core.context import StoreContext

_REF_RE = re.compile(r"^(?:(?P<set>[A-Za-z_]\w{0,62})(?:@(?P<version>\d+))?:)?(?P<name>[A-Za-z_]\w{0,62})$")


@dataclass(frozen=True, kw_only=True)
class FeatureRef:
    name: str
    feature_set: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        if self.feature_set is None:
            return self.name
        version = f"@{self.version}" if self.version is not None else ""
        return f"{self.feature_set}{version}:{self.name}"


def parse_ref(text: object) -> FeatureRef:
    """Parse one reference; anything that is not an identifier form is refused."""
    if not isinstance(text, str):
        raise InvalidDefinition(f"feature reference {text!r} must be a string", field="features")
    match = _REF_RE.match(text.strip())
    if not match:
        raise InvalidDefinition(f"feature reference {text!r} is not 'feature', 'set:feature' or 'set@version:feature'",
                                field="features")
    version = match.group("version")
    return FeatureRef(name=match.group("name"), feature_set=match.group("set"),
                      version=int(version) if version is not None else None)


@dataclass(frozen=True, kw_only=True)
class FeatureGroup:
    """The features asked of one feature set version, in request order, with the names to answer under."""

    version: "FeatureSetVersion"
    features: tuple[str, ...]
    output_names: tuple[str, ...]


def resolve(store: "StoreContext", features: list[str], feature_sets: list[str] | None = None, *,
            registry: "RegistrySnapshot | None" = None) -> list[FeatureGroup]:
    """Group the requested features by feature set version.

    A bare name is looked up in ``feature_sets`` when given, else in every set; it
    must be found in exactly one. The answer names a feature as the user wrote it.
    ``registry`` (online serving) answers the lookups from its snapshot instead of a transaction.
    """
    from fstore.registry import repo

    if not isinstance(features, list) or not features:
        raise InvalidDefinition("features must be a non-empty list of feature names", field="features")
    refs = [parse_ref(f) for f in features]
    if feature_sets is not None and (not isinstance(feature_sets, list) or not all(isinstance(n, str) for n in feature_sets)):
        raise InvalidDefinition("feature_sets must be a list of feature set names", field="feature_sets")
    versions: dict[tuple[str, int | None], FeatureSetVersion] = {}

    def load(name: str, version: int | None) -> "FeatureSetVersion":
        key = (name, version)
        if key not in versions:
            versions[key] = (registry.version(name, version) if registry is not None
                             else store.feature_set_version(name, version))
        return versions[key]

    scope = [load(name, None) for name in dict.fromkeys(feature_sets)] if feature_sets else None  # a name given twice counts once
    groups: dict[tuple[str, int], tuple[FeatureSetVersion, list[str], list[str]]] = {}
    for ref, written in zip(refs, features):
        if ref.feature_set is not None:
            fsv = load(ref.feature_set, ref.version)
            if ref.name not in {f.name for f in fsv.features}:
                raise NotFound(f"feature {ref.name} not found in feature set {fsv.name} (version {fsv.version})", field="features")
        else:
            if scope is not None:
                candidates = [v for v in scope if ref.name in {f.name for f in v.features}]
            else:
                if registry is not None:
                    names = registry.names_with_feature(ref.name)
                else:
                    with store.transaction() as s:
                        names = repo.feature_set_names_with_feature(s, ref.name)
                candidates = [load(n, None) for n in names]
            if not candidates:
                where = f" in feature sets {', '.join(feature_sets)}" if feature_sets else ""
                raise NotFound(f"feature {ref.name} not found{where}", field="features")
            if len(candidates) > 1:
                listed = ", ".join(f"{v.name}:{ref.name}" for v in candidates)
                raise InvalidDefinition(f"feature {ref.name} is ambiguous; name one of: {listed}", field="features")
            fsv = candidates[0]
        key = (fsv.name, fsv.version)
        group = groups.setdefault(key, (fsv, [], []))
        if ref.name in group[1]:
            raise InvalidDefinition(f"feature {written} is asked for twice", field="features")
        group[1].append(ref.name)
        group[2].append(written.strip())
    return [FeatureGroup(version=v, features=tuple(f), output_names=tuple(o)) for v, f, o in groups.values()]
