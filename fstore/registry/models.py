"""The registry's tables (SQLAlchemy 2.0 declarative). Schema changes go through Alembic.

Definitions are stored as the canonical JSON spec of ``fstore.definitions.model``
(``to_dict``), one row per immutable version; the few columns that are searched
or filtered on are copied out of the spec next to it.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """Naive UTC: the registry stores every timestamp in UTC without an offset (SQLite has none)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class EntityRow(Base):
    __tablename__ = "entities"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    spec: Mapped[dict[str, Any]]
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200), default="")


class EntityVersionRow(Base):
    """One immutable version of an entity: its spec, what changed, when and by whom."""

    __tablename__ = "entity_versions"
    __table_args__ = (UniqueConstraint("entity_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    entity_id: Mapped[int] = mapped_column(ForeignKey("entities.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]]
    changes: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200), default="")


class FeatureSetRow(Base):
    __tablename__ = "feature_sets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    spec: Mapped[dict[str, Any]]
    owner: Mapped[str] = mapped_column(String(200), default="", index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    tags_text: Mapped[str] = mapped_column(Text, default="")
    watermark: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class FeatureSetVersionRow(Base):
    """One immutable version of a feature set: its spec and the versions of its features."""

    __tablename__ = "feature_set_versions"
    __table_args__ = (UniqueConstraint("feature_set_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    feature_set_id: Mapped[int] = mapped_column(ForeignKey("feature_sets.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]]
    features: Mapped[dict[str, Any]]  # feature name -> feature version
    changes: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200), default="")


class FeatureRow(Base):
    __tablename__ = "features"
    __table_args__ = (UniqueConstraint("feature_set_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    feature_set_id: Mapped[int] = mapped_column(ForeignKey("feature_sets.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63), index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    spec: Mapped[dict[str, Any]]
    data_type: Mapped[str] = mapped_column(String(32), index=True)
    owner: Mapped[str] = mapped_column(String(200), default="", index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    tags_text: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class FeatureVersionRow(Base):
    """One immutable version of a feature, with the versions of the features it was computed from."""

    __tablename__ = "feature_versions"
    __table_args__ = (UniqueConstraint("feature_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    feature_id: Mapped[int] = mapped_column(ForeignKey("features.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]]
    lineage: Mapped[dict[str, Any]]  # source feature name -> its version when this version was made
    changes: Mapped[list[Any]]
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200), default="")


class MaterializationRunRow(Base):
    __tablename__ = "materialization_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    feature_set_id: Mapped[int] = mapped_column(ForeignKey("feature_sets.id", ondelete="CASCADE"), index=True)
    feature_set_version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(20), default="full")  # full | incremental | backfill | scheduled
    backfill_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    start: Mapped[datetime] = mapped_column(DateTime)
    end: Mapped[datetime] = mapped_column(DateTime)
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    rows_read: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rows_written: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rows_rejected: Mapped[int | None] = mapped_column(Integer, nullable=True)
    online_rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    offline_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    stages: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # What of the source the run read (``fstore.compute.source_read``): the next incremental run takes what is new.
    source_read: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    late_dropped: Mapped[int | None] = mapped_column(Integer, nullable=True)  # events older than allowed_lateness
    # What the run cost (``fstore.compute.cost``): CPU seconds, bytes read/written, shuffle bytes, peak memory.
    cost: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class BackfillRow(Base):
    __tablename__ = "backfills"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    feature_set_id: Mapped[int] = mapped_column(ForeignKey("feature_sets.id", ondelete="CASCADE"), index=True)
    start: Mapped[datetime] = mapped_column(DateTime)
    end: Mapped[datetime] = mapped_column(DateTime)
    chunk_seconds: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="running")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class LockRow(Base):
    """A named lease; a unique primary key makes acquisition atomic across processes and machines."""

    __tablename__ = "locks"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime)


class TrainingSetRow(Base):
    __tablename__ = "training_sets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    spec: Mapped[dict[str, Any]]  # features, feature versions, offline versions, entity source, output path
    entity_count: Mapped[int] = mapped_column(Integer, default=0)
    output_path: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200), default="")


