"""Issue #20, SQL: an attacker with a ``write_registry`` key tries to read server files and secrets through SQL.

Each attack is tried for real, on both engines: through the REST app (create a feature set, add a
feature, change a feature), through ``apply``, and by writing the definition straight into the
registry (a row from before the policy existed), then materializing. The answer is always a 422 /
``InvalidDefinition`` naming the refused function or construct, nothing is stored, and the secret
file's content appears nowhere. DuckDB's own lock (``enable_external_access=false``) is tested too.
"""
from __future__ import annotations

import json
import textwrap
import uuid
from datetime import datetime

import pandas as pd
import pytest
from sqlalchemy import func, select, update

from fstore.api import create_app
from fstore.core.errors import InvalidDefinition
from fstore.storage.offline import current_version
from fstore.registry.models import FeatureRow, FeatureSetRow, MaterializationRunRow
from fstore.store import FeatureStore
from test_security_support import headers, make_keys

START, END = datetime(2024, 1, 1), datetime(2024, 2, 1)

# (case, the transformation or the feature's SQL fields, what the error must name);
# {secret} is the secret file's path, {folder} the folder holding it and the source.
TRANSFORMATIONS = [
    ("read_text", "(SELECT max(content) FROM read_text('{secret}'))", "read_text"),
    ("read_csv_auto", "(SELECT max(column0) FROM read_csv_auto('{secret}', header = false))", "read_csv_auto"),
    ("read_blob", "(SELECT max(CAST(content AS VARCHAR)) FROM read_blob('{secret}'))", "read_blob"),
    ("read_parquet", "(SELECT max(amount) FROM read_parquet('{folder}/events/*.parquet'))", "read_parquet"),
    ("glob", "(SELECT max(file) FROM glob('{folder}/*'))", "glob"),
    ("text_path", "(SELECT max(value) FROM text.`{secret}`)", "file path text.`"),
    ("reflect", "reflect('java.lang.System', 'getenv', 'HOME')", "function reflect"),
    ("java_method", "java_method('java.lang.System', 'getenv', 'HOME')", "function java_method"),
    ("env_substitution", "'${env:HOME}'", "variable substitution"),
    ("subquery_other_table", "CAST(amount + (SELECT max(amount) FROM other_events) AS STRING)", "table other_events"),
    ("select_from", "SELECT max(amount) FROM events", "a SELECT statement"),
    ("unknown_function", "no_such_function(amount)", "function no_such_function (not on the allow-list)"),
    ("postgres_pg_read_file", {"dialect": "postgres", "transformation": "pg_read_file('{secret}')"}, "pg_read_file"),
    ("window_filter", {"window_size": "1d", "aggregation": "count", "transformation": "*", "data_type": "int",
                       "window_filter": "amount > (SELECT count(*) FROM read_text('{secret}'))"}, "read_text"),
]
QUERIES = [
    ("query_text_path", "SELECT 1 AS user_id, current_timestamp() AS ts, value FROM text.`{secret}`", "file path text.`"),
    ("query_java_method", "SELECT user_id, ts, java_method('java.lang.System', 'getenv', 'HOME') AS amount FROM events",
     "function java_method"),
    ("query_reflect", "SELECT user_id, ts, reflect('java.lang.System', 'getenv', 'HOME') AS amount FROM events",
     "function reflect"),
    ("query_read_files", "SELECT * FROM read_files('{secret}')", "read_files"),
]


@pytest.fixture()
def secret(tmp_path):
    """A file the server can read and no definition may: its content is a fresh token."""
    token = f"SECRET-{uuid.uuid4().hex}"
    path = tmp_path / "secret.txt"
    path.write_text(f"{token}\n")
    return {"path": str(path), "token": token, "folder": str(tmp_path)}


@pytest.fixture()
def source(tmp_path) -> dict:
    folder = tmp_path / "events"
    folder.mkdir()
    pd.DataFrame({"user_id": [1, 1, 2], "ts": pd.to_datetime(["2024-01-02", "2024-01-03", "2024-01-04"]),
                  "amount": [1.0, 2.0, 3.0]}).to_parquet(folder / "part-0.parquet", index=False, coerce_timestamps="us")
    return {"path": str(folder), "format": "parquet", "event_timestamp_column": "ts"}


