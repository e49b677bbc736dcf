"""The drift and alert endpoints and ``fstore monitor drift`` over real DuckDB runs (the measures themselves
are tested on both engines in test_quality.py)."""
from __future__ import annotations

import json

from click.testing import CliRunner

from fstore.cli import main
from fstore.api import create_app
from tests.conftest import store_env
from test_quality import day_rows, make_set, run_day, write


def test_drift_endpoint_and_cli_answer_what_the_library_measures(tmp_path, settings):
    from fstore.store import FeatureStore

    env = store_env(tmp_path, COMPUTE_ENGINE="duckdb")
    store = FeatureStore(settings.with_(compute_engine="duckdb"), auto_upgrade=True)
    try:
        make_set(store, write(tmp_path / "src", [day_rows(0), day_rows(1, shift=2.0)]))
        run_day(store, 0)
        run_day(store, 1)
        client = create_app(store=store).test_client()
        answer = client.get("/monitoring/drift?feature_set=q&baseline=previous")
        assert answer.status_code == 200, answer.get_json()
        body = answer.get_json()
        assert body["drifted"] == ["x"] and body["baseline"]["kind"] == "previous"
        assert client.get("/monitoring/drift?feature_set=q&baseline=yesterday").status_code == 422
        assert client.get("/monitoring/drift?feature_set=nope").status_code == 404
        assert client.get("/monitoring/drift?feature_set=q&baseline=training_set:none").status_code == 404
        assert client.get("/monitoring/alerts?feature_set=q").get_json() == {"items": []}
        stats = client.get("/monitoring/statistics?feature_set=q").get_json()["items"][0]
        assert abs(stats["entities"] - 2000) < 100 and {f["feature"]: f["coverage"] for f in stats["features"]} == {"x": 1.0, "cat": 1.0}
    finally:
        store.close()
    result = CliRunner().invoke(main, ["--json", "monitor", "drift", "q", "--baseline", "previous"], env=env,
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["features"] == body["features"]
    text = CliRunner().invoke(main, ["monitor", "drift", "q"], env=env, catch_exceptions=False)
    assert text.exit_code == 0 and "significant" in text.stdout
