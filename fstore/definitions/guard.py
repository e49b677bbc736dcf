"""What a definition or a request may make fstore import, read or write.

A key with ``write_registry`` names python functions and source paths; a batch retrieval
names an entity source and an output location. Unchecked, those are code execution
(``python: os:system``) and access to any file the server can open: ``/etc/passwd``, or
the SQLite registry itself (a process that opens and closes the registry file with
anything but SQLAlchemy drops SQLite's POSIX locks on it, and the next process may then
delete the write-ahead log the server still writes to). So:

- a python feature's module must fall under ``PYTHON_FEATURE_MODULES`` (a prefix on module
  boundaries: ``pkg.features`` allows ``pkg.features.x``, not ``pkg.featuresx``) *before*
  anything is imported, and the callable found must be defined there too (not a name the
  module imported, such as ``os.system``);
- a source path, a batch entity source or a batch output must resolve (real path: symlinks,
  ``..``, ``file:`` URIs and the working folder resolved) inside ``SOURCE_ROOTS`` and never
  reach fstore's own files: the SQLite registry and the embedded online store (with their
  ``-wal``/``-shm``/``-journal`` files), the run logs, and the hidden ``_``/``.`` entries of
  offline tables (staging folders, the Delta log). A folder that holds any of them is
  refused too, as is a folder holding a symbolic link that leads out of the roots, and a
  file that is a hard link to one of them. An
  offline table itself may be read as a source: chaining feature sets is legitimate.
  Outputs may not go into the offline store, the training sets or the logs either;
- glob characters are refused: Spark expands ``{a,../../x}``, which no check of the text
  can follow.

The checks run where definitions are accepted (apply, create, update) and again where the
engines read or write (a registry written before these checks, or by hand, gets no pass).
Nothing here opens a file: it resolves, stats and lists only.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlsplit

from fstore.core.errors import InvalidDefinition

if TYPE_CHECKING:
    from fstore.definitions.model import Source
    from fstore.core.settings import Settings

_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_GLOB = frozenset("*?[]{}\\")
_S3 = {"s3", "s3a", "s3n"}
_SQLITE_SIDE_FILES = ("", "-wal", "-shm", "-journal")


# --- python features -------------------------------------------------------------------------

def module_allowed(prefixes: tuple[str, ...], module: str) -> bool:
    """True when ``module`` is one of ``prefixes`` or inside one (on a dot, never mid-name)."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def check_python(settings: "Settings", spec: str, *, feature: str) -> tuple[str, str]:
    """``(module, function)`` of a ``module:function`` spec whose module the settings allow; checked
    before anything is imported."""
    module, _, name = spec.partition(":")
    if not _MODULE_RE.match(module) or not _NAME_RE.match(name):
        raise InvalidDefinition(f"feature {feature}: python {spec!r} must be 'module:function' (a dotted module name "
                                "and a function name)", field="python")
    if not module_allowed(settings.python_feature_modules, module):
        allowed = ", ".join(settings.python_feature_modules) or "none"
        raise InvalidDefinition(f"feature {feature}: python module {module!r} is not allowed; python features come only "
                                f"from the modules the PYTHON_FEATURE_MODULES setting names (now: {allowed})",
                                field="python")
    return module, name


def check_defined_in_allowed(settings: "Settings", func: Callable, spec: str, *, feature: str) -> None:
    """The callable must be defined under an allowed module, not merely imported into one."""
    home = getattr(func, "__module__", None)
    if not isinstance(home, str) or not module_allowed(settings.python_feature_modules, home):
        raise InvalidDefinition(f"feature {feature}: python {spec!r} is defined in module {home!r}, which the "
                                "PYTHON_FEATURE_MODULES setting does not allow", field="python")


# --- paths -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Place:
    """A location: ``scheme`` "" is the local file system (``path`` a real path), else a remote store."""

    scheme: str
    host: str
    path: str

    def inside(self, other: "Place") -> bool:
        """True when this location is ``other`` or below it (whole path segments)."""
        return (self.scheme, self.host) == (other.scheme, other.host) and \
            PurePosixPath(self.path).is_relative_to(PurePosixPath(other.path))


