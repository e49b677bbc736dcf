"""The domain model validates itself: every bad definition is refused with the field at fault."""
from __future__ import annotations

import pytest

from fstore.definitions.model import (
    Entity,
    Feature,
    FeatureSet,
    Source,
    ValidationRules,
    check_cron,
    check_name,
    check_new,
    composite_order,
    format_duration,
    normalize_data_type,
    parse_duration,
)
from fstore.core.errors import InvalidDefinition

FEATURE = {"name": "user_age", "feature_set": "user_profile", "data_type": "int", "transformation": "age"}
SET = {"name": "user_profile", "entities": ["user_id"], "source": {"path": "/data/users"}}


@pytest.mark.parametrize(("name", "ok"), [
    ("user_age", True), ("_private", True), ("A1", True), ("x" * 63, True),
    ("x" * 64, False), ("1user", False), ("user-age", False), ("user age", False), ("", False),
    ("x;drop table features", False), ("üser", False), (None, False), (7, False),
])
def test_names_are_identifiers(name, ok):
    if ok:
        assert check_name(name) == name
    else:
        with pytest.raises(InvalidDefinition, match="not a valid name") as info:
            check_name(name)
        assert info.value.field == "name"


@pytest.mark.parametrize(("written", "canonical"), [
    ("int", "int"), ("INTEGER", "int"), ("bigint", "int"), ("double", "float"), ("str", "string"),
    ("boolean", "bool"), ("datetime", "timestamp"), ("list<int>", "list<int>"), ("array[double]", "list<float>"),
    ("List< String >", "list<string>"),
])
def test_data_type_spellings(written, canonical):
    assert normalize_data_type(written) == canonical


@pytest.mark.parametrize("bad", ["blob", "list<blob>", "map<string,int>", "", 3, None, "list<list<int>>"])
def test_bad_data_types(bad):
    with pytest.raises(InvalidDefinition, match="data_type") as info:
        normalize_data_type(bad)
    assert info.value.field == "data_type"


@pytest.mark.parametrize(("written", "seconds"), [
    ("30s", 30), ("15m", 900), ("1h", 3600), ("7d", 604800), ("2w", 1209600), ("30 days", 2592000),
    ("1 hour", 3600), (" 5 M ", 300), (86400, 86400), ("120", 120),
])
def test_durations(written, seconds):
    assert parse_duration(written, field_name="window_size") == seconds


@pytest.mark.parametrize("bad", ["0d", "-1d", "10y", "d", "1.5h", "", True, None, [1], 0, -5, float("inf"), float("nan")])
def test_bad_durations(bad):
    with pytest.raises(InvalidDefinition, match="window_size") as info:
        parse_duration(bad, field_name="window_size")
    assert info.value.field == "window_size"


def test_format_duration_is_exact():
    assert [format_duration(s) for s in (604800, 86400, 7200, 90, 61)] == ["1w", "1d", "2h", "90s", "61s"]


@pytest.mark.parametrize("cron", ["0 * * * *", "*/15 * * * *", "0 2 * * 1-5", None, ""])
def test_good_cron(cron):
    check_cron(cron)


@pytest.mark.parametrize("bad", ["every hour", "* * * *", "0 * * * * *", "61 * * * *", "0 25 * * *", 5])
def test_bad_cron(bad):
    with pytest.raises(InvalidDefinition, match="cron") as info:
        FeatureSet.from_dict({**SET, "materialization_schedule": bad})
    assert info.value.field == "materialization_schedule"


@pytest.mark.parametrize(("rules", "field"), [
    ({"min_value": "0"}, "validation_rules.min_value"),
    ({"max_value": True}, "validation_rules.max_value"),
    ({"min_value": 5, "max_value": 1}, "validation_rules.min_value"),
    ({"regex": "(unclosed"}, "validation_rules.regex"),
    ({"regex": 5}, "validation_rules.regex"),
    ({"on_violation": "explode"}, "validation_rules.on_violation"),
    ({"allowed_values": "gold"}, "validation_rules.allowed_values"),
    ({"not_null": "yes"}, "validation_rules.not_null"),
    ({"maximum": 3}, "maximum"),
])
def test_bad_validation_rules(rules, field):
    with pytest.raises(InvalidDefinition) as info:
        Feature.from_dict({**FEATURE, "validation_rules": rules})
    assert info.value.field == field


