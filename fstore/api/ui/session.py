"""The UI's login: an API key typed once, sealed into Flask's session cookie, checked on every page.

The cookie is Flask's signed session (``HttpOnly``, ``SameSite=Strict``, path ``/ui``) holding the key
encrypted with Fernet, so the cookie never shows the key in clear and expires after ``SESSION_HOURS``.
Both keys derive from ``UI_SESSION_SECRET`` (else ``FSTORE_SECRET_KEY``): every worker of a deployment
shares them, and no secret lives in code. The key is verified, and its scope checked, on every request
by the API's own ``KeyVerifier``, so a revoked key stops working in the UI as it does in the API.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import timedelta

from cryptography.fernet import Fernet, InvalidToken
from flask import Flask, current_app, session

from fstore.core.settings import Settings

SESSION_HOURS = 12
COOKIE_NAME = "fstore_ui"
SCOPE = "read_registry"  # what every UI page needs, as the API's GET /api/v1/… and /monitoring/…


def _root(settings: Settings) -> bytes | None:
    raw = settings.ui_session_secret or settings.secret_key.split(",")[0]
    return hashlib.sha256(b"fstore-ui-session\0" + raw.encode("utf-8")).digest() if raw else None


def _derive(root: bytes, purpose: bytes) -> bytes:
    return hmac.new(root, purpose, hashlib.sha256).digest()


def configure(app: Flask, settings: Settings) -> None:
    """Cookie settings, and the signing key when a secret is configured (else the UI cannot keep a login)."""
    root = _root(settings)
    app.config.update(SESSION_COOKIE_NAME=COOKIE_NAME, SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                      SESSION_COOKIE_PATH="/ui", PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS))
    if root is not None:
        app.secret_key = _derive(root, b"sign").hex()
        app.extensions["fstore_ui_fernet"] = Fernet(base64.urlsafe_b64encode(_derive(root, b"seal")))


def can_log_in() -> bool:
    """True when a session secret is configured."""
    return "fstore_ui_fernet" in current_app.extensions


def remember(key: str) -> None:
    """Keep ``key`` (already verified) in the session cookie, encrypted."""
    session.clear()
    session.permanent = True
    session["key"] = current_app.extensions["fstore_ui_fernet"].encrypt(key.encode("utf-8")).decode("ascii")


def remembered() -> str | None:
    """The key this browser logged in with; None when there is none, or it expired or was tampered with."""
    sealed = session.get("key")
    fernet = current_app.extensions.get("fstore_ui_fernet")
    if not isinstance(sealed, str) or fernet is None:
        return None
    try:
        return fernet.decrypt(sealed.encode("ascii"), ttl=SESSION_HOURS * 3600).decode("utf-8")
    except (InvalidToken, UnicodeError):
        return None


def forget() -> None:
    session.clear()
