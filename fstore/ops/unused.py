"""Usage-based retention: features nobody used for N days, reported, and their online values dropped by policy.

A feature is **used** on a day when an online request asked it (the ``usage`` table, endpoint ``online``,
``fstore.ops.usage``) or when a saved training set holding it was created (``training_sets``: its groups name
each set and feature). A feature is **unused for N days** when neither happened since ``now - N days`` and the
feature itself is older than that (a feature added yesterday has not had its chance).

The policy (``UNUSED_ONLINE_DROP_DAYS``, 0 = report only) is applied by ``drop_unused`` (``fstore monitor unused
--drop``): each unused feature of an online-enabled set loses its online values (its field removed from every
key); its definition, versions, offline rows and the registry's history stay. The drop is recorded in
``online_drops``: online serving then answers such a feature null with status ``dropped`` and the reason in
``metadata.dropped`` (``fstore.serving.online``), and each later load of the set removes the feature's values
again after writing (``fstore.compute.materialize``). ``restore`` forgets the drop; the caller reloads the set
from its offline table to bring the values back (``FeatureStore.restore_online_feature``).

Windowed features' event records (``@w``, one per key shared by every windowed feature of the set) are not
trimmed by a drop: the dropped feature's answer is null all the same.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable

from sqlalchemy import func, select

from fstore.core.errors import InvalidDefinition
from fstore.registry.models import (FeatureRow, FeatureSetRow, OnlineDropRow, TrainingSetRow, UsageRow, utcnow)
from fstore.registry.runs import iso

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from fstore.core.context import StoreContext

log = logging.getLogger(__name__)
MAX_DAYS = 36500


def check_days(days: Any, *, field_name: str = "days") -> int:
    """``days`` as an integer in [1, MAX_DAYS] (``InvalidDefinition`` naming ``field_name`` otherwise)."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise InvalidDefinition(f"{field_name} must be a whole number of days between 1 and {MAX_DAYS}, not {days!r}",
                                field=field_name)
    return days


def last_uses(s: "Session") -> tuple[dict[tuple[str, str], datetime], dict[tuple[str, str], tuple[datetime, str]]]:
    """When each (set, feature) was last served online, and the newest training set holding it (time, name)."""
    served = {(fs, f): at for fs, f, at in s.execute(
        select(UsageRow.feature_set, UsageRow.feature, func.max(UsageRow.minute))
        .where(UsageRow.endpoint == "online", UsageRow.feature != "", UsageRow.feature_set != "",
               UsageRow.requests > 0)
        .group_by(UsageRow.feature_set, UsageRow.feature))}
    trained: dict[tuple[str, str], tuple[datetime, str]] = {}
    for name, spec, created in s.execute(select(TrainingSetRow.name, TrainingSetRow.spec, TrainingSetRow.created_at)):
        for group in (spec or {}).get("groups") or []:
            for feature in group.get("features") or []:
                key = (group.get("feature_set"), feature)
                if key not in trained or trained[key][0] < created:
                    trained[key] = (created, name)
    return served, trained


def unused_features(store: "StoreContext", days: int, *, allowed: Callable[[str], bool] | None = None,
                    now: datetime | None = None) -> dict[str, Any]:
    """The features unused for ``days`` (module docstring), each with when it was last served and trained on,
    and whether its online values were dropped; with the policy in force."""
    days = check_days(days)
    now = now or utcnow()
    since = now - timedelta(days=days)
    with store.transaction() as s:
        features = s.execute(select(FeatureSetRow.name, FeatureRow.name, FeatureRow.created_at, FeatureSetRow.spec)
                             .join(FeatureSetRow, FeatureSetRow.id == FeatureRow.feature_set_id)
                             .order_by(FeatureSetRow.name, FeatureRow.name)).all()
        served, trained = last_uses(s)
        drops = {(r.feature_set, r.feature): r for r in s.scalars(select(OnlineDropRow))}
    items, checked = [], 0
    for set_name, feature, created, spec in features:
        if allowed is not None and not allowed(set_name):
            continue
        checked += 1
        last_served = served.get((set_name, feature))
        last_trained = trained.get((set_name, feature))
        if created > since or (last_served and last_served >= since) or (last_trained and last_trained[0] >= since):
            continue
        drop = drops.get((set_name, feature))
        items.append({"feature_set": set_name, "feature": feature, "created_at": iso(created),
                      "last_served_online": iso(last_served),
                      "last_training_set": None if last_trained is None else
                      {"name": last_trained[1], "created_at": iso(last_trained[0])},
                      "online_enabled": bool((spec or {}).get("online_enabled", True)),
                      "online_dropped_at": iso(drop.dropped_at) if drop else None})
    drop_days = store.settings.unused_online_drop_days
    return {"days": days, "since": iso(since), "features_checked": checked, "unused": len(items), "items": items,
            "policy": {"unused_online_drop_days": drop_days or None,
                       "action": f"drop online values after {drop_days} days unused" if drop_days else "report only"}}


def drop_unused(store: "StoreContext", *, days: int | None = None, actor: str = "",
                dry_run: bool = False) -> dict[str, Any]:
    """Apply the policy: drop the online values of every online feature unused for ``UNUSED_ONLINE_DROP_DAYS``
    (or ``days``, which may not be shorter than the policy's). Returns what was (or would be) dropped."""
    policy = store.settings.unused_online_drop_days
    if not policy:
        raise InvalidDefinition("usage-based retention is off: set UNUSED_ONLINE_DROP_DAYS to the days a feature "
                                "must go unused before its online values are dropped", field="UNUSED_ONLINE_DROP_DAYS")
    days = policy if days is None else check_days(days)
    if days < policy:
        raise InvalidDefinition(f"days={days} is shorter than the policy's UNUSED_ONLINE_DROP_DAYS={policy}",
                                field="days")
    report = unused_features(store, days)
    by_set: dict[str, list[str]] = {}
    for item in report["items"]:
        if item["online_enabled"] and item["online_dropped_at"] is None:
            by_set.setdefault(item["feature_set"], []).append(item["feature"])
    dropped = []
    for set_name, features in sorted(by_set.items()):
        keys = None
        if not dry_run:
            # Recorded first: a load finishing meanwhile removes the fields again after writing them.
            with store.transaction() as s:
                rows = [OnlineDropRow(feature_set=set_name, feature=f, unused_days=days, keys=0, dropped_at=utcnow(),
                                      dropped_by=actor or "") for f in features]
                s.add_all(rows)
            keys = store.online.drop_fields(set_name, features)
            with store.transaction() as s:
                for row in s.scalars(select(OnlineDropRow).where(OnlineDropRow.feature_set == set_name,
                                                                 OnlineDropRow.feature.in_(features))):
                    row.keys = keys
            _audit(store, actor, set_name, features, keys, days)
            log.info("dropped the online values of %s:%s (unused for %d days; %d keys)", set_name,
                     ",".join(features), days, keys)
        dropped.append({"feature_set": set_name, "features": features, "keys": keys})
    return {"days": days, "dry_run": dry_run, "dropped": dropped}


def _audit(store: "StoreContext", actor: str, set_name: str, features: list[str], keys: int, days: int) -> None:
    from fstore.ops import audit

    try:
        audit.record(store.engine, actor=actor, action="drop_unused_online", target=set_name,
                     detail={"features": features, "keys": keys, "unused_days": days})
    except Exception:  # noqa: BLE001 - the drop stands even if the audit log cannot be written
        log.exception("could not audit the online drop of %s", set_name)
