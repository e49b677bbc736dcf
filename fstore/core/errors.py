"""One exception tree for the whole library.

Every error a user can cause or meet is an ``FStoreError``. Each subclass says
*why* by its type and carries the HTTP status and CLI exit code it maps to, so
the server and the CLI each translate errors in one place and the library never
imports a web framework.
"""
from __future__ import annotations


class FStoreError(Exception):
    """Root of every fstore error."""

    http_status: int = 500
    exit_code: int = 1
    code: str = "internal_error"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        """The JSON error body: ``{"error": {"code", "message", "field"}}``."""
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class InvalidDefinition(FStoreError):
    """A definition or request is malformed: bad name, type, cron, SQL, value."""

    http_status = 422
    exit_code = 2
    code = "invalid"


class BadRequest(FStoreError):
    """The request itself cannot be read (malformed JSON, wrong content type)."""

    http_status = 400
    exit_code = 2
    code = "bad_request"


class NotFound(FStoreError):
    """A named object (entity, feature set, feature, run, key) does not exist."""

    http_status = 404
    exit_code = 3
    code = "not_found"


class AlreadyExists(FStoreError):
    """Creating an object whose name is taken."""

    http_status = 409
    exit_code = 4
    code = "already_exists"


class Conflict(FStoreError):
    """The request collides with current state: dependants, a running job, a lock."""

    http_status = 409
    exit_code = 5
    code = "conflict"


class TooLarge(FStoreError):
    """A body, an entity list or a row count over the configured limit."""

    http_status = 413
    exit_code = 2
    code = "too_large"


class Unauthorized(FStoreError):
    """No credentials, or credentials that match no valid key."""

    http_status = 401
    exit_code = 6
    code = "unauthorized"


class Forbidden(FStoreError):
    """Valid credentials without the right to do this."""

    http_status = 403
    exit_code = 6
    code = "forbidden"


class Unavailable(FStoreError):
    """A backend (registry, online store, Spark) cannot be reached right now."""

    http_status = 503
    exit_code = 7
    code = "unavailable"


class ComputeError(FStoreError):
    """A Spark job failed: a query that does not run, a validation with policy fail."""

    http_status = 422
    exit_code = 8
    code = "compute_failed"
