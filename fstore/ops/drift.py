"""Drift of a feature set's newest run against a baseline: PSI, Kolmogorov–Smirnov and Jensen–Shannon.

Everything is computed from the stored profiles (``fstore.compute.profile``), never from the data: the
baseline is the previous run's profile, the profiles of the runs that finished in a time window (merged),
or the profile of a saved training set's rows (so the model's training distribution is the reference).

Numeric features: both sides' 20-bin histograms are spread (uniformly within a bin; a constant is a
point) onto one common grid over both ranges — 20 bins for PSI and JS, 200 for the KS distance between
the two CDFs. Strings and booleans: their top values plus one "other" bucket (no KS). Proportions are
floored at 1e-4 before PSI so an empty bin does not give infinity. JS is in bits (0 = same, 1 = disjoint).
PSI bands: < 0.1 ``stable``, 0.1–0.25 ``moderate``, > 0.25 ``significant``.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from sqlalchemy.orm import Session

from fstore.core.errors import InvalidDefinition, NotFound
from fstore.registry import quality as records
from fstore.registry.runs import to_utc

GRID, FINE = 20, 200
EPS = 1e-4


def band(psi: float | None) -> str | None:
    if psi is None:
        return None
    return "stable" if psi < 0.1 else "moderate" if psi <= 0.25 else "significant"


def _mass(histogram: dict[str, Any], edges: np.ndarray) -> np.ndarray:
    """A histogram's counts spread onto the bins of ``edges`` (uniform within a source bin)."""
    out = np.zeros(len(edges) - 1)
    src, counts = histogram["edges"], histogram["counts"]
    for a, b, c in zip(src[:-1], src[1:], counts):
        if not c:
            continue
        if b <= a:  # a point: the grid bin holding it
            j = min(max(int(np.searchsorted(edges, a, side="right")) - 1, 0), len(out) - 1)
            out[j] += c
            continue
        overlap = np.clip(np.minimum(edges[1:], b) - np.maximum(edges[:-1], a), 0, None)
        out += c * overlap / (b - a)
    return out


def _numeric(base: list[dict], current: dict) -> dict[str, Any] | None:
    hists = [p.get("histogram") for p in base] + [current.get("histogram")]
    if any(h is None for h in hists):
        return None
    lo = min(h["edges"][0] for h in hists)
    hi = max(h["edges"][-1] for h in hists)
    if hi <= lo:
        hi = lo + 1.0  # every side is the same constant
    grid, fine = np.linspace(lo, hi, GRID + 1), np.linspace(lo, hi, FINE + 1)
    p = sum(_mass(h, grid) for h in hists[:-1])
    q = _mass(hists[-1], grid)
    pf = sum(_mass(h, fine) for h in hists[:-1])
    qf = _mass(hists[-1], fine)
    ks = float(np.max(np.abs(np.cumsum(pf) / pf.sum() - np.cumsum(qf) / qf.sum())))
    return {**_divergences(p, q), "ks": round(ks, 6)}


def _categorical(base: list[dict], current: dict) -> dict[str, Any] | None:
    def counts(p: dict) -> dict[str, float]:
        top = {str(k): float(n) for k, n in p.get("top_k") or []}
        top["\0other"] = max(0.0, (p.get("count") or 0) - (p.get("nulls") or 0) - sum(top.values()))
        return top

    sides = [counts(p) for p in base]
    now = counts(current)
    keys = sorted(set(now).union(*[set(s) for s in sides]))
    p = np.array([sum(s.get(k, 0.0) for s in sides) for k in keys])
    q = np.array([now.get(k, 0.0) for k in keys])
    if p.sum() == 0 or q.sum() == 0:
        return None
    return {**_divergences(p, q), "ks": None}


def _divergences(p: np.ndarray, q: np.ndarray) -> dict[str, float]:
    p, q = p / p.sum(), q / q.sum()
    pe, qe = np.maximum(p, EPS), np.maximum(q, EPS)
    pe, qe = pe / pe.sum(), qe / qe.sum()
    psi = float(np.sum((qe - pe) * np.log(qe / pe)))
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return {"psi": round(psi, 6), "js": round(max(0.0, 0.5 * kl(p) + 0.5 * kl(q)), 6)}


