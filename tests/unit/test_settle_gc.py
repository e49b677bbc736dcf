"""``fstore.api.settle_gc``: what a server worker does to its garbage collector once the app is loaded."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_settle_gc_freezes_what_is_loaded_and_raises_the_first_threshold():
    # in a process of its own: a frozen heap is never collected, which a test process must not inherit
    code = """
import gc
from fstore.api import GC_GEN0_THRESHOLD, settle_gc
before = gc.get_threshold()
settle_gc()
after = gc.get_threshold()
assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()
assert after == (GC_GEN0_THRESHOLD, before[1], before[2]), (before, after)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
