"""The compiler on real Spark: AGE against the real PostgreSQL, event-time "now", composites, python features,
validation at apply time."""
from __future__ import annotations

import sys
import textwrap
from datetime import date, datetime

import pandas as pd
import pytest

from fstore.compiler import compile_feature_set
from fstore.engine.check import validate_version
from fstore.definitions.model import Entity, Feature, FeatureSet, FeatureSetVersion
from fstore.engine.spark import compute, read_source
from fstore.core.errors import ComputeError, InvalidDefinition, NotFound
from fstore.core.settings import Settings

pytestmark = pytest.mark.spark


def make_fsv(features: list[dict], source: dict | None, *, name: str = "users") -> FeatureSetVersion:
    body = {"name": name, "entities": ["user"]}
    if source is not None:
        body["source"] = source
    return FeatureSetVersion(
        feature_set=FeatureSet.from_dict(body), version=1,
        entities=(Entity.from_dict({"name": "user", "join_keys": ["user_id"]}),),
        features=tuple(Feature.from_dict(f, feature_set=name) for f in features),
    )


class _Store:
    """What validate_version needs from a FeatureStore: settings and a Spark session (counts its use)."""

    def __init__(self, spark, engine: str = "spark", *, roots: tuple[str, ...] = (), modules: tuple[str, ...] = ()) -> None:
        self._spark, self.used = spark, 0
        self.settings = Settings(compute_engine=engine, source_roots=roots, python_feature_modules=modules)

    @property
    def spark(self):
        self.used += 1
        return self._spark


def _write(spark, tmp_path, pdf: pd.DataFrame, name: str = "src") -> str:
    path = str(tmp_path / name)
    spark.createDataFrame(pdf).write.parquet(path)
    return path


def _age_pairs() -> list[tuple[date, date]]:
    births = [date(2000, 2, 29), date(1996, 2, 29), date(1990, 3, 1), date(1990, 2, 28), date(1985, 12, 31),
              date(2001, 1, 31), date(1999, 7, 15), date(2004, 2, 29)]
    events = []
    for year in (2019, 2020, 2021, 2023, 2024, 2025):
        events += [date(year, 2, 27), date(year, 2, 28), date(year, 3, 1), date(year, 3, 2), date(year, 7, 14),
                   date(year, 7, 15), date(year, 12, 30), date(year, 12, 31), date(year, 1, 30), date(year, 1, 31)]
        if year % 4 == 0:
            events.append(date(year, 2, 29))
    events += [date(1980, 5, 5), date(1999, 7, 14)]  # event before birth: negative ages, as PostgreSQL gives
    return [(e, b) for e in events for b in births]


def test_age_matches_postgresql_at_birthdays_and_leap_days(spark, compute_rows, tmp_path):
    from sqlalchemy import create_engine, text

    from tests.conftest import PG_ADMIN_URL

    pairs = _age_pairs()
    engine = create_engine(PG_ADMIN_URL)
    values = ", ".join(f"(DATE '{e}', DATE '{b}')" for e, b in pairs)
    with engine.connect() as conn:
        rows = conn.execute(text(
            f"SELECT e, b, EXTRACT(YEAR FROM AGE(e, b))::int, EXTRACT(MONTH FROM AGE(e, b))::int, "
            f"EXTRACT(DAY FROM AGE(e, b))::int FROM (VALUES {values}) AS t(e, b)")).all()
    engine.dispose()
    expected = {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows}
    pdf = pd.DataFrame({"user_id": [f"u{i}" for i in range(len(pairs))],
                        "ts": [datetime(e.year, e.month, e.day, 13, 30) for e, _ in pairs],
                        "date_of_birth": [b for _, b in pairs]})
    path = _write(spark, tmp_path, pdf)
    fsv = make_fsv([
        {"name": "age", "data_type": "int", "dialect": "postgres",
         "transformation": "EXTRACT(YEAR FROM AGE(current_date, date_of_birth))"},
        {"name": "age_months", "data_type": "int", "dialect": "postgres",
         "transformation": "EXTRACT(MONTH FROM AGE(current_date, date_of_birth))"},
        {"name": "age_days", "data_type": "int", "dialect": "postgres",
         "transformation": "date_part('day', age(date_of_birth))"},
    ], {"path": path, "event_timestamp_column": "ts"})
    got = compute_rows(fsv)
    assert len(got) == len(pairs)
    index = {f"u{i}": p for i, p in enumerate(pairs)}
    mismatches = [(index[r.user_id], (r.age, r.age_months, r.age_days), expected[index[r.user_id]])
                  for r in got.itertuples() if (r.age, r.age_months, r.age_days) != expected[index[r.user_id]]]
    assert mismatches == []
    # the cases the brief names, spelled out
    def age_at(e, b):
        return expected[(e, b)][0]
    assert age_at(date(2021, 2, 28), date(2000, 2, 29)) == 20  # non-leap year: not yet on 28 Feb
    assert age_at(date(2021, 3, 1), date(2000, 2, 29)) == 21   # ... a year older on 1 Mar
    assert age_at(date(2024, 2, 29), date(2000, 2, 29)) == 24  # leap year: on the birthday itself
    assert age_at(date(2024, 2, 28), date(2000, 2, 29)) == 23


