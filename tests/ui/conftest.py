"""A seeded store served by gunicorn on 127.0.0.1 with keys required, and Debian's chromium under Playwright.

The browser is the system one (``scripts/browser.sh`` installs it), driven through ``executable_path``:
Playwright downloads nothing. Without chromium or Playwright the UI tests skip, unless
FSTORE_REQUIRE_SERVICES=1.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_SERVICES

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SESSION_SECRET = "ui-test-" + "0123456789abcdef" * 3


def _chromium() -> str | None:
    real = Path("/usr/lib/chromium/chromium")  # Debian's binary behind the /usr/bin/chromium wrapper script
    return str(real) if real.exists() else shutil.which("chromium")


def _missing(what: str) -> None:
    message = f"{what}: run scripts/browser.sh (as root) and pip install -e '.[test]'"
    if REQUIRE_SERVICES:
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def served(tmp_path_factory, request):
    """``(base_url, keys)``: the seeded store behind ``cli.py serve`` (gunicorn, keys required)."""
    import http.client
    import subprocess
    import time

    from tests.ui.seed import seed, serve_traffic
    from fstore.core.settings import Settings
    from fstore.store import FeatureStore

    root = tmp_path_factory.mktemp("ui")
    env = {**os.environ, "STORAGE_PATH": str(root / "store"), "COMPUTE_ENGINE": "duckdb", "AUTH_ENABLED": "1",
           "UI_SESSION_SECRET": SESSION_SECRET, "WEB_CONCURRENCY": "1", "HOST": "127.0.0.1",
           "PYTHONPATH": str(REPO)}
    for name in ("DATABASE_URL", "REDIS_URL", "FSTORE_SECRET_KEY", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    store = FeatureStore(Settings.from_env(env))
    try:
        keys = seed(store)
    finally:
        store.close()
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env["PORT"] = str(port)
    log_path = root / "server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "serve"], cwd=root, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        serve_traffic(f"http://127.0.0.1:{port}", keys["admin"])
        yield f"http://127.0.0.1:{port}", keys
    finally:
        if process.poll() is None:
            process.terminate()  # by its own PID: gunicorn's arbiter stops its workers
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium (Debian's) under Playwright, for the module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright is not installed")
    executable = _chromium()
    if executable is None:
        _missing("chromium is not installed")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        # --no-sandbox: the test may run as root (containers), where Chromium's sandbox refuses to start.
        launched = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()
