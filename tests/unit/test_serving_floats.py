"""The one-parse decode of all-float groups gives exactly what ``float`` gives, or declines."""
from __future__ import annotations

import math
import random
import struct

import pytest

from fstore.storage.online.base import NULL
from fstore.serving.online import _float_values, _Group


def _group(width: int, ttl_micros: int | None = None) -> _Group:
    outs = tuple(f"f{i}" for i in range(width))
    return _Group(codec=None, read_fields=outs, picks=tuple((o, i, float, None) for i, o in enumerate(outs)),
                  ttl_micros=ttl_micros, outs=outs, decoders=(float,) * width, present=dict.fromkeys(outs, "present"),
                  all_float=True)


def _random_doubles(n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        x = struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0]
        if math.isfinite(x):
            out.append(x)
    return out + [0.0, -0.0, 5e-324, 1.7976931348623157e308, 0.1, 1e-05, 1e+16]


def test_values_are_bit_for_bit_what_float_gives():
    values = _random_doubles(20_000, seed=7)
    # Python's repr (the SDK writer) and Java's Double.toString shapes (Spark's CAST AS STRING)
    texts = [repr(v).encode() for v in values] + [b"1.0E-5", b"-2.5E10", b"1.0", b"3.0E300"]
    rows = [(0, texts[i:i + 4]) for i in range(0, len(texts) - len(texts) % 4, 4)]
    got = _float_values(_group(4), rows, now=0)
    expected = [float(t) for _, raw in rows for t in raw]
    assert got is not None
    assert [struct.pack("d", v) for v in got] == [struct.pack("d", v) for v in expected]


def test_missing_and_expired_rows_are_skipped_in_order():
    rows = [(100, [b"1.5", b"2.5"]), None, (0, [b"9.0", b"9.0"]), (100, [b"3.5", b"-0.0"])]
    assert _float_values(_group(2, ttl_micros=50), rows, now=100) == [1.5, 2.5, 3.5, -0.0]


@pytest.mark.parametrize("bad", [NULL, None, b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf", b"1e400", b"3",
                                 b"1.0,2.0", b"[1.0]", b"", b"true"])
def test_anything_but_a_plain_float_text_declines(bad):
    rows = [(0, [b"1.0", b"2.0"]), (0, [b"4.0", bad])]
    assert _float_values(_group(2), rows, now=0) is None
