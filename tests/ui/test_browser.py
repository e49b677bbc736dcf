"""The monitoring UI in a real headless Chromium: log in, search, a feature set, its lineage, charts, grants.

Every page visited is checked for console errors and saved as a screenshot under tests/ui/artifacts/
(``FSTORE_UPDATE_SCREENSHOTS=1`` also copies the main ones to docs/screenshots/ for the README).
"""
from __future__ import annotations

import os
import shutil

import pytest

from tests.ui.conftest import ARTIFACTS, REPO
from tests.ui.seed import SCRIPT_DESCRIPTION

pytestmark = pytest.mark.timeout(180)
README_SHOTS = {"registry", "feature_set", "lineage", "runs", "health", "statistics"}


class Pages:
    """A logged-in browser page that records console errors and failed requests, and screenshots each step."""

    def __init__(self, browser, base: str, *, width: int = 1280, height: int = 900, mobile: bool = False):
        self.context = browser.new_context(viewport={"width": width, "height": height}, is_mobile=mobile,
                                           has_touch=mobile)
        self.page = self.context.new_page()
        self.base = base
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

    def go(self, path: str):
        response = self.page.goto(self.base + path)
        return response

    def shot(self, name: str) -> None:
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        if os.environ.get("FSTORE_UPDATE_SCREENSHOTS") == "1" and name in README_SHOTS:
            target = REPO / "docs" / "screenshots"
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / f"{name}.png")

    def login(self, key: str) -> None:
        self.go("/ui/registry")
        assert "/ui/login" in self.page.url  # no session: the login page first
        self.page.fill("#key", key)
        self.page.click("form button[type=submit]")
        self.page.wait_for_url("**/ui/registry")

    def close(self) -> None:
        self.context.close()


def _svg_marks(page, selector: str = "figure.chart svg") -> int:
    """Drawn marks (bars, lines, dots) in the page's charts: a rendered chart has some."""
    return page.eval_on_selector_all(selector, "svgs => svgs.reduce((n, s) => n + s.querySelectorAll("
                                               "'rect[width]:not([width=\"0\"]), polyline, circle').length, 0)")


def _online(base: str, key: str, features: list[str]) -> dict:
    """user_1001's online values as the server answers them now."""
    import json
    import urllib.request

    request = urllib.request.Request(base + "/api/v1/serving/online", headers={"Content-Type": "application/json",
                                                                                "X-API-Key": key},
                                     data=json.dumps({"features": features, "entities": {"user": ["user_1001"]}}).encode())
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())["features"]["user_1001"]


def test_an_admin_logs_in_searches_and_reads_every_page(served, browser):
    base, keys = served
    ui = Pages(browser, base)
    try:
        ui.go("/ui/registry")
        ui.shot("login")
        ui.login(keys["admin"])
        cookie = next(c for c in ui.context.cookies() if c["name"] == "fstore_ui")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
        assert keys["admin"] not in cookie["value"]  # sealed, never the key in clear
        ui.shot("registry")
        assert ui.page.locator(".card h2 a", has_text="secret_scores").count() == 1  # admin sees every set

        # Search by tag value and by description words.
        ui.page.fill("input[name=q]", "sliding windows")
        ui.page.click(".search button")
        ui.page.wait_for_url("**q=sliding*")
        names = ui.page.locator(".card h2 a").all_inner_texts()
        assert any("user_activity" in n for n in names) and not any("user_profile" == n.split()[0] for n in names)
        ui.shot("search")

        # Filter by tag and owner (the API's list filters).
        ui.go("/ui/registry?tag=domain%3Dprofile")
        assert [n.split()[0] for n in ui.page.locator(".card h2 a").all_inner_texts()] == ["user_profile"]
        ui.go("/ui/registry?owner=risk-team")
        assert [n.split()[0] for n in ui.page.locator(".card h2 a").all_inner_texts()] == ["secret_scores"]
        ui.go("/ui/registry?q=sliding+windows")

        # A feature set: its features, versions and the compiled SQL.
        ui.page.click(".card h2 a:has-text('user_activity')")
        ui.page.wait_for_url("**/ui/sets/user_activity")
        features = ui.page.locator("#f-purchase_frequency td").first.inner_text()
        assert features == "purchase_frequency"
        assert "WITH source_rows AS" in ui.page.locator("pre.sql").inner_text()
        ui.shot("feature_set")

        # Lineage: source → set → features → composite → training set.
        ui.page.click("nav.tabs a:has-text('Lineage')")
        ui.page.wait_for_url("**/lineage")
        labels = ui.page.locator("svg.lineage g.node text").all_text_contents()
        assert {"user_activity", "purchases_last_30d", "purchase_frequency", "churn_training"} <= set(labels)
        assert ui.page.locator("svg.lineage path.edge").count() >= 6
        ui.shot("lineage")

        # Materialization of the set: runs with figures and a stage-timing chart.
        ui.page.click("nav.tabs a:has-text('Materialization')")
        ui.page.wait_for_url("**/runs")
        assert ui.page.locator("table.runs > tbody > tr").count() == 2
        assert ui.page.locator("table.runs > tbody > tr .status-succeeded").count() == 2
        assert _svg_marks(ui.page) > 0
        ui.shot("runs")

        # The description holding markup is shown as text, never run.
        ui.go("/ui/sets/user_profile")
        cell = ui.page.locator("#f-account_balance td.feature-description")
        assert cell.inner_text() == SCRIPT_DESCRIPTION
        assert cell.locator("script, b").count() == 0
        assert ui.page.evaluate("window.__pwned === undefined")

        ui.go("/ui/sets/user_profile/diff?a=1&b=2")
        assert "Feature account_balance: v1 → v2" in ui.page.locator("main").inner_text()
        assert ui.page.locator("table.diff td.new", has_text="<script>").count() == 1
        ui.shot("diff")

        assert ui.go("/ui/materialization").status == 200
        assert ui.page.locator("main table .status-succeeded").count() == 2  # both materialized sets' last run
        ui.shot("materialization")
        for path, name in (("/ui/health", "health"), ("/ui/statistics", "statistics")):
            assert ui.go(path).status == 200
            assert _svg_marks(ui.page) > 0, f"{path} drew no chart"
            ui.shot(name)
        ui.go("/ui/health")
        health_text = ui.page.locator("main").inner_text()
        assert "Requests per API key" in health_text and "need a key with the admin scope" not in health_text
        charts = {c.locator("figcaption").inner_text(): " ".join(c.locator("svg text.label, svg text.value")
                                                                 .all_text_contents())
                  for c in ui.page.locator("figure.chart").all()}
        coverage = charts["Online coverage per feature (share of entities with a value)"]
        # Of the two users asked, one is known: 50% where its value is not null. Its windows are exact at the
        # request's time, so a 7-day sum with no purchase in the last 7 days is null (not covered).
        known = _online(base, keys["admin"], ["user_activity:purchases_last_30d", "user_activity:spend_last_7d"])
        share = {name.split(":")[-1].split("__")[-1]: "50.0%" if value is not None else "0.0%"
                 for name, value in known.items()}
        assert coverage.split() == ["user_activity:purchases_…", share["purchases_last_30d"],
                                    "user_activity:spend_last_7d", share["spend_last_7d"]]
        errors = charts["Error rate per API endpoint (this server since it started)"]
        assert "/api/v1/serving/online" in errors and "25.0%" in errors  # 1 of the 4 online requests refused
        assert charts["Requests per feature set"].split() == ["user_activity", "online", "3"]  # the 404 is no usage

        assert ui.errors == []
    finally:
        ui.close()


