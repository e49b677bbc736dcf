"""Declarative apply and plan: idempotent, versioned, one transaction, errors that name file and line."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from sqlalchemy import func, select

from fstore.registry.apply import describe
from fstore.core.errors import InvalidDefinition, NotFound
from fstore.definitions.examples import write_example_sources
from fstore.registry.models import EntityRow, FeatureRow, FeatureSetRow, FeatureSetVersionRow, FeatureVersionRow
from fstore.store import FeatureStore

EXAMPLES = Path(__file__).resolve().parents[2] / "conf" / "examples"

PROFILE = """
entities:
  - name: user
    join_keys: [user_id]
    value_type: int
feature_sets:
  - name: profile
    entities: [user_id]
    owner: ds
    source:
      path: users_data
      event_timestamp_column: updated_at
    features:
      - name: balance
        data_type: float
        transformation: account_balance
        validation_rules: {min_value: 0}
      - name: rich
        data_type: bool
        transformation: balance > 1000
        source_features: [balance]
"""


@pytest.fixture()
def store(any_registry_settings):
    store = FeatureStore(any_registry_settings, auto_upgrade=True)
    yield store
    store.close()


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def counts(store) -> dict[str, int]:
    with store.transaction() as s:
        return {m.__tablename__: s.scalar(select(func.count()).select_from(m))
                for m in (EntityRow, FeatureSetRow, FeatureSetVersionRow, FeatureRow, FeatureVersionRow)}


def actions(result) -> dict[str, tuple[str, int]]:
    return {f"{c['kind']}:{c['name']}": (c["action"], c["version"]) for c in result["changes"]}


def test_apply_creates_then_changes_nothing(store, tmp_path):
    path = write(tmp_path / "defs", "profile.yaml", PROFILE)
    planned = store.plan(str(path), allow_missing_sources=True)
    assert planned["applied"] is False and planned["summary"] == {"create": 4, "update": 0, "unchanged": 0}
    assert counts(store)["feature_sets"] == 0  # plan changed nothing
    applied = store.apply(str(path), actor="alice", allow_missing_sources=True)
    assert actions(applied) == actions(planned) == {
        "entity:user": ("create", 1), "feature_set:profile": ("create", 1),
        "feature:profile:balance": ("create", 1), "feature:profile:rich": ("create", 1)}
    assert applied["changes"][1]["file"] == f"{path}:7"
    snapshot = counts(store)
    again = store.apply(str(path.parent), actor="alice", allow_missing_sources=True)
    assert again["summary"] == {"create": 0, "update": 0, "unchanged": 4}
    assert counts(store) == snapshot
    fs = store.get_feature_set("profile")
    assert fs["entities"] == ["user"] and fs["source"]["path"] == str((path.parent / "users_data").resolve())
    assert store.get_feature("rich")["lineage"] == {"balance": 1}
    assert "applied: 0 created, 0 updated, 4 unchanged" in describe(again)


def test_changed_file_makes_new_versions_and_removed_fields_are_removed(store, tmp_path):
    path = write(tmp_path, "profile.yaml", PROFILE)
    store.apply(str(path), allow_missing_sources=True)
    changed = PROFILE.replace("owner: ds", "owner: ml").replace("        validation_rules: {min_value: 0}\n", "")
    write(tmp_path, "profile.yaml", changed)
    planned = store.plan(str(path), allow_missing_sources=True)
    assert actions(planned)["feature:profile:balance"] == ("update", 2)
    assert store.get_feature("balance")["version"] == 1  # plan rolled back
    result = store.apply(str(path), actor="bob", allow_missing_sources=True)
    got = actions(result)
    assert got["feature:profile:balance"] == ("update", 2) and got["feature:profile:rich"] == ("unchanged", 1)
    # the set changed itself (owner) and through its feature: v1 → v2 (owner) → v3 (balance v2)
    assert got["feature_set:profile"] == ("update", 3)
    assert next(c for c in result["changes"] if c["name"] == "profile")["changes"] == ["owner"]
    assert store.get_feature("balance")["validation_rules"] == {"on_violation": "null"}
    versions = store.feature_versions("balance")
    assert versions[-1]["created_by"] == "bob" and [c["field"] for c in versions[-1]["changes"]] == ["validation_rules"]
    assert store.apply(str(path), allow_missing_sources=True)["summary"]["update"] == 0


def test_a_bad_file_changes_nothing(store, tmp_path):
    folder = tmp_path / "defs"
    write(folder, "a_good.yaml", PROFILE)
    write(folder, "b_bad.yaml", """
        features:
          - name: broken
            feature_set: profile
            data_type: float
            transformation: balance * 2
            colour: red
        """)
    with pytest.raises(InvalidDefinition, match=r"b_bad.yaml:3: feature broken: unknown field\(s\) for feature: colour"):
        store.apply(str(folder), allow_missing_sources=True)
    assert counts(store) == {"entities": 0, "feature_sets": 0, "feature_set_versions": 0, "features": 0,
                             "feature_versions": 0}
    write(folder, "b_bad.yaml", """
        features:
          - name: loop
            feature_set: profile
            data_type: float
            transformation: rich
            source_features: [nothing_here]
        """)
    with pytest.raises(InvalidDefinition, match="nothing_here"):
        store.apply(str(folder), allow_missing_sources=True)
    assert counts(store)["feature_sets"] == 0


def test_loose_features_join_their_set(store, tmp_path):
    folder = tmp_path / "defs"
    write(folder, "a.yaml", PROFILE)
    write(folder, "b.yaml", """
        features:
          - name: double_balance
            feature_set: profile
            data_type: float
            transformation: balance * 2
            source_features: [balance]
        """)
    result = store.apply(str(folder), allow_missing_sources=True)
    assert actions(result)["feature:profile:double_balance"] == ("create", 1)
    # later, alone, against the registered set
    write(tmp_path / "more", "c.yaml", """
        features:
          - {name: half_balance, feature_set: profile, data_type: float, transformation: account_balance / 2}
        """)
    assert actions(store.apply(str(tmp_path / "more"), allow_missing_sources=True))["feature:profile:half_balance"] == ("create", 1)
    write(tmp_path / "orphan", "d.yaml", "features:\n  - {name: x, feature_set: nowhere, data_type: int, transformation: '1'}\n")
    with pytest.raises(NotFound, match="d.yaml:2: feature x: feature set 'nowhere' not found"):
        store.apply(str(tmp_path / "orphan"), allow_missing_sources=True)


def test_one_apply_repairs_features_registered_while_the_source_was_away(any_registry_settings, tmp_path):
    """Broken features can only be registered while the source is unreadable; one apply of the fixed
    file (the set changed too) must repair them all, each checked with the others as the file has them."""
    import pandas as pd

    store = FeatureStore(any_registry_settings.with_(compute_engine="duckdb"), auto_upgrade=True)
    try:
        source = tmp_path / "src"
        source.mkdir()
        pd.DataFrame({"user_id": [1, 2], "ts": pd.to_datetime(["2024-01-01", "2024-01-02"]), "amount": [1.0, 2.0]}) \
            .to_parquet(source / "part-0.parquet", index=False)

        def definitions(description: str, bal2: str, bal3: str) -> str:
            return textwrap.dedent(f"""
                feature_sets:
                  - name: t_rep
                    entities: [user_id]
                    description: {description}
                    source: {{path: {source}, event_timestamp_column: ts}}
                    features:
                      - {{name: bal, data_type: float, transformation: amount}}
                      - {{name: bal2, data_type: float, transformation: '{bal2}'}}
                      - {{name: bal3, data_type: float, transformation: '{bal3}'}}
                """)

        path = tmp_path / "defs.yaml"
        path.write_text(definitions("first", "amount * 2", "amount * 3"))
        store.apply(str(path))
        source.rename(tmp_path / "away")
        path.write_text(definitions("second", "nope_col * 2", "nope_col * 3"))
        with pytest.raises(InvalidDefinition, match=f"source path {source} does not exist"):
            store.apply(str(path))  # refused: a typo'd column would pass unchecked
        store.apply(str(path), allow_missing_sources=True)  # accepted when allowed: nothing to check the columns against
        (tmp_path / "away").rename(source)
        with pytest.raises(InvalidDefinition, match="feature bal2 does not compile against the source.*nope_col"):
            store.materialize("t_rep", "2024-01-01", "2024-01-03")  # its first run checks the SQL
        source.rename(tmp_path / "away")
        (tmp_path / "away").rename(source)
        path.write_text(definitions("third", "amount * 2", "amount * 3"))
        store.apply(str(path))
        assert store.get_feature("bal3", feature_set="t_rep")["transformation"] == "amount * 3"
        assert store.get_feature_set("t_rep")["description"] == "third"
    finally:
        store.close()


def test_a_regex_duckdb_cannot_run_is_refused_on_that_engine_only(any_registry_settings):
    body = {"name": "s", "entities": ["user_id"], "features": [
        {"name": "code", "data_type": "string", "transformation": "code", "validation_rules": {"regex": "(?<=a)b"}}]}
    duck = FeatureStore(any_registry_settings.with_(compute_engine="duckdb"), auto_upgrade=True)
    try:
        with pytest.raises(InvalidDefinition, match=r"feature code: validation_rules.regex '\(\?<=a\)b' does not compile "
                                                    r"on the DuckDB engine \(RE2\): .*invalid perl operator") as info:
            duck.create_feature_set(body)
        assert info.value.field == "validation_rules.regex" and counts(duck)["feature_sets"] == 0
    finally:
        duck.close()
    spark_store = FeatureStore(any_registry_settings.with_(compute_engine="spark"), auto_upgrade=True)
    try:
        assert spark_store.create_feature_set(body)["name"] == "s"  # Java's regex has look-behind
    finally:
        spark_store.close()


@pytest.mark.parametrize(("text", "message"), [
    ("feature_sets:\n  - name: x\n    entities: [a\n", r"bad.yaml:\d+: invalid YAML"),
    ("feature_sets:\n  - name: x\n\tentities: []\n", r"bad.yaml:3: invalid YAML"),
    ("- just\n- a list\n", r"bad.yaml:1: a definitions file must be a mapping"),
    ("sets: []\n", r"unknown top-level key\(s\) sets"),
    ("entities: {name: user}\n", r"bad.yaml:1: entities must be a list"),
    ("entities:\n  - user\n", r"bad.yaml:2: each of entities must be a mapping"),
    ("entities:\n  - {name: user}\n  - {name: user}\n", r"bad.yaml:3: entity user is also defined at .*bad.yaml:2"),
    ("feature_sets:\n  - name: s\n    entities: [k]\n    source: {path: '${HOME}/x'}\n", r"only \$\{STORAGE_PATH\}"),
    ("feature_sets:\n  - name: s\n    entities: [k]\n    schedule: daily\n", r"bad.yaml:2: feature set s: unknown field"),
    ("features:\n  - {name: f, data_type: int, transformation: '1'}\n", r"bad.yaml:2: feature f needs feature_set"),
    ("feature_sets:\n  - name: s\n    entities: [k]\n    features:\n      - {name: f, feature_set: other, data_type: int, "
     "transformation: '1'}\n", r"bad.yaml:5: feature f is written inside feature set s but names another set"),
    ("feature_sets:\n  - name: s\n    entities: [k]\n    materialization_schedule: '0 0 30 2 *'\n",
     r"bad.yaml:2: feature set s: materialization_schedule '0 0 30 2 \*' never fires"),
    ("feature_sets:\n  - name: s\n    entities: [k]\n    features:\n      - {name: f, data_type: float, "
     "transformation: x, validation_rules: {regex: 'a+'}}\n", r"bad.yaml:5: .*regex applies to string features"),
    (b"entities:\n  - name: \xff\n", r"bad.yaml:2: not UTF-8 text \(byte 0xff at offset 20\)"),
    ("feature_sets:\n  - name: s\n    entities: [k]\n    materialization_schedule: '0 0 30 2 *'\n    features:\n"
     "      - {name: f, data_type: int, transformation: '1'}\n", r"^[^ ]*bad.yaml:2: feature set s: materialization_schedule"),
])
def test_file_errors_name_file_and_line(store, tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InvalidDefinition, match=message):
        store.plan(str(path))
    assert counts(store)["entities"] == 0


def test_missing_paths_and_empty_folders(store, tmp_path):
    with pytest.raises(NotFound, match="no such file"):
        store.apply(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidDefinition, match="no .yaml"):
        store.apply(str(tmp_path / "empty"))
    (tmp_path / "blank.yaml").write_text("# nothing yet\n")
    with pytest.raises(InvalidDefinition, match="blank.yaml: holds no definitions"):  # not "0 created" (#30)
        store.apply(str(tmp_path / "blank.yaml"))


def test_examples_apply_on_real_sources_and_refuse_bad_sql(settings, spark, tmp_path):
    """The shipped examples, with their generated sources, pass the compiler's checks on Spark."""
    store = FeatureStore(settings).use_spark(spark)
    try:
        write_example_sources(Path(settings.storage_path) / "example_sources")
        result = store.apply(str(EXAMPLES), actor="ci")
        assert result["summary"] == {"create": 13, "update": 0, "unchanged": 0}
        fs = store.get_feature_set("user_activity")
        assert fs["source"]["path"] == str(Path(settings.storage_path) / "example_sources" / "purchases")
        assert fs["features"] == ["purchases_last_30d", "spend_last_7d", "days_since_signup", "purchase_frequency"]
        assert store.get_feature("purchase_frequency", feature_set="user_activity")["lineage"] == {
            "purchases_last_30d": 1, "days_since_signup": 1}
        assert store.plan(str(EXAMPLES))["summary"] == {"create": 0, "update": 0, "unchanged": 13}
        before = counts(store)
        bad = write(tmp_path / "bad", "bad.yaml", """
            features:
              - name: nonsense
                feature_set: user_profile
                data_type: float
                transformation: no_such_column * 2
            """)
        with pytest.raises(InvalidDefinition, match="nonsense"):
            store.apply(str(bad))
        assert counts(store) == before
        purchases = fs["source"]["path"]
        for engine in ("spark", "duckdb"):  # what the source's schema refuses, on both engines
            checked = FeatureStore(settings.with_(compute_engine=engine)).use_spark(spark)
            try:
                mistyped = {"name": "mistyped", "entities": ["nobody"],
                            "source": {"path": purchases, "event_timestamp_column": "timestamp"},
                            "features": [{"name": "n", "data_type": "float", "transformation": "amount"}]}
                user = {**mistyped, "entities": ["user"]}
                refused = [
                    (mistyped, "the source has no column 'nobody' for its entities", "entities"),
                    ({**user, "source": {"path": purchases, "event_timestamp_column": "amount"}},
                     "event timestamp column 'amount' is of type", "source.event_timestamp_column"),
                    ({**user, "features": [{"name": "big", "data_type": "float", "transformation": "amount",
                                            "aggregation": "sum", "window_size": "7d",
                                            "window_filter": "no_such_column > 1"}]},
                     "feature big: window_filter 'no_such_column > 1' does not compile against the source",
                     "window_filter"),
                    ({**user, "source": {"path": purchases, "event_timestamp_column": "category"}},
                     "column 'category' holds text that is not a time", "source.event_timestamp_column"),
                    ({**user, "source": {**mistyped["source"], "created_timestamp_column": "loaded_at"}},
                     "no created timestamp column 'loaded_at'", "source.created_timestamp_column"),
                ]
                for body, message, field in refused:
                    with pytest.raises(InvalidDefinition, match=message) as info:
                        checked.create_feature_set(body)
                    assert info.value.field == field
            finally:
                checked.close()
        assert counts(store) == before
    finally:
        store.close()

