"""The UI's login and its guards through Flask's test client (no browser): what the browser tests do not reach.

Each test builds a real app over a fresh SQLite registry; keys are real rows checked by the API's verifier.
"""
from __future__ import annotations

import pytest

from fstore.api import create_app
from fstore.core.settings import Settings
from fstore.ops import auth
from tests.conftest import store_env

SECRET = "a-test-session-secret-of-40-characters!!"


def _app(tmp_path, **env):
    app = create_app(Settings.from_env(store_env(tmp_path, COMPUTE_ENGINE="duckdb", **env)))
    return app


def _key(app, scopes=("read_registry",), **grants) -> str:
    with app.extensions["fstore"].transaction() as s:
        return auth.create_key(s, owner="tester", scopes=list(scopes), **grants)["key"]


@pytest.fixture()
def secured(tmp_path):
    return _app(tmp_path, AUTH_ENABLED="1", UI_SESSION_SECRET=SECRET)


def test_with_auth_off_the_ui_opens_directly(tmp_path):
    client = _app(tmp_path, AUTH_ENABLED="0").test_client()
    page = client.get("/ui/registry")
    assert page.status_code == 200 and b"auth off (local)" in page.data
    assert client.get("/ui/login").headers["Location"] == "/ui/registry"
    assert client.get("/ui/").status_code == 302 and client.get("/ui").status_code == 308


def test_pages_forbid_scripts_framing_and_caching(secured):
    page = secured.test_client().get("/ui/login")
    assert page.status_code == 200
    assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'none': no script at all
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store" and page.headers["X-Content-Type-Options"] == "nosniff"


def test_without_a_session_every_page_asks_for_a_key_and_the_api_is_unchanged(secured):
    client = secured.test_client()
    for path in ("/ui/registry", "/ui/health", "/ui/sets/anything/lineage"):
        answer = client.get(path)
        assert answer.status_code == 302 and answer.headers["Location"].startswith("/ui/login?next=")
    assert client.get("/api/v1/feature-sets").status_code == 401  # the API still wants its header


def test_login_goes_only_to_ui_pages_after(secured):
    client, key = secured.test_client(), _key(secured)
    for target, landing in (("/ui/health", "/ui/health"), ("//evil.example/ui/", "/ui/registry"),
                            ("https://evil.example/", "/ui/registry"), ("/ui/\\evil", "/ui/registry"),
                            ("/api/v1/keys", "/ui/registry")):
        answer = client.post("/ui/login", data={"key": key, "next": target})
        assert answer.status_code == 302 and answer.headers["Location"] == landing, target


def test_a_login_from_another_site_is_refused(secured):
    answer = secured.test_client().post("/ui/login", data={"key": _key(secured)},
                                        headers={"Origin": "https://evil.example"})
    assert answer.status_code == 403 and b"this site" in answer.data
    assert "Set-Cookie" not in answer.headers


def test_a_key_without_read_registry_cannot_log_in(secured):
    answer = secured.test_client().post("/ui/login", data={"key": _key(secured, scopes=("serve_online",))})
    assert answer.status_code == 403 and b"read_registry" in answer.data and "Set-Cookie" not in answer.headers


def test_a_revoked_key_ends_the_session(secured):
    client, key = secured.test_client(), _key(secured)
    assert client.post("/ui/login", data={"key": key}).status_code == 302
    assert client.get("/ui/registry").status_code == 200
    with secured.extensions["fstore"].transaction() as s:
        auth.revoke_key(s, key[:auth.PREFIX_LENGTH])
    secured.extensions["fstore_security"].verifier.forget()
    answer = client.get("/ui/registry")
    assert answer.status_code == 302 and answer.headers["Location"] == "/ui/login?expired=1"


def test_a_cookie_made_with_another_secret_is_no_login(secured, tmp_path):
    other = _app(tmp_path / "other", AUTH_ENABLED="1", UI_SESSION_SECRET="x" * 40)
    key = _key(secured)
    forger = other.test_client()
    with other.extensions["fstore"].transaction() as s:  # the same key exists there too: only the cookie differs
        row = auth.create_key(s, owner="tester", scopes=["read_registry"])
    forger.post("/ui/login", data={"key": row["key"]})
    cookie = forger.get_cookie("fstore_ui", path="/ui")
    client = secured.test_client()
    client.set_cookie("fstore_ui", cookie.value, path="/ui")
    assert client.get("/ui/registry").status_code == 302
    assert key  # the secured app's own key still logs in
    assert client.post("/ui/login", data={"key": key}).status_code == 302


def test_without_a_session_secret_the_login_says_what_to_set(tmp_path):
    page = _app(tmp_path, AUTH_ENABLED="1").test_client().get("/ui/login")
    assert page.status_code == 503 and b"UI_SESSION_SECRET" in page.data


def test_the_session_secret_may_come_from_fstore_secret_key(tmp_path):
    from cryptography.fernet import Fernet

    app = _app(tmp_path, AUTH_ENABLED="1", FSTORE_SECRET_KEY=Fernet.generate_key().decode())
    client = app.test_client()
    assert client.post("/ui/login", data={"key": _key(app)}).status_code == 302
    assert client.get("/ui/registry").status_code == 200


def test_a_training_set_page_shows_its_importances_and_stays_hidden_from_a_restricted_key(secured):
    from fstore.registry.quality import save_importances
    from tests.ui.seed import seed

    store = secured.extensions["fstore"]
    keys = seed(store)
    with store.transaction() as s:
        save_importances(s, "churn_training", "churned", "mutual_information",
                         {"user_activity__purchase_frequency": 0.42, "user_profile__account_balance": 0.07})
    admin = secured.test_client()
    admin.post("/ui/login", data={"key": keys["admin"]})
    page = admin.get("/ui/training-sets/churn_training")
    assert page.status_code == 200, page.data[:500]
    assert b"churned \xc2\xb7 mutual_information" in page.data and b"<svg" in page.data
    assert b"user_activity__purchase_frequency" in page.data and b"0.42" in page.data
    assert b"/ui/training-sets/churn_training" in admin.get("/ui/sets/user_activity/lineage").data
    reader = secured.test_client()  # granted user_activity only: the set also read user_profile
    reader.post("/ui/login", data={"key": keys["reader"]})
    hidden, unknown = reader.get("/ui/training-sets/churn_training"), reader.get("/ui/training-sets/no_such_set")
    assert hidden.status_code == unknown.status_code == 404
