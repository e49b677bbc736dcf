"""SQL text the Spark point-in-time join builds: type names and key casts must survive any column name."""
from __future__ import annotations

from pyspark.sql import types as T

from fstore.serving.retrieval.pit import key_columns_as, sql_type


def test_sql_type_quotes_nested_names_at_every_depth():
    inner = T.StructType([T.StructField("we`ird", T.LongType()), T.StructField("a b.c:d", T.ArrayType(T.DoubleType()))])
    nested = T.StructType([T.StructField("x", inner), T.StructField("m", T.MapType(T.StringType(), T.DecimalType(10, 2)))])
    assert sql_type(nested) == ("STRUCT<`x`: STRUCT<`we``ird`: bigint, `a b.c:d`: ARRAY<double>>, "
                                "`m`: MAP<string, decimal(10,2)>>")
    assert sql_type(T.TimestampType()) == "timestamp"


def test_key_columns_take_the_label_rows_types():
    rows = {"user_id": T.StringType(), "merchant": T.StringType()}
    labels = {"user_id": T.LongType(), "merchant": T.StringType()}
    assert key_columns_as(["user_id", "merchant"], rows, labels) == ["CAST(`user_id` AS bigint) AS `user_id`", "`merchant`"]
