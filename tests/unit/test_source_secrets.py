"""fstore.definitions.secrets without a registry: which options are secrets, sealing, redaction, references, keys."""
from __future__ import annotations

import stat

import pytest
from cryptography.fernet import Fernet

from fstore.definitions.model import Source
from fstore.core.errors import InvalidDefinition
from fstore.definitions.secrets import REDACTED, SecretBox, is_secret, redact_changes, redact_spec


def spec(options: dict) -> dict:
    return {"name": "s", "source": {"path": "/x", "format": "parquet", "options": options}}


@pytest.mark.parametrize(("name", "secret"), [
    ("password", True), ("sfPassword", True), ("fs.s3a.secret.key", True), ("fs.s3a.access.key", True),
    ("sasToken", True), ("credentials", True), ("api_key", True), ("Authorization", True), ("pwd", True),
    ("sep", False), ("header", False), ("inferSchema", False), ("endpoint", False), ("mergeSchema", False),
])
def test_which_option_names_are_secrets(name, secret):
    assert is_secret(name) is secret


def test_sealed_values_open_only_with_the_key_and_rotation_keeps_old_ones():
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    sealed = SecretBox(keys=old).seal_spec(spec({"password": "p4ss", "sep": ";", "token": "${FSTORE_SOURCE_T}"}))
    options = sealed["source"]["options"]
    assert options["password"].startswith("fernet:") and "p4ss" not in str(sealed)
    assert options["sep"] == ";" and options["token"] == "${FSTORE_SOURCE_T}"  # references are stored as written
    assert SecretBox(keys=f"{new},{old}").reveal_spec(sealed)["source"]["options"]["password"] == "p4ss"
    with pytest.raises(InvalidDefinition, match="another key"):
        SecretBox(keys=new).reveal_spec(sealed)
    with pytest.raises(InvalidDefinition, match="FSTORE_SECRET_KEY"):
        SecretBox().reveal_spec(sealed)
    with pytest.raises(InvalidDefinition, match="FSTORE_SECRET_KEY"):
        SecretBox().seal_spec(spec({"password": "p4ss"}))


def test_a_key_file_is_created_private_once_and_reused(tmp_path):
    path = tmp_path / "registry" / "secret.key"
    first = SecretBox(key_file=path).seal_spec(spec({"password": "p4ss"}))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text()
    assert SecretBox(key_file=path).reveal_spec(first)["source"]["options"]["password"] == "p4ss"
    assert path.read_text() == key and sorted(p.name for p in path.parent.iterdir()) == ["secret.key"]
    assert SecretBox(key_file=tmp_path / "none.key").reveal_spec(spec({"sep": ";"})) == spec({"sep": ";"})
    assert not (tmp_path / "none.key").exists()  # reading never creates a key


def test_redaction_covers_stored_plain_and_legacy_values_and_diffs():
    stored = spec({"password": "fernet:abc", "secret": "legacy-clear", "token": "${FSTORE_SOURCE_T}", "sep": ";"})
    assert redact_spec(stored)["source"]["options"] == {"password": REDACTED, "secret": REDACTED,
                                                         "token": "${FSTORE_SOURCE_T}", "sep": ";"}
    changes = [{"field": "source", "old": stored["source"], "new": {"options": {"password": "new-clear"}}},
               {"field": "description", "old": "a", "new": "b"}]
    shown = redact_changes(changes)
    assert "legacy-clear" not in str(shown) and "new-clear" not in str(shown) and shown[1] == changes[1]


def test_references_resolve_only_for_allowed_variables(monkeypatch):
    monkeypatch.setenv("FSTORE_SOURCE_PW", "from-env")
    monkeypatch.setenv("DATABASE_URL", "postgresql://admin:pw@db/fs")
    box = SecretBox(env_allow=("FSTORE_SOURCE_*",))
    source = Source(path="/x", options={"password": "${FSTORE_SOURCE_PW}", "url": "jdbc:x?p=${FSTORE_SOURCE_PW}"})
    assert box.resolve_source(source, feature_set="s").options == {"password": "from-env", "url": "jdbc:x?p=from-env"}
    with pytest.raises(InvalidDefinition, match="SOURCE_ENV_ALLOW"):
        box.resolve_source(Source(path="/x", options={"url": "${DATABASE_URL}"}), feature_set="s")
    with pytest.raises(InvalidDefinition, match="SOURCE_ENV_ALLOW"):
        box.check_plain(spec({"url": "${DATABASE_URL}"}))
    with pytest.raises(InvalidDefinition, match="redacted"):
        box.check_plain(spec({"password": REDACTED}))
    box.check_plain(spec({"password": "${FSTORE_SOURCE_PW}"}))


def test_keep_redacted_takes_the_current_value():
    box = SecretBox()
    kept = box.keep_redacted(spec({"password": REDACTED, "sep": ","}), spec({"password": "p4ss", "sep": ";"}))
    assert kept["source"]["options"] == {"password": "p4ss", "sep": ","}
