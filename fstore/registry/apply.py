"""Declarative apply: YAML files (or a folder of them) → a plan of changes → the registry.

A file holds any of three lists: ``entities:``, ``feature_sets:`` (each may hold
its ``features:`` inline) and ``features:`` (each naming its ``feature_set``).
The files state the whole truth about the objects they name: applying them
creates what is missing, makes a new version of what differs and leaves the
rest untouched, so applying the same files twice changes nothing. Objects the
files do not mention are left alone (deleting is explicit: ``fstore … delete``).

Source paths: ``${STORAGE_PATH}`` is replaced by the store's storage path, and a
relative local path is taken relative to the YAML file that names it, so an
example folder works from any working directory. URIs (``s3a://…``) are kept.

``apply`` runs everything in one registry transaction, so one bad object in one
file changes nothing. ``plan`` runs exactly the same steps and rolls back, so
the plan is what ``apply`` would do, version numbers and compile checks included.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from fstore.definitions.model import Entity, Feature, FeatureSet, composite_order
from fstore.core.errors import FStoreError, InvalidDefinition, NotFound
from fstore.registry import repo
from fstore.registry.models import EntityRow, FeatureRow, FeatureSetRow

if TYPE_CHECKING:
    from fstore.core.context import StoreContext

TOP_LEVEL = ("entities", "feature_sets", "features")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class _Item:
    """One object read from a file, with where it was written (for error messages)."""

    kind: str
    body: dict
    file: str
    line: int
    features: list["_Item"] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.body.get("name"))

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def yaml_files(path: str | Path) -> list[Path]:
    """The YAML file itself, or every ``*.yaml``/``*.yml`` under a folder, sorted."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".yaml", ".yml"))
        if not files:
            raise InvalidDefinition(f"{path}: no .yaml or .yml files in this folder", field="path")
        return files
    raise NotFound(f"{path}: no such file or folder")


def _load(file: Path) -> list[_Item]:
    """Read one file into items, naming the file and line of any YAML or shape error."""
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = file.read_bytes()[:exc.start].count(b"\n") + 1
        raise InvalidDefinition(f"{file}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") \
            from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise InvalidDefinition(f"{file}{line}: invalid YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidDefinition(f"{file}: invalid YAML: {exc}") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise InvalidDefinition(f"{file}:1: a definitions file must be a mapping with {', '.join(TOP_LEVEL)}")
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        raise InvalidDefinition(f"{file}: unknown top-level key(s) {', '.join(map(str, unknown))}; use {', '.join(TOP_LEVEL)}")
    lines = {key.value: value for key, value in node.value}
    items: list[_Item] = []
    for key in TOP_LEVEL:
        values = data.get(key) or []
        if not isinstance(values, list):
            raise InvalidDefinition(f"{file}:{lines[key].start_mark.line + 1}: {key} must be a list")
        for body, item_node in zip(values, lines[key].value if values else []):
            line = item_node.start_mark.line + 1
            if not isinstance(body, dict):
                raise InvalidDefinition(f"{file}:{line}: each of {key} must be a mapping")
            kind = {"entities": "entity", "feature_sets": "feature_set", "features": "feature"}[key]
            item = _Item(kind=kind, body=dict(body), file=str(file), line=line)
            if kind == "feature_set":
                inline = item.body.pop("features", None) or []
                if not isinstance(inline, list):
                    raise InvalidDefinition(f"{file}:{line}: features of feature set {item.name} must be a list")
                inline_nodes = next((v.value for k, v in item_node.value if k.value == "features"), [])
                for fbody, fnode in zip(inline, inline_nodes):
                    if not isinstance(fbody, dict):
                        raise InvalidDefinition(f"{file}:{fnode.start_mark.line + 1}: each feature must be a mapping")
                    item.features.append(_Item(kind="feature", body=dict(fbody), file=str(file),
                                               line=fnode.start_mark.line + 1))
            items.append(item)
    return items


def _expand_source(body: dict, file: Path, storage_path: str) -> dict:
    """Resolve ``${STORAGE_PATH}`` and file-relative paths in a feature set's source."""
    source = body.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("path"), str):
        return body
    raw = source["path"]

    def sub(match: re.Match) -> str:
        if match.group(1) != "STORAGE_PATH":
            raise InvalidDefinition(f"source.path {raw!r}: only ${{STORAGE_PATH}} may be used", field="source.path")
        return storage_path

    path = _VAR_RE.sub(sub, raw)
    if "://" not in path and not Path(path).is_absolute():
        path = str((file.parent / path).resolve())
    return {**body, "source": {**source, "path": path}}


