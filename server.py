"""The REST server: ``gunicorn -c conf/gunicorn.conf.py server:app`` in production, ``python server.py`` to develop.

Thin on purpose: everything lives in ``fstore.api.create_app``; settings come from the
environment (``PORT``, ``DATABASE_URL``, ``REDIS_URL``, …).
"""
from __future__ import annotations

from fstore.api import create_app

app = create_app()

if __name__ == "__main__":
    app.run(host="0.0.0.0", port=app.extensions["fstore"].settings.port, threaded=True)
