"""What a failed stream and a failed DuckDB query say: the cause in one line, named as what it is."""
from __future__ import annotations

import duckdb
import pytest

from fstore.compute.stream import _cause
from fstore.definitions.model import FeatureSet, FeatureSetVersion
from fstore.engine.duckdb import query_error


def test_the_innermost_python_error_is_told_without_fstores_class_path():
    text = ("An exception was raised by the Python Proxy. Return Message: Traceback (most recent call last):\n"
            "  File \"x.py\", line 1, in call\n"
            "fstore.core.errors.ComputeError: feature set clicks v1 failed on its rows: Invalid Input Error: "
            "Division by zero in expression (a // (a - a)).")
    assert _cause(text) == ("feature set clicks v1 failed on its rows: Invalid Input Error: Division by zero in "
                            "expression (a // (a - a)).")


def test_a_spark_error_keeps_its_class_and_the_jvm_cause_is_used_when_the_message_names_none():
    assert _cause("pyspark.errors.exceptions.captured.ArithmeticException: [DIVIDE_BY_ZERO] Division by zero.") \
        == "pyspark.errors.exceptions.captured.ArithmeticException: [DIVIDE_BY_ZERO] Division by zero."
    trace = ("org.apache.spark.SparkException: failed\n\tat x\nCaused by: org.apache.kafka.common.errors.SslAuthentication"
             "Exception: SSL handshake failed\nCaused by: javax.net.ssl.SSLHandshakeException: PKIX path building failed")
    assert _cause("[STREAM_FAILED] Query terminated with error", trace) == \
        "javax.net.ssl.SSLHandshakeException: PKIX path building failed"


@pytest.fixture
def fsv() -> FeatureSetVersion:
    fs = FeatureSet.from_dict({"name": "clicks", "entities": ["user"],
                               "source": {"path": "/data/clicks", "event_timestamp_column": "ts"}})
    return FeatureSetVersion(feature_set=fs, version=3, features=(), entities=())


@pytest.mark.parametrize(("sql", "said"), [
    ("SELECT no_such_column FROM (SELECT 1 AS a)", "does not compile against its source: Binder Error"),
    ("SELECT a // (a - a) FROM (SELECT 1 AS a)", "failed on its rows: Invalid Input Error: Division by zero"),
    ("SELECT CAST('x' AS INTEGER)", "failed on its rows: Conversion Error"),
])
def test_a_duckdb_query_error_says_whether_the_query_or_its_rows_failed(fsv, sql, said):
    with pytest.raises(duckdb.Error) as raised:
        duckdb.sql(sql).fetchall()
    error = query_error(fsv, raised.value)
    assert error.message.startswith(f"feature set clicks v3 {said}"), error.message
