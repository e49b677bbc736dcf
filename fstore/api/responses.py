"""Success bodies declared in ``/openapi.json``, so a client (or schemathesis) can check what it gets back.

Each model names the fields a caller relies on and allows the rest (``extra="allow"``): the
registry's dicts carry every field of a definition, which ``fstore.definitions.model`` owns.
Errors are declared by each blueprint (``fstore.api.errors.ErrorBody``).
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

_OPEN = ConfigDict(extra="allow")


class Obj(BaseModel):
    """A JSON object (its fields are described in the operation's text)."""

    model_config = _OPEN


class Health(BaseModel):
    status: str


class ReadyBody(BaseModel):
    """``status`` always; ``checks`` and ``error`` only for a caller with a key (or when keys are off)."""

    model_config = _OPEN
    status: str
    checks: Optional[dict[str, str]] = None


class Entity(BaseModel):
    model_config = _OPEN
    id: int
    name: str
    join_keys: list[str]
    value_type: str
    version: int


class FeatureSet(BaseModel):
    model_config = _OPEN
    id: int
    name: str
    version: int
    entities: list[str]
    features: list[str]
    source: Optional[dict[str, Any]] = None


class Feature(BaseModel):
    model_config = _OPEN
    id: int
    name: str
    feature_set: str
    version: int
    data_type: str


class Page(BaseModel):
    """One page of a list: ``total`` counts every item the caller may see, ``limit``/``offset`` as asked."""

    model_config = _OPEN
    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


class EntityPage(Page):
    items: list[Entity]  # type: ignore[assignment]


class FeatureSetPage(Page):
    items: list[FeatureSet]  # type: ignore[assignment]


class FeaturePage(Page):
    items: list[Feature]  # type: ignore[assignment]


class Versions(BaseModel):
    items: list[dict[str, Any]]


class OnlineAnswer(BaseModel):
    model_config = _OPEN
    features: dict[str, dict[str, Any]]


class Compiled(BaseModel):
    feature_set: str
    version: Optional[int]
    sql: str


class Run(BaseModel):
    model_config = _OPEN
    id: str
    status: str


NO_CONTENT = {204: None}