def _read(store: "StoreContext", path: str | Path) -> tuple[list[_Item], list[_Item], list[_Item]]:
    """Entities, feature sets (with inline features) and loose features from every file, duplicates refused."""
    entities, sets, loose = [], [], []
    for file in yaml_files(path):
        for item in _load(file):
            if item.kind == "feature_set":
                item.body = _expand_source(item.body, file, store.settings.storage_path)
            {"entity": entities, "feature_set": sets, "feature": loose}[item.kind].append(item)
    for kind, items in (("entity", entities), ("feature set", sets)):
        seen: dict[str, _Item] = {}
        for item in items:
            if item.name in seen:
                raise InvalidDefinition(f"{item.where}: {kind} {item.name} is also defined at {seen[item.name].where}")
            seen[item.name] = item
    by_set = {s.name: s for s in sets}
    registry_features = []
    for item in loose:
        set_name = item.body.get("feature_set", item.body.get("feature_set_id"))
        if set_name is None:
            raise InvalidDefinition(f"{item.where}: feature {item.name} needs feature_set (or write it inside its feature set)",
                                    field="feature_set")
        if isinstance(set_name, str) and set_name in by_set:
            by_set[set_name].features.append(item)
            item.body = {k: v for k, v in item.body.items() if k not in ("feature_set", "feature_set_id")}
        else:
            registry_features.append(item)  # its set is already registered (or the error names it)
    loose = registry_features
    for s in sets:
        seen = {}
        for f in s.features:
            named = f.body.pop("feature_set", None), f.body.pop("feature_set_id", None)
            if any(n is not None and n != s.name for n in named):
                raise InvalidDefinition(f"{f.where}: feature {f.name} is written inside feature set {s.name} "
                                        f"but names another set", field="feature_set")
            if f.name in seen:
                raise InvalidDefinition(f"{f.where}: feature {f.name} of feature set {s.name} is also defined at {seen[f.name].where}")
            seen[f.name] = f
    return entities, sets, loose


def _full_changes(new: dict, old: dict) -> dict:
    """A PATCH body that makes ``old`` equal ``new``: every field, with removed ones set to None."""
    return {**{k: None for k in old if k not in new}, **new}


class _Recorder:
    """The result lines: per object, created / updated (new version N) / unchanged."""

    def __init__(self) -> None:
        self.results: list[dict] = []

    def add(self, kind: str, name: str, before: int | None, after: int, item: _Item,
            changes: list[dict] | None = None) -> dict:
        action = "create" if before is None else ("update" if after != before else "unchanged")
        entry = {"kind": kind, "name": name, "action": action, "version": after, "file": item.where}
        if action == "update" and changes:
            entry["changes"] = [c["field"] for c in changes]
        self.results.append(entry)
        return entry


def _run(s: Session, store: "StoreContext", path: str | Path, actor: str, allow: bool = False) -> list[dict]:
    """Apply every definition in ``path``; ``allow``: accept local source paths that do not exist yet."""
    entities, sets, loose = _read(store, path)
    if not (entities or sets or loose):
        raise InvalidDefinition(f"{path}: holds no definitions (no {', '.join(TOP_LEVEL)}); nothing to apply",
                                field="path")
    rec = _Recorder()
    for item in entities:
        with _context(item, "entity"):
            row = s.scalar(select(EntityRow).where(EntityRow.name == item.name))
            if row is None:
                rec.add("entity", item.name, None, repo.create_entity(s, item.body, actor=actor)["version"], item)
            else:
                old, before = dict(row.spec), row.version
                new = Entity.from_dict(item.body).to_dict()
                out = repo.update_entity(s, row.id, _full_changes(new, old), actor=actor)
                rec.add("entity", item.name, before, out["version"], item, repo.diff(old, new))
    for item in sets:
        with _context(item, "feature set"):
            _apply_set(s, store, item, actor, rec, allow)
    for item in loose:
        with _context(item, "feature"):
            set_ref = item.body.get("feature_set", item.body.get("feature_set_id"))
            set_row = repo.find_set(s, set_ref)
            _apply_features(s, store, set_row, _parse_features([item], set_row.name), actor, rec, allow)
    return rec.results


def _apply_set(s: Session, store: "StoreContext", item: _Item, actor: str, rec: _Recorder, allow: bool) -> None:
    row = s.scalar(select(FeatureSetRow).where(FeatureSetRow.name == item.name))
    if row is None:
        _parse_features(item.features, item.name)  # first, so an error names its own file and line
        body = {**item.body, "features": [{**f.body, "feature_set": item.name} for f in item.features]}
        try:
            out = repo.create_feature_set(s, body, actor=actor, store=store, allow_missing_sources=allow)
        except FStoreError as exc:
            raise _with_feature_location(exc, item) from None
        rec.add("feature_set", item.name, None, out["version"], item)
        for f in item.features:
            rec.add("feature", f"{item.name}:{f.name}", None, 1, f)
        return
    before, old = row.version, repo.public_spec(row.spec)  # as answers show it: secrets redacted, kept on update
    new = FeatureSet.from_dict(item.body).to_dict()
    parsed = _parse_features(item.features, item.name)
    # the file's features are checked with the set (one file may repair several)
    pending = {name: feature for name, (feature, _) in parsed.items()}
    out = repo.update_feature_set(s, row.id, _full_changes(new, old), actor=actor, store=store, pending=pending,
                                  allow_missing_sources=allow)
    spec_changes = repo.diff(old, {k: out[k] for k in old})
    entry = rec.add("feature_set", item.name, before, out["version"], item, spec_changes)
    _apply_features(s, store, row, parsed, actor, rec, allow)
    # a feature's change also makes a new set version: report the version the set ends at
    if row.version != before:
        entry.update(action="update", version=row.version)


