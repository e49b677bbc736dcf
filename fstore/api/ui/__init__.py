"""The read-only monitoring UI under ``/ui``: server-rendered pages over the same library calls as the API.

``install(app, store)`` registers the blueprint (``views.bp``) and the session cookie (``session``).
Pages call what the REST views call (``FeatureStore``, ``fstore.ops.monitoring``, ``fstore.ops.usage``,
``fstore.ops.metrics``) with the logged-in key's grant, so a figure here is the API's figure, and what a
key cannot see through the API it cannot see here (a hidden set answers 404 as an unknown one).
"""
from __future__ import annotations

from flask import Flask


def install(app: Flask, store) -> None:
    """Serve the UI on ``app`` (after ``fstore.api.security.install``, whose verifier it uses)."""
    from fstore.api.ui import session, views

    session.configure(app, store.settings)
    app.register_blueprint(views.bp)
