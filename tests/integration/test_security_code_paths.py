"""Issue #20, parts 1 and 3: what a definition or request may import, read and write, tried as an attacker.

Each attack goes through the real app (Flask test client, keys with ``write_registry`` /
``materialize`` / ``serve_historical``), the CLI's ``apply``, or a run, on both engines where the
engines differ. A python module the settings do not allow is refused before it is imported (a
module written here that creates a marker file at import time proves it); a path outside
SOURCE_ROOTS or inside fstore's own files is refused before it is opened; no error body carries
a line of ``/etc/passwd``.
"""
from __future__ import annotations

import os
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from fstore.api import create_app
from fstore.core.errors import InvalidDefinition
from test_security_support import headers, make_keys, seed

PASSWD_LINES = [line for line in Path("/etc/passwd").read_text().splitlines() if line.strip()]
MARKER_MODULE = "evil_marker_features"


@pytest.fixture()
def marker(tmp_path, monkeypatch):
    """A module on sys.path (tmp_path/mods) that writes ``tmp_path/imported`` when imported."""
    mods = tmp_path / "mods"
    mods.mkdir()
    flag = tmp_path / "imported"
    (mods / f"{MARKER_MODULE}.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        Path({str(flag)!r}).write_text("imported")

        def run(df):
            return df["amount"] * 2
    """))
    monkeypatch.syspath_prepend(str(mods))
    sys.modules.pop(MARKER_MODULE, None)
    yield flag
    sys.modules.pop(MARKER_MODULE, None)


@pytest.fixture()
def events(tmp_path) -> str:
    """A small Parquet source inside SOURCE_ROOTS (the test's tmp_path)."""
    folder = tmp_path / "events"
    folder.mkdir()
    pd.DataFrame({"user_id": [1, 2, 1], "ts": [datetime(2024, 1, 1), datetime(2024, 1, 1, 6), datetime(2024, 1, 2)],
                  "amount": [1.0, 2.0, 3.0]}).astype({"ts": "datetime64[us]"}).to_parquet(folder / "part-0.parquet")
    return str(folder)


@pytest.fixture()
def attacked(settings, on_engine, tmp_path):
    """A store with authentication on, on the test's engine, and its app, client and keys."""
    store = on_engine(settings.with_(auth_enabled=True), auto_upgrade=True)
    seed(store, str(tmp_path))
    app = create_app(store=store)
    yield store, app.test_client(), make_keys(store)
    app.extensions["fstore_security"].usage.stop()
    store.close()


def _no_passwd(text: str) -> None:
    leaked = [line for line in PASSWD_LINES if line in text]
    assert not leaked, f"an error body carries a line of /etc/passwd: {leaked[0]!r}"


def _feature_set(name: str, path: str, *, fmt: str = "csv", ts: str = "ts", **source) -> dict:
    return {"name": name, "entities": ["user"],
            "source": {"path": path, "format": fmt, "event_timestamp_column": ts, **source},
            "features": [{"name": "x", "data_type": "string", "transformation": "CAST(1 AS STRING)"}]}


# -- part 1: python features ------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["subprocess:getoutput", "os:system", f"{MARKER_MODULE}:run",
                                  f"{MARKER_MODULE}.sub:run", "fstore.examplesevil:run", "builtins:eval"])
def test_a_python_feature_from_a_module_not_allowed_is_refused_before_it_is_imported(attacked, marker, spec):
    store, client, keys = attacked
    h = headers(keys["write_registry"])
    module = spec.split(":")[0]
    response = client.post("/api/v1/features", headers=h, json={
        "feature_set": "payments", "name": "pwn", "data_type": "string", "python": spec})
    assert response.status_code == 422, response.get_json()
    message = response.get_json()["error"]["message"]
    assert f"python module {module!r} is not allowed" in message and "PYTHON_FEATURE_MODULES" in message
    inline = client.post("/api/v1/feature-sets", headers=h, json={
        "name": "pwned", "entities": ["user"],
        "features": [{"name": "pwn", "data_type": "string", "python": spec}]})
    assert inline.status_code == 422 and "PYTHON_FEATURE_MODULES" in inline.get_json()["error"]["message"]
    assert not marker.exists() and MARKER_MODULE not in sys.modules  # never imported
    assert "pwn" not in [f["name"] for f in store.list_features(feature_set="payments")["items"]]


