"""The online values usage-based retention dropped (table ``online_drops``; policy in ``fstore.ops.unused``).

Here, below serving and compute, so that online serving's registry snapshot can tell a dropped feature and each
load can remove its values again.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from fstore.core.errors import NotFound
from fstore.registry.models import OnlineDropRow
from fstore.registry.runs import iso

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def dropped_reasons(s: "Session", set_name: str) -> dict[str, str]:
    """The dropped features of a set and why, as online serving tells them (``metadata.dropped``)."""
    return {row.feature: (f"online values dropped {iso(row.dropped_at)}: not served online nor used in a training "
                          f"set for {row.unused_days} days (UNUSED_ONLINE_DROP_DAYS); `fstore monitor unused "
                          f"--restore {set_name}:{row.feature}` brings them back")
            for row in s.scalars(select(OnlineDropRow).where(OnlineDropRow.feature_set == set_name))}


def dropped_features(s: "Session", set_name: str) -> list[str]:
    """The features of ``set_name`` whose online values are dropped (what each load removes again)."""
    return list(s.scalars(select(OnlineDropRow.feature).where(OnlineDropRow.feature_set == set_name)
                          .order_by(OnlineDropRow.feature)))


def restore(s: "Session", set_name: str, feature: str) -> None:
    """Forget a drop (``NotFound`` naming the feature when it was not dropped); the caller reloads the set."""
    removed = s.execute(delete(OnlineDropRow).where(OnlineDropRow.feature_set == set_name,
                                                    OnlineDropRow.feature == feature)).rowcount
    if not removed:
        raise NotFound(f"the online values of {set_name}:{feature} were not dropped", field="feature")
