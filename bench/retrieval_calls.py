"""The order and timing of historical retrieval calls, the same for Feast and fstore.

One process retrieves for each entity file in turn: a first (cold) call before the first
file, then ``repeats`` timed calls per file (``seconds``). After every file has had those,
each file gets more calls until it has had ``long_lived`` in all; the best of its last
``repeats`` is ``long_lived_seconds``, what a process that has already served many
retrievals takes (a server, a notebook after its first few calls). Both systems run the
same sequence, so a system that warms up (a JVM) and one that does not are each measured
early and late.
"""
from __future__ import annotations

import time
from typing import Any, Callable


def time_retrievals(retrieve: Callable[[Any], Any], entity_frames: list[Any], *, repeats: int,
                    long_lived: int) -> tuple[list[dict], list[Any]]:
    """``retrieve(frame)`` per frame in the order above: per frame the figures, and the last result."""
    figures: list[dict] = [{"cold_seconds": None, "seconds": [], "long_lived_seconds": []} for _ in entity_frames]
    results: list[Any] = [None] * len(entity_frames)

    def call(index: int) -> float:
        began = time.perf_counter()
        results[index] = retrieve(entity_frames[index])
        return time.perf_counter() - began

    for index in range(len(entity_frames)):
        if index == 0:
            figures[0]["cold_seconds"] = call(0)
        figures[index]["seconds"] = [call(index) for _ in range(repeats)]
    for index in range(len(entity_frames)):
        later = [call(index) for _ in range(max(long_lived - repeats, 0))]
        figures[index]["long_lived_seconds"] = later[-repeats:] if long_lived > repeats else []
    return figures, results
