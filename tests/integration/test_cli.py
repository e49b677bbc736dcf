"""The CLI through click's runner: tables, --json, one-line errors with exit codes, never a traceback."""
from __future__ import annotations

import json
import re
import textwrap

import pytest
from click.testing import CliRunner

from fstore.cli import main

DEFS = """
entities:
  - {name: user, join_keys: [user_id], value_type: int, description: A customer}
feature_sets:
  - name: profile
    entities: [user]
    owner: ds
    description: Account figures
    tags: {team: growth}
    source: {path: not_generated_here, event_timestamp_column: updated_at}
    features:
      - {name: balance, data_type: float, transformation: account_balance, owner: finance}
      - {name: rich, data_type: bool, transformation: balance > 1000, source_features: [balance]}
"""


@pytest.fixture()
def env(any_registry_settings, tmp_path):
    """The environment a user would export; the CLI reads its settings from it."""
    values = {"STORAGE_PATH": any_registry_settings.storage_path, "DATABASE_URL": any_registry_settings.database_url,
              "SOURCE_ROOTS": ",".join(any_registry_settings.allowed_source_roots)}
    return values


@pytest.fixture()
def cli(env):
    runner = CliRunner()

    def run(*args: str, code: int = 0, extra_env: dict | None = None):
        result = runner.invoke(main, list(args), env={**env, **(extra_env or {})}, catch_exceptions=False)
        assert "Traceback" not in result.output
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        return result

    run("db", "upgrade")  # PostgreSQL is upgraded on purpose; SQLite also upgrades itself
    return run


@pytest.fixture()
def defs(tmp_path):
    path = tmp_path / "defs" / "profile.yaml"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(DEFS))
    return str(path)


