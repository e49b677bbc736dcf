"""A small circuit breaker: stop calling a backend that keeps failing, notice quickly when it is back.

Closed: calls pass; ``threshold`` consecutive failures open it. Open: calls fail at
once (no socket touched). Recovery is checked at a short fixed interval
(``probe_seconds``), never a growing one: a backoff that doubles to seconds kept
serving down for seconds after the backend was healthy again (issue #32: 4.6 s).

- With a ``probe`` (a cheap call such as Redis ``PING``), a background thread runs it
  every ``probe_seconds`` while the breaker is open; its first success closes the
  breaker. No request is ever the probe, so none waits on a backend that is down.
- Without one, the first call after ``probe_seconds`` goes through as the half-open
  probe (alone); its success closes the breaker, its failure waits ``probe_seconds`` again.

Thread-safe; time is injectable for tests.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

log = logging.getLogger("fstore.storage.online")


class CircuitOpen(Exception):
    """Raised instead of calling the backend while the breaker is open."""

    def __init__(self, retry_in: float, last_error: str) -> None:
        super().__init__(f"circuit open (retry in {retry_in:.2f}s); last error: {last_error}")
        self.retry_in = retry_in
        self.last_error = last_error


class CircuitBreaker:
    def __init__(self, *, threshold: int = 3, probe_seconds: float = 0.2, probe: Callable[[], object] | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.threshold = threshold
        self.probe_seconds = probe_seconds
        self.probe = probe
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self.last_error = ""

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            if self.probe is None and self._clock() - self._opened_at >= self.probe_seconds:
                return "half-open"
            return "open"

    def before_call(self) -> None:
        """Raise ``CircuitOpen`` unless a call may go to the backend now."""
        if self._opened_at is None:  # fast path without the lock: the common, healthy case
            return
        with self._lock:
            if self._opened_at is None:
                return
            waited = self._clock() - self._opened_at
            if self.probe is not None or waited < self.probe_seconds or self._probing:
                raise CircuitOpen(max(self.probe_seconds - waited, 0.0), self.last_error)
            self._probing = True

    def success(self) -> None:
        if self._failures == 0 and self._opened_at is None:
            return
        with self._lock:
            was_open = self._opened_at is not None
            self._failures = 0
            self._opened_at = None
            self._probing = False
        if was_open:
            log.warning("online store answers again; circuit closed")

    def failure(self, error: BaseException) -> None:
        start_probe = False
        with self._lock:
            self.last_error = str(error) or type(error).__name__
            self._failures += 1
            if self._probing:
                self._probing = False
                self._opened_at = self._clock()
            elif self._opened_at is None and self._failures >= self.threshold:
                self._opened_at = self._clock()
                start_probe = self.probe is not None
        if start_probe:
            log.warning("online store failing (%s); circuit open, probing every %.2f s", self.last_error,
                        self.probe_seconds)
            threading.Thread(target=self._probe_loop, name="fstore-breaker-probe", daemon=True).start()

    def _probe_loop(self) -> None:
        """While open: run the probe every ``probe_seconds``; its first success closes the breaker."""
        while self._opened_at is not None:
            self._sleep(self.probe_seconds)
            try:
                self.probe()
            except Exception as exc:  # noqa: BLE001 - still down: keep the last error for the 503's message
                self.last_error = str(exc) or type(exc).__name__
                continue
            self.success()
            return
