"""Which allocator pyarrow uses in fstore's processes: the system's (glibc malloc) unless the user chose one.

pyarrow's default pool here is mimalloc, which returns large freed blocks to the operating system at once and
faults them in again on the next allocation. Wide results pay that on every copy: a retrieval of 1,000 features
for 17,000 labels on DuckDB spent 0.74–1.05 s in one ``take`` of its rows into label order with mimalloc, and
0.14–0.15 s with the system allocator. Over 3 processes of 3 calls each (bench/wide.py's data, 2026-12-08): first
calls 4.62 s against 5.11 s, all calls 4.36 s against 4.75 s (means), and no call over 4.9 s against 5.43 s.
``ARROW_DEFAULT_MEMORY_POOL`` (pyarrow's own setting: ``system``, ``mimalloc`` or ``jemalloc``), when set, is
left alone.
"""
from __future__ import annotations

import os
import threading

_LOCK = threading.Lock()
_DONE = False


def prefer_system_allocator() -> None:
    """Make the system allocator pyarrow's default pool for this process, once, unless the user picked a pool.
    Buffers already allocated keep the pool that made them, so switching mid-process is safe."""
    global _DONE
    if _DONE:
        return
    with _LOCK:
        if _DONE:
            return
        _DONE = True
        if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
            return
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())
