"""requirements.txt is setup.py's install_requires, line for line (the spec's `pip install -r requirements.txt`)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("requirements_script", ROOT / "scripts" / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_requirements_txt_agrees_with_setup_py():
    script = _script()
    pinned = script.install_requires()
    assert any(line.startswith("pyspark==") for line in pinned) and len(pinned) > 10
    listed = [line for line in (ROOT / "requirements.txt").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert listed == pinned, "run python scripts/requirements.py after editing setup.py"
    assert script.main(["--check"]) == 0


def test_check_fails_on_a_requirements_txt_that_drifted(tmp_path, monkeypatch):
    script = _script()
    monkeypatch.setattr(script, "ROOT", tmp_path)
    (tmp_path / "requirements.txt").write_text(script.render(script.install_requires()[:-1]))
    assert script.main(["--check"]) == 1
