"""A small circuit breaker: stop calling a backend that keeps failing, try again later by itself.

Closed: calls pass; ``threshold`` consecutive failures open it. Open: calls fail at
once (no socket touched) until ``reset_seconds`` pass. Half-open: one caller is let
through as a probe; its success closes the breaker, its failure opens it again with
the wait doubled (up to ``max_reset_seconds``). Thread-safe; time is injectable for tests.
"""
from __future__ import annotations

import threading
import time
from typing import Callable


class CircuitOpen(Exception):
    """Raised instead of calling the backend while the breaker is open."""

    def __init__(self, retry_in: float, last_error: str) -> None:
        super().__init__(f"circuit open (retry in {retry_in:.2f}s); last error: {last_error}")
        self.retry_in = retry_in
        self.last_error = last_error


class CircuitBreaker:
    def __init__(self, *, threshold: int = 3, reset_seconds: float = 0.5, max_reset_seconds: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.reset_seconds = reset_seconds
        self.max_reset_seconds = max_reset_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._wait = reset_seconds
        self._probing = False
        self.last_error = ""

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half-open" if self._clock() - self._opened_at >= self._wait else "open"

    def before_call(self) -> None:
        """Raise ``CircuitOpen`` unless a call may go to the backend now."""
        if self._opened_at is None:  # fast path without the lock: the common, healthy case
            return
        with self._lock:
            if self._opened_at is None:
                return
            waited = self._clock() - self._opened_at
            if waited < self._wait or self._probing:
                raise CircuitOpen(max(self._wait - waited, 0.0), self.last_error)
            self._probing = True

    def success(self) -> None:
        if self._failures == 0 and self._opened_at is None:
            return
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._wait = self.reset_seconds
            self._probing = False

    def failure(self, error: BaseException) -> None:
        with self._lock:
            self.last_error = str(error) or type(error).__name__
            self._failures += 1
            if self._probing:
                self._probing = False
                self._wait = min(self._wait * 2, self.max_reset_seconds)
                self._opened_at = self._clock()
            elif self._failures >= self.threshold:
                self._opened_at = self._clock()