class JobRow(Base):
    """A long request run in the background (batch retrieval): status, progress, result."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), default="pending", index=True)
    params: Mapped[dict[str, Any]]
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class ApiKeyRow(Base):
    """An API key: only its hash is stored; the key itself is shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    owner: Mapped[str] = mapped_column(String(200))
    scopes: Mapped[list[Any]]
    grants: Mapped[dict[str, Any]]  # {"feature_sets": [...], "features": [...]}; empty = everything
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class AuditRow(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200), default="")
    action: Mapped[str] = mapped_column(String(100), index=True)
    target: Mapped[str] = mapped_column(String(300), default="")
    source_ip: Mapped[str] = mapped_column(String(64), default="")
    outcome: Mapped[str] = mapped_column(String(20), default="ok")
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class UsageRow(Base):
    """Serving usage aggregated per minute, key, feature set and feature (flushed in the background)."""

    __tablename__ = "usage"
    __table_args__ = (UniqueConstraint("minute", "api_key", "endpoint", "feature_set", "feature"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    minute: Mapped[datetime] = mapped_column(DateTime, index=True)
    api_key: Mapped[str] = mapped_column(String(200), default="")
    endpoint: Mapped[str] = mapped_column(String(100), default="")
    feature_set: Mapped[str] = mapped_column(String(63), default="")
    feature: Mapped[str] = mapped_column(String(63), default="")
    requests: Mapped[int] = mapped_column(Integer, default=0)
    entities: Mapped[int] = mapped_column(Integer, default=0)
    entities_found: Mapped[int] = mapped_column(Integer, default=0)
    cache_hits: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[list[Any]]  # a fixed-bucket histogram, for p50/p95/p99 over any period


class ProfileRow(Base):
    """A feature set's profile (``fstore.compute.profile``) as one run computed it, or of a saved training set."""

    __tablename__ = "feature_profiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    feature_set: Mapped[str] = mapped_column(String(63), index=True)
    run_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    training_set: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    profile: Mapped[dict[str, Any]]  # {"rows", "entities", "features": {name: {...}}}
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class AlertRow(Base):
    """An anomaly found in a run-level series (``fstore.ops.quality``)."""

    __tablename__ = "quality_alerts"

    id: Mapped[int] = mapped_column(primary_key=True)
    feature_set: Mapped[str] = mapped_column(String(63), index=True)
    feature: Mapped[str] = mapped_column(String(63), default="")  # "" = the set (row count, freshness lag)
    run_id: Mapped[str] = mapped_column(String(36), index=True)
    metric: Mapped[str] = mapped_column(String(40))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    median: Mapped[float | None] = mapped_column(Float, nullable=True)
    score: Mapped[float] = mapped_column(Float)
    severity: Mapped[str] = mapped_column(String(20))  # warning | critical
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class ImportanceRow(Base):
    """A feature's importance for a training set's label, computed here or logged by an experiment tracker."""

    __tablename__ = "feature_importances"
    __table_args__ = (UniqueConstraint("training_set", "label", "method", "feature"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    training_set: Mapped[str] = mapped_column(String(63), index=True)
    label: Mapped[str] = mapped_column(String(200))
    method: Mapped[str] = mapped_column(String(63))  # mutual_information | gbt | what a tracker names
    feature: Mapped[str] = mapped_column(String(200))
    score: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200), default="")


class OnlineDropRow(Base):
    """A feature whose online values usage-based retention dropped (``fstore.ops.unused``); its definition stays."""

    __tablename__ = "online_drops"
    __table_args__ = (UniqueConstraint("feature_set", "feature"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    feature_set: Mapped[str] = mapped_column(String(63), index=True)
    feature: Mapped[str] = mapped_column(String(63))
    unused_days: Mapped[int] = mapped_column(Integer)  # the policy's period it had not been used for
    keys: Mapped[int] = mapped_column(Integer, default=0)  # online keys whose value was removed
    dropped_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    dropped_by: Mapped[str] = mapped_column(String(200), default="")
