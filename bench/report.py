"""Results: one JSON file per part under ``bench/results/``, and a Markdown table of all of them.

Every part's JSON carries the machine it ran on (cores, memory, load average at
start and end) and the date, because absolute times drift between machines and
runs; the ratios fstore / Feast measured in one run are what holds.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("materialize", "online", "historical", "correctness")


def machine() -> dict:
    """Cores, memory, load average and versions of what is measured."""
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    redis_version = None
    try:
        info = subprocess.run(["redis-cli", "-p", "6379", "info", "server"], capture_output=True, text=True, timeout=5)
        redis_version = next((l.split(":", 1)[1].strip() for l in info.stdout.splitlines() if l.startswith("redis_version:")), None)
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cores": os.cpu_count(), "nproc": int(subprocess.run(["nproc"], capture_output=True, text=True).stdout or 0),
            "mem_gib": round(mem_kib / 1024 / 1024, 1), "load_avg": list(os.getloadavg()),
            "python": platform.python_version(), "redis": redis_version, "kernel": platform.release()}


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_part(name: str, data: dict, results: Path = RESULTS) -> Path:
    """Write ``results/<name>.json``."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def load_parts(results: Path = RESULTS) -> dict[str, dict]:
    return {name: json.loads((results / f"{name}.json").read_text()) for name in PARTS if (results / f"{name}.json").exists()}


def ratio(a: float | None, b: float | None) -> str:
    """``a / b`` as ``0.42×``, or ``–`` when either side is missing."""
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def _s(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} ms"


def _rate(value: float | None, unit: str = "rows/s") -> str:
    if value is None:
        return "–"
    return f"{value / 1000:.1f}k {unit}" if value >= 10_000 else f"{value:,.0f} {unit}"


ENGINES = (("fstore", "Spark local[2]"), ("fstore_duckdb", "DuckDB (COMPUTE_ENGINE=duckdb)"),
           ("fstore_connect", "Spark over a warm Spark Connect server (`fstore spark up`, local[2])"))


def _materialize_rows(m: dict) -> list[list[str]]:
    f = m.get("feast") or {}
    rows = []
    for key, engine in ENGINES:
        s = m.get(key)
        if s:
            rows += _engine_rows(f, s, engine, m.get("redis_hset_per_s"))
    if m.get("redis_hset"):
        rows.append(["reference: `redis-benchmark -q -P 16 -t hset -n 1000000`", "–", m["redis_hset"], "–"])
    return rows


def _engine_rows(f: dict, s: dict, engine: str, hset: float | None) -> list[list[str]]:
    """The materialization rows of one fstore engine against Feast's."""
    rows = []
    fc, sc = f.get("cli_seconds"), s.get("cli_seconds")
    rows.append([f"materialize, CLI wall (`feast materialize` / `python jobs/materialize.py`), fstore on {engine}",
                 f"{_s(fc)} ({_rate(f.get('cli_rows_per_s'))})", f"{_s(sc)} ({_rate(s.get('cli_rows_per_s'))})",
                 f"time {ratio(sc, fc)}, rows/s {ratio(s.get('cli_rows_per_s'), f.get('cli_rows_per_s'))}"])
    fi, si = f.get("inprocess_seconds"), s.get("warm_seconds")
    rows.append([f"materialize, in-process, fstore on {engine} (best of the 2 runs after the first)",
                 f"{_s(fi)} ({_rate(f.get('inprocess_rows_per_s'))})", f"{_s(si)} ({_rate(s.get('warm_rows_per_s'))})",
                 f"time {ratio(si, fi)}, rows/s {ratio(s.get('warm_rows_per_s'), f.get('inprocess_rows_per_s'))}"])
    if s.get("cold_seconds") is not None:
        rows.append([f"materialize, in-process, fstore's first run in a fresh process ({engine})", "–",
                     f"{_s(s['cold_seconds'])} ({_rate(s.get('cold_rows_per_s'))})", "–"])
    if s.get("warm_stages"):
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in s["warm_stages"].items())
        rows.append([f"fstore stages (warm run, {engine})", "–", stages, "–"])
    load = s.get("online_load")
    if load and load.get("seconds"):
        keys_per_s = load["keys"] / load["seconds"]
        fields_per_s = keys_per_s * load["fields_per_key"]
        rows.append([f"fstore online load ({engine}; warm online stage, the latest-per-key reduction included): "
                     f"{load['keys']:,} keys × {load['fields_per_key']} fields",
                     "–", f"{load['seconds']:.2f} s: {_rate(keys_per_s, 'keys/s')}, {_rate(fields_per_s, 'fields/s')}",
                     (f"redis-benchmark's single-field HSET/s ÷ fstore's fields/s: {hset / fields_per_s:.2f}×; "
                      f"÷ keys/s: {hset / keys_per_s:.1f}×") if hset else "–"])
    return rows


