"""The online endpoint's fast path: ``POST /api/v1/serving/online`` answered below Flask.

Online lookups are the one endpoint where the web framework costs more than the
work: Flask's request context, routing, the body hooks and flask-openapi3's
validation took about 0.2 ms of a 0.8 ms request (profiled). ``OnlineFastPath``
wraps the Flask app's WSGI callable and answers an ordinary online request
itself, with the same steps in the same order:

1. the API key (when auth is on): present, valid, with the ``serve_online`` scope
   and an unrestricted grant;
2. no query string (the endpoint takes no parameters); the body: within
   ``MAX_BODY_BYTES``, ``Content-Type`` JSON, a JSON object (of Unicode text: orjson
   refuses a lone surrogate, as ``fstore.api.errors`` does) that ``OnlineBody`` accepts,
   with no entity value that orjson read as a float (an integer beyond 64 bits is one);
3. ``fstore.serving.online.answer_online`` (what ``store.get_online_features`` runs), whose coverage
   counts go to usage in place of the answer;
4. the request metrics and the usage record the after-request hook writes.

Anything else — a missing or bad key, a grant limited to some features, a body
that fails any check, an error from the store — is handed to Flask untouched
(the body put back), so every error keeps its one code path and its one shape
(``fstore.api.errors``) and is counted once. Only successful answers are made
here, so the two paths cannot disagree on what a failure looks like.
"""
from __future__ import annotations

import io
import time
from typing import Any, Callable, Iterable

import orjson
from pydantic import ValidationError

from fstore.ops import metrics
from fstore.api.schemas import OnlineBody
from fstore.api.security import required_scope
from fstore.core.errors import FStoreError, Unavailable
from fstore.serving.online import answer_online

PATH = "/api/v1/serving/online"
UNAVAILABLE_KEY = "fstore.unavailable"  # the backend this request already found down (the view re-raises it)
_JSON_HEADERS = "application/json"


class OnlineFastPath:
    """WSGI middleware: online requests that pass every check are answered here; the rest go to ``app``."""

    def __init__(self, app: Callable, store, security, *, max_body_bytes: int) -> None:
        self.app = app
        self.store = store
        self.security = security
        self.max_body_bytes = max_body_bytes

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        if environ.get("QUERY_STRING"):  # the endpoint takes no parameters: Flask names the unknown one (422)
            return self.app(environ, start_response)
        started = time.perf_counter()
        body = self._read_body(environ)
        answer = self._answer(environ, body, started) if body is not None else None
        if answer is None:
            return self.app(environ, start_response)
        start_response("200 OK", [("Content-Type", _JSON_HEADERS), ("Content-Length", str(len(answer)))])
        return [answer]

    def _read_body(self, environ: dict) -> bytes | None:
        """The body, read once and put back for Flask; None when Flask should read it (no length, too long)."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            return None
        if not 0 < length <= self.max_body_bytes:
            return None
        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        return body

    def _answer(self, environ: dict, body: bytes, started: float) -> bytes | None:
        """The answer's bytes, or None to let Flask handle (and explain) the request."""
        mimetype = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
        if mimetype != "application/json" and not mimetype.endswith("+json"):
            return None
        key = None
        if self.security.enabled:
            key = self._key(environ)
            if key is None:
                return None
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(data) is not dict or _has_float(data.get("entities")):
            return None
        try:
            OnlineBody.model_validate(data)
            result, coverage = answer_online(self.store, features=data["features"], entities=data["entities"],
                                             feature_sets=data.get("feature_sets"))
            answer = orjson.dumps(result, default=_json_default, option=orjson.OPT_PASSTHROUGH_DATETIME) + b"\n"
        except Unavailable as exc:  # Flask answers it, without asking the backend a second time
            environ[UNAVAILABLE_KEY] = exc
            return None
        except (ValidationError, FStoreError, TypeError):
            return None
        seconds = time.perf_counter() - started
        metrics.observe_request(PATH, "POST", 200, seconds)
        self.security.usage.record(endpoint="online", api_key=key.prefix if key is not None else "", body=data,
                                   response_body=coverage or answer, latency_ms=seconds * 1000.0)
        return answer

    def _key(self, environ: dict):
        """The verified, unrestricted key with the ``serve_online`` scope; None for anything less."""
        header = environ.get("HTTP_AUTHORIZATION", "")
        if header:
            scheme, _, value = header.partition(" ")
            presented = value.strip() if scheme.lower() == "bearer" else ""
        else:
            presented = environ.get("HTTP_X_API_KEY", "").strip()
        if not presented:
            return None
        try:
            key = self.security.verifier.verify(presented)
        except FStoreError:
            return None
        if not key.has_scope(required_scope("POST", PATH)) or not key.grant.unrestricted:
            return None
        return key


def _has_float(entities: Any) -> bool:
    """True when an entity value parsed as a float: orjson reads an integer beyond 64 bits as one (2**64 becomes
    1.8446744073709552e+19), so such a request goes to Flask, whose parser keeps every digit."""
    if type(entities) is dict:
        values = entities.values()
    elif type(entities) is list:
        values = [v for row in entities if type(row) is dict for v in row.values()]
    else:
        return False
    return any(type(v) is float or (type(v) is list and any(type(x) is float for x in v)) for v in values)


def _json_default(value: Any) -> Any:
    from fstore.api.render import to_json_value

    return to_json_value(value)