@pytest.fixture()
def store(request, settings, compute_engine, source):
    """A store with authentication on, on the test's engine, with one benign set over a readable source."""
    from tests.conftest import NoSpark

    spark = request.getfixturevalue("spark") if compute_engine == "spark" else NoSpark()
    store = FeatureStore(settings.with_(auth_enabled=True, compute_engine=compute_engine), auto_upgrade=True).use_spark(spark)
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_feature_set({"name": "events", "entities": ["user"], "source": source,
                              "features": [{"name": "amount_plus", "data_type": "float", "transformation": "amount + 1"}]})
    yield store
    store.close()


@pytest.fixture()
def client(store):
    app = create_app(store=store)
    yield app.test_client()
    app.extensions["fstore_security"].usage.stop()


@pytest.fixture()
def keys(store) -> dict[str, str]:
    return make_keys(store)


@pytest.fixture()
def writer(keys) -> dict[str, str]:
    """The attacker's credentials: a key with the write_registry scope only."""
    return headers(keys["write_registry"])


@pytest.fixture()
def reader(keys) -> dict[str, str]:
    return headers(keys["read_registry"])


def fill(value, secret):
    text = json.dumps(value).replace("{secret}", secret["path"]).replace("{folder}", secret["folder"])
    return json.loads(text)


def leak_feature(attack, secret, **extra) -> dict:
    fields = attack if isinstance(attack, dict) else {"transformation": attack}
    return {"name": "leak", "data_type": "string", **extra, **fill(fields, secret)}


def registry_counts(store) -> dict[str, int]:
    with store.transaction() as s:
        return {"sets": s.scalar(select(func.count()).select_from(FeatureSetRow)),
                "features": s.scalar(select(func.count()).select_from(FeatureRow)),
                "events_version": s.scalar(select(FeatureSetRow.version).where(FeatureSetRow.name == "events"))}


def assert_refused(response, named: str, secret: dict) -> None:
    body = response.get_data(as_text=True)
    assert response.status_code == 422, body
    error = response.get_json()["error"]
    assert named in error["message"], error
    assert secret["token"] not in body and "/root" not in error["message"]


@pytest.mark.parametrize(("case", "attack", "named"), TRANSFORMATIONS, ids=[c[0] for c in TRANSFORMATIONS])
def test_rest_refuses_sql_that_reads_the_server(client, writer, reader, store, source, secret, case, attack, named):
    """Create a set, add a feature to a set, change a feature: each with the attack, each a 422, nothing stored."""
    before = registry_counts(store)
    body = {"name": "stolen", "entities": ["user"], "source": source, "features": [leak_feature(attack, secret)]}
    assert_refused(client.post("/api/v1/feature-sets", json=body, headers=writer), named, secret)
    assert client.get("/api/v1/feature-sets/stolen", headers=reader).status_code == 404
    assert_refused(client.post("/api/v1/features", json=leak_feature(attack, secret, feature_set_id="events"),
                               headers=writer), named, secret)
    assert client.get("/api/v1/features/leak?feature_set=events", headers=reader).status_code == 404
    change = fill(attack if isinstance(attack, dict) else {"transformation": attack}, secret)
    change.pop("data_type", None)
    assert_refused(client.patch("/api/v1/features/amount_plus?feature_set=events", json=change, headers=writer),
                   named, secret)
    assert registry_counts(store) == before
    assert store.get_feature("amount_plus", feature_set="events")["transformation"] == "amount + 1"


@pytest.mark.parametrize(("case", "query", "named"), QUERIES, ids=[c[0] for c in QUERIES])
def test_rest_refuses_query_sources_that_read_files_or_reflect(client, writer, store, secret, case, query, named):
    before = registry_counts(store)
    body = {"name": "stolen", "entities": ["user"],
            "source": {"query": fill(query, secret), "event_timestamp_column": "ts"},
            "features": [{"name": "v", "data_type": "string", "transformation": "amount"}]}
    assert_refused(client.post("/api/v1/feature-sets", json=body, headers=writer), named, secret)
    change = {"source": {"query": fill(query, secret), "event_timestamp_column": "ts"}}
    assert_refused(client.patch("/api/v1/feature-sets/events", json=change, headers=writer), named, secret)
    assert registry_counts(store) == before


def test_rest_refuses_a_table_source_spark_would_read_as_a_file(client, writer, store, secret, tmp_path, monkeypatch):
    """``table: text.secret`` is the file ``secret`` in the server's working folder to Spark (runSQLOnFiles)."""
    monkeypatch.chdir(tmp_path)
    body = {"name": "stolen", "entities": ["user"], "source": {"table": "text.secret", "event_timestamp_column": "ts"},
            "features": [{"name": "v", "data_type": "string", "transformation": "value"}]}
    assert_refused(client.post("/api/v1/feature-sets", json=body, headers=writer), "file path text.secret", secret)