def test_an_allowed_module_is_imported_and_a_name_it_merely_imported_is_refused(settings, on_engine, marker, events):
    """The other side of the test above: allowed, the marker module is imported (so the marker proves
    something); a callable the allowed module only imported (``os.system`` in it) is refused."""
    store = on_engine(settings.with_(python_feature_modules=(MARKER_MODULE,)), auto_upgrade=True)
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_feature_set({"name": "ok", "entities": ["user"],
                              "source": {"path": events, "event_timestamp_column": "ts"},
                              "features": [{"name": "dbl", "data_type": "float", "python": f"{MARKER_MODULE}:run"}]})
    assert marker.exists() and MARKER_MODULE in sys.modules
    with pytest.raises(InvalidDefinition, match="defined in module 'pathlib'"):
        store.create_feature_set({"name": "bad", "entities": ["user"],
                                  "features": [{"name": "p", "data_type": "string", "python": f"{MARKER_MODULE}:Path"}]})
    store.close()


def test_the_cli_apply_refuses_a_python_feature_from_a_module_not_allowed(settings, tmp_path, marker):
    defs = tmp_path / "defs.yaml"
    defs.write_text(textwrap.dedent(f"""
        entities:
          - {{name: user, join_keys: [user_id], value_type: int}}
        feature_sets:
          - name: pwned
            entities: [user]
            features:
              - {{name: a, data_type: string, python: "os:system"}}
              - {{name: b, data_type: float, python: "{MARKER_MODULE}:run"}}
    """))
    from fstore.cli import main

    env = {"STORAGE_PATH": settings.storage_path, "DATABASE_URL": settings.database_url, "SOURCE_ROOTS": str(tmp_path),
           "PYTHON_FEATURE_MODULES": "fstore.definitions.examples", "COMPUTE_ENGINE": "duckdb"}
    result = CliRunner().invoke(main, ["apply", str(defs)], env=env)
    assert result.exit_code == 2, result.output
    assert "python module 'os' is not allowed" in result.output and "PYTHON_FEATURE_MODULES" in result.output
    assert not marker.exists() and MARKER_MODULE not in sys.modules


def test_a_python_feature_registered_before_is_refused_at_run_time(settings, on_engine, marker, events):
    """A registry written under a looser setting (or by hand) gets no pass: the run checks the module
    again before importing it."""
    loose = on_engine(settings.with_(python_feature_modules=(MARKER_MODULE,)), auto_upgrade=True)
    loose.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    loose.create_feature_set({"name": "py", "entities": ["user"], "online_enabled": False,
                              "source": {"path": events, "event_timestamp_column": "ts"},
                              "features": [{"name": "dbl", "data_type": "float", "python": f"{MARKER_MODULE}:run"}]})
    loose.close()
    marker.unlink()
    sys.modules.pop(MARKER_MODULE, None)
    strict = on_engine(settings, auto_upgrade=True)
    with pytest.raises(InvalidDefinition, match=f"python module '{MARKER_MODULE}' is not allowed"):
        strict.materialize("py", datetime(2024, 1, 1), datetime(2024, 1, 3))
    assert not marker.exists() and MARKER_MODULE not in sys.modules
    strict.close()


# -- part 3: source paths ---------------------------------------------------------------------

