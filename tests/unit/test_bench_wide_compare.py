"""The wide bench's comparison with Feast: rows matched by label, values exactly, Feast's missing labels explained."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import wide_compare, wide_report

ROOT = Path(__file__).resolve().parents[2]
PAIRS = wide_compare.column_pairs(2, 2)  # w0__c0, w0__c1, w1__c0, w1__c1


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


@pytest.fixture
def case():
    """Labels and events where Feast drops two labels for its known reasons, and fstore's and Feast's frames
    shaped as each returns them (fstore: label order, naive UTC; Feast: time order, UTC, row_id)."""
    events = pd.DataFrame({"user_id": [1, 1, 2], "event_timestamp": [ts("2026-07-01"), ts("2026-07-05"),
                                                                     ts("2026-07-10")]})
    labels = pd.DataFrame({"user_id": [1, 2, 1, 1, 3],
                           "event_timestamp": [ts("2026-07-06"), ts("2026-07-02"), ts("2026-07-03"),
                                               ts("2026-07-06"), ts("2026-07-04")]})
    # Label 1: user 2's only event is later (Feast drops it). Label 3 repeats label 0 (Feast collapses it).
    # Label 4: user 3 has no events at all (Feast keeps it, with nulls).
    at_5th, at_1st = [0.5, 0.25, -1.5, 2.0], [1.0, -0.125, 3.0, 0.75]
    nulls = [np.nan] * 4
    fstore = pd.DataFrame([at_5th, nulls, at_1st, at_5th, nulls], columns=list(PAIRS.values()))
    fstore.insert(0, "event_timestamp", labels["event_timestamp"].dt.tz_localize(None).astype("datetime64[ns]"))
    fstore.insert(0, "user_id", labels["user_id"])
    feast = pd.DataFrame({"row_id": [2, 4, 0], "user_id": [1, 3, 1],
                          "event_timestamp": [ts("2026-07-03"), ts("2026-07-04"), ts("2026-07-06")]})
    feast = pd.concat([feast, pd.DataFrame([at_1st, nulls, at_5th], columns=list(PAIRS))], axis=1)
    return labels, events, fstore, feast


def test_feast_columns_map_to_fstore_output_names():
    assert PAIRS == {"w0__c0": "w0__c0", "w0__c1": "w0__c1", "w1__c0": "w1__c0", "w1__c1": "w1__c1"}


def test_columns_are_matched_through_the_mapping_not_their_position(case):
    labels, events, fstore, feast = case
    renamed = {"w0__c0": "a", "w0__c1": "b", "w1__c0": "c", "w1__c1": "d"}
    fstore = fstore.rename(columns=renamed)[["user_id", "event_timestamp", "d", "c", "b", "a"]]
    assert wide_compare.compare(labels, events, fstore, feast, renamed)["values_differ"] == 0
    swapped = {"w0__c0": "b", "w0__c1": "a", "w1__c0": "c", "w1__c1": "d"}
    summary = wide_compare.compare(labels, events, fstore, feast, swapped)
    # Rows 0 and 2 differ in both swapped columns; row 4 (all null) does not.
    assert summary["values_differ"] == 4 and summary["examples"][0] == {
        "row_id": 0, "column": "b", "fstore": 0.25, "feast": 0.5}


def test_equal_values_agree_and_feast_drops_are_explained(case):
    summary = wide_compare.compare(*case, PAIRS)
    assert summary["labels"] == 5 and summary["fstore_rows"] == 5 and summary["feast_rows"] == 3
    assert summary["rows_in_both"] == 3 and summary["rows_equal"] == 3
    assert summary["values_compared"] == 12 and summary["values_differ"] == 0
    assert summary["keys_differ"] == {"fstore": 0, "feast": 0}
    assert summary["feast_dropped"] == {"total": 2, "no_event_at_or_before": 1, "duplicate_label": 1,
                                        "unexplained": 0, "fstore_null_rows": 1}
    assert wide_compare.agrees(summary)
    line = wide_compare.agreement_line(summary, "duckdb")
    assert line.startswith("agree: fstore (duckdb) returned 5 of 5 labels, Feast 3; on the 3 rows both returned, 3 ")


def test_a_differing_value_is_counted_and_shown(case):
    labels, events, fstore, feast = case
    feast.loc[feast["row_id"] == 2, "w1__c0"] = 3.0000001
    summary = wide_compare.compare(labels, events, fstore, feast, PAIRS)
    assert summary["rows_equal"] == 2 and summary["values_differ"] == 1
    assert summary["examples"] == [{"row_id": 2, "column": "w1__c0", "fstore": 3.0, "feast": 3.0000001}]
    assert not wide_compare.agrees(summary)
    assert wide_compare.agreement_line(summary, "spark").startswith("DIFFER")


def test_a_null_against_a_value_differs(case):
    labels, events, fstore, feast = case
    fstore.loc[0, "w0__c1"] = np.nan
    summary = wide_compare.compare(labels, events, fstore, feast, PAIRS)
    assert summary["values_differ"] == 1 and not wide_compare.agrees(summary)


def test_a_dropped_label_with_an_earlier_event_is_unexplained(case):
    labels, events, fstore, feast = case
    summary = wide_compare.compare(labels, events, fstore, feast[feast["row_id"] != 0], PAIRS)
    # Label 0 has events before it and no identical label was returned: nothing explains its absence
    # (label 3, its copy, is not returned either, so it counts too).
    assert summary["feast_dropped"]["unexplained"] == 2 and not wide_compare.agrees(summary)


def test_fstore_rows_out_of_label_order_are_caught(case):
    labels, events, fstore, feast = case
    summary = wide_compare.compare(labels, events, fstore.iloc[[1, 0, 2, 3, 4]].reset_index(drop=True), feast, PAIRS)
    assert summary["keys_differ"]["fstore"] == 2 and not wide_compare.agrees(summary)


def test_fstore_filling_a_label_without_events_is_caught(case):
    labels, events, fstore, feast = case
    fstore.loc[1, list(PAIRS.values())] = 0.0  # label 1 has no event at or before it: fstore must return nulls
    summary = wide_compare.compare(labels, events, fstore, feast, PAIRS)
    assert summary["feast_dropped"]["fstore_null_rows"] == 0 and not wide_compare.agrees(summary)


def test_missing_columns_and_row_ids_are_refused(case):
    labels, events, fstore, feast = case
    with pytest.raises(ValueError, match=r"no column \['w1__c1'\]"):
        wide_compare.compare(labels, events, fstore, feast.drop(columns=["w1__c1"]), PAIRS)
    with pytest.raises(ValueError, match="no row_id column"):
        wide_compare.compare(labels, events, fstore, feast.drop(columns=["row_id"]), PAIRS)
    with pytest.raises(ValueError, match="repeats a row_id"):
        wide_compare.compare(labels, events, fstore, pd.concat([feast, feast.iloc[:1]]), PAIRS)


def point(engine: str, features: int, labels: int, seconds: list[float]) -> dict:
    return {"engine": engine, "features": features, "labels": labels,
            "calls": [{"seconds": s, "rows": labels} for s in seconds]}


def test_ratio_uses_feasts_measured_worst_call_and_the_issues_figure_only_as_fallback():
    feast = point("feast", 100, 17_000, [8.0, 4.0])
    assert wide_report.ratio_cell(point("duckdb", 100, 17_000, [1.0, 2.0]), feast) == "0.250"
    assert wide_report.ratio_cell(feast, feast) == ""
    fallback = wide_report.ratio_cell(point("spark", 1000, 17_000, [44.1]), None)
    assert fallback == "0.500 (against issue #33's 88.2 s, not this run)"
    assert wide_report.ratio_cell(point("spark", 300, 17_000, [44.1]), None) == ""


def test_table_puts_feast_beside_fstore_with_the_agreement(case):
    fstore = point("duckdb", 4, 5, [0.2])
    fstore["feast_agreement"] = wide_compare.compare(*case, PAIRS)
    fstore["feast_agreement"]["line"] = wide_compare.agreement_line(fstore["feast_agreement"], "duckdb")
    feast = {**point("feast", 4, 5, [0.4]), "feast_version": "0.67.0", "peak_rss_mb": 250.0}
    rows = wide_report.table([fstore, feast]).splitlines()[2:]
    assert rows[0].startswith("| Feast 0.67.0 | 4 | 5 | - | 0.4 | 5 | - | 250.0 |")
    assert rows[1].startswith("| fstore duckdb | 4 | 5 |")
    assert rows[1].endswith("| 0.500 | agree: 3/3 rows equal; Feast dropped 2 (2 explained) |")
    assert "fstore (duckdb) returned 5 of 5 labels" in wide_report.agreement_section([fstore, feast])


def test_feasts_side_imports_no_fstore():
    """``bench.wide_feast`` runs on Feast's interpreter, which need not have fstore's dependencies."""
    probe = ("import sys, bench.wide_feast; "
             "print(sorted(m for m in sys.modules if m == 'fstore' or m.startswith(('fstore.', 'pyspark', 'duckdb'))))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