def _local(path: str) -> str:
    real = os.path.realpath(path)
    return "/" + real.lstrip("/")  # POSIX keeps a leading "//"; the file system does not care


def place(text: str, *, field: str) -> Place:
    """Where ``text`` points, resolved; refuses what cannot be resolved safely (globs, odd URIs)."""
    if not text or not text.strip() or any(c in _GLOB or ord(c) < 32 for c in text):
        raise InvalidDefinition(f"{field} {text!r} is not allowed: name a file or folder, without glob characters "
                                "(* ? [ ] { } \\) or control characters", field=field)
    scheme = _SCHEME_RE.match(text)
    if scheme is None:
        return Place("", "", _local(os.path.join(os.getcwd(), text)))
    parts = urlsplit(text)
    kind = parts.scheme.lower()
    if "%" in text or parts.query or parts.fragment or text.endswith(("?", "#")):
        raise InvalidDefinition(f"{field} {text!r} is not allowed: a URI with escapes, a query or a fragment",
                                field=field)
    if kind == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidDefinition(f"{field} {text!r} is not allowed: a file URI names an absolute local path "
                                    "(file:///folder/file)", field=field)
        return Place("", "", _local(parts.path))
    if not parts.netloc or not text[len(parts.scheme) + 1:].startswith("//"):
        raise InvalidDefinition(f"{field} {text!r} is not allowed: a remote location names its host or bucket "
                                f"({kind}://bucket/path)", field=field)
    segments = [s for s in parts.path.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise InvalidDefinition(f"{field} {text!r} is not allowed: '.' or '..' in a remote path", field=field)
    return Place("s3" if kind in _S3 else kind, parts.netloc.lower(), "/" + "/".join(segments))


def _root(text: str) -> Place:
    """A configured root or store location (trusted text: no refusal, same resolution)."""
    scheme = _SCHEME_RE.match(text)
    if scheme is None or scheme.group(1).lower() == "file":
        local = urlsplit(text).path if scheme is not None else os.path.join(os.getcwd(), text)
        return Place("", "", _local(local))
    parts = urlsplit(text)
    kind = parts.scheme.lower()
    return Place("s3" if kind in _S3 else kind, parts.netloc.lower(), "/" + "/".join(s for s in parts.path.split("/") if s))


@dataclass(frozen=True)
class _Own:
    """fstore's own locations for one settings object."""

    files: tuple[tuple[Place, str], ...]  # (place, what): refused inside and as an ancestor
    offline: tuple[Place, ...]            # the warm and cold offline stores: hidden entries below a table refused
    write_areas: tuple[tuple[Place, str], ...]  # outputs never go there


def _own(settings: "Settings") -> _Own:
    from sqlalchemy.engine import make_url

    files: list[tuple[Place, str]] = []
    if settings.is_sqlite:
        database = make_url(settings.database_url).database
        if database and database != ":memory:":
            files += [(_root(database + side), "the registry database") for side in _SQLITE_SIDE_FILES]
    online = str(settings.embedded_online_path)
    files += [(_root(online + side), "the embedded online store") for side in _SQLITE_SIDE_FILES]
    data_root = settings.data_root.rstrip("/")
    areas = [(_root(f"{data_root}/offline"), "the offline store"),
             (_root(f"{data_root}/training_sets"), "the training sets")]
    if settings.storage_backend == "local":
        files.append((_root(os.path.join(settings.storage_path, "logs")), "the run logs"))
    offline = [_root(f"{data_root}/offline")]
    if settings.cold_storage_path:  # the cold tier: read as the offline store is, written only by fstore
        offline.append(_root(settings.cold_storage_path))
        areas.append((offline[-1], "the cold offline store"))
    return _Own(files=tuple(files), offline=tuple(offline), write_areas=tuple(areas))


def _refuse(field: str, text: str, why: str) -> InvalidDefinition:
    # The message names what the caller gave, never what it resolved to (no paths of the server leak).
    return InvalidDefinition(f"{field} {text!r} is not allowed: {why}", field=field)


def _check_place(settings: "Settings", where: Place, text: str, *, field: str, own: _Own, writing: bool) -> None:
    roots = [_root(r) for r in settings.allowed_source_roots]
    if not any(where.inside(r) for r in roots):
        raise _refuse(field, text, "it is outside the locations this server reads and writes (the SOURCE_ROOTS "
                                   "setting)")
    for own_place, what in own.files:
        if where.inside(own_place) or own_place.inside(where):
            raise _refuse(field, text, f"it is or holds {what}, which fstore never reads or writes as data")
    for store in own.offline:
        if where.inside(store) and where != store:
            below = PurePosixPath(where.path).relative_to(PurePosixPath(store.path)).parts
            if any(p.startswith(("_", ".")) for p in below):
                raise _refuse(field, text, "it is inside an offline table's internal files (staging or log)")
    if writing:
        for area, what in own.write_areas:
            if where.inside(area) or area.inside(where):
                raise _refuse(field, text, f"it is inside {what}, which only fstore writes")


def _own_inodes(own: _Own) -> set[tuple[int, int]]:
    inodes = set()
    for own_place, _ in own.files:
        if own_place.scheme == "":
            try:
                st = os.stat(own_place.path)
            except OSError:
                continue
            inodes.add((st.st_dev, st.st_ino))
    return inodes


def _check_tree(settings: "Settings", top: str, text: str, *, field: str, own: _Own) -> None:
    """Every symbolic link under a local folder must stay where the folder may be (readers follow them).

    Only the directory entries are read (no stat per file: a source may hold many thousands of files);
    hard links inside a folder, which only someone with write access to the roots can make, are not looked for."""
    pending, seen = [top], {_local(top)}
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # unreadable: the reader fails on it too, reading nothing
        for entry in entries:
            if entry.is_symlink():
                target = Place("", "", _local(entry.path))
                try:
                    _check_place(settings, target, text, field=field, own=own, writing=False)
                except InvalidDefinition:
                    raise _refuse(field, text, "it holds a symbolic link that leads outside the allowed locations "
                                               "or to fstore's own files") from None
                if os.path.isdir(target.path) and target.path not in seen:  # readers follow it: so do we, once
                    seen.add(target.path)
                    pending.append(target.path)
                continue
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)