def test_a_restricted_key_sees_only_its_sets(served, browser):
    base, keys = served
    ui = Pages(browser, base)
    try:
        ui.login(keys["reader"])
        names = ui.page.locator(".card h2 a").all_inner_texts()
        assert [n.split()[0] for n in names] == ["user_activity"]
        ui.shot("restricted_registry")

        # A hidden set answers exactly as an unknown one.
        hidden = ui.go("/ui/sets/secret_scores")
        hidden_text = ui.page.locator("p.error").inner_text()
        unknown = ui.go("/ui/sets/no_such_set")
        unknown_text = ui.page.locator("p.error").inner_text()
        assert hidden.status == unknown.status == 404
        assert hidden_text.replace("secret_scores", "X") == unknown_text.replace("no_such_set", "X")
        ui.go("/ui/sets/secret_scores/lineage")
        assert "risk" not in ui.page.content()
        assert ui.errors == ["console error: Failed to load resource: the server responded with a status of 404 "
                             "(NOT FOUND)"] * 3  # the three deliberate 404s, nothing else
        ui.errors.clear()

        ui.go("/ui/registry?q=risk")
        assert ui.page.locator(".card").count() == 0
        for path in ("/ui/health", "/ui/statistics", "/ui/materialization"):
            ui.go(path)
            assert "secret_scores" not in ui.page.content() and "user_profile" not in ui.page.content()
        ui.go("/ui/health")
        assert "need a key with the admin scope" in ui.page.locator("main").inner_text()
        ui.shot("restricted_health")

        # Logging out ends the session: the next page asks for a key again.
        ui.page.click("header form.who button")
        ui.page.wait_for_url("**/ui/login")
        ui.go("/ui/health")
        assert "/ui/login" in ui.page.url
        assert ui.errors == []
    finally:
        ui.close()


def test_a_wrong_key_is_refused_and_pages_fit_a_phone(served, browser):
    base, keys = served
    ui = Pages(browser, base, width=390, height=844, mobile=True)
    try:
        ui.go("/ui/login")
        ui.page.fill("#key", "fsk_not_a_real_key_at_all")
        ui.page.click("form button[type=submit]")
        assert "invalid API key" in ui.page.locator("p.error").inner_text()
        assert not [c for c in ui.context.cookies() if c["name"] == "fstore_ui" and "key" in c["value"]]
        assert ui.errors == ["console error: Failed to load resource: the server responded with a status of 401 "
                             "(UNAUTHORIZED)"]  # the refused login's own status, as expected
        ui.errors.clear()
        ui.login(keys["admin"])
        for path, name in (("/ui/registry", "phone_registry"), ("/ui/sets/user_activity", "phone_feature_set"),
                           ("/ui/health", "phone_health")):
            ui.go(path)
            overflow = ui.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 1, f"{path} is {overflow}px wider than a phone screen"
            ui.shot(name)
        assert ui.errors == []
    finally:
        ui.close()
