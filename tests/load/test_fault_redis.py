"""Redis frozen and restarted under online load: fast 503s during the stall, serving back within 0.5 s.

A private ``redis-server`` (``faults.PrivateRedis``) is the online store of a real gunicorn server
(2 gthread workers); 4 keep-alive clients load the online endpoint (value cache off) while the
test freezes Redis (SIGSTOP) for 3 s, then stops and starts it. Figures asserted: no request
during the stall waits longer than REDIS_TIMEOUT (0.25 s) plus 0.15 s (one deadline bounds each Redis read;
measured 0.006-0.03 s over, client-side, on a loaded 2-core machine; the rest is margin for CI noise), every
failure is a JSON 503 ``unavailable``, and 200s are back within 0.5 s of Redis answering.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from faults import Load, PrivateRedis
from fstore.core.settings import Settings
from fstore.store import FeatureStore

REPO = Path(__file__).resolve().parents[2]
BODY = {"features": ["clicks"], "entities": {"user_id": [1, 2]}}
TIMEOUT = 0.25
STALL_SLACK = 0.15  # seconds a stalled request may take beyond TIMEOUT (scheduling, the 503's rendering)
RECOVERY_BOUND = 0.5

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture()
def redis_server():
    server = PrivateRedis()
    yield server
    server.close()


@pytest.fixture()
def server(redis_server, tmp_path, free_port, run_server):
    env = {"STORAGE_PATH": str(tmp_path / "store"), "REDIS_URL": redis_server.url, "REDIS_TIMEOUT": str(TIMEOUT),
           "AUTH_ENABLED": "false"}
    store = FeatureStore(Settings.from_env(env))
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_feature_set({"name": "user_stats", "entities": ["user"], "features": [
        {"name": "clicks", "data_type": "int", "transformation": "clicks"}]})
    store.close()
    process = run_server([sys.executable, "-m", "gunicorn", "server:app", "-c", "conf/gunicorn.conf.py", "-w", "2",
                          "-b", f"127.0.0.1:{free_port}"], free_port, cwd=REPO,
                         env={**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(free_port)})
    yield free_port
    process.terminate()
    process.wait(timeout=30)


def _recovery(load: Load, back_at: float) -> float:
    """Seconds from ``back_at`` to the first 200 after it, once every later answer is a 200 too."""
    records = load.between(back_at, time.monotonic())
    last_bad = max((sent for sent, _, status, _ in records if status != 200), default=back_at)
    return last_bad - back_at


def _check_stall(load: Load, start: float, end: float) -> dict:
    during = load.between(start, end)
    assert during
    statuses = {status for _, _, status, _ in during}
    assert statuses <= {200, 503}, statuses
    assert all(a["error"]["code"] == "unavailable" for _, _, s, a in during if s == 503)
    slowest = max(seconds for _, seconds, _, _ in during)
    assert slowest <= TIMEOUT + STALL_SLACK, slowest
    return {"answers": len(during), "503": sum(s == 503 for _, _, s, _ in during), "slowest_s": round(slowest, 3)}


def test_redis_frozen_then_restarted_under_load(redis_server, server):
    with Load(server, BODY) as load:
        time.sleep(1.0)
        frozen_at = time.monotonic()
        redis_server.freeze()
        time.sleep(3.0)
        redis_server.thaw()
        thawed_at = time.monotonic()
        time.sleep(2.0)
        stall = _check_stall(load, frozen_at, thawed_at)
        after_thaw = _recovery(load, thawed_at)
        stopped_at = time.monotonic()
        redis_server.stop()
        time.sleep(2.0)
        redis_server.start()
        started_at = time.monotonic()
        time.sleep(2.0)
        down = _check_stall(load, stopped_at, started_at)
        after_restart = _recovery(load, started_at)
    print("redis frozen 3 s:", stall, "recovered after", round(after_thaw, 3), "s;",
          "stopped 2 s:", down, "recovered after", round(after_restart, 3), "s")
    assert stall["503"] > 0 and down["503"] > 0
    assert after_thaw <= RECOVERY_BOUND, after_thaw
    assert after_restart <= RECOVERY_BOUND, after_restart
