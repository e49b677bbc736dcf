"""Write requirements.txt from setup.py's install_requires (the one list of pinned dependencies).

`python scripts/requirements.py` rewrites requirements.txt; `--check` exits 1 when it differs
(tests/unit/test_requirements.py runs the same comparison in CI). setup.py is read with `ast`,
not run, so this works before anything is installed.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = ("# Generated from setup.py's install_requires by scripts/requirements.py: edit setup.py, then run\n"
          "# `python scripts/requirements.py`. `pip install -r requirements.txt` installs the runtime dependencies;\n"
          "# `pip install -e .` installs the same and the package itself.\n")


def install_requires(setup_py: Path = ROOT / "setup.py") -> list[str]:
    """The literal ``install_requires`` list of the ``setup(...)`` call."""
    for node in ast.walk(ast.parse(setup_py.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setup":
            for keyword in node.keywords:
                if keyword.arg == "install_requires":
                    return list(ast.literal_eval(keyword.value))
    raise SystemExit(f"{setup_py}: no literal install_requires in setup(...)")


def render(requirements: list[str]) -> str:
    return HEADER + "".join(f"{line}\n" for line in requirements)


def main(argv: list[str]) -> int:
    target = ROOT / "requirements.txt"
    text = render(install_requires())
    if "--check" in argv:
        if not target.exists() or target.read_text() != text:
            print("requirements.txt differs from setup.py's install_requires: run python scripts/requirements.py",
                  file=sys.stderr)
            return 1
        return 0
    target.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
