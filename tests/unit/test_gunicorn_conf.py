"""conf/gunicorn.conf.py: the access log costs nothing per request while it is off, and still writes when on."""
from __future__ import annotations

import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

CONF = Path(__file__).resolve().parents[2] / "conf" / "gunicorn.conf.py"


@pytest.mark.parametrize(("accesslog", "formatted"), [(None, 0), ("-", 1)])
def test_access_fields_are_formatted_only_when_the_access_log_is_on(monkeypatch, accesslog, formatted):
    logger_class = runpy.run_path(str(CONF))["logger_class"]
    logger = logger_class.__new__(logger_class)  # no handlers needed: access() is all that runs
    calls = []
    logger.cfg = SimpleNamespace(accesslog=accesslog, logconfig=None, logconfig_dict={"version": 1},
                                 logconfig_json=None, syslog=False, access_log_format="%(s)s")
    logger.atoms_wrapper_class = lambda atoms: atoms
    logger.atoms = lambda *args: calls.append(args) or {"s": "200"}
    logger.access_log = SimpleNamespace(info=lambda *args: calls.append(("line", *args)))
    logger.access(SimpleNamespace(status="200"), None, {}, None)
    assert len([c for c in calls if c and c[0] != "line"]) == formatted
    assert len([c for c in calls if c and c[0] == "line"]) == formatted