def _online_rows(o: dict) -> list[list[str]]:
    rows = _online_server_rows(o, "fstore", "")
    if o.get("fstore_gevent"):
        rows += _online_server_rows(o, "fstore_gevent", ", fstore on gevent workers (`GUNICORN_WORKER_CLASS=gevent`)")
    if o.get("fstore_windows"):
        rows += _online_server_rows(o, "fstore_windows", ", fstore's 10 with 4 windows exact at the request's time "
                                    "(`user_windows`; Feast: its 10 stored values)")
    if o.get("fstore_granian"):
        rows += _online_server_rows(o, "fstore_granian", ", fstore on granian (`fstore serve --server granian`)")
    if o.get("fstore_granian_windows"):
        rows += _online_server_rows(o, "fstore_granian_windows", ", fstore on granian, its 10 with 4 windows exact at "
                                    "the request's time (`user_windows`; Feast: its 10 stored values)")
    return rows


def _online_server_rows(o: dict, system: str, suffix: str) -> list[list[str]]:
    rows = []
    for key, label in (("batch1", "1 entity × 10 features"), ("batch100", "100 entities × 10 features")):
        label += suffix
        f = (o.get("feast") or {}).get(key) or {}
        s = (o.get(system) or {}).get(key) or {}
        fs, ss = f.get("sequential") or {}, s.get("sequential") or {}
        rows.append([f"HTTP online, 1 client, {label}: p50 / p95 / p99",
                     " / ".join(_ms(fs.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms")) + f" ({_rate(fs.get('req_per_s'), 'req/s')})",
                     " / ".join(_ms(ss.get(k)) for k in ("p50_ms", "p95_ms", "p99_ms")) + f" ({_rate(ss.get('req_per_s'), 'req/s')})",
                     f"p99 {ratio(ss.get('p99_ms'), fs.get('p99_ms'))}"])
        fc, sc = f.get("concurrent") or {}, s.get("concurrent") or {}
        rows.append([f"HTTP online, 4 clients, {label}: req/s, p99",
                     f"{_rate(fc.get('req_per_s'), 'req/s')}, p99 {_ms(fc.get('p99_ms'))}" + (f", {fc['errors']} errors" if fc.get("errors") else ""),
                     f"{_rate(sc.get('req_per_s'), 'req/s')}, p99 {_ms(sc.get('p99_ms'))}" + (f", {sc['errors']} errors" if sc.get("errors") else ""),
                     f"req/s {ratio(sc.get('req_per_s'), fc.get('req_per_s'))}, p99 {ratio(sc.get('p99_ms'), fc.get('p99_ms'))}"])
        quiet = (((o.get("feast_no_access_log") or {}).get(key) or {}).get("concurrent")) or {}
        if quiet and not suffix:
            rows.append([f"HTTP online, 4 clients, {label}, both access logs off (`feast serve --no-access-log`): "
                         "req/s, p99",
                         f"{_rate(quiet.get('req_per_s'), 'req/s')}, p99 {_ms(quiet.get('p99_ms'))}"
                         + (f", {quiet['errors']} errors" if quiet.get("errors") else ""),
                         f"{_rate(sc.get('req_per_s'), 'req/s')}, p99 {_ms(sc.get('p99_ms'))}",
                         f"req/s {ratio(sc.get('req_per_s'), quiet.get('req_per_s'))}, "
                         f"p99 {ratio(sc.get('p99_ms'), quiet.get('p99_ms'))}"])
    return rows


def _historical_rows(h: dict) -> list[list[str]]:
    rows = []
    f = h.get("feast") or {}
    for key, engine in ENGINES:
        s = h.get(key)
        if not s:
            continue
        for n in h.get("sizes", []):
            fb, sb = (f.get("best_seconds") or {}).get(str(n)), (s.get("best_seconds") or {}).get(str(n))
            fr, sr = (f.get("rows_out") or {}).get(str(n)), (s.get("rows_out") or {}).get(str(n))
            rows.append([f"historical, {n:,} entity rows, best of {h.get('repeats')} (rows returned), fstore on {engine}",
                         f"{_s(fb)} ({fr:,} rows)" if fr is not None else _s(fb),
                         f"{_s(sb)} ({sr:,} rows)" if sr is not None else _s(sb), f"time {ratio(sb, fb)}"])
        calls = h.get("long_lived_calls")
        for n in h.get("sizes", []) if calls else []:
            fb, sb = ((x.get("long_lived_best_seconds") or {}).get(str(n)) for x in (f, s))
            rows.append([f"historical, {n:,} entity rows, a long-lived process: best of calls "
                         f"{calls - h['repeats'] + 1}–{calls} on this frame, fstore on {engine}",
                         _s(fb), _s(sb), f"time {ratio(sb, fb)}"])
        rows.append([f"historical, ratio large/small, fstore on {engine}", ratio(f.get("ratio_large_small"), 1.0),
                     ratio(s.get("ratio_large_small"), 1.0), "–"])
        start = s.get("session_seconds") if key in ("fstore", "fstore_connect") else None
        what = "Spark start" if key == "fstore" else "Spark Connect session"
        rows.append([f"historical, first call in a fresh process (cold, small frame), fstore on {engine}",
                     _s(f.get("cold_seconds")), _s(s.get("cold_seconds")) + (f" + {start:.1f} s {what}" if start else ""),
                     f"time {ratio(s.get('cold_seconds'), f.get('cold_seconds'))}"])
    return rows


HOW_MEASURED = [
    "Materialize: rows/s = source rows / wall seconds (Feast writes the latest row per user to Redis, fstore writes "
    "every row to Delta and the latest per user to Redis). Redis is flushed before each run. fstore in-process: "
    "`store.materialize` three times in one process: the first on a fresh Spark session (cold), the best of the "
    "other two (warm); the same with COMPUTE_ENGINE=duckdb (no JVM; the first run pays the imports).",
    "Online: Python `http.client` keep-alive clients, one process per client, bodies built before timing, the same "
    "user ids for both systems; warm-up requests untimed. Feast: `feast serve` defaults (1 worker) for one client, "
    "`feast serve -w 2` for 4 clients (its default `--max-requests 1000` recycles workers: the errors column counts "
    "the dropped connections); fstore: `gunicorn server:app -c conf/gunicorn.conf.py -w 2`, then the same app on gevent "
    "workers and on granian (`python -m fstore.api.serve_granian --workers 2`). Each keeps its default: "
    "Feast's access log is on, fstore's is off (`GUNICORN_ACCESS_LOG=-` turns it on); Feast is also measured with "
    "`--no-access-log` for 4 clients.",
    "Historical: `get_historical_features(...).to_df()` into pandas for both; Feast's file (dask) offline store reads "
    "the source Parquet, fstore reads its Delta table on a local[2] Spark session, or in process with DuckDB "
    "(COMPUTE_ENGINE=duckdb). Best of N after a first call; the cold figure is the first call in a fresh process "
    "(for fstore on Spark, after the Spark session start shown). The long-lived figure (not in `--quick` runs): the same process goes "
    "on until each frame has had 10 calls, and the best of its last 3 is shown (a server, or a notebook after its "
    "first calls); both systems run the same sequence (`bench/retrieval_calls.py`).",
]


def _get(data: dict | None, *path):
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def target_rows(parts: dict[str, dict]) -> list[list[str]]:
    """Issues #22's and #31's targets, each as (target, measured ratio, met?) for every fstore Spark variant measured."""
    m, h = parts.get("materialize") or {}, parts.get("historical") or {}
    large = str((h.get("sizes") or [None, None])[-1])
    feast_cli, feast_rate = _get(m, "feast", "cli_seconds"), _get(m, "feast", "inprocess_rows_per_s")
    rows = []

    def add(what: str, value: float | None, reference: float | None, limit: float, at_most: bool) -> None:
        if value is None or not reference:
            return
        r = value / reference
        met = r <= limit if at_most else r >= limit
        rows.append([what, f"{'≤' if at_most else '≥'} {limit:g}×", f"{r:.2f}×", "yes" if met else "no"])

    add("materialize 1M CLI wall, warm Spark (Connect server) / Feast CLI", _get(m, "fstore_connect", "cli_seconds"),
        feast_cli, 0.5, True)
    add("materialize 1M CLI wall, cold (JVM per process) / Feast CLI", _get(m, "fstore", "cli_seconds"), feast_cli, 1.0, True)
    add("materialize in-process warm rows/s, Spark local / Feast", _get(m, "fstore", "warm_rows_per_s"), feast_rate, 3.0, False)
    add("materialize in-process warm rows/s, Spark over Connect / Feast", _get(m, "fstore_connect", "warm_rows_per_s"),
        feast_rate, 3.0, False)
    for key, label in (("fstore", "Spark local"), ("fstore_connect", "Spark over Connect")):
        add(f"historical {large} rows, long-lived process, {label} / Feast",
            _get(h, key, "long_lived_best_seconds", large), _get(h, "feast", "long_lived_best_seconds", large), 0.5, True)
        add(f"historical first call (session already there), {label} / Feast", _get(h, key, "cold_seconds"),
            _get(h, "feast", "cold_seconds"), 1.0, True)
        add(f"historical {large} rows, best of the first calls on that frame, {label} / Feast",
            _get(h, key, "best_seconds", large), _get(h, "feast", "best_seconds", large), 1.0, True)
    o = parts.get("online") or {}
    for system, server in (("fstore_windows", "gunicorn"), ("fstore_granian_windows", "granian")):
        for key, label, limit in (("batch1", "1 entity", 0.4), ("batch100", "100 entities", 0.2)):
            add(f"online p99, 1 client, {label} × 10 features with 4 windows (#31), fstore on {server} / Feast's 10 "
                "stored values", _get(o, system, key, "sequential", "p99_ms"), _get(o, "feast", key, "sequential", "p99_ms"),
                limit, True)
    return rows


def _load_notes(parts: dict[str, dict]) -> list[str]:
    """A warning when other work loaded the machine: the figures then measure the contention as much as the code."""
    loads = [v for data in parts.values() for v in ((data.get("machine") or {}).get("load_avg", [0])[:1]
                                                     + (data.get("load_avg_end") or [0])[:1])]
    cores = next((data.get("machine", {}).get("nproc") for data in parts.values()), None) or 1
    if loads and max(loads) > 1.5 * cores:
        return [f"The machine was busy with other work during this run: 1-minute load average {min(loads):.1f}–"
                f"{max(loads):.1f} on {cores} cores. Absolute figures are far below what a quiet machine gives, and "
                "the load changed between parts, so even the ratios carry that noise; rerun on a quiet machine to judge "
                "against the targets."]
    return []


def markdown(parts: dict[str, dict]) -> str:
    """The table of every part present, with the machine, the load and the date of each."""
    lines = ["# fstore against Feast 0.67 — side by side, one run, same machine, same data", ""]
    first = next(iter(parts.values()), {})
    m = first.get("machine", {})
    lines += [f"Machine: {m.get('nproc')} cores, {m.get('mem_gib')} GiB memory, Python {m.get('python')}, "
              f"Redis {m.get('redis')} on loopback (client, servers and Redis share the same cores). "
              f"Data: {first.get('data', {}).get('sizes')} (scale {first.get('data', {}).get('scale')}).", ""]
    lines += ["| part | date (UTC) | load average at start → end (1/5/15 min) | Feast |", "|---|---|---|---|"]
    for name, data in parts.items():
        start, end = data.get("machine", {}).get("load_avg"), data.get("load_avg_end")
        fmt = lambda v: "/".join(f"{x:.2f}" for x in v) if v else "–"  # noqa: E731
        lines.append(f"| {name} | {data.get('date')} | {fmt(start)} → {fmt(end)} | {data.get('feast_version') or 'absent'} |")
    lines += ["", "Ratios are fstore / Feast: below 1× is faster for times and latencies, above 1× is more for rates.", "",
              "| work | Feast 0.67 | fstore | fstore / Feast |", "|---|---|---|---|"]
    builders = {"materialize": _materialize_rows, "online": _online_rows, "historical": _historical_rows}
    for name, build in builders.items():
        if name in parts:
            lines += ["| " + " | ".join(row) + " |" for row in build(parts[name])]
    targets = target_rows(parts)
    if targets:
        lines += ["", "## Targets of issues #22 and #31 (fstore / Feast, this run)", "", "| target | limit | measured | met |",
                  "|---|---|---|---|"] + ["| " + " | ".join(row) + " |" for row in targets]
    if "correctness" in parts:
        c = parts["correctness"]
        lines += ["", "## Correctness (historical results, row by row)", ""]
        for n, summary in (c.get("sizes") or {}).items():
            lines.append(f"- {int(n):,} entity rows: {summary.get('verdict')}")
            for item in summary.get("differences", []):
                lines.append(f"  - {item['count']:,} rows — {item['what']}: {item['explanation']}")
        for n, summary in ((c.get("fstore_duckdb") or {}).get("sizes") or {}).items():
            lines.append(f"- {int(n):,} entity rows, fstore on DuckDB (COMPUTE_ENGINE=duckdb): {summary.get('verdict')}")
        for n, summary in ((c.get("fstore_connect") or {}).get("sizes") or {}).items():
            lines.append(f"- {int(n):,} entity rows, fstore over Spark Connect: {summary.get('verdict')}")
    if "online" in parts and parts["online"].get("cross_check"):
        cc = parts["online"]["cross_check"]
        lines += ["", "## Online cross-check", "",
                  f"- the same {cc.get('entities')} users asked of both servers: "
                  + (f"{cc['n_differing']} differ" if "n_differing" in cc else cc.get("error", "?"))]
    wc = (parts.get("online") or {}).get("windows_check")
    if wc:
        lines += [f"- fstore's windows exact at the request's time: {wc['entities']} users × {wc['windows']} windows "
                  f"({wc.get('non_empty')} of them not empty) against pandas over the generated events at the same "
                  f"instant: {wc['n_differing']} differ"]
    notes = [n for data in parts.values() for n in data.get("notes", [])]
    notes += _load_notes(parts) + HOW_MEASURED
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"


def write_markdown(results: Path = RESULTS) -> Path:
    path = results / "latest.md"
    path.write_text(markdown(load_parts(results)))
    return path