def test_age_with_timestamps_borrows_a_day_like_postgresql(spark, compute_rows, tmp_path):
    from sqlalchemy import create_engine, text

    from tests.conftest import PG_ADMIN_URL

    pairs = [(datetime(2024, 3, 1, 8, 0), datetime(2000, 3, 1, 9, 0)), (datetime(2024, 3, 1, 9, 0), datetime(2000, 3, 1, 9, 0)),
             (datetime(2024, 3, 31, 0, 0), datetime(2024, 1, 31, 0, 0, 1)), (datetime(2023, 3, 1, 0, 0), datetime(2023, 1, 31, 12, 0))]
    engine = create_engine(PG_ADMIN_URL)
    with engine.connect() as conn:
        expected = [tuple(conn.execute(text(
            "SELECT EXTRACT(YEAR FROM AGE(:a, :b))::int, EXTRACT(MONTH FROM AGE(:a, :b))::int, EXTRACT(DAY FROM AGE(:a, :b))::int"),
            {"a": a, "b": b}).one()) for a, b in pairs]
    engine.dispose()
    pdf = pd.DataFrame({"user_id": [f"u{i}" for i in range(len(pairs))], "ts": [a for a, _ in pairs], "born": [b for _, b in pairs]})
    fsv = make_fsv([{"name": f"p_{part}", "data_type": "int", "dialect": "postgres",
                     "transformation": f"EXTRACT({part} FROM AGE(now(), born))"} for part in ("YEAR", "MONTH", "DAY")],
                   {"path": _write(spark, tmp_path, pdf), "event_timestamp_column": "ts"})
    got = compute_rows(fsv).sort_values("user_id")
    assert [tuple(r) for r in got[["p_YEAR", "p_MONTH", "p_DAY"]].itertuples(index=False)] == expected


def test_now_and_current_date_mean_the_event_time(spark, compute_rows, tmp_path):
    pdf = pd.DataFrame({"user_id": ["a", "b"], "ts": [datetime(2020, 5, 17, 23, 59, 59), datetime(2021, 1, 1, 0, 0)],
                        "signup": [date(2020, 5, 7), date(2020, 12, 1)]})
    fsv = make_fsv([
        {"name": "today", "data_type": "string", "transformation": "CAST(current_date AS STRING)"},
        {"name": "days_since_signup", "data_type": "int", "transformation": "datediff(current_date(), signup)"},
        {"name": "now_ts", "data_type": "timestamp", "transformation": "now()", "dialect": "postgres"},
        {"name": "hours", "data_type": "float", "transformation": "(unix_timestamp(current_timestamp()) - unix_timestamp(CAST(signup AS TIMESTAMP))) / 3600.0"},
    ], {"path": _write(spark, tmp_path, pdf), "event_timestamp_column": "ts"})
    got = compute_rows(fsv).sort_values("user_id").reset_index(drop=True)
    assert list(got.today) == ["2020-05-17", "2021-01-01"]
    assert list(got.days_since_signup) == [10, 31]
    assert list(got.now_ts) == list(pdf.ts)
    assert got.hours[0] == pytest.approx(10 * 24 + 23 + 59 / 60 + 59 / 3600)


