"""The registry and data the UI tests look at: the example sets materialized on DuckDB, keys, usage, a training set.

``python -m tests.ui.seed`` is not a thing: the tests call ``seed(store)`` in process, then start the server
over the same registry and storage.
"""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "conf" / "examples"
SCRIPT_DESCRIPTION = '<script>window.__pwned = 1</script> balance in <b>cents</b>'


def seed(store) -> dict:
    """Fill ``store``: both example sets materialized (two runs of one), a feature whose description holds
    markup, a hidden set, a saved training set; return the keys made (``serve_traffic`` adds usage)."""
    import pandas as pd

    from fstore.definitions.examples import write_example_sources
    from fstore.ops import auth

    data = write_example_sources(Path(store.settings.storage_path) / "example_sources", users=60, purchases=800)
    store.apply(str(EXAMPLES), actor="seed")
    middle = data.start + (data.end - data.start) / 2
    store.materialize("user_activity", data.start, middle, actor="seed")
    store.materialize("user_activity", middle, data.end, actor="seed")
    store.materialize("user_profile", data.start, data.end, actor="seed")
    store.update_feature("account_balance", {"description": SCRIPT_DESCRIPTION}, feature_set="user_profile",
                         actor="seed")
    store.create_feature_set({"name": "secret_scores", "description": "hidden from the restricted key",
                              "entities": ["user"], "owner": "risk-team", "tags": {"team": "risk"},
                              "source": {"path": str(data.users_path), "format": "parquet",
                                         "event_timestamp_column": "updated_at"},
                              "features": [{"name": "risk", "data_type": "float", "transformation": "1.0"}]},
                             actor="seed", allow_missing_sources=True)
    labels = pd.DataFrame({"user_id": ["user_1001", "user_1002"], "event_timestamp": [data.end, data.end]})
    store.get_historical_features(entity_df=labels, features=["user_activity:purchase_frequency",
                                                              "user_profile:account_balance"],
                                  save_as="churn_training")
    with store.transaction() as s:
        admin = auth.create_key(s, owner="ops", scopes=["admin", "read_registry"])
        reader = auth.create_key(s, owner="growth", scopes=["read_registry"], feature_sets=["user_activity"])
    return {"admin": admin["key"], "reader": reader["key"], "data": data}


def serve_traffic(base_url: str, key: str) -> None:
    """Real requests through the server: online reads (one user known, one not: 50% coverage), one refused."""
    import json
    import urllib.error
    import urllib.request

    def post(body: dict) -> int:
        request = urllib.request.Request(base_url + "/api/v1/serving/online", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json", "X-API-Key": key})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status
        except urllib.error.HTTPError as exc:
            return exc.code

    for _ in range(3):
        assert post({"features": ["user_activity:purchases_last_30d", "user_activity:spend_last_7d"],
                     "entities": {"user": ["user_1001", "nobody"]}}) == 200
    assert post({"features": ["user_activity:no_such_feature"], "entities": {"user": ["user_1001"]}}) == 404
