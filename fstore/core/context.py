"""``StoreContext``: what the layers below the ``FeatureStore`` facade may ask of a store.

The jobs, serving and the registry's repositories receive the store they work for
as an argument. They need its settings, a registry transaction, the SQLAlchemy
engine, the Spark session, the online store and the secret box — nothing else —
so they name this protocol rather than ``fstore.store.FeatureStore`` (which sits
above them and imports them).
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from fstore.core.settings import Settings


class StoreContext(Protocol):
    settings: "Settings"
    engine: "Engine"

    def transaction(self) -> AbstractContextManager["Session"]:
        """One registry transaction, committed when the block ends."""

    @property
    def spark(self) -> Any:
        """The Spark session, created on first use."""

    @property
    def online(self) -> Any:
        """The online store, opened on first use."""

    @property
    def secrets(self) -> Any:
        """The ``SecretBox`` sealing and opening source secrets."""