@pytest.mark.parametrize(("case", "attack", "named"), [
    ("read_text", "(SELECT max(content) FROM read_text('{secret}'))", "read_text"),
    ("java_method", "java_method('java.lang.System', 'getenv', 'HOME')", "java_method"),
    ("postgres_pg_read_file", {"dialect": "postgres", "transformation": "pg_read_file('{secret}')"}, "pg_read_file"),
], ids=["read_text", "java_method", "postgres_pg_read_file"])
def test_apply_refuses_the_attack_and_stores_nothing(store, source, secret, tmp_path, case, attack, named):
    feature = leak_feature(attack, secret)
    text = "feature_sets:\n" + textwrap.indent(json.dumps(
        [{"name": "stolen", "entities": ["user"], "source": source, "features": [feature]}], indent=2), "  ")
    path = tmp_path / "defs" / "stolen.yaml"
    path.parent.mkdir()
    path.write_text(text)  # JSON is YAML
    before = registry_counts(store)
    with pytest.raises(InvalidDefinition) as raised:
        store.apply(str(path))
    assert named in raised.value.message and secret["token"] not in raised.value.message
    assert registry_counts(store) == before


@pytest.mark.parametrize(("case", "transformation", "named"), [
    ("read_text", "(SELECT max(content) FROM read_text('{secret}'))", "read_text"),
    ("java_method", "java_method('java.lang.System', 'getenv', 'HOME')", "java_method"),
    ("text_path", "(SELECT max(value) FROM text.`{secret}`)", "file path text.`"),
], ids=["read_text", "java_method", "text_path"])
def test_a_malicious_row_written_into_the_registry_fails_its_run_unread(store, secret, case, transformation, named):
    """Defense in depth: a definition that never passed the API (an old row, a direct write) cannot run."""
    leak = fill(transformation, secret)
    with store.transaction() as s:
        row = s.scalars(select(FeatureRow).where(FeatureRow.name == "amount_plus")).one()
        s.execute(update(FeatureRow).where(FeatureRow.id == row.id)
                  .values(spec={**row.spec, "transformation": leak, "data_type": "string"}))
    assert store.feature_set_version("events").feature("amount_plus").transformation == leak
    with pytest.raises(InvalidDefinition) as raised:
        store.materialize("events", START, END)
    assert named in raised.value.message and secret["token"] not in raised.value.message
    with store.transaction() as s:
        run = s.scalars(select(MaterializationRunRow)).one()
    assert run.status == "failed" and named in run.error and secret["token"] not in run.error
    assert current_version(store.settings, "events") is None  # nothing was written offline (nor, after it, online)
    with pytest.raises(InvalidDefinition, match=named.split(" ")[-1].rstrip("`")):
        store.compile("events")


def test_a_sealed_duckdb_connection_reads_its_source_and_no_other_file(source, secret, settings):
    """The DuckDB engine's second lock: once fstore registered its reads, SQL cannot open a path, nor unlock."""
    import duckdb

    from fstore.definitions.model import Source
    from fstore.engine import duckdb as engine

    with engine.connect() as con:
        relation = engine.read_source(con, Source.from_dict(source), settings=settings)
        engine.seal(con)
        assert sorted(r[0] for r in relation.project("amount").fetchall()) == [1.0, 2.0, 3.0]
        for sql in [f"SELECT content FROM read_text('{secret['path']}')",
                    f"SELECT * FROM read_csv_auto('{secret['path']}')", f"SELECT * FROM glob('{secret['folder']}/*')"]:
            with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
                con.sql(sql).fetchall()
        with pytest.raises(duckdb.Error, match="locked|Cannot"):
            con.execute("SET enable_external_access = true")


def test_spark_sessions_neither_substitute_variables_nor_read_format_paths(spark, secret, tmp_path, monkeypatch):
    """spark-defaults.conf's second lock, for SQL fstore writes itself from user values (a rule's default_value,
    allowed_values, regex are literals in the validation SQL): ``${env:…}`` stays text, ``text.name`` is no file."""
    from pyspark.errors import AnalysisException

    assert spark.sql("SELECT '${env:HOME}' AS v").collect()[0].v == "${env:HOME}"
    assert spark.range(1).selectExpr("'${env:HOME}' AS v").collect()[0].v == "${env:HOME}"
    monkeypatch.chdir(secret["folder"])
    with pytest.raises(AnalysisException, match="TABLE_OR_VIEW_NOT_FOUND"):
        spark.sql(f"SELECT * FROM text.`{secret['path']}`").collect()
