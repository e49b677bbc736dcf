"""Training sets through the shells: `fstore training-sets …` and `/api/v1/training-sets`, on real Spark.

One tiny feature set is computed into the offline store and one retrieval saved
as the training set ``clicks_ts``; the CLI and the REST API then list, show and
re-create it, refuse unknown names, and the API holds it to scopes and grants.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta

import pandas as pd
import pytest
from click.testing import CliRunner

from fstore.ops import auth
from fstore.api import create_app
from fstore.api.render import frame_to_json
from fstore.cli import main
from fstore.core.settings import Settings
from fstore.store import FeatureStore

pytestmark = pytest.mark.spark

T0 = datetime(2024, 1, 1)
H = timedelta(hours=1)
NAME = "clicks_ts"


@pytest.fixture(scope="module")
def saved(spark, tmp_path_factory):
    """A store with one saved training set; yields (settings, the saved rows as a pandas frame)."""
    from fstore.engine.spark import compute
    from fstore.storage.offline import write_range

    root = tmp_path_factory.mktemp("training_shells")
    source = root / "source"
    source.mkdir()
    pd.DataFrame({"user_id": [1, 1, 2], "event_timestamp": [T0 + H, T0 + 5 * H, T0 + 2 * H], "n": [1.0, 2.0, 5.0]}) \
        .astype({"event_timestamp": "datetime64[us]"}).to_parquet(source / "part-0.parquet", index=False)
    settings = Settings.from_env({"STORAGE_PATH": str(root / "store"), "SOURCE_ROOTS": str(root)})
    store = FeatureStore(settings, auto_upgrade=True).use_spark(spark)
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    src = {"path": str(source), "format": "parquet", "event_timestamp_column": "event_timestamp"}
    store.create_feature_set({"name": "clicks", "entities": ["user"], "source": src,
                              "features": [{"name": "n_x2", "data_type": "float", "transformation": "n * 2"}]})
    # A second set, never computed: a key granted only this one must not see the training set.
    store.create_feature_set({"name": "other", "entities": ["user"], "source": src,
                              "features": [{"name": "m", "data_type": "float", "transformation": "n"}]})
    fsv = store.feature_set_version("clicks")
    write_range(spark, settings, fsv, compute(spark, fsv, settings=settings, start=T0, end=T0 + 24 * H), T0, T0 + 24 * H)
    entity_rows = pd.DataFrame({"user_id": [1, 2, 1], "event_timestamp": [T0 + 2 * H, T0 + 3 * H, T0 + 6 * H]})
    rows = store.get_historical_features(entity_df=entity_rows, features=["clicks:n_x2"], save_as=NAME,
                                         actor="ann").to_df()
    assert rows["clicks__n_x2"].tolist() == [2.0, 10.0, 4.0]  # the data the shells must give back
    store.close()
    return settings, rows


# -- CLI ----------------------------------------------------------------------------------------

@pytest.fixture()
def cli(saved):
    settings, _ = saved
    env = {"STORAGE_PATH": settings.storage_path, "DATABASE_URL": settings.database_url}
    runner = CliRunner()

    def run(*args: str, code: int = 0):
        result = runner.invoke(main, list(args), env=env, catch_exceptions=False)
        assert "Traceback" not in result.output
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        return result

    return run


def test_cli_lists_shows_and_recreates(cli, saved, tmp_path):
    _, rows = saved
    listed = cli("training-sets", "list").stdout
    assert "NAME" in listed.splitlines()[0] and NAME in listed and "clicks@1" in listed and "1-1 of 1" in listed
    page = json.loads(cli("training-sets", "list", "--json", "--limit", "1").stdout)
    assert page["total"] == 1 and page["limit"] == 1 and page["items"][0]["name"] == NAME
    assert json.loads(cli("training-sets", "list", "--json", "--offset", "1").stdout)["items"] == []

    shown = cli("training-sets", "show", NAME).stdout
    assert "clicks@1 (offline v" in shown and "n_x2" in shown and "entity_count" in shown
    item = json.loads(cli("--json", "training-sets", "show", NAME).stdout)
    assert item["name"] == NAME and item["entity_count"] == 3 and item["created_by"] == "ann"
    assert json.loads(cli("training-sets", "show", str(item["id"]), "--json").stdout)["name"] == NAME

    out = tmp_path / "again.csv"
    written = cli("training-sets", "recreate", NAME, "--output", str(out)).stdout
    assert written.strip() == f"wrote 3 rows of training set {NAME} to {out}"
    again = pd.read_csv(out)
    assert again["user_id"].tolist() == rows["user_id"].tolist()
    assert again["clicks__n_x2"].tolist() == rows["clicks__n_x2"].tolist()
    assert "already exists; pass --overwrite" in cli("training-sets", "recreate", NAME, "--output", str(out), code=4).stderr
    cli("training-sets", "recreate", NAME, "--output", str(out), "--overwrite")
    assert pd.read_csv(out)["clicks__n_x2"].tolist() == rows["clicks__n_x2"].tolist()
    folder = tmp_path / "again_folder"
    for extra in ((), ("--overwrite",)):  # a folder of part files it wrote is replaced when asked
        summary = json.loads(cli("training-sets", "recreate", NAME, "--output", str(folder), "--json", *extra).stdout)
        assert summary == {"training_set": NAME, "output": str(folder), "rows": 3, "notes": []}  # nothing changed since
    pd.testing.assert_frame_equal(pd.read_parquet(folder).sort_values("event_timestamp").reset_index(drop=True)
                                  [["user_id", "clicks__n_x2"]],
                                  rows.sort_values("event_timestamp").reset_index(drop=True)[["user_id", "clicks__n_x2"]])


def test_cli_refuses_unknown_names_and_bad_pages(cli, tmp_path):
    for args in (("show", "missing"), ("recreate", "missing", "--output", str(tmp_path / "x.csv"))):
        result = cli("training-sets", *args, code=3)
        assert result.stderr.strip() == "error: training set missing not found"
    assert not (tmp_path / "x.csv").exists()
    assert "limit must be" in cli("training-sets", "list", "--limit", "0", code=2).stderr
    assert "offset must be" in cli("training-sets", "list", "--offset", "-1", code=2).stderr


# -- REST ---------------------------------------------------------------------------------------

@pytest.fixture()
def api(saved, spark):
    """An app with authentication on and keys: full, scope missing, granted the set, granted only another set."""
    settings, _ = saved
    store = FeatureStore(settings.with_(auth_enabled=True)).use_spark(spark)
    with store.transaction() as s:
        keys = {
            "historical": auth.create_key(s, owner="ds", scopes=["serve_historical"])["key"],
            "registry_only": auth.create_key(s, owner="viewer", scopes=["read_registry", "serve_online"])["key"],
            "clicks_only": auth.create_key(s, owner="team-clicks", scopes=["serve_historical"],
                                           feature_sets=["clicks"])["key"],
            "other_only": auth.create_key(s, owner="team-other", scopes=["serve_historical"],
                                          feature_sets=["other"])["key"],
        }
    app = create_app(store=store)
    client = app.test_client()

    def call(method: str, url: str, key: str = "historical", status: int = 200, body: dict | None = None):
        response = client.open(url, method=method, headers={"Authorization": f"Bearer {keys[key]}"},
                               json=(body or {}) if method == "POST" else None)
        assert response.status_code == status, response.get_json()
        return response.get_json()

    yield call
    app.extensions["fstore_security"].usage.stop()
    store.close()


def test_rest_lists_shows_and_recreates(api, saved):
    _, rows = saved
    page = api("GET", "/api/v1/training-sets?limit=1")
    assert page["total"] == 1 and page["limit"] == 1 and [i["name"] for i in page["items"]] == [NAME]
    assert api("GET", "/api/v1/training-sets?offset=1")["items"] == []
    item = api("GET", f"/api/v1/training-sets/{NAME}")
    assert item["entity_count"] == 3 and [g["feature_set"] for g in item["groups"]] == ["clicks"]
    assert api("GET", f"/api/v1/training-sets/{item['id']}")["name"] == NAME

    answer = api("POST", f"/api/v1/training-sets/{NAME}/recreate")
    expected = frame_to_json(rows)
    assert answer["columns"] == expected["columns"] and answer["data"] == expected["data"]
    meta = answer["metadata"]
    assert meta["rows"] == 3 and meta["entity_count"] == 3 and meta["training_set"]["name"] == NAME
    assert meta["feature_sets"][0]["offline_version"] == item["groups"][0]["offline_version"]


def test_rest_refuses_unknown_names_bad_input_and_too_many_rows(api, saved, spark):
    for method, url in (("GET", "/api/v1/training-sets/missing"), ("POST", "/api/v1/training-sets/missing/recreate")):
        assert api(method, url, status=404)["error"]["code"] == "not_found"
    api("GET", "/api/v1/training-sets/bad-name!", status=422)
    api("GET", "/api/v1/training-sets?limit=0", status=422)
    assert api("POST", f"/api/v1/training-sets/{NAME}/recreate", body={"as_of": 1}, status=422)["error"]["field"]
    # The row limit of /serving/historical holds here too, checked before any Spark work.
    settings, _ = saved
    small = FeatureStore(settings.with_(max_historical_rows=2)).use_spark(spark)
    app = create_app(store=small)
    try:
        response = app.test_client().post(f"/api/v1/training-sets/{NAME}/recreate", json={})
        assert response.status_code == 413 and "over the limit of 2" in response.get_json()["error"]["message"]
    finally:
        app.extensions["fstore_security"].usage.stop()
        small.close()


def test_rest_scopes_and_grants(api):
    urls = (("GET", "/api/v1/training-sets"), ("GET", f"/api/v1/training-sets/{NAME}"),
            ("POST", f"/api/v1/training-sets/{NAME}/recreate"))
    for method, url in urls:
        error = api(method, url, key="registry_only", status=403)["error"]
        assert "serve_historical" in error["message"]
    # Granted only a set the training set does not read: it is hidden from the list (and its total) and answered
    # by name exactly as a training set that does not exist.
    assert api("GET", "/api/v1/training-sets", key="other_only") == {"items": [], "total": 0, "limit": 50, "offset": 0}
    for method, url in urls[1:]:
        hidden = api(method, url, key="other_only", status=404)
        unknown = api(method, url.replace(NAME, "no_such_training_set"), key="other_only", status=404)
        assert hidden == {"error": {**unknown["error"],
                                    "message": unknown["error"]["message"].replace("no_such_training_set", NAME)}}
    # Granted the set it reads: sees it whole, features untouched.
    assert api("GET", "/api/v1/training-sets", key="clicks_only")["items"][0]["features"] == ["clicks:n_x2"]
    assert api("GET", f"/api/v1/training-sets/{NAME}", key="clicks_only")["features"] == ["clicks:n_x2"]
    assert api("POST", f"/api/v1/training-sets/{NAME}/recreate", key="clicks_only")["metadata"]["rows"] == 3
