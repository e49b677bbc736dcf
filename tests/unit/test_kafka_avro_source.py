"""A kafka source with Avro values: the columns come from the writer's schema; what cannot be read is refused."""
from __future__ import annotations

import json

import pytest

from fstore.core.errors import InvalidDefinition
from fstore.definitions.avro import spark_types
from fstore.definitions.model import Source

CLICK = {"type": "record", "name": "Click", "fields": [
    {"name": "user_id", "type": "long"}, {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "clicks", "type": ["null", "int"]}, {"name": "score", "type": {"type": "float"}},
    {"name": "page", "type": "string"}, {"name": "ok", "type": ["boolean", "null"]}]}


def source(kafka: dict, **more) -> Source:
    return Source.from_dict({"kafka": {"bootstrap_servers": "127.0.0.1:9092", "topic": "clicks", **kafka},
                             "event_timestamp_column": "ts", **more})


@pytest.mark.parametrize("fmt", ["avro", "confluent_avro"])
@pytest.mark.parametrize("given", [CLICK, json.dumps(CLICK, indent=2)])
def test_the_columns_come_from_the_avro_schema_and_survive_a_round_trip(fmt, given):
    s = source({"format": fmt, "avro_schema": given})
    assert s.schema == {"user_id": "int", "ts": "timestamp", "clicks": "int", "score": "float", "page": "string",
                        "ok": "bool"}
    assert Source.from_dict(s.to_dict()) == s  # to_dict carries both; they agree
    assert spark_types(s.kafka.avro_schema) == {"user_id": "BIGINT", "ts": "TIMESTAMP", "clicks": "INT",
                                                 "score": "FLOAT", "page": "STRING", "ok": "BOOLEAN"}


@pytest.mark.parametrize(("kafka", "more", "says"), [
    ({"format": "avro"}, {}, "avro_schema is required"),
    ({"format": "json", "avro_schema": CLICK}, {"schema": {"ts": "timestamp"}}, "avro_schema is required"),
    ({"format": "avro", "avro_schema": "{not json"}, {}, "is not JSON"),
    ({"format": "avro", "avro_schema": {"type": "string"}}, {}, "must be an Avro record schema"),
    ({"format": "avro", "avro_schema": {"type": "record", "name": "x", "fields": [
        {"name": "ts", "type": {"type": "array", "items": "int"}}]}}, {}, "field 'ts' has type"),
    ({"format": "avro", "avro_schema": {"type": "record", "name": "x", "fields": [
        {"name": "ts", "type": ["null", "int", "string"]}]}}, {}, "is a union"),
    ({"format": "avro", "avro_schema": {"type": "record", "name": "x", "fields": [
        {"name": "ts", "type": {"type": "int", "logicalType": "date"}}]}}, {}, "field 'ts' has type"),
    ({"format": "avro", "avro_schema": CLICK}, {"schema": {"user_id": "int", "ts": "timestamp"}}, "is not what"),
    ({"format": "protobuf"}, {"schema": {"ts": "timestamp"}}, "is not supported"),
])
def test_what_cannot_be_read_is_refused_naming_it(kafka, more, says):
    with pytest.raises(InvalidDefinition) as caught:
        source(kafka, **more)
    assert says in caught.value.message


def test_the_event_time_must_be_a_timestamp_field_of_the_record():
    schema = {"type": "record", "name": "x", "fields": [{"name": "ts", "type": "long"}]}
    with pytest.raises(InvalidDefinition) as caught:
        source({"format": "avro", "avro_schema": schema})
    assert "'ts' is int in source.schema" in caught.value.message