def check_read_path(settings: "Settings", text: str, *, field: str) -> None:
    """Refuse reading ``text`` unless it is inside SOURCE_ROOTS and clear of fstore's own files."""
    where = place(text, field=field)
    own = _own(settings)
    _check_place(settings, where, text, field=field, own=own, writing=False)
    if where.scheme == "":
        try:
            st = os.stat(where.path)
        except OSError:
            return  # nothing there: the reader says so
        if (st.st_dev, st.st_ino) in _own_inodes(own):
            raise _refuse(field, text, "it is a link to fstore's own files")
        if os.path.isdir(where.path):
            _check_tree(settings, where.path, text, field=field, own=own)


def check_write_path(settings: "Settings", text: str, *, field: str) -> None:
    """Refuse writing to ``text`` unless it is inside SOURCE_ROOTS and clear of everything fstore keeps."""
    _check_place(settings, place(text, field=field), text, field=field, own=_own(settings), writing=True)


def check_source(settings: "Settings", source: "Source") -> None:
    """A path source must be readable under the rules above; a ``path``/``paths`` reader option (which Spark
    would read instead of, or besides, the checked path) is refused."""
    if not source.path:
        return
    sneaky = sorted(k for k in source.options if str(k).strip().lower() in ("path", "paths"))
    if sneaky:
        raise InvalidDefinition(f"source option {sneaky[0]!r} is not allowed: the source's path is source.path",
                                field="source.options")
    check_read_path(settings, source.path, field="source.path")


__all__ = ["Place", "check_defined_in_allowed", "check_python", "check_read_path", "check_source", "check_write_path",
           "module_allowed", "place"]
