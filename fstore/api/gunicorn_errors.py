"""gunicorn's own error answers in fstore's JSON error shape.

A request gunicorn refuses before the app sees it (a bad request line, headers over
``limit_request_field_size``, an invalid header) is answered by gunicorn itself:
every worker class calls ``gunicorn.util.write_error(sock, status, reason, message)``
from ``Worker.handle_error``, which writes an HTML page. ``install()`` (called from
``conf/gunicorn.conf.py`` in each worker) replaces that one function, so those
answers carry ``{"error": {"code", "message", "field"}}`` like every other error,
whatever the worker class (sync, gthread, gevent).
"""
from __future__ import annotations

import json

# The codes fstore.api.errors gives the same statuses (no Flask import here: this runs in gunicorn's error path).
_CODES = {400: "bad_request", 403: "forbidden", 431: "headers_too_large", 500: "internal_error", 501: "not_implemented"}


def json_error(status: int, reason: str, message: str) -> bytes:
    """The whole HTTP/1.1 response gunicorn sends for its own error, with a JSON body."""
    code = _CODES.get(status, "bad_request" if status < 500 else "internal_error")
    body = json.dumps({"error": {"code": code, "message": message or reason, "field": None}}).encode("utf-8")
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def write_json_error(sock, status_int: int, reason: str, mesg: str) -> None:
    """Drop-in for ``gunicorn.util.write_error``."""
    from gunicorn import util

    util.write_nonblock(sock, json_error(int(status_int), reason, mesg))


def install() -> None:
    """Make this process's gunicorn answer its own errors as JSON."""
    from gunicorn import util

    util.write_error = write_json_error
