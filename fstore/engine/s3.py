"""S3 access for the readers and writers outside Spark: delta-rs, pyarrow (and so the DuckDB engine).

Spark reaches S3 through Hadoop's ``s3a://`` (``fstore.engine.session.s3a_conf``);
everything else goes through the two clients here, both configured from the
settings only (``S3_ENDPOINT``, ``S3_BUCKET``, ``S3_ACCESS_KEY``, ``S3_SECRET_KEY``;
``AWS_REGION`` when set): nothing about S3 is ever read from, or stored in, the
registry. Without keys both fall back to the AWS SDKs' own chain (environment,
profile, instance role).

Commits: delta-rs (1.x) writes each Delta log entry with a conditional put
(``If-None-Match: *``), so two writers racing for the same version cannot
overwrite each other: the loser gets 412 and retries on the new version. That
needs an S3 that honours the header: AWS S3 (since 2024), MinIO, moto (what the
tests run). No ``AWS_S3_ALLOW_UNSAFE_RENAME``, no DynamoDB lock.

Errors: a refused or unreachable S3 becomes ``Unavailable`` naming the bucket,
the endpoint and what was being done, with the client's first line; the secret
key never appears in it (``redact``).
"""
from __future__ import annotations

import os
import re
from urllib.parse import urlparse

from fstore.core.errors import FStoreError, Unavailable
from fstore.core.settings import Settings

_SCHEMES = ("s3://", "s3a://", "s3n://")


def is_s3(path: str) -> bool:
    return path.lower().startswith(_SCHEMES)


def region() -> str:
    return os.environ.get("AWS_REGION", "").strip() or "us-east-1"


def delta_options(settings: Settings) -> dict[str, str]:
    """``deltalake`` storage options: endpoint (plain HTTP allowed for an ``http://`` one), region, keys."""
    options = {"AWS_REGION": region()}
    if settings.s3_endpoint:
        options["AWS_ENDPOINT_URL"] = settings.s3_endpoint
        if settings.s3_endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    if settings.s3_access_key:
        options["AWS_ACCESS_KEY_ID"] = settings.s3_access_key
        options["AWS_SECRET_ACCESS_KEY"] = settings.s3_secret_key
    return options


def filesystem(settings: Settings):
    """A pyarrow ``S3FileSystem`` for the settings' S3 (paths on it are ``bucket/key``)."""
    from pyarrow import fs

    endpoint = settings.s3_endpoint
    return fs.S3FileSystem(access_key=settings.s3_access_key or None, secret_key=settings.s3_secret_key or None,
                           endpoint_override=endpoint.split("://", 1)[-1] if endpoint else None,
                           scheme="http" if endpoint.startswith("http://") else "https", region=region(),
                           connect_timeout=5, request_timeout=30)


def path_on(uri: str) -> str:
    """``s3a://bucket/key`` → ``bucket/key``, the path on ``filesystem``."""
    return uri.split("://", 1)[1] if "://" in uri else uri


def parquet_files(settings: Settings, uri: str):
    """The filesystem and the Parquet files at or under ``uri`` as Spark lists them (hidden ``_``/``.`` entries
    skipped); none when nothing is there."""
    from pyarrow.fs import FileSelector, FileType

    fs = filesystem(settings)
    where = path_on(uri).rstrip("/")
    try:
        if fs.get_file_info(where).type == FileType.File:
            return fs, [where]
        infos = fs.get_file_info(FileSelector(where, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise access_error(settings, exc, doing=f"listing {uri}", uri=uri) from None
    hidden = lambda p: any(part.startswith(("_", ".")) for part in p[len(where) + 1:].split("/"))  # noqa: E731
    return fs, sorted(i.path for i in infos if i.is_file and i.path.endswith(".parquet") and not hidden(i.path))


def delta_uri(uri: str) -> str:
    """delta-rs names S3 ``s3://``; Spark ``s3a://``."""
    parsed = urlparse(uri)
    return "s3://" + uri.split("://", 1)[1] if parsed.scheme in ("s3a", "s3n") else uri


def redact(text: str, settings: Settings) -> str:
    """``text`` without the secret key (nor any ``…secret…=value`` pair a client might print)."""
    if settings.s3_secret_key:
        text = text.replace(settings.s3_secret_key, "***")
    return re.sub(r"(?i)(secret[_a-z]*[\"']?\s*[:=]\s*[\"']?)[^\s,\"'}]+", r"\1***", text)


def where(settings: Settings, uri: str | None = None) -> str:
    """``bucket B at ENDPOINT`` (the place an error names)."""
    bucket = urlparse(uri).netloc if uri and is_s3(uri) else settings.s3_bucket
    return f"S3 bucket {bucket!r} at {settings.s3_endpoint or 'AWS (default endpoint)'}"


def access_error(settings: Settings, exc: BaseException, *, doing: str, uri: str | None = None) -> FStoreError:
    """An ``Unavailable`` for a failed S3 call: what, where, the client's own first line, no secret."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # delta-rs colours its error chain
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = redact(" ".join(lines[:2])[:400] or type(exc).__name__, settings)
    return Unavailable(f"{doing}: {where(settings, uri)} failed: {said} (check S3_ENDPOINT, S3_BUCKET, "
                       "S3_ACCESS_KEY, S3_SECRET_KEY)")


def looks_like_access_failure(exc: BaseException) -> bool:
    """Whether a client error is about reaching or being let into S3 (not a missing table or file)."""
    text = str(exc).lower()
    return any(word in text for word in ("403", "forbidden", "accessdenied", "access denied", "signature",
                                         "invalidaccesskeyid", "credential", "connection refused", "error sending",
                                         "connect error", "dns error", "timed out", "unauthorized"))