def _attacks(settings, tmp_path: Path) -> list[tuple[str, str, dict]]:
    """(label, source path, extra source fields) an attacker might name; every one must be refused."""
    inside_link = tmp_path / "looks_inside"
    inside_link.symlink_to("/etc/passwd")
    dir_link = tmp_path / "etc_link"
    dir_link.symlink_to("/etc")
    holder = tmp_path / "holder"
    holder.mkdir()
    (holder / "part-0.csv").symlink_to("/etc/passwd")
    up = "../" * len(tmp_path.parts)
    registry = settings.database_url.split("sqlite:///", 1)[1]
    return [
        ("absolute", "/etc/passwd", {}),
        ("dot-dot", f"{tmp_path}/{up}etc/passwd", {}),
        ("relative to the working folder", f"{up}etc", {}),
        ("file URI", "file:///etc/passwd", {}),
        ("file URI with a host", "file://localhost/etc/passwd", {}),
        ("symlink inside the root", str(inside_link), {}),
        ("through a linked folder", f"{dir_link}/passwd", {}),
        ("folder holding a link out", str(holder), {}),
        ("glob", f"{tmp_path}/{{events,{up}etc}}", {}),
        ("registry", registry, {}),
        ("registry WAL", registry + "-wal", {}),
        ("the store folder (holds the registry)", settings.storage_path, {}),
        ("online store", str(settings.embedded_online_path), {}),
        ("offline staging", f"{settings.data_root}/offline/payments/_staging", {}),
        ("a path option", str(tmp_path / "events"), {"options": {"path": "/etc/passwd"}}),
    ]


def test_sources_outside_the_roots_or_inside_fstore_are_refused_through_the_api(attacked, tmp_path, events,
                                                                              monkeypatch):
    store, client, keys = attacked
    monkeypatch.chdir(tmp_path)
    h = headers(keys["write_registry"])
    attacks = _attacks(store.settings, tmp_path)
    for i, (label, path, extra) in enumerate(attacks):
        response = client.post("/api/v1/feature-sets", headers=h, json=_feature_set(f"a{i}", path, **extra))
        body = response.get_data(as_text=True)
        assert response.status_code == 422, (label, body)
        error = response.get_json()["error"]
        assert error["field"] in ("source.path", "source.options") and "not allowed" in error["message"], (label, error)
        _no_passwd(body)
        # the same through an update of an existing set's source
        change = client.patch("/api/v1/feature-sets/payments", headers=h,
                              json={"source": {"path": path, "format": "csv", "event_timestamp_column": "ts", **extra}})
        assert change.status_code == 422, (label, change.get_data(as_text=True))
        _no_passwd(change.get_data(as_text=True))
    assert store.get_feature_set("payments")["source"]["path"].endswith("payments_missing")
    ok = client.post("/api/v1/feature-sets", headers=h, json={
        "name": "fine", "entities": ["user"], "source": {"path": "events", "event_timestamp_column": "ts"},
        "features": [{"name": "amt", "data_type": "float", "transformation": "amount"}]})
    assert ok.status_code == 201, ok.get_json()  # a relative path inside the root is resolved and allowed


def test_the_cli_apply_refuses_a_source_outside_the_roots(settings, tmp_path):
    defs = tmp_path / "defs"
    defs.mkdir()
    (defs / "sets.yaml").write_text(textwrap.dedent("""
        entities:
          - {name: user, join_keys: [user_id], value_type: int}
        feature_sets:
          - name: stolen
            entities: [user]
            source: {path: "file:///etc/passwd", format: csv, event_timestamp_column: "root"}
            features:
              - {name: x, data_type: string, transformation: "CAST(1 AS STRING)"}
    """))
    from fstore.cli import main

    env = {"STORAGE_PATH": settings.storage_path, "DATABASE_URL": settings.database_url, "SOURCE_ROOTS": str(tmp_path)}
    result = CliRunner().invoke(main, ["apply", str(defs)], env=env)
    assert result.exit_code == 2 and "source.path 'file:///etc/passwd' is not allowed" in result.output, result.output
    _no_passwd(result.output)


