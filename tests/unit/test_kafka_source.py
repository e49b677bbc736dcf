"""A kafka source in a feature set's definition: its shape, its declared schema, and the clear refusals."""
from __future__ import annotations

import pytest

from fstore.core.errors import InvalidDefinition
from fstore.definitions.model import FeatureSet, Source

KAFKA = {"bootstrap_servers": "127.0.0.1:9092", "topic": "clicks", "format": "json"}
SCHEMA = {"user_id": "int", "ts": "timestamp", "clicks": "long", "page": "string"}


def source(**changes) -> dict:
    body = {"kafka": dict(KAFKA), "schema": dict(SCHEMA), "event_timestamp_column": "ts"}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def test_a_kafka_source_round_trips_and_makes_a_stream_set():
    fs = FeatureSet.from_dict({"name": "clicks", "entities": ["user"], "source": source()})
    assert fs.source_type == "stream" and fs.source.is_stream
    assert fs.source.schema == {"user_id": "int", "ts": "timestamp", "clicks": "int", "page": "string"}
    assert fs.source.kafka.starting_offsets == "earliest"
    again = FeatureSet.from_dict({**fs.to_dict(), "name": "clicks"})
    assert again == fs
    assert fs.to_dict()["source"]["kafka"] == {**KAFKA, "starting_offsets": "earliest"}


@pytest.mark.parametrize(("body", "field", "said"), [
    (source(kafka={**KAFKA, "bootstrap_servers": "nohost"}), "source.kafka.bootstrap_servers", "host:port"),
    (source(kafka={**KAFKA, "bootstrap_servers": "a:1,,b:2"}), "source.kafka.bootstrap_servers", "host:port"),
    (source(kafka={**KAFKA, "topic": "bad topic!"}), "source.kafka.topic", "not a Kafka topic name"),
    (source(kafka={**KAFKA, "topic": ""}), "source.kafka.topic", "required"),
    (source(kafka={k: v for k, v in KAFKA.items() if k != "bootstrap_servers"}), "source.kafka.bootstrap_servers",
     "required"),
    (source(kafka={**KAFKA, "format": "protobuf"}), "source.kafka.format", "'protobuf' is not supported"),
    (source(kafka={**KAFKA, "format": "avro"}), "source.kafka.avro_schema", "avro_schema is required"),
    (source(kafka={**KAFKA, "starting_offsets": "middle"}), "source.kafka.starting_offsets", "middle"),
    (source(kafka={**KAFKA, "group": "x"}), None, "group"),
    (source(kafka="127.0.0.1:9092"), "source.kafka", "must be an object"),
    (source(schema=None), "source.schema", "needs source.schema"),
    (source(schema={}), "source.schema", "non-empty"),
    (source(schema={"user_id": "int", "ts": "timestamp", "x": "list<int>"}), "source.schema.x", "not a scalar"),
    (source(schema={"user_id": "int", "ts": "timestamp", "x": "blob"}), "source.schema.x", "blob"),
    (source(schema={"user_id": "int", "ts": "timestamp", "bad name": "int"}), "source.schema", "bad name"),
    (source(schema={"user_id": "int", "clicks": "int"}), "source.event_timestamp_column", "'ts' is not in source.schema"),
    (source(schema={**SCHEMA, "ts": "int"}), "source.event_timestamp_column", "must be a timestamp"),
    (source(created_timestamp_column="seen"), "source.created_timestamp_column", "'seen' is not in source.schema"),
    (source(entity_columns=["uid"]), "source.entity_columns", "'uid' is not in source.schema"),
    (source(options={"x": "1"}), "source.options.x", "cannot be given to a kafka source"),
    (source(path="/data/clicks"), "source", "exactly one of path, table, query or kafka"),
    ({"path": "/data/clicks", "schema": SCHEMA, "event_timestamp_column": "ts"}, "source.schema", "brings its own schema"),
])
def test_bad_kafka_sources_are_refused_naming_the_field(body, field, said):
    with pytest.raises(InvalidDefinition) as caught:
        Source.from_dict(body)
    assert said in caught.value.message
    if field is not None:
        assert caught.value.field == field
