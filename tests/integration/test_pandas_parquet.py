"""A user's own Parquet as pandas writes it by default (nanosecond timestamps, naive or tz-aware) is accepted at
apply and materialized by both engines with the same rows (issue #30, item 6: Spark refused TIMESTAMP(NANOS))."""
from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
import pytest

pytestmark = pytest.mark.spark

T0 = datetime(2024, 6, 1)


def _write(folder, tz: str | None) -> str:
    folder.mkdir(parents=True)
    times = pd.Series([T0 + timedelta(hours=1, microseconds=7), T0 + timedelta(hours=30), T0 + timedelta(hours=50)])
    if tz:
        times = times.dt.tz_localize("UTC").dt.tz_convert(tz)
    frame = pd.DataFrame({"user_id": [1, 1, 2], "event_timestamp": times, "amount": [1.0, 2.0, 4.0]})
    assert str(frame.event_timestamp.dtype).startswith("datetime64[ns")
    frame.to_parquet(folder / "data.parquet")  # pandas' defaults: nanoseconds kept
    return str(folder)


@pytest.mark.parametrize("tz", [None, "Europe/Paris"], ids=["naive", "tz-aware"])
def test_pandas_nanosecond_parquet_is_read_alike_by_both_engines(settings, on_engine, tmp_path, tz):
    store = on_engine(settings)
    try:
        store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
        store.create_feature_set({  # apply reads the source (Spark analysis, or DuckDB)
            "name": "pd_txn", "entities": ["user"],
            "source": {"path": _write(tmp_path / "src", tz), "format": "parquet",
                       "event_timestamp_column": "event_timestamp"},
            "features": [{"name": "amount", "data_type": "float", "transformation": "amount"},
                         {"name": "sum_2d", "data_type": "float", "window_size": "2d", "aggregation": "sum",
                          "transformation": "amount"}]})
        run = store.materialize("pd_txn", T0, T0 + timedelta(days=3))
        assert run["rows_read"] == 3
        rows = store.get_historical_features(
            entity_df=pd.DataFrame({"user_id": [1, 1, 2], "event_timestamp": [T0 + timedelta(hours=1, microseconds=7),
                                                                            T0 + timedelta(hours=40),
                                                                            T0 + timedelta(hours=60)]}),
            features=["amount", "sum_2d"]).to_df()
        assert rows.amount.tolist() == [1.0, 2.0, 4.0] and rows.sum_2d.tolist() == [1.0, 3.0, 4.0]
    finally:
        store.close()
