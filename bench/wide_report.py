"""The wide case's results: ``bench/results/wide.json`` (points as ``bench.wide`` and ``bench.wide_feast``
measured them, fstore's with their comparison to Feast's), a Markdown table ``wide.md`` and a chart
``wide.png`` (seconds and peak memory per number of features; matplotlib, from the ``bench`` extra —
without it the chart is skipped and the table says so).
"""
from __future__ import annotations

import json
from pathlib import Path

from bench import wide_compare

FEAST_ISSUE_SECONDS = 88.2  # issue #33: Feast 0.67, 1,000 features x 17,000 labels, call 1, on this machine
ISSUE_POINT = (1000, 17_000)  # the point that figure is for
ORDER = {"feast": 0, "duckdb": 1, "spark": 2}


def best(point: dict) -> float | None:
    calls = [c["seconds"] for c in point.get("calls", [])]
    return min(calls) if calls else None


def worst(point: dict) -> float | None:
    calls = [c["seconds"] for c in point.get("calls", [])]
    return max(calls) if calls else None


def ratio_cell(point: dict, feast: dict | None) -> str:
    """fstore's worst call over Feast's worst call on the same point; without a Feast measurement there, the
    issue's figure for its point (said in the cell), else nothing."""
    mine = worst(point)
    if mine is None or point["engine"] == "feast":
        return ""
    theirs = worst(feast) if feast else None
    if theirs:
        return f"{mine / theirs:.3f}"
    if (point["features"], point["labels"]) == ISSUE_POINT:
        return f"{mine / FEAST_ISSUE_SECONDS:.3f} (against issue #33's {FEAST_ISSUE_SECONDS} s, not this run)"
    return ""


def values_cell(point: dict) -> str:
    """The comparison with Feast's last call, in a few words (the full sentence is under the table)."""
    summary = point.get("feast_agreement")
    if not summary:
        return ""
    dropped = summary["feast_dropped"]
    explained = dropped["total"] - dropped["unexplained"]
    return (f"{'agree' if wide_compare.agrees(summary) else 'DIFFER'}: {summary['rows_equal']:,}/"
            f"{summary['rows_in_both']:,} rows equal; Feast dropped {dropped['total']:,} ({explained:,} explained)")


def table(points: list[dict]) -> str:
    """One row per system and point, Feast's first; fstore's rows carry the ratio and the values' agreement."""
    feast = {(p["features"], p["labels"]): p for p in points if p["engine"] == "feast"}
    lines = ["| system | features | labels | materialize s | call seconds | rows | driver heap MB after each call "
             "| peak RSS MB | worst call / Feast's worst | values against Feast (last call) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p["features"], p["labels"], ORDER.get(p["engine"], 9))):
        calls = p.get("calls", [])
        system = f"Feast {p.get('feast_version', '')}".strip() if p["engine"] == "feast" else f"fstore {p['engine']}"
        heap = ", ".join(str(c["driver_heap_mb"]) for c in calls if c.get("driver_heap_mb") is not None) or "-"
        ratio = ratio_cell(p, feast.get((p["features"], p["labels"])))
        lines.append(f"| {system} | {p['features']:,} | {p['labels']:,} | {p.get('materialize_seconds', '-')} | "
                     f"{', '.join(str(c['seconds']) for c in calls)} | {', '.join(str(c['rows']) for c in calls)} | "
                     f"{heap} | {p.get('peak_rss_mb', '-')} | {ratio} | {values_cell(p)} |")
    return "\n".join(lines) + "\n"


def agreement_section(points: list[dict]) -> str:
    """Each fstore point's full comparison with Feast, and why Feast drops labels; empty without Feast."""
    lines = [f"- {p['features']:,} x {p['labels']:,}: {p['feast_agreement']['line']}\n"
             for p in sorted(points, key=lambda p: (p["features"], p["labels"], ORDER.get(p["engine"], 9)))
             if p.get("feast_agreement")]
    if not lines:
        return ""
    return ("## Values: fstore's last call against Feast's, label by label\n\n" + "".join(lines)
            + f"\nWhy Feast returns fewer rows: {wide_compare.DROPPED_EXPLANATION}\n")


def chart(points: list[dict], path: Path) -> bool:
    """Seconds (best call) and peak memory against features, one line per engine and label count."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[tuple[str, int], list[dict]] = {}
    for p in points:
        series.setdefault((p["engine"], p["labels"]), []).append(p)
    for (engine, labels), items in sorted(series.items()):
        items.sort(key=lambda p: p["features"])
        label = f"{engine}, {labels:,} labels"
        left.plot([p["features"] for p in items], [best(p) for p in items], marker="o", label=label)
        right.plot([p["features"] for p in items], [p.get("peak_rss_mb") for p in items], marker="o", label=label)
    for axis, title in ((left, "historical retrieval, best call (s)"), (right, "peak memory, process tree (MB)")):
        axis.set_xscale("log")
        axis.set_xlabel("features (10 sets over one source)")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write(points: list[dict], results: Path, *, machine: dict, notes: list[str]) -> Path:
    """``wide.json``, ``wide.md`` and ``wide.png`` in ``results``; returns the Markdown file."""
    results.mkdir(parents=True, exist_ok=True)
    (results / "wide.json").write_text(json.dumps({"machine": machine, "notes": notes, "points": points},
                                                   indent=2, default=str))
    has_chart = chart(points, results / "wide.png")
    text = ["# Wide training sets (issue #33)\n",
            f"Machine: {machine}\n",
            *[f"- {n}\n" for n in notes],
            "\n", table(points), "\n", agreement_section(points), "\n",
            "![seconds and memory per point](wide.png)\n" if has_chart else "(no chart: matplotlib is not installed)\n"]
    path = results / "wide.md"
    path.write_text("".join(text))
    return path