def test_validation_rule_aliases_round_trip():
    rules = ValidationRules.from_dict({"min": 0, "max": 10, "nullable": False, "pattern": "^a", "policy": "drop_row"})
    assert rules.to_dict() == {"on_violation": "drop_row", "min_value": 0, "max_value": 10, "not_null": True, "regex": "^a"}
    assert ValidationRules.from_dict(rules.to_dict()) == rules
    assert ValidationRules().is_empty and not rules.is_empty


@pytest.mark.parametrize(("body", "field"), [
    ({**FEATURE, "colour": "red"}, "colour"),
    ({k: v for k, v in FEATURE.items() if k != "data_type"}, "data_type"),
    ({k: v for k, v in FEATURE.items() if k != "feature_set"}, "feature_set"),
    ({**FEATURE, "data_type": "string", "allowed_values": ["a"], "validation_rules": {"allowed_values": ["b"]}},
     "allowed_values"),
    ({**FEATURE, "allowed_values": "a"}, "allowed_values"),
    ({**FEATURE, "transformation": 5}, "transformation"),
    ({**FEATURE, "python": "mod:fn"}, "python"),
    ({**FEATURE, "transformation": None, "python": "no colon"}, "python"),
    ({**FEATURE, "dialect": "oracle"}, "dialect"),
    ({**FEATURE, "aggregation": "sum"}, "window_size"),
    ({**FEATURE, "window_size": "7d", "aggregation": "median"}, "aggregation"),
    ({**FEATURE, "transformation": None, "window_size": "7d", "aggregation": "sum"}, "transformation"),
    ({**FEATURE, "source_features": ["user_age"]}, "source_features"),
    ({**FEATURE, "source_features": ["a", "a"]}, "source_features"),
    ({**FEATURE, "default_value": "old"}, "default_value"),
    ({**FEATURE, "tags": 5}, "tags"),
    ({**FEATURE, "name": "bad name"}, "name"),
    ({**FEATURE, "window_filter": "amount > 1"}, "window_filter"),
    ({**FEATURE, "type": "string"}, "data_type"),
])
def test_bad_features(body, field):
    with pytest.raises(InvalidDefinition) as info:
        Feature.from_dict(body)
    assert info.value.field == field


def test_feature_forms_and_round_trip():
    window = Feature.from_dict({**FEATURE, "name": "n", "window_size": "30 days", "transformation": None})
    assert window.window.function == "count" and window.window.size_seconds == 30 * 86400
    spend = Feature.from_dict({**FEATURE, "name": "spend", "data_type": "double", "transformation": "amount",
                               "window_size": "7d", "aggregation": "SUM", "window_filter": "amount > 0",
                               "tags": ["money"], "default_value": 0})
    again = Feature.from_dict(spend.to_dict())
    assert again == spend and again.to_dict()["window_size"] == "1w" and again.tags == {"money": ""}
    by_id = Feature.from_dict({k: v for k, v in FEATURE.items() if k != "feature_set"} | {"feature_set_id": 3},
                              feature_set="user_profile")
    assert by_id.feature_set == "user_profile"
    assert Feature.from_dict({**{k: v for k, v in FEATURE.items() if k != "data_type"}, "type": "long"}).data_type == "int"


@pytest.mark.parametrize(("body", "field"), [
    ({**SET, "owner_team": "x"}, "owner_team"),
    ({**SET, "entities": []}, "entities"),
    ({**SET, "entities": "user id"}, "entities"),
    ({**SET, "entities": ["a", "a"]}, "entities"),
    ({**SET, "source_type": "kafka"}, "source_type"),
    ({**SET, "ttl": "forever"}, "ttl"),
    ({**SET, "online_enabled": "yes"}, "online_enabled"),
    ({**SET, "description": 5}, "description"),
    ({**SET, "source": {"path": "/a", "table": "t"}}, "source"),
    ({**SET, "source": {}}, "source"),
    ({**SET, "source": {"path": "/a", "format": "xlsx"}}, "source.format"),
    ({**SET, "source": {"table": "db.t; drop"}}, "source.table"),
    ({**SET, "source": {"path": "/a", "event_timestamp_column": "ts col"}}, "source.event_timestamp_column"),
    ({**SET, "source": {"path": "/a", "options": "header=true"}}, "source.options"),
    ({**SET, "source": {"path": "/a", "bucket": "b"}}, "bucket"),
    ({**SET, "source": {"path": "/a", "type": "bogus"}}, "source.type"),
    ({**SET, "source": {"path": "/a", "type": "csv", "format": "parquet"}}, "source.format"),
    ({**SET, "source": {"path": "/a", "timestamp_column": "ts", "event_timestamp_column": "at"}},
     "source.event_timestamp_column"),
    ({**SET, "ttl": "1d", "ttl_seconds": 100}, "ttl"),
    ({**SET, "ttl_seconds": "abc"}, "ttl_seconds"),
])
def test_bad_feature_sets(body, field):
    with pytest.raises(InvalidDefinition) as info:
        FeatureSet.from_dict(body)
    assert info.value.field == field


