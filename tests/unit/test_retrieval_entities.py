"""The entity frame's value checks, on pandas alone: key values against their key's type, 64-bit integers."""
from __future__ import annotations

import pandas as pd
import pytest

from fstore.core.errors import InvalidDefinition
from fstore.serving.retrieval.entities import check_values, prepare_pandas

INT_KEY = {"user_id": ("int", "user_txn")}


@pytest.mark.parametrize(("values", "words"), [
    ([1, 10**30], f"{10**30} is out of the 64-bit integer range"),
    ([1.0, 1e30], "out of the 64-bit integer range"),
    ([1, "abc"], "'abc' is not a int"),
    ([1.5, float("nan")], "1.5 is not a int"),
    ([float("inf")], "inf is not a int"),
    ([1, {"a": 1}], "{'a': 1} is not a int"),
    ([True, False], "True is not a int"),
])
def test_int_key_values_that_cannot_be_ints_are_refused(values, words):
    with pytest.raises(InvalidDefinition) as info:
        check_values(pd.DataFrame({"user_id": values}), INT_KEY)
    assert info.value.field == "user_id" and words in info.value.message
    assert "a join key of feature set user_txn" in info.value.message or "64-bit" in info.value.message


@pytest.mark.parametrize("values", [[1, 2], [1.0, float("nan")], ["1", " 2", None], [2**63 - 1, -(2**63)]])
def test_int_key_values_as_the_online_lookup_takes_them(values):
    check_values(pd.DataFrame({"user_id": values}), INT_KEY)


def test_a_huge_integer_in_any_column_is_named():
    with pytest.raises(InvalidDefinition) as info:
        check_values(pd.DataFrame({"note": ["a", 2**64]}), {})
    assert info.value.field == "note" and "64-bit" in info.value.message


def test_an_unreadable_timestamp_is_named_on_one_line():
    frame = pd.DataFrame({"user_id": [1, 2], "ts": ["2024-01-01", "yesterday"]})
    with pytest.raises(InvalidDefinition) as info:
        prepare_pandas(frame, None)
    assert info.value.field == "timestamp_column"
    assert info.value.message == "entity_df timestamp column 'ts' has a value that is not a timestamp: 'yesterday' (row 1)"
