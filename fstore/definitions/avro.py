"""Avro values of a kafka source: the writer's record schema, and the source columns it gives.

Avro's binary encoding carries no schema: a value reads right only with the schema it was written with,
so a kafka source in ``format: avro`` (or ``confluent_avro``: Confluent's wire format, a zero byte and a
4-byte schema id before the Avro body; fstore skips those five bytes and asks no registry) declares that
schema, ``avro_schema``, and the source's columns follow from it. Flat records of scalar fields only:
``int``/``long`` (fstore ``int``), ``float``/``double`` (``float``), ``string``, ``boolean`` (``bool``), a
``long`` with ``logicalType`` ``timestamp-millis`` or ``timestamp-micros`` (``timestamp``), each
possibly in a union with ``null``. Anything else is refused, naming the field.
"""
from __future__ import annotations

import json
from typing import Any

from fstore.core.errors import InvalidDefinition

AVRO_FORMATS = ("avro", "confluent_avro")
_SCALARS = {"int": "int", "long": "int", "float": "float", "double": "float", "string": "string", "boolean": "bool"}
_SPARK = {"int": "INT", "long": "BIGINT", "float": "FLOAT", "double": "DOUBLE", "string": "STRING",
          "boolean": "BOOLEAN", "timestamp": "TIMESTAMP"}
_TIMESTAMPS = ("timestamp-millis", "timestamp-micros")
FIELD = "source.kafka.avro_schema"


def schema_text(value: Any) -> str:
    """The declared schema (JSON text, or the object itself) as compact JSON text, checked (``avro_fields``)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidDefinition(f"{FIELD} is not JSON: {exc}", field=FIELD) from None
    text = json.dumps(value, separators=(",", ":"))
    avro_fields(text)
    return text


def avro_fields(text: str) -> dict[str, str]:
    """``{field: Avro type}`` of a flat record schema (``timestamp`` for a timestamp ``long``)."""
    schema = json.loads(text)
    if not isinstance(schema, dict) or schema.get("type") != "record" or not isinstance(schema.get("fields"), list) \
            or not schema["fields"]:
        raise InvalidDefinition(f"{FIELD} must be an Avro record schema with fields "
                                '({"type": "record", "name": …, "fields": [{"name": …, "type": …}, …]})', field=FIELD)
    out = {}
    for f in schema["fields"]:
        name = f.get("name") if isinstance(f, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidDefinition(f"{FIELD}: every field needs a name", field=FIELD)
        out[name] = _scalar(name, f.get("type"))
    return out


def _scalar(name: str, kind: Any) -> str:
    if isinstance(kind, list):
        others = [k for k in kind if k != "null"]
        if len(others) != 1:
            raise InvalidDefinition(f"{FIELD}: field {name!r} is a union of {kind}; only [\"null\", <type>] is read",
                                    field=FIELD)
        kind = others[0]
    if isinstance(kind, dict):
        if kind.get("type") == "long" and kind.get("logicalType") in _TIMESTAMPS:
            return "timestamp"
        if kind.get("type") in _SCALARS and not kind.get("logicalType"):
            kind = kind["type"]
    if isinstance(kind, str) and kind in _SCALARS:
        return kind
    raise InvalidDefinition(f"{FIELD}: field {name!r} has type {json.dumps(kind)}; a kafka source reads flat records of "
                            "int, long, float, double, string, boolean or a timestamp-millis/-micros long", field=FIELD)


def avro_columns(text: str) -> dict[str, str]:
    """The source columns an Avro record schema gives: ``{field: fstore type}``."""
    return {name: "timestamp" if kind == "timestamp" else _SCALARS[kind] for name, kind in avro_fields(text).items()}


def spark_types(text: str) -> dict[str, str]:
    """``{field: Spark SQL type}`` matching each Avro type exactly (what ``to_avro`` needs to write it)."""
    return {name: _SPARK[kind] for name, kind in avro_fields(text).items()}