def _parse_features(items: list[_Item], set_name: str) -> dict[str, tuple[Feature, _Item]]:
    """The features written in a set's file, parsed (an error names its file and line)."""
    parsed: dict[str, tuple[Feature, _Item]] = {}
    for item in items:
        with _context(item, "feature"):
            parsed[item.name] = (Feature.from_dict(item.body, feature_set=set_name), item)
    return parsed


def _apply_features(s: Session, store: "StoreContext", set_row: FeatureSetRow, parsed: dict[str, tuple[Feature, _Item]],
                    actor: str, rec: _Recorder, allow: bool) -> None:
    """Create or update a set's features (``_parse_features``), dependencies first."""
    pending = {name: feature for name, (feature, _) in parsed.items()}
    existing = {r.name: r for r in s.scalars(select(FeatureRow).where(FeatureRow.feature_set_id == set_row.id))}
    others = [Feature.from_dict(r.spec) for name, r in existing.items() if name not in parsed]
    try:
        order = [f.name for f in composite_order(others + [f for f, _ in parsed.values()]) if f.name in parsed]
    except InvalidDefinition:
        order = list(parsed)  # the failing feature's own step reports the problem with its location
    for name in order:
        feature, item = parsed[name]
        with _context(item, "feature"):
            row = existing.get(name)
            if row is None:
                out = repo.create_feature(s, {**feature.to_dict(), "feature_set": set_row.name}, actor=actor, store=store,
                                          pending=pending, allow_missing_sources=allow)
                rec.add("feature", f"{set_row.name}:{name}", None, out["version"], item)
            else:
                old, before = dict(row.spec), row.version
                new = feature.to_dict()
                out = repo.update_feature(s, row.id, _full_changes(new, old), actor=actor, store=store, pending=pending,
                                          allow_missing_sources=allow)
                rec.add("feature", f"{set_row.name}:{name}", before, out["version"], item, repo.diff(old, new))


class _context:
    """Re-raise an ``FStoreError`` with the file, line and object it came from."""

    def __init__(self, item: _Item, what: str) -> None:
        self.item, self.what = item, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None and isinstance(exc, FStoreError) and not getattr(exc, "_located", False):
            located = type(exc)(f"{self.item.where}: {self.what} {self.item.name}: {exc.message}", field=exc.field)
            located._located = True
            raise located from None
        return False


def _with_feature_location(exc: FStoreError, item: _Item) -> FStoreError:
    """Name the inline feature at fault when a new set's feature is refused."""
    for f in item.features:  # the library's messages name a feature as "feature NAME"
        if re.search(rf"\bfeature {re.escape(f.name)}\b", exc.message):
            located = type(exc)(f"{f.where}: feature {item.name}:{f.name}: {exc.message}", field=exc.field)
            located._located = True
            return located
    return exc


def _summary(results: list[dict], applied: bool) -> dict:
    counts = {action: sum(1 for r in results if r["action"] == action) for action in ("create", "update", "unchanged")}
    return {"applied": applied, "changes": results, "summary": counts}


def describe(result: dict) -> str:
    """The result as lines a person reads: one per object, then the counts."""
    lines = []
    for change in result["changes"]:
        action = {"create": "create", "update": f"update -> v{change['version']}", "unchanged": "unchanged"}[change["action"]]
        detail = f"  ({', '.join(change['changes'])})" if change.get("changes") else ""
        lines.append(f"  {action:<16} {change['kind']:<12} {change['name']}{detail}")
    n = result["summary"]
    if result["applied"]:
        lines.append(f"applied: {n['create']} created, {n['update']} updated, {n['unchanged']} unchanged")
    else:
        lines.append(f"plan: {n['create']} to create, {n['update']} to update, {n['unchanged']} unchanged")
    return "\n".join(lines)


def plan(store: "StoreContext", path: str | Path, *, allow_missing_sources: bool = False) -> dict:
    """What ``apply`` would do with these files: the same steps in a transaction that is rolled back."""
    with Session(store.engine, expire_on_commit=False) as s:
        transaction = s.begin()
        try:
            return _summary(_run(s, store, path, actor="plan", allow=allow_missing_sources), applied=False)
        finally:
            transaction.rollback()


def apply(store: "StoreContext", path: str | Path, *, actor: str = "", allow_missing_sources: bool = False) -> dict:
    """Apply the files in one transaction: all of it, or (on any error) nothing.

    A local source path that does not exist is refused unless ``allow_missing_sources``."""
    with store.transaction() as s:
        return _summary(_run(s, store, path, actor=actor, allow=allow_missing_sources), applied=True)
