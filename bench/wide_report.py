"""The wide case's results: ``bench/results/wide.json`` (points as ``bench.wide`` measured them), a Markdown
table ``wide.md`` and a chart ``wide.png`` (seconds and peak memory per number of features; matplotlib,
from the ``bench`` extra — without it the chart is skipped and the table says so).
"""
from __future__ import annotations

import json
from pathlib import Path

FEAST_ISSUE_SECONDS = 88.2  # issue #33: Feast 0.67, 1,000 features x 17,000 labels, call 1, on this machine


def best(point: dict) -> float | None:
    calls = [c["seconds"] for c in point.get("calls", [])]
    return min(calls) if calls else None


def table(points: list[dict], feast_seconds: float | None) -> str:
    lines = ["| engine | features | labels | materialize s | call seconds | rows | driver heap MB after each call "
             "| peak RSS MB | worst call / Feast |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p["engine"], p["features"], p["labels"])):
        calls = p.get("calls", [])
        worst = max((c["seconds"] for c in calls), default=None)
        ratio = f"{worst / feast_seconds:.2f}" if worst is not None and feast_seconds and p["features"] == 1000 \
            and p["labels"] == 17_000 else ""
        heap = ", ".join(str(c["driver_heap_mb"]) for c in calls if c.get("driver_heap_mb") is not None) or "-"
        lines.append(f"| {p['engine']} | {p['features']:,} | {p['labels']:,} | {p.get('materialize_seconds', '-')} | "
                     f"{', '.join(str(c['seconds']) for c in calls)} | {', '.join(str(c['rows']) for c in calls)} | "
                     f"{heap} | {p.get('peak_rss_mb', '-')} | {ratio} |")
    return "\n".join(lines) + "\n"


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


def write(points: list[dict], results: Path, *, machine: dict, feast_seconds: float | None, notes: list[str]) -> Path:
    """``wide.json``, ``wide.md`` and ``wide.png`` in ``results``; returns the Markdown file."""
    results.mkdir(parents=True, exist_ok=True)
    (results / "wide.json").write_text(json.dumps({"machine": machine, "feast_seconds": feast_seconds,
                                                    "notes": notes, "points": points}, indent=2, default=str))
    has_chart = chart(points, results / "wide.png")
    text = ["# Wide training sets (issue #33)\n",
            f"Machine: {machine}\n",
            *[f"- {n}\n" for n in notes],
            "\n", table(points, feast_seconds), "\n",
            "![seconds and memory per point](wide.png)\n" if has_chart else "(no chart: matplotlib is not installed)\n"]
    path = results / "wide.md"
    path.write_text("".join(text))
    return path