def test_help_needs_no_database(tmp_path):
    result = CliRunner().invoke(main, ["--help"], env={"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert result.exit_code == 0
    for command in ("apply", "plan", "entities", "feature-sets", "features", "search", "db", "serve", "compile",
                    "materialize", "materialize-incremental", "backfill", "runs", "scheduler", "stream",
                    "get-online-features", "get-historical-features"):
        assert command in result.stdout


def test_plan_apply_and_readable_tables(cli, defs):
    planned = cli("plan", defs, "--allow-missing-sources")
    assert "create           feature_set  profile" in planned.stdout
    assert "plan: 4 to create, 0 to update, 0 unchanged" in planned.stdout
    applied = cli("--actor", "carol", "apply", defs, "--allow-missing-sources")
    assert "applied: 4 created, 0 updated, 0 unchanged" in applied.stdout
    assert "applied: 0 created, 0 updated, 4 unchanged" in cli("apply", defs, "--allow-missing-sources").stdout

    table = cli("features", "list").stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "FEATURE_SET", "VERSION", "DATA_TYPE", "OWNER", "DESCRIPTION"]
    assert table[2].split()[1:6] == ["balance", "profile", "1", "float", "finance"]  # ids: PG sequences skip after a plan
    assert table[-1] == "1-2 of 2"
    shown = cli("feature-sets", "show", "profile").stdout
    assert "owner" in shown and "balance, rich" in shown
    versions = cli("feature-sets", "versions", "profile").stdout
    assert "carol" in versions and "balance=1, rich=1" in versions
    assert "user_id" in cli("entities", "list").stdout
    found = cli("search", "growth").stdout
    assert "feature_set" in found and "profile" in found
    assert "(none)" in cli("features", "list", "--owner", "nobody").stdout


def test_json_output_for_scripts(cli, defs):
    result = json.loads(cli("--json", "apply", defs, "--allow-missing-sources").stdout)
    assert result["summary"] == {"create": 4, "update": 0, "unchanged": 0}
    page = json.loads(cli("features", "list", "--json", "--feature-set", "profile", "--limit", "1", "--offset", "1").stdout)
    assert page["total"] == 2 and [f["name"] for f in page["items"]] == ["rich"]
    rich = json.loads(cli("features", "show", "profile:rich", "--json").stdout)
    assert rich["lineage"] == {"balance": 1} and rich["created_at"].endswith("Z")
    entity = json.loads(cli("entities", "show", "user_id", "--json").stdout)
    assert entity["name"] == "user" and entity["join_keys"] == ["user_id"]
    versions = json.loads(cli("features", "versions", "balance", "--json").stdout)
    assert [v["version"] for v in versions] == [1]
    assert [v["version"] for v in json.loads(cli("entities", "versions", "user", "--json").stdout)] == [1]
    hits = json.loads(cli("search", "fin", "--kind", "feature", "--json").stdout)
    assert [(h["kind"], h["name"]) for h in hits["items"]] == [("feature", "balance")]


def test_delete_commands(cli, defs):
    cli("apply", defs, "--allow-missing-sources")
    conflict = cli("features", "delete", "balance", "--yes", code=5)
    assert conflict.stderr.strip() == ("error: feature balance is used by feature(s) rich in feature set profile; "
                                       "delete or change them first")
    cli("features", "delete", "rich", "--yes")
    assert cli("feature-sets", "show", "profile", "--json").stdout.count('"rich"') == 0
    cli("entities", "delete", "user", "--yes", code=5)
    cli("feature-sets", "delete", "profile", "-y")
    cli("entities", "delete", "user", "--yes")
    cli("entities", "delete", "user", "--yes", code=3)
    declined = cli("feature-sets", "delete", "ghost", code=1)  # no --yes, no answer: aborted, nothing done
    assert "delete feature set ghost" in declined.stdout


@pytest.mark.parametrize(("args", "code", "message"), [
    (("features", "show", "ghost"), 3, "error: feature 'ghost' not found"),
    (("feature-sets", "show", "profile", "--version", "9"), 3, "error: feature set profile has no version 9"),
    (("features", "list", "--limit", "0"), 2, "error: limit must be an integer from 1 to 500"),
    (("search", " "), 2, "error: search text must be a non-empty string"),
    (("keys", "create", "--owner", "a", "--scopes", "serve_online", "--feature-sets", "nope"), 3,
     "error: feature set 'nope' not found"),
    (("features", "list", "--data-type", "blob"), 2, "error: data_type 'blob' is not a data type"),
    (("runs", "show", "no-such-run"), 3, "error: materialization run 'no-such-run' does not exist"),
    (("materialize", "profile", "--start", "2026-01-02", "--end", "2026-01-01"), 2, "error: start 2026-01-02"),
    (("backfill", "profile", "--start", "2026-01-01", "--end", "2026-01-02", "--chunk", "often"), 2,
     "error: chunk 'often' is not a duration"),
    (("get-online-features", "--features", "balance", "--entity", "user_id"), 2, "error: --entity 'user_id' must be"),
    (("vacuum", "profile"), 3, "error: feature set profile has no offline table yet"),
    (("vacuum", "profile", "--retain-hours", "-1"), 2, "error: retain_hours must be a whole number of hours >= 0"),
    (("get-historical-features", "--entities", "/no/such.csv", "--features", "balance", "--output", "/tmp/x.csv"), 3,
     "error: entities file /no/such.csv does not exist"),
])
def test_errors_are_one_line_with_the_exit_code(cli, defs, args, code, message):
    cli("apply", defs, "--allow-missing-sources")
    result = cli(*args, code=code)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr


def test_an_output_that_exists_is_never_overwritten_unasked_and_never_deleted(cli, defs, tmp_path):
    cli("apply", defs, "--allow-missing-sources")
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("keep me")
    (tmp_path / "old.csv").write_text("a,b\n1,2\n")
    query = ("get-historical-features", "--entities", str(tmp_path / "labels.csv"), "--features", "balance")
    for output, extra, code, message in [
        ("", (), 2, "error: --output is empty"),
        (str(home), (), 4, f"error: --output {home} already exists; pass --overwrite"),
        (str(home), ("--overwrite",), 4, f"error: --output {home} is a folder holding files a result did not write (notes.txt)"),
        (str(tmp_path / "old.csv"), (), 4, "error: --output"),
        (str(tmp_path), ("--overwrite",), 4, "error: --output"),
    ]:
        lines = cli(*query, "--output", output, *extra, code=code).stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), lines
    assert (home / "notes.txt").read_text() == "keep me" and (tmp_path / "old.csv").read_text() == "a,b\n1,2\n"
    for args in (("training-sets", "recreate", "any", "--output", str(home), "--overwrite"),):
        assert "holding files a result did not write" in cli(*args, code=4).stderr


