"""The REST API's one error path: every failure becomes ``{"error": {"code", "message", "field"}}``.

Library errors (``FStoreError``) carry their own HTTP status; request validation
errors from pydantic become 422 naming the field; HTTP-level problems (unknown
route, wrong method, unreadable or oversized body, wrong content type) keep their
status with a JSON body; anything else is a logged 500 with a generic message.
The body checks run once, before any view, so a view only sees a parsed JSON
object.
"""
from __future__ import annotations

import json
import re
from typing import Any

from flask import Flask, Response, current_app, request
from flask.json.provider import DefaultJSONProvider
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from fstore.core.errors import BadRequest, FStoreError, InvalidDefinition, TooLarge

_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|any|list\[.*\]|dict\[.*\]|function-.*|.*\[.*\]|[A-Z]\w*)$")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_HTTP_CODES = {
    400: "bad_request", 404: "not_found", 405: "method_not_allowed", 406: "not_acceptable",
    413: "too_large", 414: "uri_too_long", 415: "unsupported_media_type", 431: "headers_too_large",
}


class ErrorDetail(BaseModel):
    """What went wrong: a machine code, a message for people, and the field at fault (if one is)."""

    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def error_response(status: int, code: str, message: str, field: str | None = None) -> Response:
    """A JSON error response in the one shape all errors share."""
    body = {"error": {"code": code, "message": message, "field": field}}
    return current_app.response_class(json.dumps(body), status=status, mimetype="application/json")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class NotUnicode(ValueError):
    """A body that is not Unicode text: bytes that do not decode, or a lone surrogate (raw or ``\\ud800``).

    Python's ``json`` accepts a lone surrogate, and the string then fails wherever it is
    encoded (the registry's insert, Redis, a log line), far from the request. A
    ``ValueError``, so ``request.get_json(silent=True)`` still answers None.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def _check_unicode(value: Any) -> None:
    """Raise ``NotUnicode`` naming a field whose text (value or key) holds a lone surrogate."""
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:  # a loop, not recursion: the body may be nested as deep as json allows
        where, item = pending.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if _lone_surrogate(key):
                    raise _not_unicode(f"a key in {where or 'the body'}", key, where)
                pending.append((f"{where}.{key}" if where else key, child))
        elif isinstance(item, list):
            pending.extend((f"{where}.{number}" if where else str(number), child) for number, child in enumerate(item))
        elif isinstance(item, str) and _lone_surrogate(item):
            raise _not_unicode(where or "the body", item, where)


def _lone_surrogate(text: str) -> str:
    """The first lone surrogate in ``text`` ("" when none); a pair written as two escapes is one character by now."""
    return next((c for c in text if "\ud800" <= c <= "\udfff"), "")


def _not_unicode(what: str, text: str, field: str) -> NotUnicode:
    code = ord(_lone_surrogate(text))
    return NotUnicode(f"request body is not valid Unicode: {what} holds \\u{code:04x}, half of a surrogate pair "
                      "and not a character", field or None)


class JSONProvider(DefaultJSONProvider):
    """Strict JSON in (no NaN/Infinity, only Unicode text), ISO 8601 timestamps with ``Z`` out, keys in the order given."""

    sort_keys = False

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        kwargs.setdefault("parse_constant", _reject_constant)
        if isinstance(s, (bytes, bytearray)):
            # json.loads would decode with "surrogatepass"; strict decoding refuses raw surrogates here.
            try:
                s = s.decode(json.detect_encoding(s))
            except UnicodeDecodeError as exc:
                raise NotUnicode(f"request body is not valid {exc.encoding.upper()}: byte {exc.start} "
                                 "cannot be decoded") from None
        value = json.loads(s, **kwargs)
        if _SURROGATE_ESCAPE.search(s):  # only an escape can still make a lone surrogate: check just then
            _check_unicode(value)
        return value

    @staticmethod
    def default(o: Any) -> Any:  # type: ignore[override]
        from fstore.api.render import to_json_value

        return to_json_value(o)


def validation_error_callback(exc: ValidationError) -> Response:
    """flask-openapi3's hook for pydantic errors: 422 naming the first field at fault."""
    messages = []
    first_field = None
    for error in exc.errors(include_url=False):
        # pydantic adds a union member's type to the location ("ttl.int"); users think in their own fields.
        loc = [str(part) for part in error.get("loc", ()) if not _TYPE_TAG.match(str(part))]
        field = ".".join(loc) or None
        first_field = first_field or field
        kind = error.get("type", "")
        if kind == "missing":
            text = f"{field} is required"
        elif kind == "extra_forbidden":
            text = f"unknown field {field}"
        else:
            msg = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
            text = f"{field}: {msg}" if field else msg
        if text not in messages:
            messages.append(text)
    return error_response(422, InvalidDefinition.code, "; ".join(messages[:5]) or "invalid request", first_field)


def check_body() -> None:
    """Before every view: a write's body is JSON (415), within the size limit (413) and an object (400/422).

    Parsing here, once, caches the result on the request, so validation and the view reuse it.
    """
    if request.method not in _BODY_METHODS:
        return None
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"request body of {request.content_length} bytes is over the limit of {limit} bytes")
    if request.blueprint == "ui":
        return None  # the monitoring UI's login and logout are HTML forms (fstore.api.ui.views)
    if request.mimetype != "application/json" and not request.mimetype.endswith("+json"):
        given = request.mimetype or "none"
        raise _UnsupportedMediaType(f"Content-Type must be application/json, not {given}")
    try:
        body = request.get_json(silent=False)
    except RecursionError:
        raise BadRequest("request body is not valid JSON: nested too deeply") from None
    except HTTPException as exc:
        if exc.code == 413:
            raise TooLarge(f"request body is over the limit of {limit} bytes") from None
        not_unicode = _cause(exc, NotUnicode)
        if not_unicode is not None:
            raise BadRequest(not_unicode.message, field=not_unicode.field) from None
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidDefinition("the request body must be a JSON object")
    return None


def _cause(exc: BaseException, kind: type[BaseException]) -> Any:
    """The first exception of ``kind`` in ``exc``'s chain (Flask wraps a parse error in ``BadRequest``), or None."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, kind):
        seen = seen.__cause__ or seen.__context__
    return seen


class _UnsupportedMediaType(BadRequest):
    http_status = 415
    code = "unsupported_media_type"


def register_error_handlers(app: Flask) -> None:
    """Install the body check and the handlers that make every error JSON."""
    app.before_request(check_body)

    @app.errorhandler(FStoreError)
    def _fstore_error(exc: FStoreError):
        return error_response(exc.http_status, exc.code, exc.message, exc.field)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if exc.response is not None:  # flask-openapi3's validation response, already shaped
            return exc.response
        status = exc.code or 500
        code = _HTTP_CODES.get(status, "bad_request" if status < 500 else "internal_error")
        if status == 404:
            message = f"no such endpoint: {request.method} {request.path}"
        elif status == 405:
            allowed = ", ".join(sorted(exc.valid_methods or ())) if hasattr(exc, "valid_methods") else ""
            message = f"method {request.method} is not allowed on {request.path}" + (f"; use {allowed}" if allowed else "")
        elif status == 413:
            message = f"request body is over the limit of {current_app.config['MAX_CONTENT_LENGTH']} bytes"
        else:
            message = exc.description or exc.name
        response = error_response(status, code, message)
        if status == 405 and getattr(exc, "valid_methods", None):
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "internal server error; the details are in the server log")
