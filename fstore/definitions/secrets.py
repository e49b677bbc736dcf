"""Secrets in a source's ``options``: encrypted at rest, redacted on the way out, resolved only to compute.

Which options are secrets: those whose name contains ``key``, ``secret``, ``passw``,
``pwd``, ``token``, ``credential`` or ``auth`` (case-insensitive; ``fs.s3a.secret.key``,
``password``, ``sfPassword``, ``sasToken``...). Over-matching costs only that the
value is not shown back; under-matching would leak it.

Three forms of an option value:

* **plain** — what a user writes, what the engine reads. Lives in memory only.
* **stored** — the registry's form: a secret becomes ``fernet:<token>`` (Fernet from
  ``cryptography``: AES-128-CBC + HMAC-SHA256), everything else stays as written.
  A secret stored in clear by an older version is still read (and sealed on the
  set's next change).
* **public** — every answer (REST, CLI, versions, diffs): a secret becomes
  ``<redacted>``. Sending ``<redacted>`` back in a change keeps the stored value,
  so a definition read, edited and written back does not lose its secret.

A value may instead name an environment variable, ``${FSTORE_SOURCE_DB_PASSWORD}``:
it is stored and shown as written and replaced only when a feature set version is
loaded to compute (``resolve_source``), and only for the variables the operator
allows (``SOURCE_ENV_ALLOW``, default ``FSTORE_SOURCE_*``), so a registry writer
cannot make the engine read ``DATABASE_URL`` or ``S3_SECRET_KEY`` into a source of
their choosing. The environment here is data the definition asks for, not
configuration, which is why this module, not ``Settings``, reads it.

The key: ``FSTORE_SECRET_KEY`` (comma-separated Fernet keys: the first encrypts, all
decrypt, for rotation). Unset with a SQLite registry, a key is generated on first use
into ``secret.key`` beside the registry file (mode 0600). Unset with PostgreSQL, a
secret is refused (write it as a ``${...}`` reference, or set the key).
"""
from __future__ import annotations

import fnmatch
import os
import re
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from fstore.core.errors import InvalidDefinition

if TYPE_CHECKING:
    from fstore.definitions.model import Source
    from fstore.core.settings import Settings

SECRET_NAME = re.compile(r"key|secret|passw|pwd|token|credential|auth", re.IGNORECASE)
REDACTED = "<redacted>"
SEALED = "fernet:"
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
KEY_VARIABLE = "FSTORE_SECRET_KEY"


def is_secret(option: str) -> bool:
    """True when a source option of this name holds a secret (see the module docstring)."""
    return bool(SECRET_NAME.search(option))


def _is_reference(value: str) -> bool:
    """A value that is exactly one ``${NAME}`` reference: not itself a secret, stored and shown as written."""
    return bool(ENV_REF.fullmatch(value))


def _options(spec: Mapping[str, Any]) -> dict | None:
    source = spec.get("source") if isinstance(spec, Mapping) else None
    options = source.get("options") if isinstance(source, Mapping) else None
    return options if isinstance(options, dict) and options else None


def _with_options(spec: Mapping[str, Any], options: dict) -> dict:
    return {**spec, "source": {**spec["source"], "options": options}}


def redact_options(options: Mapping[str, Any]) -> dict:
    """Options as every answer shows them: secrets (stored, plain or legacy clear) replaced by ``<redacted>``."""
    return {k: (REDACTED if is_secret(k) and isinstance(v, str) and not _is_reference(v) else v)
            for k, v in options.items()}


def redact_spec(spec: Any) -> Any:
    """A feature set spec (stored or plain) safe to show: its source's secret options redacted."""
    options = _options(spec) if isinstance(spec, Mapping) else None
    return _with_options(spec, redact_options(options)) if options else spec


def redact_changes(changes: list) -> list:
    """A version's change list safe to show: a changed ``source`` has its secrets redacted on both sides.

    Applied when reading too, so changes recorded before secrets were sealed do not show them.
    """
    out = []
    for change in changes or ():
        if isinstance(change, Mapping) and change.get("field") == "source":
            change = {**change, "old": _redact_source(change.get("old")), "new": _redact_source(change.get("new"))}
        out.append(change)
    return out


def _redact_source(source: Any) -> Any:
    return redact_spec({"source": source})["source"] if isinstance(source, Mapping) else source


