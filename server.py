"""The REST server: ``gunicorn -c conf/gunicorn.conf.py server:app`` in production, ``python server.py`` to develop.

Thin on purpose: everything lives in ``fstore.api.create_app``; settings come from the
environment (``PORT``, ``DATABASE_URL``, ``REDIS_URL``, …).
"""
from __future__ import annotations

import os

# Where this server listens decides whether API keys are required (when AUTH_ENABLED is unset);
# under gunicorn the config already set it from the real bind list.
os.environ.setdefault("FSTORE_BIND_HOST", os.environ.get("HOST", "0.0.0.0"))

from fstore.api import create_app, settle_gc  # noqa: E402

app = create_app()
settle_gc()  # each worker process loads this module, so each settles its own collector

if __name__ == "__main__":
    app.run(host=os.environ.get("HOST", "0.0.0.0"), port=app.extensions["fstore"].settings.port, threaded=True)
