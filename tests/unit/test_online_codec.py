"""Online value codecs, key layout and the circuit breaker: no services needed."""
from __future__ import annotations

import math
import pickle
from datetime import datetime, timezone

import pytest

from fstore.core.errors import InvalidDefinition
from fstore.storage.online.base import (NULL, Codec, decoder, encode_rows, encode_value, iso_from_micros,
                                normalize_key_value, redis_key, to_micros)
from fstore.storage.online.breaker import CircuitBreaker, CircuitOpen

TS = datetime(2024, 2, 29, 23, 59, 59, 123456)
TS_ISO = "2024-02-29T23:59:59.123456Z"


@pytest.mark.parametrize(("data_type", "value", "expected"), [
    ("int", 0, 0),
    ("int", -(2**62), -(2**62)),
    ("float", 1.5, 1.5),
    ("float", -0.0, -0.0),
    ("float", 1e300, 1e300),
    ("float", 3, 3.0),
    ("bool", True, True),
    ("bool", False, False),
    ("string", "", ""),
    ("string", "héllo \u2603 : | \x00 \n", "héllo \u2603 : | \x00 \n"),
    ("timestamp", TS, TS_ISO),
    ("timestamp", TS.replace(tzinfo=timezone.utc), TS_ISO),
    ("timestamp", TS_ISO, TS_ISO),
    ("timestamp", datetime(1960, 1, 1), "1960-01-01T00:00:00Z"),
    ("list<int>", [1, None, -3], [1, None, -3]),
    ("list<float>", [0.5, None], [0.5, None]),
    ("list<string>", ["a", "", None], ["a", "", None]),
    ("list<bool>", [True, False], [True, False]),
    ("list<timestamp>", [TS, None], [TS_ISO, None]),
    ("list<int>", [], []),
])
def test_codec_round_trip(data_type, value, expected):
    raw = encode_value(value, data_type)
    assert raw != NULL
    decoded = decoder(data_type)(raw)
    assert decoded == expected
    assert type(decoded) is type(expected)


@pytest.mark.parametrize("data_type", ["int", "float", "bool", "string", "timestamp", "list<int>", "list<string>"])
def test_null_is_distinct_from_every_value(data_type):
    assert encode_value(None, data_type) == NULL
    # NULL is not valid UTF-8, so no string value (not even "") can be stored as it.
    assert encode_value("", "string") != NULL
    with pytest.raises(UnicodeDecodeError):
        NULL.decode()


def test_float_specials_round_trip():
    assert math.isnan(decoder("float")(encode_value(float("nan"), "float")))
    assert decoder("float")(encode_value(float("inf"), "float")) == float("inf")
    # Spark's to_json writes NaN inside a list as a string; the decoder gives a float back.
    assert math.isnan(decoder("list<float>")(b'["NaN",1.0]')[0])


@pytest.mark.parametrize(("data_type", "value"), [
    ("int", "seven"), ("int", 1.5), ("int", True), ("float", "x"), ("float", True),
    ("bool", "yes"), ("timestamp", "yesterday"), ("timestamp", True), ("list<int>", 5), ("list<int>", "12"),
])
def test_bad_values_are_refused_naming_the_field(data_type, value):
    with pytest.raises(InvalidDefinition) as err:
        encode_value(value, data_type, field_name="clicks")
    assert "clicks" in err.value.message and err.value.field == "clicks"


@pytest.mark.parametrize(("value_type", "values"), [
    ("int", [1, "1", " 1", 1.0]),
    ("int", [7, "7", "007", "\u0667"]),
    ("string", ["1", 1]),
    ("bool", [True, "true", 1, "1"]),
    ("timestamp", [TS, TS_ISO, to_micros(TS)]),
])
def test_key_values_match_by_value_type(value_type, values):
    assert len({normalize_key_value(v, value_type, key="k") for v in values}) == 1


@pytest.mark.parametrize(("value_type", "value"), [("int", "abc"), ("int", 1.5), ("int", None), ("bool", "maybe"), ("string", [1])])
def test_bad_key_values_are_refused(value_type, value):
    with pytest.raises(InvalidDefinition) as err:
        normalize_key_value(value, value_type, key="user_id")
    assert "user_id" in err.value.message