class SecretBox:
    """Seals and opens the secret options of one deployment (its key from ``Settings``)."""

    def __init__(self, *, keys: str = "", key_file: Path | None = None, env_allow: tuple[str, ...] = ()) -> None:
        self._keys = keys
        self._key_file = key_file
        self.env_allow = tuple(env_allow)
        self._fernet = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: "Settings") -> "SecretBox":
        return cls(keys=settings.secret_key, key_file=settings.secret_key_file, env_allow=settings.source_env_allow)

    # -- the key ---------------------------------------------------------------------------------

    def _cipher(self, *, create: bool):
        """The MultiFernet of the configured keys (or of the key file); None when there is none to use."""
        if self._fernet is not None:
            return self._fernet
        from cryptography.fernet import Fernet, MultiFernet

        with self._lock:
            if self._fernet is None:
                keys = [k for k in self._keys.split(",") if k]
                if not keys and self._key_file is not None:
                    key = _read_or_create_key(self._key_file, create=create)
                    keys = [key] if key else []
                if keys:
                    self._fernet = MultiFernet([Fernet(k.encode("ascii")) for k in keys])
        return self._fernet

    def _no_key(self, what: str) -> InvalidDefinition:
        return InvalidDefinition(f"{what}: no key to encrypt or decrypt source secrets; set {KEY_VARIABLE} (a Fernet "
                                 "key, the same in every process), or write the value as a ${FSTORE_SOURCE_...} "
                                 "environment reference", field=KEY_VARIABLE)

    # -- write: plain -> stored ------------------------------------------------------------------

    def seal_spec(self, spec: dict) -> dict:
        """A plain feature set spec in its stored form: secret option values encrypted."""
        options = _options(spec)
        if not options:
            return spec
        sealed = {}
        for name, value in options.items():
            if is_secret(name) and isinstance(value, str) and not _is_reference(value):
                cipher = self._cipher(create=True)
                if cipher is None:
                    raise self._no_key(f"source option {name!r} holds a secret")
                value = SEALED + cipher.encrypt(value.encode("utf-8")).decode("ascii")
            sealed[name] = value
        return _with_options(spec, sealed)

    def check_plain(self, spec: Mapping[str, Any]) -> None:
        """Refuse what a definition may not write: ``<redacted>`` as a value, a reference outside the allow-list."""
        for name, value in (_options(spec) or {}).items():
            if value == REDACTED:
                raise InvalidDefinition(f"source option {name!r} is {REDACTED}: give the value, or a ${{NAME}} "
                                        "environment reference", field=f"source.options.{name}")
            for variable in ENV_REF.findall(str(value)):
                if not self.env_allowed(variable):
                    raise InvalidDefinition(
                        f"source option {name!r} names the environment variable {variable}, which is not one a "
                        f"source may read (SOURCE_ENV_ALLOW={','.join(self.env_allow) or 'none'})",
                        field=f"source.options.{name}")

    def env_allowed(self, variable: str) -> bool:
        return any(fnmatch.fnmatchcase(variable, pattern) for pattern in self.env_allow)

    # -- read: stored -> plain -------------------------------------------------------------------

    def reveal_spec(self, spec: dict) -> dict:
        """A stored spec in plain form (secrets decrypted, ``${...}`` references left as written)."""
        options = _options(spec)
        if not options:
            return spec
        return _with_options(spec, {k: self._open(k, v) for k, v in options.items()})

    def keep_redacted(self, changes: dict, plain: Mapping[str, Any]) -> dict:
        """A change whose source options hold ``<redacted>`` keeps the current (plain) value of those options."""
        new_options = _options(changes)
        old_options = _options(plain) or {}
        if not new_options:
            return changes
        kept = {k: (old_options.get(k, v) if v == REDACTED else v) for k, v in new_options.items()}
        return _with_options(changes, kept)

    def _open(self, name: str, value: Any) -> Any:
        if not (isinstance(value, str) and value.startswith(SEALED)):
            return value  # not a secret, a reference, or a secret stored in clear before sealing existed
        cipher = self._cipher(create=False)
        if cipher is None:
            raise self._no_key(f"source option {name!r} is stored encrypted")
        from cryptography.fernet import InvalidToken

        try:
            return cipher.decrypt(value[len(SEALED):].encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise InvalidDefinition(f"source option {name!r} was encrypted with another key than {KEY_VARIABLE} "
                                    "holds (keep the old key after the new one while rotating)",
                                    field=KEY_VARIABLE) from None

    def resolve_source(self, source: "Source | None", *, feature_set: str) -> "Source | None":
        """The source as the engine must read it: secrets decrypted, allowed ``${NAME}`` references replaced."""
        if source is None or not source.options:
            return source
        resolved = {}
        for name, value in source.options.items():
            value = self._open(name, value)
            resolved[name] = ENV_REF.sub(lambda m, n=name: self._variable(m.group(1), n, feature_set), value)
        return replace(source, options=resolved)

    def _variable(self, variable: str, option: str, feature_set: str) -> str:
        where = f"source option {option!r} of feature set {feature_set}"
        if not self.env_allowed(variable):
            raise InvalidDefinition(f"{where} names {variable}, which SOURCE_ENV_ALLOW does not allow",
                                    field=f"source.options.{option}")
        value = os.environ.get(variable)
        if value is None:
            raise InvalidDefinition(f"{where} names the environment variable {variable}, which is not set in this "
                                    "process", field=f"source.options.{option}")
        return value


def _read_or_create_key(path: Path, *, create: bool) -> str | None:
    """The key in ``path``; created (mode 0600, never replaced) when absent and ``create``."""
    from cryptography.fernet import Fernet

    try:
        return path.read_text(encoding="ascii").strip() or None
    except FileNotFoundError:
        if not create:
            return None
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole to a private temporary file, then linked into place: a second process either wins the link
    # or reads the complete key of the one that did, never a half-written file.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(Fernet.generate_key() + b"\n")
    try:
        os.link(temporary, path)
        import logging

        logging.getLogger(__name__).warning("generated the source-secret key %s (set FSTORE_SECRET_KEY to choose "
                                            "one; back this file up with the registry)", path)
    except FileExistsError:
        pass
    finally:
        os.unlink(temporary)
    return path.read_text(encoding="ascii").strip() or None
