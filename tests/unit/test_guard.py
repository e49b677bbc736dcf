"""``fstore.definitions.guard`` on its own: module prefixes on dot boundaries, paths resolved before they are judged."""
from __future__ import annotations

import os

import pytest

from fstore.core.errors import InvalidDefinition
from fstore.definitions.guard import check_python, check_read_path, check_write_path, module_allowed
from fstore.core.settings import Settings


@pytest.mark.parametrize(("module", "allowed"), [
    ("fstore.definitions.examples", True), ("fstore.definitions.examples.x", True), ("fstore.definitions.examples.x.y", True),
    ("fstore.examplesevil", False), ("fstore", False), ("fstore.example", False), ("os", False),
])
def test_a_prefix_allows_its_module_and_submodules_only(module, allowed):
    assert module_allowed(("fstore.definitions.examples",), module) is allowed


@pytest.mark.parametrize("spec", ["os:system", "subprocess:getoutput", ".fstore.examples:x", "fstore.definitions.examples:",
                                  "fstore.definitions.examples:a.b", "fstore..examples:x", "fstore.definitions.examples :x"])
def test_a_spec_outside_the_prefixes_or_malformed_is_refused(spec):
    with pytest.raises(InvalidDefinition) as info:
        check_python(Settings(), spec, feature="f")
    assert info.value.field == "python"


def test_an_empty_setting_allows_no_module():
    assert check_python(Settings(), "fstore.definitions.examples.sub:fn", feature="f") == ("fstore.definitions.examples.sub", "fn")
    with pytest.raises(InvalidDefinition, match=r"PYTHON_FEATURE_MODULES setting names \(now: none\)"):
        check_python(Settings(python_feature_modules=()), "fstore.definitions.examples:x", feature="f")


@pytest.fixture()
def layout(tmp_path):
    """root/ (the store and some data) beside outside/ (a secret)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "store" / "offline" / "t" / "_staging").mkdir(parents=True)
    (root / "store" / "registry.db").write_bytes(b"SQLite format 3\0")
    (root / "data").mkdir()
    (root / "data" / "a.parquet").write_bytes(b"PAR1")
    outside.mkdir()
    (outside / "secret.csv").write_text("secret\n")
    settings = Settings.from_env({"STORAGE_PATH": str(root / "store"), "SOURCE_ROOTS": str(root)})
    return settings, root, outside


def _refused(settings, path, why=""):
    with pytest.raises(InvalidDefinition, match=why) as info:
        check_read_path(settings, path, field="source.path")
    assert info.value.field == "source.path" and str(path) in info.value.message


def test_paths_are_judged_by_where_they_lead(layout, monkeypatch):
    settings, root, outside = layout
    check_read_path(settings, str(root / "data"), field="source.path")
    check_read_path(settings, f"file://{root}/data/a.parquet", field="source.path")
    check_read_path(settings, str(root / "store" / "offline" / "t"), field="source.path")  # chaining sets
    monkeypatch.chdir(root)
    check_read_path(settings, "data", field="source.path")
    _refused(settings, "../outside/secret.csv", "outside")
    _refused(settings, f"{root}/data/../../outside/secret.csv", "outside")
    _refused(settings, f"file://{outside}/secret.csv", "outside")
    _refused(settings, f"{root}evil/x", "outside")  # a sibling sharing the root's name as a prefix
    (root / "link").symlink_to(outside / "secret.csv")
    _refused(settings, str(root / "link"), "outside")
    (root / "data" / "inner").symlink_to(outside)
    _refused(settings, str(root / "data"), "symbolic link")
    _refused(settings, f"{root}/{{data,../outside}}", "glob")
    _refused(settings, f"file://host{outside}/secret.csv", "absolute local path")
    _refused(settings, f"file://{root}/%2e%2e/outside", "escapes")
    _refused(settings, "hdfs:/etc/passwd", "host or bucket")


def test_fstores_own_files_are_refused_even_inside_the_roots(layout):
    settings, root, _ = layout
    store = root / "store"
    for path in (store / "registry.db", f"{store}/registry.db-wal", store / "online.db", store,
                 store / "offline" / "t" / "_staging", store / "offline" / "t" / "_delta_log", store / "logs"):
        _refused(settings, str(path), "not allowed")
    os.link(store / "registry.db", root / "data" / "copy.parquet")  # a hard link is the same file
    _refused(settings, str(root / "data" / "copy.parquet"), "link to fstore's own files")


def test_outputs_stay_in_the_roots_and_out_of_the_store(layout):
    settings, root, outside = layout
    check_write_path(settings, str(root / "exports" / "run1"), field="output_path")
    for path, why in ((outside / "out", "outside"), (root / "store" / "offline" / "new", "offline store"),
                      (root / "store" / "training_sets" / "x", "training sets"), (root / "store", "registry")):
        with pytest.raises(InvalidDefinition, match=why) as info:
            check_write_path(settings, str(path), field="output_path")
        assert info.value.field == "output_path"


def test_remote_roots_match_scheme_bucket_and_whole_segments():
    settings = Settings(source_roots=("s3://lake/raw",))
    check_read_path(settings, "s3a://lake/raw/events", field="source.path")
    check_read_path(settings, "s3://LAKE/raw", field="source.path")
    for path in ("s3a://lake/rawx/events", "s3a://other/raw/events", "s3a://lake/raw/../secret", "gs://lake/raw/x"):
        with pytest.raises(InvalidDefinition):
            check_read_path(settings, path, field="source.path")