def test_composites_in_dependency_order_and_seed_ratio(spark, compute_rows, tmp_path):
    ts = [datetime(2024, 1, d) for d in (1, 2, 3)] + [datetime(2024, 1, 1)]
    pdf = pd.DataFrame({"user_id": ["u", "u", "u", "v"], "timestamp": ts,
                        "signup": [date(2023, 12, 31), date(2023, 12, 31), date(2023, 12, 31), date(2024, 1, 1)],
                        "amount": [10.0, 20.0, 30.0, 5.0]})
    fsv = make_fsv([
        {"name": "rate_x2", "data_type": "float", "transformation": "rate * 2", "source_features": ["rate"]},
        {"name": "rate", "data_type": "float", "dialect": "postgres",
         "transformation": "purchases_last_30d / NULLIF(days_since_signup, 0)"},
        {"name": "purchases_last_30d", "data_type": "int", "dialect": "postgres",
         "transformation": "COUNT(*) OVER (PARTITION BY user_id ORDER BY timestamp RANGE BETWEEN INTERVAL '30 days' PRECEDING AND CURRENT ROW)"},
        {"name": "days_since_signup", "data_type": "int", "transformation": "datediff(current_date, signup)"},
        {"name": "amount", "data_type": "float", "transformation": "amount * 100"},  # shadows the source column
        {"name": "amount_plus", "data_type": "float", "transformation": "amount + 1", "source_features": ["amount"]},
    ], {"path": _write(spark, tmp_path, pdf), "event_timestamp_column": "timestamp"})
    compiled = compile_feature_set(fsv)
    assert "composite_2" in compiled.sql and compiled.lookback_seconds == 30 * 86400
    got = compute_rows(fsv).sort_values(["user_id", "event_timestamp"]).reset_index(drop=True)
    assert list(got.columns) == ["user_id", "event_timestamp", "created_timestamp", "rate_x2", "rate",
                                 "purchases_last_30d", "days_since_signup", "amount", "amount_plus"]
    assert list(got.purchases_last_30d) == [1, 2, 3, 1]
    assert list(got.days_since_signup) == [1, 2, 3, 0]
    assert list(got.rate[:3]) == [1.0, 1.0, 1.0] and pd.isna(got.rate[3])  # NULLIF(0) → null, not a division error
    assert list(got.rate_x2[:3]) == [2.0, 2.0, 2.0]
    assert list(got.amount) == [1000.0, 2000.0, 3000.0, 500.0]
    assert list(got.amount_plus) == [1001.0, 2001.0, 3001.0, 501.0]
    assert list(got.created_timestamp) == list(got.event_timestamp)


def test_fractions_cast_to_integers_truncate_on_both_engines(spark, compute_rows, tmp_path):
    """Spark truncates a fraction cast to an integer type; DuckDB would round it, so the engine truncates first."""
    pdf = pd.DataFrame({"user_id": ["a", "b", "c"], "ts": [datetime(2024, 1, 1)] * 3, "amount": [1.5, 2.7, -2.5],
                        "n": [9007199254740993, 2, 3]})
    fsv = make_fsv([
        {"name": "as_int", "data_type": "int", "transformation": "amount"},
        {"name": "inner_cast", "data_type": "float", "transformation": "CAST(amount * 3 AS INT) + 0.5"},
        {"name": "big", "data_type": "int", "transformation": "CAST(n AS BIGINT)"},
    ], {"path": _write(spark, tmp_path, pdf), "event_timestamp_column": "ts"})
    got = compute_rows(fsv).sort_values("user_id").reset_index(drop=True)
    assert list(got.as_int) == [1, 2, -2]
    assert list(got.inner_cast) == [4.5, 8.5, -6.5]
    assert list(got.big) == [9007199254740993, 2, 3]


