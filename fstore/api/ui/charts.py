"""Small server-side SVG charts: geometry computed here, drawn by ``templates/_charts.html``.

No JavaScript and nothing fetched at run time: a chart is an ``<svg>`` in the page, its labels escaped
by Jinja like any other text. Each function takes figures the library already computed and only places them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

PALETTE = ("#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#65a30d", "#db2777")
LABEL_WIDTH = 190
WIDTH = 640


def _nice(value: float) -> float:
    """A round axis maximum at or above ``value``."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return value


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "–"
    if unit == "%":
        return f"{value * 100:.1f}%"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"
    return f"{text} {unit}".strip()


@dataclass
class Bar:
    label: str
    x: float
    y: float
    width: float
    text: str
    color: str
    title: str = ""


@dataclass
class Chart:
    """What a template draws: a viewBox, bars or lines, axis ticks and a legend."""

    kind: str
    width: int
    height: int
    title: str
    bars: list[Bar] = field(default_factory=list)
    lines: list[dict] = field(default_factory=list)
    ticks: list[dict] = field(default_factory=list)
    legend: list[dict] = field(default_factory=list)
    empty: bool = False


def bars(title: str, rows: Sequence[tuple[str, float | None]], *, unit: str = "", maximum: float | None = None,
         colors: Sequence[str] | None = None) -> Chart:
    """A horizontal bar per ``(label, value)``; ``unit="%"`` for ratios in [0, 1]."""
    row_h, top = 26, 8
    chart = Chart("bars", WIDTH, top + row_h * max(len(rows), 1) + 8, title, empty=not rows)
    span = WIDTH - LABEL_WIDTH - 80
    top_value = maximum if maximum is not None else _nice(max([v or 0 for _, v in rows] or [0]))
    for i, (label, value) in enumerate(rows):
        width = 0.0 if not value or top_value <= 0 else max(1.0, span * min(value, top_value) / top_value)
        color = colors[i] if colors else PALETTE[0]
        chart.bars.append(Bar(label=label, x=LABEL_WIDTH, y=top + i * row_h, width=round(width, 1),
                              text=fmt(value, unit), color=color, title=f"{label}: {fmt(value, unit)}"))
    return chart


def stacked(title: str, rows: Sequence[tuple[str, dict[str, float]]], parts: Sequence[str], *, unit: str = "s") -> Chart:
    """One horizontal bar per row, split into ``parts`` (e.g. a run's stage timings)."""
    row_h, top = 26, 8
    chart = Chart("stacked", WIDTH, top + row_h * max(len(rows), 1) + 8, title, empty=not rows)
    span = WIDTH - LABEL_WIDTH - 80
    top_value = _nice(max([sum(v for v in r.values() if v) for _, r in rows] or [0]))
    colors = {p: PALETTE[i % len(PALETTE)] for i, p in enumerate(parts)}
    chart.legend = [{"label": p, "color": colors[p]} for p in parts]
    for i, (label, values) in enumerate(rows):
        x = float(LABEL_WIDTH)
        total = sum(v for v in values.values() if v)
        for part in parts:
            value = values.get(part) or 0
            width = span * value / top_value if top_value else 0
            if width > 0:
                chart.bars.append(Bar(label=label if x == LABEL_WIDTH else "", x=round(x, 1), y=top + i * row_h,
                                      width=round(max(width, 0.5), 1), text="", color=colors[part],
                                      title=f"{label} {part}: {fmt(value, unit)}"))
                x += width
        chart.bars.append(Bar(label=label if x == LABEL_WIDTH else "", x=round(x, 1), y=top + i * row_h, width=0,
                              text=fmt(total, unit), color="none", title=""))
    return chart


def lines(title: str, periods: Sequence[str], series: dict[str, Sequence[float | None]], *, unit: str = "") -> Chart:
    """A line per series over ``periods`` (labels of the x axis, oldest first)."""
    left, top, plot_w, plot_h = 60, 10, WIDTH - 80, 170
    chart = Chart("lines", WIDTH, top + plot_h + 40, title, empty=not periods or not series)
    values = [v for s in series.values() for v in s if v is not None]
    top_value = _nice(max(values or [0]))
    for i in range(5):
        value = top_value * i / 4
        chart.ticks.append({"y": round(top + plot_h - plot_h * i / 4, 1), "text": fmt(value, unit)})
    step = plot_w / max(len(periods) - 1, 1)
    for n, (name, points) in enumerate(series.items()):
        color = PALETTE[n % len(PALETTE)]
        coords = [(round(left + i * step, 1), round(top + plot_h - plot_h * (v / top_value if top_value else 0), 1))
                  for i, v in enumerate(points) if v is not None]
        chart.lines.append({"name": name, "color": color, "points": " ".join(f"{x},{y}" for x, y in coords),
                            "dots": [{"x": x, "y": y} for x, y in coords]})
        chart.legend.append({"label": name, "color": color})
    if periods:
        chart.ticks.append({"x": left, "text": periods[0], "axis": "x", "y": top + plot_h + 16})
        if len(periods) > 1:
            chart.ticks.append({"x": left + plot_w, "text": periods[-1], "axis": "x", "y": top + plot_h + 16})
    return chart
