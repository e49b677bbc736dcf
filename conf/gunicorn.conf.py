"""gunicorn settings for ``gunicorn -c conf/gunicorn.conf.py server:app``.

- bind from ``PORT`` (default 8002), ``WEB_CONCURRENCY`` workers (default 2, one per core here).
- ``gthread`` workers with ``GUNICORN_THREADS`` threads: a slow historical request holds one
  thread, not the whole worker, and keep-alive connections are honoured (sync workers ignore them).
- ``preload_app`` off: each worker builds its own app, so registry pools, Redis connections and a
  lazily created Spark session are never shared across a fork.
- No ``max_requests`` recycling: gunicorn's recycling pauses a worker and resets its connections
  (see ANCHORS.md); fstore workers do not leak, so they live as long as the server.
- No access log unless ``GUNICORN_ACCESS_LOG`` names a file (``-`` for stderr).
- Requests gunicorn itself refuses (oversize headers, a bad request line) are answered in the JSON
  error shape (``post_worker_init`` → ``fstore.api.gunicorn_errors``), not gunicorn's HTML page.
"""
from __future__ import annotations

import os

from gunicorn.glogging import Logger

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{int(os.environ.get('PORT', '8002'))}"
workers = int(os.environ.get("WEB_CONCURRENCY", os.environ.get("GUNICORN_WORKERS", "2")))
# GUNICORN_WORKER_CLASS=gevent suits pods that only serve online lookups: one OS thread per worker,
# no hand-off between a poller thread and a request thread, keep-alive honoured. 4 clients, 1 entity:
# more requests/s for less worker CPU per request than gunicorn's gthread (README, Performance). Its
# cost: a request that computes in C without waiting on a socket (historical retrieval on DuckDB) and
# registry writes on PostgreSQL (psycopg2) hold the worker's other requests until they finish.
# "gthread" (the default) is fstore's own gthread worker (fstore/api/gunicorn_worker.py): it spreads
# keep-alive connections over the workers and, on SIGTERM, answers each idle keep-alive connection's next
# request with "Connection: close" for GUNICORN_DRAIN_SECONDS before closing it. "gthread-stock" is
# gunicorn's own, for comparison.
_worker_classes = {"gthread": "fstore.api.gunicorn_worker.SpreadThreadWorker", "gthread-stock": "gthread"}
worker_class = _worker_classes.get(os.environ.get("GUNICORN_WORKER_CLASS", "gthread"),
                                   os.environ.get("GUNICORN_WORKER_CLASS", "gthread"))
if worker_class.startswith("fstore."):
    from fstore.api import gunicorn_worker  # noqa: E402 - in the master: its shared table precedes the fork

    gunicorn_worker.drain_seconds()  # a bad GUNICORN_DRAIN_SECONDS stops the master, naming the variable
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
preload_app = False
max_requests = 0
max_requests_jitter = 0
keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "30"))
# Historical retrieval runs Spark inside a request; give it time, but not forever.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "300"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "30"))
backlog = 2048
limit_request_line = 8190
limit_request_fields = 100
# The access log is off unless asked for (GUNICORN_ACCESS_LOG=- writes it to stderr): every request is
# already counted in /monitoring/metrics and the usage log, and writing one more log line per request
# cost a third of the single-entity throughput (4 clients: 1,293 req/s with it, 2,023 without, measured).
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "") or None


class QuietAccessLogger(Logger):
    """gunicorn's logger, doing no access-log work per request while the access log is off.

    With ``logconfig_dict`` set, gunicorn's own logger formats every request's access-log fields
    (dates, headers) before the ``gunicorn.access`` logger drops the line: 4 % of a gevent worker's
    samples at 1 entity (py-spy).
    """

    def access(self, resp, req, environ, request_time):
        if self.cfg.accesslog:
            super().access(resp, req, environ, request_time)


logger_class = QuietAccessLogger
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["console"], "propagate": False},
        # With the access log off, the handler here must not write it either.
        "gunicorn.access": {"level": "INFO" if accesslog else "WARNING", "handlers": ["console"], "propagate": False},
        "fstore": {"level": loglevel.upper(), "handlers": ["console"], "propagate": False},
    },
    "root": {"level": "WARNING", "handlers": ["console"]},
}


def on_starting(server):
    """In the master, before any worker loads the app: tell the app where it listens, share metrics.

    ``FSTORE_BIND_HOST`` (gunicorn's real bind list, ``-b`` flags included) decides whether API keys
    are required when ``AUTH_ENABLED`` is not set. ``PROMETHEUS_MULTIPROC_DIR`` must be set before any
    process imports prometheus_client, so every worker writes its figures where a scrape adds them up;
    a fresh folder per start keeps old figures out.
    """
    import shutil
    import tempfile

    os.environ["FSTORE_BIND_HOST"] = ",".join(server.cfg.bind)
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    folder = given or os.path.join(tempfile.gettempdir(), f"fstore-metrics-{os.getpid()}")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    if not given:
        _created_metrics_dirs.append(folder)
    # Imported now, with the folder set, not inside child_exit: that hook runs in a signal handler,
    # where a first import can be re-entered by the next worker's exit.
    from prometheus_client import multiprocess

    _multiprocess.append(multiprocess)


_created_metrics_dirs: list[str] = []
_multiprocess: list = []


def on_exit(server):
    """The master stops: remove the metrics folder this start created (its figures die with the workers)."""
    import shutil

    for folder in _created_metrics_dirs:
        shutil.rmtree(folder, ignore_errors=True)


def post_worker_init(worker):
    """In each worker: gunicorn's own 400/431 answers (bad request line, oversize headers) in the JSON error shape."""
    from fstore.api.gunicorn_errors import install

    install()


def child_exit(server, worker):
    """A worker ended: drop its live gauges from the shared metrics folder."""
    for multiprocess in _multiprocess:
        multiprocess.mark_process_dead(worker.pid)
    if worker_class.startswith("fstore."):
        gunicorn_worker.forget(worker.pid)