def test_feature_set_round_trip():
    fs = FeatureSet.from_dict({**SET, "ttl": "2d", "materialization_schedule": "0 * * * *", "tags": {"team": "growth"},
                               "source": {"path": "/d", "format": "CSV", "timestamp_column": "ts",
                                          "created_timestamp_column": "created", "options": {"header": True}}})
    assert fs.ttl_seconds == 172800 and fs.source.format == "csv" and fs.source.options == {"header": "True"}
    assert FeatureSet.from_dict(fs.to_dict()) == fs


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "user", "join_keys": []}, "join_keys"),
    ({"name": "user", "join_keys": ["user id"]}, "join_keys"),
    ({"name": "user", "value_type": "list<int>"}, "value_type"),
    ({"name": "user", "value_type": "blob"}, "value_type"),
    ({"name": "user", "keys": ["a"]}, "keys"),
    ({"name": "9user"}, "name"),
    ({"name": "user", "join_keys": ["a"], "join_key": ["b"]}, "join_keys"),
])
def test_bad_entities(body, field):
    with pytest.raises(InvalidDefinition) as info:
        Entity.from_dict(body)
    assert info.value.field == field


def test_entity_defaults_join_key_to_its_name():
    assert Entity.from_dict({"name": "user_id"}).join_keys == ("user_id",)
    assert Entity.from_dict({"name": "user", "join_key": "uid", "value_type": "bigint"}).value_type == "int"


def _f(name, *sources):
    return Feature(name=name, feature_set="s", data_type="float", transformation="x", source_features=tuple(sources))


def test_composite_order_puts_sources_first():
    ordered = composite_order([_f("ratio", "a", "b"), _f("b", "a"), _f("a")])
    assert [f.name for f in ordered] == ["a", "b", "ratio"]


def test_composite_cycle_and_missing_source_are_named():
    with pytest.raises(InvalidDefinition, match="a -> b -> c -> a") as info:
        composite_order([_f("a", "b"), _f("b", "c"), _f("c", "a")])
    assert info.value.field == "source_features"
    with pytest.raises(InvalidDefinition, match="ghost, phantom"):
        composite_order([_f("a", "ghost", "phantom")])


def test_non_mapping_bodies_are_refused():
    for cls in (Entity, FeatureSet, Feature):
        with pytest.raises(InvalidDefinition, match="must be an object"):
            cls.from_dict(["not", "a", "mapping"])
    with pytest.raises(InvalidDefinition, match="source"):
        Source.from_dict("s3://bucket")


@pytest.mark.parametrize("text", ["³", "１２", "٣d"])
def test_non_ascii_digits_are_not_durations(text):
    """Unicode digits pass str.isdigit() but not int(); they must be refused, not crash."""
    with pytest.raises(InvalidDefinition):
        parse_duration(text, field_name="ttl")


@pytest.mark.parametrize(("item", "field", "message"), [
    (FeatureSet.from_dict({**SET, "materialization_schedule": "0 0 30 2 *"}), "materialization_schedule", "never fires"),
    (FeatureSet.from_dict({**SET, "ttl": "99999999999999d"}), "ttl", "longer than 100 years"),
    (FeatureSet.from_dict({**SET, "ttl": 10**30}), "ttl", "longer than 100 years"),
    (FeatureSet.from_dict({**SET, "tags": {"": "x"}}), "tags", "needs a name"),
    (Feature.from_dict({**FEATURE, "aggregation": "sum", "window_size": "999999999999d"}), "window_size", "100 years"),
    (Feature.from_dict({**FEATURE, "data_type": "float", "validation_rules": {"regex": "a+"}}),
     "validation_rules.regex", "applies to string features; feature user_age is float"),
    (Feature.from_dict({**FEATURE, "data_type": "string", "validation_rules": {"min_value": 1}}),
     "validation_rules.min_value", "applies to int and float features"),
    (Feature.from_dict({**FEATURE, "validation_rules": {"max_value": 10**400}}), "validation_rules.max_value", "finite"),
    (Feature.from_dict({**FEATURE, "data_type": "string", "validation_rules": {"allowed_values": [1, 2]}}),
     "validation_rules.allowed_values", "1 is not a string"),
    (Feature.from_dict({**FEATURE, "data_type": "float", "validation_rules": {"allowed_values": ["x"]}}),
     "validation_rules.allowed_values", "'x' is not a float"),
    (Feature.from_dict({**FEATURE, "validation_rules": {"allowed_values": []}}), "validation_rules.allowed_values",
     "at least one"),
])
def test_new_definitions_are_checked_further_than_stored_ones(item, field, message):
    """What could never run is refused when written; reading the same stored spec still works."""
    with pytest.raises(InvalidDefinition, match=message) as info:
        check_new(item)
    assert info.value.field == field
    assert type(item).from_dict(item.to_dict()) == item