def test_postgres_integer_division_truncates_like_postgresql_on_both_engines(spark, compute_rows, tmp_path):
    """``dialect: postgres``: ``int / int`` is PostgreSQL's truncating division (7 / 2 = 3, -7 / 2 = -3) when the
    expression shows both sides are integers; a raw source column's type is not known, so it stays a fraction."""
    pdf = pd.DataFrame({"user_id": ["a", "b"], "ts": [datetime(2024, 1, 1)] * 2, "n": [7, -7], "d": [2, 2]})
    fsv = make_fsv([
        {"name": "n_int", "data_type": "int", "transformation": "n"},
        {"name": "d_int", "data_type": "int", "transformation": "d"},
        {"name": "halves", "data_type": "float", "dialect": "postgres", "transformation": "n_int / d_int",
         "source_features": ["n_int", "d_int"]},
        {"name": "cast_halves", "data_type": "float", "dialect": "postgres", "transformation": "CAST(n AS INT) / 2"},
        {"name": "literal", "data_type": "float", "dialect": "postgres", "transformation": "7 / 2 + n * 0"},
        {"name": "raw", "data_type": "float", "dialect": "postgres", "transformation": "n / d"},
        {"name": "spark_halves", "data_type": "float", "transformation": "n_int / d_int",
         "source_features": ["n_int", "d_int"]},
    ], {"path": _write(spark, tmp_path, pdf), "event_timestamp_column": "ts"})
    assert "DIV" in compile_feature_set(fsv).sql
    got = compute_rows(fsv).sort_values("user_id").reset_index(drop=True)
    assert list(got.halves) == [3.0, -3.0]
    assert list(got.cast_halves) == [3.0, -3.0]
    assert list(got.literal) == [3.0, 3.0]
    assert list(got.raw) == [3.5, -3.5]  # documented: the compiler does not read the source's types
    assert list(got.spark_halves) == [3.5, -3.5]  # Spark SQL's own division