def compare(base: list[dict[str, Any]], current: dict[str, Any]) -> dict[str, Any]:
    """PSI, KS, JS and band of one feature: ``base`` its baseline profiles (merged), ``current`` the newest."""
    kind = current.get("kind")
    measured = _numeric(base, current) if kind == "numeric" else _categorical(base, current) if kind == "categorical" else None
    out = {"psi": None, "ks": None, "js": None, **(measured or {})}
    out["band"] = band(out["psi"])
    rows = sum((p.get("count") or 0) for p in base)
    nulls = sum((p.get("nulls") or 0) for p in base)
    out.update(baseline_rows=rows, current_rows=current.get("count"),
               baseline_null_rate=round(nulls / rows, 6) if rows else None, current_null_rate=current.get("null_rate"))
    return out


def parse_baseline(text: str) -> tuple[str, Any]:
    """``previous`` | ``training_set:NAME`` | ``window:START/END`` (ISO 8601) → (kind, argument)."""
    text = (text or "previous").strip()
    if text == "previous":
        return "previous", None
    if text.startswith("training_set:") and text.split(":", 1)[1].strip():
        return "training_set", text.split(":", 1)[1].strip()
    if text.startswith("window:") and "/" in text:
        start, end = text.split(":", 1)[1].split("/", 1)
        begin, until = to_utc(start.strip(), field_name="baseline"), to_utc(end.strip(), field_name="baseline")
        if until <= begin:
            raise InvalidDefinition("baseline window:START/END needs START before END", field="baseline")
        return "window", (begin, until)
    raise InvalidDefinition(f"baseline {text!r} is not one of: previous, training_set:NAME, window:START/END",
                            field="baseline")


def drift(s: Session, feature_set: str, baseline: str = "previous", *,
          allowed: Callable[[str, str | None], bool] | None = None) -> dict[str, Any]:
    """Drift of ``feature_set``'s newest profiled run against ``baseline``, per feature (``allowed`` hides
    what a caller may not see)."""
    kind, arg = parse_baseline(baseline)
    if feature_set not in records.feature_set_names(s) or (allowed is not None and not allowed(feature_set, None)):
        raise NotFound(f"feature set {feature_set!r} not found", field="feature_set")
    latest = records.run_profiles(s, feature_set, limit=2)
    if not latest:
        raise NotFound(f"feature set {feature_set} has no profiled run yet (PROFILES=on records one per run)",
                       field="feature_set")
    current = latest[0]
    if kind == "previous":
        if len(latest) < 2:
            raise NotFound(f"feature set {feature_set} has one profiled run: no previous run to compare with",
                           field="baseline")
        base, described = [latest[1]["profile"]], {"kind": "previous", "run_id": latest[1]["run_id"]}
    elif kind == "training_set":
        profiles = records.training_set_profiles(s, arg)
        if feature_set not in profiles:
            raise NotFound(f"training set {arg!r} has no profile of feature set {feature_set} (not found, it reads no "
                           "feature of it, or it was saved with PROFILES=off)", field="baseline")
        base, described = [profiles[feature_set]], {"kind": "training_set", "training_set": arg}
    else:
        start, end = arg
        window = records.run_profiles(s, feature_set, limit=1000, start=start, end=end)
        if not window:
            raise NotFound(f"feature set {feature_set} has no profiled run that finished in "
                           f"[{start.isoformat()}Z, {end.isoformat()}Z)", field="baseline")
        base = [w["profile"] for w in window]
        described = {"kind": "window", "start": start.isoformat() + "Z", "end": end.isoformat() + "Z",
                     "run_ids": [w["run_id"] for w in window]}
    features = []
    for name, now in sorted(current["profile"]["features"].items()):
        if allowed is not None and not allowed(feature_set, name):
            continue
        sides = [b["features"][name] for b in base if name in b.get("features", {})]
        if not sides:
            continue
        features.append({"feature": name, "kind": now.get("kind"), **compare(sides, now)})
    return {"feature_set": feature_set, "baseline": described,
            "current": {"run_id": current["run_id"], "finished_at": current["finished_at"]}, "features": features,
            "drifted": [f["feature"] for f in features if f["band"] == "significant"]}

