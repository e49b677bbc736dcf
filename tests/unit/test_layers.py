"""The package layout holds: each stage imports only the stages below it, and no package has an import circle.

The contracts are in ``.importlinter`` at the repository root (import-linter reads every import, the ones
inside functions too). When this fails, its output names the import that breaks a contract: move the code
to the layer that owns it, or pass what the lower layer needs as an argument.
"""
import os
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]


def test_fstore_is_layered_by_stage_without_circles(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    code = lint_imports(config_filename=os.path.join(ROOT, ".importlinter"), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out


def test_the_contract_catches_an_upward_import(tmp_path, monkeypatch, capsys):
    """The check can fail: a copy of the tree with one upward import (definitions -> serving) breaks it."""
    import shutil

    shutil.copytree(ROOT / "fstore", tmp_path / "fstore", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    model = tmp_path / "fstore" / "definitions" / "model.py"
    model.write_text(model.read_text() + "\n\ndef _upward():\n    from fstore.serving import online  # noqa: F401\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in list(__import__("sys").modules) if m == "fstore" or m.startswith("fstore.")]:
        monkeypatch.delitem(__import__("sys").modules, name)
    code = lint_imports(config_filename=str(tmp_path / ".importlinter"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert code != 0
    assert "fstore.definitions is not allowed to import fstore.serving" in out