def test_python_features_run_on_the_executors(spark, tmp_path, monkeypatch):
    module = tmp_path / "h3a_pyfeatures.py"
    module.write_text(textwrap.dedent("""
        import pandas as pd

        def doubled(df):
            return df["amount"] * 2

        def as_frame(df):
            return pd.DataFrame({"label": df["user_id"] + ":" + df["big"].astype(str)})
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    pdf = pd.DataFrame({"user_id": ["a", "b"], "ts": [datetime(2024, 1, 1), datetime(2024, 1, 2)], "amount": [1.5, 2.5]})
    fsv = make_fsv([
        {"name": "dbl", "data_type": "float", "python": "h3a_pyfeatures:doubled"},
        {"name": "big", "data_type": "int", "transformation": "CAST(amount * 10 AS INT)"},
        {"name": "label", "data_type": "string", "python": "h3a_pyfeatures:as_frame"},
    ], {"path": _write(spark, tmp_path, pdf), "event_timestamp_column": "ts"})
    settings = Settings(source_roots=(str(tmp_path),), python_feature_modules=("h3a_pyfeatures",))
    df = compute(spark, fsv, settings=settings)
    assert "MapInPandas" in df._jdf.queryExecution().executedPlan().toString()
    got = df.toPandas().sort_values("user_id")
    assert list(got.dbl) == [3.0, 5.0] and list(got.label) == ["a:15", "b:25"] and list(got.big) == [15, 25]
    from fstore.engine import duckdb as engine  # the DuckDB engine runs the same functions in-process

    with engine.connect() as con:
        got = engine.compute(con, fsv, settings=settings).to_pandas().sort_values("user_id")
    assert list(got.dbl) == [3.0, 5.0] and list(got.label) == ["a:15", "b:25"] and list(got.big) == [15, 25]
    sys.modules.pop("h3a_pyfeatures", None)


@pytest.mark.parametrize("engine", ["spark", "duckdb"])
def test_python_features_pass_the_apply_check_and_their_errors_reach_the_user(spark, tmp_path, monkeypatch, engine):
    module = tmp_path / "h3b_pyfeatures.py"
    module.write_text(textwrap.dedent("""
        def doubled(df):
            return df["amount"] * 2

        def broken(df):
            raise ValueError("bad value in udf")

        def words(df):
            return df["user_id"] + "!"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    pdf = pd.DataFrame({"user_id": ["a"], "ts": [datetime(2024, 1, 1)], "amount": [1.0]})
    source = {"path": _write(spark, tmp_path, pdf), "event_timestamp_column": "ts"}
    store = _Store(spark, engine, roots=(str(tmp_path),), modules=("h3b_pyfeatures",))
    validate_version(store, make_fsv([
        {"name": "dbl", "data_type": "float", "python": "h3b_pyfeatures:doubled"},
        {"name": "plus", "data_type": "float", "transformation": "amount + 1"}], source))
    if engine == "duckdb":  # a function's own error, not DuckDB's complaint about an open result
        from fstore.engine import duckdb as duck

        fsv = make_fsv([{"name": "bad", "data_type": "float", "python": "h3b_pyfeatures:broken"}], source)
        with duck.connect() as con, pytest.raises(ValueError, match="bad value in udf"):
            duck.compute(con, fsv, settings=store.settings)
        fsv = make_fsv([{"name": "n", "data_type": "float", "python": "h3b_pyfeatures:words"}], source)
        with duck.connect() as con, pytest.raises(ComputeError, match="python feature n returned str values such as "
                                                                      "'a!'; its data_type needs numbers"):
            duck.compute(con, fsv, settings=store.settings)
    sys.modules.pop("h3b_pyfeatures", None)


@pytest.mark.parametrize("engine", ["spark", "duckdb"])
def test_validate_version_names_the_feature_with_the_engines_message(spark, tmp_path, engine):
    pdf = pd.DataFrame({"user_id": ["a"], "ts": [datetime(2024, 1, 1)], "amount": [1.0]})
    source = {"path": _write(spark, tmp_path, pdf), "event_timestamp_column": "ts"}
    store = _Store(spark, engine, roots=(str(tmp_path),))
    validate_version(store, make_fsv([{"name": "ok", "data_type": "float", "transformation": "amount + 1"}], source))
    with pytest.raises(InvalidDefinition) as err:
        validate_version(store, make_fsv([
            {"name": "ok", "data_type": "float", "transformation": "amount + 1"},
            {"name": "broken", "data_type": "float", "transformation": "amount + no_such_column"},
        ], source))
    assert "feature broken" in err.value.message and "no_such_column" in err.value.message
    with pytest.raises(InvalidDefinition, match="event timestamp column 'when'.*user_id, ts, amount"):
        validate_version(store, make_fsv([{"name": "ok", "data_type": "float", "transformation": "amount"}],
                                         {**source, "event_timestamp_column": "when"}))
    assert (store.used == 0) == (engine == "duckdb")  # the DuckDB engine never starts Spark


def test_a_source_the_duckdb_engine_cannot_read_registers_and_its_run_says_why(spark, tmp_path):
    """A Spark table or query, or Spark-only reader options, are valid definitions: on the DuckDB engine
    apply accepts them (it cannot analyse them) and a computation names the limitation."""
    from fstore.engine import duckdb as engine

    pdf = pd.DataFrame({"user_id": ["a"], "ts": [datetime(2024, 1, 1)], "amount": [1.0]})
    path = _write(spark, tmp_path, pdf)
    store = _Store(spark, "duckdb", roots=(str(tmp_path), "s3://bucket/"))
    cases = [({"table": "events_table", "event_timestamp_column": "ts"}, "this source is a Spark table"),
             ({"query": "SELECT * FROM events_table", "event_timestamp_column": "ts"}, "this source is a Spark query"),
             ({"path": path, "event_timestamp_column": "ts", "options": {"mergeSchema": "true"}},
              "does not understand source option(s) mergeSchema"),
             ({"path": "s3a://bucket/events", "format": "csv", "event_timestamp_column": "ts"},
              "reads parquet and delta sources on S3, not csv")]
    for source, reason in cases:
        fsv = make_fsv([{"name": "ok", "data_type": "float", "transformation": "amount + 1"}], source)
        validate_version(store, fsv)
        with engine.connect() as con, pytest.raises(InvalidDefinition, match="COMPUTE_ENGINE=duckdb") as err:
            engine.compute(con, fsv, settings=store.settings)
        assert reason in err.value.message and "COMPUTE_ENGINE=spark" in err.value.message
    assert store.used == 0


def test_validate_version_static_checks_do_not_start_spark():
    store = _Store(None, roots=("/nonexistent",), modules=("no_such_module_h3a", "os.path"))
    cases = [
        ([{"name": "x", "data_type": "int", "transformation": "amount +* 2"}], "feature x"),
        ([{"name": "a", "data_type": "int", "transformation": "b + 1", "source_features": ["b"]},
          {"name": "b", "data_type": "int", "transformation": "a + 1", "source_features": ["a"]}], "cycle"),
        ([{"name": "p", "data_type": "int", "python": "no_such_module_h3a:fn"}], "cannot be imported"),
        ([{"name": "p", "data_type": "int", "python": "os.path:no_such_fn"}], "not a callable"),
        ([{"name": "p", "data_type": "int", "python": "os:getcwd"}], "python module 'os' is not allowed"),
        ([{"name": "p", "data_type": "int", "python": "os.path:join"}], "defined in module 'posixpath'"),
        ([{"name": "w", "data_type": "int", "transformation":
           "COUNT(*) OVER (PARTITION BY other_id ORDER BY ts RANGE BETWEEN INTERVAL '1 day' PRECEDING AND CURRENT ROW)"}], "PARTITION BY"),
        ([{"name": "w", "data_type": "int", "transformation":
           "COUNT(*) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN 3 PRECEDING AND CURRENT ROW)"}], "RANGE"),
        ([{"name": "w", "data_type": "int", "window_size": "2d", "transformation":
           "COUNT(*) OVER (PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL '1 day' PRECEDING AND CURRENT ROW)"}], "disagrees"),
        ([{"name": "w", "data_type": "int", "transformation":
           "SUM(x) OVER (PARTITION BY user_id ORDER BY ts RANGE BETWEEN INTERVAL '1 month' PRECEDING AND CURRENT ROW)"}], "fixed duration"),
        ([{"name": "g", "data_type": "int", "dialect": "postgres", "transformation": "AGE(now(), born) > INTERVAL '1 year'"}], "AGE"),
        ([{"name": "event_timestamp", "data_type": "int", "transformation": "1"}], "taken"),
    ]
    for features, message in cases:
        with pytest.raises(InvalidDefinition, match=message):
            validate_version(store, make_fsv(features, {"path": "/nonexistent/h3a", "event_timestamp_column": "ts"}))
    validate_version(store, make_fsv([{"name": "x", "data_type": "int", "transformation": "1"}], None))
    # a source that is not readable yet: refused naming it, or (allowed) static checks only
    missing = make_fsv([{"name": "x", "data_type": "int", "transformation": "1"}],
                       {"path": "/nonexistent/h3a", "event_timestamp_column": "ts"})
    with pytest.raises(InvalidDefinition, match="source path /nonexistent/h3a does not exist"):
        validate_version(store, missing)
    validate_version(store, missing, allow_missing_source=True)
    assert store.used == 0


def test_read_source_formats_and_errors(spark, tmp_path):
    pdf = pd.DataFrame({"user_id": ["a", "b", "c"], "ts": pd.to_datetime(["2024-01-01", "2024-01-02", "2024-01-03"]),
                        "amount": [1.0, 2.0, 3.0]})
    csv = tmp_path / "src.csv"
    pdf.to_csv(csv, index=False)
    src = {"path": str(csv), "format": "csv", "event_timestamp_column": "ts"}
    from fstore.definitions.model import Source

    settings = Settings(source_roots=(str(tmp_path),))
    df = read_source(spark, Source.from_dict(src), settings=settings, start=datetime(2024, 1, 2), end=datetime(2024, 1, 3))
    assert [r.user_id for r in df.collect()] == ["b"]
    df = read_source(spark, Source.from_dict(src), settings=settings, start=datetime(2024, 1, 2), end=datetime(2024, 1, 3),
                     lookback_seconds=86400)
    assert sorted(r.user_id for r in df.collect()) == ["a", "b"]
    json_path = tmp_path / "src.json"
    spark.createDataFrame(pdf).write.json(str(json_path))
    assert read_source(spark, Source.from_dict({"path": str(json_path), "format": "json", "event_timestamp_column": "ts"}),
                       settings=settings).count() == 3
    spark.createDataFrame(pdf).createOrReplaceTempView("h3a_events")
    assert read_source(spark, Source.from_dict({"query": "SELECT * FROM h3a_events WHERE amount > 1",
                                                "event_timestamp_column": "ts"}), settings=settings).count() == 2
    with pytest.raises(NotFound, match="no/such/path"):
        read_source(spark, Source.from_dict({"path": str(tmp_path / "no/such/path"), "event_timestamp_column": "ts"}),
                    settings=settings)
    with pytest.raises(NotFound, match="no_such_table"):
        read_source(spark, Source.from_dict({"table": "no_such_table", "event_timestamp_column": "ts"}), settings=settings)


def test_read_delta_source_with_partitions(spark, tmp_path):
    import pyarrow as pa
    from deltalake import write_deltalake

    table = pa.table({"user_id": ["a", "b", "c"], "ts": pa.array([datetime(2024, 1, 1), datetime(2024, 1, 2), datetime(2024, 1, 3)],
                                                                  pa.timestamp("us", tz="UTC")),
                      "region": ["eu", "us", "eu"], "amount": [1.0, 2.0, 3.0]})
    path = str(tmp_path / "delta_src")
    write_deltalake(path, table, partition_by=["region"])
    from fstore.definitions.model import Source

    df = read_source(spark, Source.from_dict({"path": path, "format": "delta", "event_timestamp_column": "ts"}),
                     settings=Settings(source_roots=(str(tmp_path),)), end=datetime(2024, 1, 3))
    rows = sorted((r.user_id, r.region, r.amount) for r in df.collect())
    assert rows == [("a", "eu", 1.0), ("b", "us", 2.0)]


def test_concat_is_null_when_an_argument_is_on_both_engines(spark, compute_rows, tmp_path):
    """Spark's CONCAT answers null when any argument is null; DuckDB's would skip the null (``concat(NULL, '!')``
    gave ``'!'`` on DuckDB, null on Spark). CONCAT_WS skips nulls on both."""
    pdf = pd.DataFrame({"user_id": ["a", "b"], "ts": [datetime(2024, 1, 1)] * 2, "name": ["x", None], "n": [1, 2]})
    fsv = make_fsv([
        {"name": "shout", "data_type": "string", "transformation": "concat(name, '!')"},
        {"name": "mixed", "data_type": "string", "transformation": "concat('n', n + 1, name)"},
        {"name": "nested", "data_type": "string", "transformation": "upper(concat(concat(name, '-'), n))"},
        {"name": "joined", "data_type": "string", "transformation": "concat_ws('-', name, 'y')"},
    ], {"path": _write(spark, tmp_path, pdf), "event_timestamp_column": "ts"})
    got = compute_rows(fsv).sort_values("user_id").reset_index(drop=True)
    assert got.shout.tolist() == ["x!", None]
    assert got.mixed.tolist() == ["n2x", None]
    assert got.nested.tolist() == ["X-1", None]
    assert got.joined.tolist() == ["x-y", "y"]