def test_a_source_registered_before_is_refused_at_run_time(settings, on_engine, tmp_path, events):
    """Registered under wider roots, then run under narrower ones: the run refuses before reading."""
    wide = on_engine(settings, auto_upgrade=True)
    wide.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    wide.create_feature_set({"name": "s", "entities": ["user"], "online_enabled": False,
                             "source": {"path": events, "event_timestamp_column": "ts"},
                             "features": [{"name": "amt", "data_type": "float", "transformation": "amount"}]})
    wide.close()
    narrow = on_engine(settings.with_(source_roots=(str(tmp_path / "elsewhere"),)), auto_upgrade=True)
    with pytest.raises(InvalidDefinition, match="source.path .* is not allowed: it is outside"):
        narrow.materialize("s", datetime(2024, 1, 1), datetime(2024, 1, 3))
    assert narrow.list_runs("s")["items"][0]["status"] == "failed"
    narrow.close()


def test_an_apply_error_does_not_quote_the_source_rows(attacked, tmp_path):
    """A text event time column that is not a time: the message names the column, never a value."""
    store, client, keys = attacked
    secret = "s3cr3t-row-value"
    path = tmp_path / "texts.csv"
    path.write_text("user_id,ts,amount\n" + "".join(f"{i},{secret}-{i},1.0\n" for i in range(5)))
    response = client.post("/api/v1/feature-sets", headers=headers(keys["write_registry"]),
                           json=_feature_set("texts", str(path)))
    assert response.status_code == 422
    assert "holds text that is not a time" in response.get_json()["error"]["message"]
    assert secret not in response.get_data(as_text=True)


# -- batch retrieval: entity source and output --------------------------------------------------

def test_batch_output_and_entity_source_are_confined(ops_store_spark, tmp_path, events):
    store, client, keys = ops_store_spark
    h = headers(keys["serve_historical"])
    entities = tmp_path / "entities.parquet"
    pd.DataFrame({"user_id": [1], "event_timestamp": [datetime(2024, 1, 2)]}).to_parquet(entities)
    good = {"entity_source": {"path": str(entities)}, "features": ["payments:amount"]}
    cases = [
        ({**good, "output_path": "/tmp/fstore-batch-escape"}, "output_path", "outside"),
        ({**good, "output_path": f"{tmp_path}/{'../' * len(tmp_path.parts)}tmp/fstore-batch-escape"}, "output_path",
         "outside"),
        ({**good, "output_path": f"{store.settings.data_root}/offline/payments_copy"}, "output_path", "offline store"),
        ({**good, "output_path": store.settings.database_url.split("sqlite:///", 1)[1] + "-journal"}, "output_path",
         "registry database"),
        ({**good, "entity_source": {"path": "/etc/passwd", "format": "csv"}, "output_path": str(tmp_path / "out")},
         "entity_source.path", "outside"),
    ]
    for body, field, why in cases:
        response = client.post("/api/v1/serving/batch", headers=h, json=body)
        assert response.status_code == 422, response.get_data(as_text=True)
        error = response.get_json()["error"]
        assert error["field"] == field and why in error["message"], error
        _no_passwd(response.get_data(as_text=True))
    assert not os.path.exists("/tmp/fstore-batch-escape")
    with store.transaction() as s:
        from sqlalchemy import func, select

        from fstore.registry.models import JobRow

        assert s.scalar(select(func.count()).select_from(JobRow)) == 0  # nothing was recorded


@pytest.fixture()
def ops_store_spark(settings, spark, tmp_path):
    from fstore.store import FeatureStore

    store = FeatureStore(settings.with_(auth_enabled=True), auto_upgrade=True).use_spark(spark)
    seed(store, str(tmp_path))
    app = create_app(store=store)
    yield store, app.test_client(), make_keys(store)
    app.extensions["fstore_security"].usage.stop()
    store.close()
