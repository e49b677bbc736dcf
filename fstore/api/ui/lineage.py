"""A feature set's lineage as a left-to-right graph: source → feature set → features → composite features →
training sets, laid out in columns for ``templates/lineage.html`` (SVG, no JavaScript)."""
from __future__ import annotations

from typing import Any

COLUMNS = ("source", "feature set", "features", "composite features", "training sets")
NODE_W, NODE_H, GAP_X, GAP_Y, TOP = 190, 34, 48, 14, 30


def graph(feature_set: dict, features: list[dict], training_sets: list[dict]) -> dict[str, Any]:
    """Nodes (column, row, label, link) and edges (from node id to node id) with their coordinates."""
    name = feature_set["name"]
    source = feature_set.get("source") or {}
    source_label = str(source.get("path") or source.get("table") or source.get("query") or source.get("type") or "source")
    columns: list[list[dict]] = [[] for _ in COLUMNS]

    def add(column: int, node_id: str, label: str, link: str | None = None, hint: str = "") -> None:
        columns[column].append({"id": node_id, "label": label, "link": link, "hint": hint or label})

    add(0, "source", source_label if len(source_label) <= 24 else "…" + source_label[-23:], hint=source_label)
    add(1, "set", name, f"/ui/sets/{name}")
    edges = [("source", "set")]
    for f in features:
        composite = bool(f.get("source_features"))
        add(3 if composite else 2, f"f:{f['name']}", f["name"], hint=f.get("description") or f["name"])
        if composite:
            edges += [(f"f:{d}", f"f:{f['name']}") for d in f["source_features"]]
        else:
            edges.append(("set", f"f:{f['name']}"))
    for ts in training_sets:
        used = [feature for group in ts.get("groups") or () if group.get("feature_set") == name
                for feature in group.get("features") or ()]
        if used:
            add(4, f"t:{ts['name']}", ts["name"], f"/ui/training-sets/{ts['name']}", hint=f"training set {ts['name']}")
            edges += [(f"f:{f}", f"t:{ts['name']}") for f in used]
    position = {}
    for c, nodes in enumerate(columns):
        for r, node in enumerate(nodes):
            node.update(x=c * (NODE_W + GAP_X) + 10, y=TOP + r * (NODE_H + GAP_Y), column=COLUMNS[c])
            position[node["id"]] = node
    known = set(position)
    lines = []
    for a, b in edges:
        if a in known and b in known:
            x1, y1 = position[a]["x"] + NODE_W, position[a]["y"] + NODE_H / 2
            x2, y2 = position[b]["x"], position[b]["y"] + NODE_H / 2
            mid = (x1 + x2) / 2
            lines.append({"d": f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}", "from": a, "to": b})
    rows = max(len(c) for c in columns)
    return {"nodes": [n for c in columns for n in c], "edges": lines, "headers": [
        {"x": c * (NODE_W + GAP_X) + 10, "text": t} for c, t in enumerate(COLUMNS)],
        "width": len(COLUMNS) * (NODE_W + GAP_X), "height": TOP + rows * (NODE_H + GAP_Y) + 10,
        "node_w": NODE_W, "node_h": NODE_H}
