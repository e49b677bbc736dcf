"""A full disk: a materialization that runs out of space leaves nothing staged, and later runs that fit succeed.

The offline store lives on a small tmpfs of the test's own (``mount -t tmpfs``, as root; the test skips,
saying why, where mounting is not permitted). The registry stays on the ordinary disk, as it would on
another host. On each engine:

1. a one-day run succeeds and gives the size of a day's files;
2. the disk is filled until about two days' worth is free, and a five-day run fails with ENOSPC: no file
   is left under ``_staging`` and no file the table does not name is left in its day folders;
3. a one-day run that fits succeeds (before the fix the failed run's files kept the disk full);
4. a dead run's staged files (a run killed before its commit) fill the disk again: the next run deletes
   them first and succeeds.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fstore.core.errors import FStoreError
from fstore.storage.offline import table_uri
from fstore.core.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.spark]

T0 = datetime(2024, 1, 1)
DAY = timedelta(days=1)
ROWS_PER_DAY = 20_000


@pytest.fixture()
def small_disk():
    """A 64 MB tmpfs mounted on a fresh folder, unmounted at the end."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; this test fills a disk of its own and never the machine's")
    folder = Path(tempfile.mkdtemp(prefix="fstore-full-disk-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)], capture_output=True,
                          text=True, timeout=30, check=False)
    if done.returncode != 0:
        folder.rmdir()
        pytest.skip(f"mount -t tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def _source(path: Path) -> str:
    """Five days of events with random amounts (incompressible: a day is about a megabyte of Parquet)."""
    rng = np.random.default_rng(7)
    n = 5 * ROWS_PER_DAY
    frame = pd.DataFrame({
        "user_id": rng.integers(0, 5000, n),
        "event_timestamp": (pd.Timestamp(T0) + pd.to_timedelta(np.sort(rng.integers(0, 5 * 86_400_000_000, n)),
                                                               unit="us")).astype("datetime64[us]"),
        "amount": rng.random(n),
    })
    path.mkdir(parents=True)
    frame.to_parquet(path / "part-0.parquet", index=False)
    return str(path)


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def _free(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _fill(folder: Path, leave: int) -> None:
    """Write zeros into ``folder/filler`` until only about ``leave`` bytes are free."""
    size = _free(folder) - leave
    assert size > 0, f"the disk has {_free(folder)} bytes free, not more than {leave}"
    with open(folder / "filler", "ab") as out:
        out.write(b"\0" * size)


def _table_day_files(store, name: str) -> set[str]:
    """The data files in the table's day folders, relative, and those the current version names."""
    from deltalake import DeltaTable

    root = Path(table_uri(store.settings, name))
    on_disk = {str(p.relative_to(root)) for p in root.glob("event_date=*/*.parquet")}
    named = {"/".join(u.rsplit("/", 2)[-2:]) for u in DeltaTable(str(root)).file_uris()}
    return on_disk - named


def test_a_run_on_a_full_disk_leaves_no_staging_and_later_runs_fit(small_disk, tmp_path, on_engine):
    settings = Settings.from_env({"STORAGE_PATH": str(small_disk / "store"), "SOURCE_ROOTS": str(tmp_path),
                                  "DATABASE_URL": f"sqlite:///{tmp_path / 'registry.db'}"})
    store = on_engine(settings)
    source = _source(tmp_path / "events")  # on the ordinary disk: only the offline store is on the small one
    store.create_entity({"name": "user", "join_keys": ["user_id"], "value_type": "int"})
    store.create_feature_set({
        "name": "txn", "entities": ["user"], "online_enabled": False,
        "source": {"path": source, "format": "parquet", "event_timestamp_column": "event_timestamp"},
        "features": [{"name": "amount_x2", "data_type": "float", "transformation": "amount * 2"},
                     {"name": "amount_x3", "data_type": "float", "transformation": "amount * 3"}],
    })
    table = Path(table_uri(settings, "txn"))
    staging = table / "_staging"

    assert store.materialize("txn", T0, T0 + DAY)["status"] == "succeeded"
    day_bytes = sum(p.stat().st_size for p in table.glob("event_date=*/*.parquet"))
    assert day_bytes > 500_000, day_bytes

    _fill(small_disk, leave=2 * day_bytes)
    with pytest.raises(FStoreError, match="no space left on device") as info:
        store.materialize("txn", T0, T0 + 5 * DAY)
    assert _files(staging) == [], f"a failed run left staged files: {_files(staging)[:5]}"
    assert _table_day_files(store, "txn") == set()
    failed = store.list_runs("txn")["items"][0]
    assert failed["status"] == "failed" and failed["error"] == info.value.message[:4000]
    assert _free(small_disk) > 1.5 * day_bytes

    assert store.materialize("txn", T0 + DAY, T0 + 2 * DAY)["status"] == "succeeded"

    # A run killed before its commit: its staged files fill the disk; the next run of the set clears them.
    (small_disk / "filler").unlink()
    _fill(small_disk, leave=2 * day_bytes)
    dead = staging / "20240101T000000-deadbeef0000" / "event_date=2024-01-03"
    dead.mkdir(parents=True)
    (dead / "part-0-dead.c000.snappy.parquet").write_bytes(b"\0" * (_free(small_disk) - day_bytes // 4))
    assert store.materialize("txn", T0 + 2 * DAY, T0 + 3 * DAY)["status"] == "succeeded"
    assert _files(staging) == []
    assert _table_day_files(store, "txn") == set()
    assert store.list_runs("txn")["total"] == 4
