"""The HTTP load client both servers are measured with: keep-alive ``http.client``, bodies prepared up front.

One client sends requests back to back (latency percentiles); ``concurrent`` runs
the same loop in several processes (a Python thread per client would serialize
on the GIL) for a fixed number of requests each. The client runs on the same 2
cores as the server and Redis, so its own cost is inside every figure; it is the
same cost for both systems.
"""
from __future__ import annotations

import http.client
import json
import multiprocessing
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

BodyMaker = Callable[[list[int]], bytes]


@dataclass(frozen=True, kw_only=True)
class Target:
    """A server endpoint: where to POST and how to build a request body for some entity ids."""

    name: str
    port: int
    path: str
    body: BodyMaker
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)


def bodies(target: Target, *, requests: int, batch: int, users: int, seed: int) -> list[bytes]:
    """``requests`` bodies of ``batch`` distinct random existing user ids each (deterministic)."""
    rng = np.random.default_rng(seed)
    return [target.body(sorted(int(u) for u in rng.choice(users, size=batch, replace=False))) for _ in range(requests)]


class _Client:
    """One keep-alive connection that reconnects (and counts it) when the server drops it."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.headers = dict(target.headers)
        self.errors = 0
        self.reconnects = 0
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.target.port, timeout=30)

    def post(self, body: bytes) -> bytes | None:
        """The response body, or None after a failure (status ≠ 200 or a dropped connection)."""
        try:
            self.conn.request("POST", self.target.path, body, self.headers)
            response = self.conn.getresponse()
            data = response.read()
        except (http.client.HTTPException, ConnectionError, OSError):
            self.errors += 1
            self.reconnects += 1
            self.conn.close()
            self.conn = self._connect()
            return None
        if response.status != 200:
            self.errors += 1
            return None
        return data

    def close(self) -> None:
        self.conn.close()


def check(target: Target, body: bytes) -> dict:
    """One request, answered 200 with a JSON body, or a RuntimeError naming what the server said."""
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
    try:
        conn.request("POST", target.path, body, dict(target.headers))
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RuntimeError(f"{target.name} answered {response.status} on {target.path}: {data[:500]!r}")
    return json.loads(data)


def _run(target: Target, payloads: list[bytes], warmup: int) -> tuple[np.ndarray, int, int, float]:
    client = _Client(target)
    for body in payloads[:warmup]:
        client.post(body)
    client.errors = client.reconnects = 0
    latencies = []
    began = time.perf_counter()
    for body in payloads[warmup:]:
        t0 = time.perf_counter_ns()
        ok = client.post(body)
        if ok is not None:
            latencies.append(time.perf_counter_ns() - t0)
    elapsed = time.perf_counter() - began
    client.close()
    return np.array(latencies, dtype=np.int64), client.errors, client.reconnects, elapsed


def _summary(latencies_ns: np.ndarray, errors: int, reconnects: int, elapsed: float, clients: int) -> dict:
    ms = latencies_ns / 1e6
    ok = len(ms)
    return {
        "clients": clients, "requests_ok": ok, "errors": errors, "reconnects": reconnects,
        "seconds": round(elapsed, 3), "req_per_s": round(ok / elapsed, 1) if elapsed > 0 else None,
        "p50_ms": round(float(np.percentile(ms, 50)), 3) if ok else None,
        "p95_ms": round(float(np.percentile(ms, 95)), 3) if ok else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 3) if ok else None,
        "max_ms": round(float(ms.max()), 3) if ok else None,
    }


def sequential(target: Target, payloads: list[bytes], *, warmup: int) -> dict:
    """One client, requests back to back after ``warmup`` untimed ones."""
    latencies, errors, reconnects, elapsed = _run(target, payloads, warmup)
    return _summary(latencies, errors, reconnects, elapsed, 1)


def _worker(args) -> tuple[bytes, int, int, float]:
    target, payloads, warmup, start_at = args
    client = _Client(target)
    for body in payloads[:warmup]:
        client.post(body)
    client.errors = client.reconnects = 0
    while time.time() < start_at:  # all clients start together after their own warm-up
        time.sleep(0.001)
    latencies = []
    began = time.perf_counter()
    for body in payloads[warmup:]:
        t0 = time.perf_counter_ns()
        if client.post(body) is not None:
            latencies.append(time.perf_counter_ns() - t0)
    elapsed = time.perf_counter() - began
    client.close()
    return np.array(latencies, dtype=np.int64).tobytes(), client.errors, client.reconnects, elapsed


def concurrent(target: Target, payloads: list[list[bytes]], *, warmup: int) -> dict:
    """``len(payloads)`` client processes at once; req/s over the slowest client's elapsed time."""
    context = multiprocessing.get_context("fork")
    start_at = time.time() + 2.0
    with context.Pool(len(payloads)) as pool:
        results = pool.map(_worker, [(target, p, warmup, start_at) for p in payloads])
    latencies = np.concatenate([np.frombuffer(r[0], dtype=np.int64) for r in results])
    errors = sum(r[1] for r in results)
    reconnects = sum(r[2] for r in results)
    elapsed = max(r[3] for r in results)
    return _summary(latencies, errors, reconnects, elapsed, len(payloads))
