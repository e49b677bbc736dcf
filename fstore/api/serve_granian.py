"""The REST API on Granian, a Rust HTTP server, in place of gunicorn: ``fstore serve --server granian``.

Why: for pods that serve online lookups, the HTTP server is most of a request's time. fstore's
own work for a 1-entity online answer is about 0.2 ms in process (the Redis round trip
included); under gunicorn a request takes 0.6-0.7 ms at the median. Granian parses HTTP and
holds connections in Rust and calls the WSGI app from its own threads: measured on this
machine (1 client, keep-alive, 1 entity × 10 features, 2 workers) p50 0.39 ms and p99
0.62 ms, against gunicorn's 0.68 ms and 1.10 ms (README, Performance).

It reads the environment as ``conf/gunicorn.conf.py`` does — ``HOST``, ``PORT``,
``WEB_CONCURRENCY`` (or ``GUNICORN_WORKERS``) — and does what that config does around the
app: tells the app where it listens (``FSTORE_BIND_HOST``, which decides whether keys are
required when ``AUTH_ENABLED`` is unset) and gives the workers one fresh
``PROMETHEUS_MULTIPROC_DIR``, removed when the server stops, so a scrape adds up every
worker's figures. ``server.py`` is the app, found from this tree, so the user's working
folder (and a relative ``STORAGE_PATH``) stays.

What gunicorn's setup has and this has not (README, "REST API"): the connection
spreading and the keep-alive drain on SIGTERM of fstore's gthread worker (Granian shuts its
workers down in its own way), JSON answers for requests the server itself
refuses (Granian answers those), and dropping a dead worker's live gauges (a worker that
dies is respawned; its gauges stay until the server restarts).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # where server.py is


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fstore.api.serve_granian", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8002")))
    parser.add_argument("--workers", type=int,
                        default=int(os.environ.get("WEB_CONCURRENCY", os.environ.get("GUNICORN_WORKERS", "2"))))
    args = parser.parse_args(argv)
    from granian import Granian
    from granian.constants import Interfaces

    os.environ["FSTORE_BIND_HOST"] = args.host
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, str(REPO_ROOT))
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    folder = given or tempfile.mkdtemp(prefix=f"fstore-metrics-{os.getpid()}-")
    os.makedirs(folder, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    try:
        Granian("server:app", address=args.host, port=args.port, interface=Interfaces.WSGI, workers=args.workers,
                log_access=False, respawn_failed_workers=True).serve()  # requests are counted in /monitoring
    finally:
        if not given:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