def test_compound_keys_are_unambiguous():
    pairs = [("a:1", "b"), ("a", "1:b"), ("a:1:b", ""), ("", "a:1:b"), ("1", "1"), ("11", "")]
    keys = {redis_key("s", p) for p in pairs}
    assert len(keys) == len(pairs)
    assert redis_key("s", ("1",)) == "fs:s:1:1"


def test_codec_pickles_without_prepared_decoders():
    codec = Codec(name="s", version=3, key_columns=("u",), key_types=("int",),
                  features=(("t", "timestamp"), ("x", "list<float>")), ttl_seconds=60)
    assert codec.decoders["t"](b"0") == "1970-01-01T00:00:00Z"
    copy = pickle.loads(pickle.dumps(codec))
    assert copy == codec and copy.decoders["t"](b"0") == "1970-01-01T00:00:00Z"


def test_encode_rows_checks_everything_first():
    codec = Codec(name="s", version=1, key_columns=("u",), key_types=("int",), features=(("x", "int"),))
    rows = encode_rows(codec, [{"u": "7", "event_timestamp": TS, "x": None}])
    assert rows[0].key == "fs:s:1:7" and rows[0].ts == to_micros(TS) and rows[0].values == (NULL,)
    with pytest.raises(InvalidDefinition, match="lacks feature"):
        encode_rows(codec, [{"u": 1, "event_timestamp": TS}])
    with pytest.raises(InvalidDefinition, match="event_timestamp"):
        encode_rows(codec, [{"u": 1, "x": 1}])
    with pytest.raises(InvalidDefinition, match="needs entity key u"):
        encode_rows(codec, [{"event_timestamp": TS, "x": 1}])


def test_iso_from_micros_before_epoch():
    assert iso_from_micros(to_micros("1969-12-31T23:59:59.5Z")) == "1969-12-31T23:59:59.500000Z"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("data_type", ["int", "float", "bool", "string", "timestamp", "list<int>", "list<timestamp>", "list<float>"])
def test_decoders_refuse_null_and_missing(data_type):
    """Serving decodes a row optimistically and falls back when a decoder raises: none may invent a value."""
    for raw in (NULL, None):
        with pytest.raises((ValueError, TypeError, KeyError)):
            decoder(data_type)(raw)


def test_breaker_opens_fails_fast_probes_at_a_fixed_interval_and_closes():
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=2, probe_seconds=0.2, clock=clock)
    breaker.before_call()
    breaker.failure(OSError("refused"))
    breaker.before_call()  # one failure is below the threshold
    breaker.failure(OSError("refused"))
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen, match="refused"):
        breaker.before_call()
    clock.now += 0.2
    breaker.before_call()  # the probe goes through ...
    with pytest.raises(CircuitOpen):
        breaker.before_call()  # ... alone
    breaker.failure(OSError("still down"))
    for _ in range(10):  # the wait never grows: a probe every 0.2 s however long the outage
        with pytest.raises(CircuitOpen):
            breaker.before_call()
        clock.now += 0.2
        breaker.before_call()
        breaker.failure(OSError("still down"))
    clock.now += 0.2
    breaker.before_call()
    breaker.success()
    assert breaker.state == "closed"
    breaker.before_call()


def test_breaker_with_a_probe_recovers_in_the_background_without_a_request():
    import threading

    up = threading.Event()
    probes = []

    def probe():
        probes.append(1)
        if not up.is_set():
            raise OSError("refused")

    breaker = CircuitBreaker(threshold=1, probe_seconds=0.01, probe=probe)
    breaker.failure(OSError("refused"))
    for _ in range(50):  # no request is let through as a probe while open
        with pytest.raises(CircuitOpen):
            breaker.before_call()
    up.set()
    for _ in range(500):
        if breaker.state == "closed":
            break
        threading.Event().wait(0.01)
    assert breaker.state == "closed" and len(probes) >= 1
    breaker.before_call()