def test_bad_files_and_settings_are_one_line_errors(cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("entities:\n  - {name: user, join_keys: [user id]}\n")
    result = cli("apply", str(bad), code=2)
    assert result.stderr.strip().startswith(f"error: {bad}:2: entity user: join_keys 'user id' is not a valid name")
    broken = tmp_path / "broken.yaml"
    broken.write_text("entities: [\n")
    assert f"{broken}:2: invalid YAML" in cli("plan", str(broken), code=2).stderr
    settings_error = cli("entities", "list", code=2, extra_env={"STORAGE_FORMAT": "orc"})
    assert settings_error.stderr.strip() == "error: STORAGE_FORMAT='orc' is not valid; use one of: delta, parquet"
    typo = tmp_path / "typo.yaml"
    typo.write_text("feature_sets:\n  - name: s\n    entities: [user_id]\n    features:\n"
                    "      - {name: f, data_type: int, transformation: 'amount +* 2'}\n")
    lines = cli("apply", str(typo), code=2).stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("Unexpected token at line 1, column 11, near '2'"), lines
    missing = cli("apply", str(tmp_path / "nope.yaml"), code=2)  # click's own usage error, also one clear line
    assert "does not exist" in missing.stderr


def test_a_missing_source_path_is_refused_unless_allowed(cli, defs, tmp_path):
    """A source path that does not exist is refused by apply and plan, naming it (its SQL could not be checked,
    so a typo'd column would pass); --allow-missing-sources accepts it."""
    missing = str(tmp_path / "defs" / "not_generated_here")
    for command in ("plan", "apply"):
        lines = cli(command, defs, code=2).stderr.strip().splitlines()
        assert len(lines) == 1 and f"source path {missing} does not exist" in lines[0], lines
        assert "--allow-missing-sources" in lines[0]
    assert json.loads(cli("--json", "feature-sets", "list").stdout)["items"] == []
    assert "applied: 4 created" in cli("apply", defs, "--allow-missing-sources").stdout


def test_compile_prints_the_sql(cli, defs):
    cli("apply", defs, "--allow-missing-sources")
    sql = cli("compile", "profile").stdout
    assert "account_balance" in sql and "balance" in sql
    assert json.loads(cli("compile", "profile", "--json").stdout) == {"feature_set": "profile", "version": None,
                                                                      "sql": sql.rstrip("\n")}


def test_compute_and_serving_commands_end_to_end(settings, spark, redis_url, tmp_path):
    """materialize, runs, get-online-features (real Redis) and get-historical-features on the examples."""
    from pathlib import Path

    import pandas as pd

    from fstore.definitions.examples import END, write_example_sources
    from fstore.store import FeatureStore

    write_example_sources(Path(settings.storage_path) / "example_sources", users=20, purchases=300)
    env = {"STORAGE_PATH": settings.storage_path, "DATABASE_URL": settings.database_url, "REDIS_URL": redis_url}
    runner = CliRunner()

    def run(*args: str, code: int = 0):
        result = runner.invoke(main, list(args), env=env, catch_exceptions=False)
        assert "Traceback" not in result.output
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        return result

    FeatureStore(settings).use_spark(spark).close()  # the CLI's store finds this active Spark session
    examples = Path(__file__).resolve().parents[2] / "conf" / "examples"
    run("apply", str(examples))
    assert "SELECT" in run("compile", "user_activity").stdout.upper()
    done = run("materialize", "user_profile", "--start", "2024-02-01", "--end", END.isoformat()).stdout
    assert "succeeded" in done and "rows_written" in done
    run_id = json.loads(run("runs", "list", "user_profile", "--json").stdout)["items"][0]["id"]
    shown = run("runs", "show", run_id).stdout
    assert re.search(r"^stages +read=[0-9.]+, compute_validate=[0-9.]+, offline=", shown, re.M), shown
    assert "user_profile" in run("runs", "list", "user_profile").stdout
    assert "would delete 0 file(s) of user_profile (retention 168 h" in run("vacuum", "user_profile", "--dry-run").stdout
    online = run("get-online-features", "--features", "user_profile:account_balance,user_segment",
                 "--entity", "user_id=user_123", "--entity", "user_id=user_9").stdout.splitlines()
    assert online[0].split() == ["ENTITY", "USER_PROFILE:ACCOUNT_BALANCE", "USER_SEGMENT"]
    assert online[2].split()[0] == "user_123" and online[3].split() == ["user_9", "0.0", "(missing,", "default)", "(missing)"]
    entities = tmp_path / "labels.csv"
    pd.DataFrame({"user_id": ["user_123", "user_456"], "event_timestamp": ["2024-02-28T00:00:00Z", "2023-01-01T00:00:00Z"]}).to_csv(
        entities, index=False)
    out = tmp_path / "training.parquet"
    written = run("get-historical-features", "--entities", str(entities), "--features", "user_profile:account_balance",
                  "--output", str(out))
    assert f"wrote 2 rows to {out}" in written.stdout
    frame = pd.read_parquet(out)
    assert list(frame["user_id"]) == ["user_123", "user_456"]
    assert frame.iloc[1].isna().iloc[-1]  # before any profile row existed: nothing is visible
    # The same on the DuckDB engine, into a Parquet folder: written by pyarrow, no Spark involved.
    folder = tmp_path / "training_duckdb"
    result = runner.invoke(main, ["get-historical-features", "--entities", str(entities), "--features",
                                  "user_profile:account_balance", "--output", str(folder)],
                           env={**env, "COMPUTE_ENGINE": "duckdb"}, catch_exceptions=False)
    assert result.exit_code == 0 and f"wrote 2 rows to {folder}" in result.stdout, result.output
    written = pd.read_parquet(folder)  # timestamps as UTC instants, as Spark writes a folder
    assert list(written.event_timestamp.dt.tz_convert(None)) == list(frame.event_timestamp)
    pd.testing.assert_frame_equal(written.drop(columns="event_timestamp"), frame.drop(columns="event_timestamp"))