def test_rules_that_fit_their_type_pass_the_new_definition_checks():
    check_new(Feature.from_dict({**FEATURE, "data_type": "float", "validation_rules": {
        "min_value": 0, "max_value": 1e300, "allowed_values": [1, 2.5]}}))
    check_new(Feature.from_dict({**FEATURE, "data_type": "string", "validation_rules": {
        "regex": "[a-z]+", "allowed_values": ["a", "b"]}}))
    check_new(FeatureSet.from_dict({**SET, "materialization_schedule": "0 0 29 2 *", "ttl": "36500d"}))


def test_spec_basic_features_read_as_the_spec_writes_them():
    """The spec's "Basic Features": no transformation means the source column of the feature's
    name; ``allowed_values`` at the top level is the validation rule of that name."""
    balance = Feature.from_dict({"name": "account_balance", "data_type": "float", "default_value": 0.0,
                                 "feature_set_id": "user_profile"})
    assert (balance.feature_set, balance.transformation, balance.default_value) == ("user_profile", "account_balance", 0.0)
    assert Feature.from_dict(balance.to_dict()) == balance
    body = {"name": "user_segment", "data_type": "string", "allowed_values": ["premium", "standard", "basic"],
            "feature_set_id": "user_profile"}
    segment = Feature.from_dict(body)
    assert segment.validation.allowed_values == ("premium", "standard", "basic")
    assert segment.transformation == "user_segment"
    assert Feature.from_dict({**body, "validation_rules": {"allowed_values": ["premium", "standard", "basic"],
                                                           "on_violation": "drop_row"}}).validation.on_violation == "drop_row"
    assert Feature.from_dict(segment.to_dict()) == segment
    with pytest.raises(InvalidDefinition, match="allowed_values must be a list"):
        Feature.from_dict({**body, "allowed_values": "premium"})
    # a window or a composite still says what it computes from: no column is guessed for them
    assert Feature.from_dict({**FEATURE, "transformation": None, "window_size": "7d"}).transformation is None


@pytest.mark.parametrize("given, seconds", [("400d", 400 * 86400), ("2w", 14 * 86400), (3600, 3600), (None, None)])
def test_retention_is_a_duration_kept_in_the_spec(given, seconds):
    fs = FeatureSet.from_dict({"name": "s", "entities": ["user"], **({"retention": given} if given else {})})
    assert fs.retention_seconds == seconds
    assert fs.to_dict().get("retention_seconds") == seconds
    assert FeatureSet.from_dict(fs.to_dict()) == fs


@pytest.mark.parametrize("body, field", [({"retention": "forever"}, "retention"), ({"retention": "0d"}, "retention"),
                                         ({"retention_seconds": -1}, "retention_seconds"),
                                         ({"retention": True}, "retention")])
def test_a_bad_retention_is_refused_naming_its_field(body, field):
    with pytest.raises(InvalidDefinition) as refused:
        FeatureSet.from_dict({"name": "s", "entities": ["user"], **body})
    assert refused.value.field == field


@pytest.mark.parametrize("value", [-1, 0, 1.5, True, "1h"])
def test_allowed_lateness_seconds_built_directly_must_be_positive_whole_seconds(value):
    from fstore.definitions.model import FeatureSet

    with pytest.raises(InvalidDefinition) as caught:
        FeatureSet(name="s", entities=("user",), allowed_lateness_seconds=value)
    assert caught.value.field == "allowed_lateness_seconds" and "positive whole number" in caught.value.message
