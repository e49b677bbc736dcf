"""fstore's processes give pyarrow the system allocator, unless the user chose a pool with pyarrow's own setting."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROGRAM = ("import pyarrow as pa; from fstore.engine.duckdb import connect; before = pa.default_memory_pool().backend_name; "
           "connect().close(); print(before, pa.default_memory_pool().backend_name)")


@pytest.mark.parametrize(("chosen", "after"), [(None, "system"), ("mimalloc", "mimalloc"), ("system", "system")])
def test_the_first_duckdb_connection_picks_the_system_allocator_unless_one_was_chosen(chosen, after):
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if chosen:
        env["ARROW_DEFAULT_MEMORY_POOL"] = chosen
    done = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[1] == after, done.stdout
