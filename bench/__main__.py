"""``python -m bench [materialize|online|historical|correctness|all …] [--scale N] [--quick] [--spark-remote [URL]]
[--wide] [--sweep [FEATURESxLABELS …]]``

Runs fstore and Feast 0.67 on the same generated data, the same Redis (loopback)
and the same machine, in one run, and writes ``bench/results/<part>.json`` and
``bench/results/latest.md`` (runs with ``--quick`` or another ``--scale`` write under
``$FSTORE_BENCH_DIR/results/`` instead, so only the reference run is committed). Feast is optional (the ``bench`` extra); without it
the benchmark says so and measures fstore alone. Redis databases 8 (Feast) and 9
(fstore; ``BENCH_FEAST_DB`` / ``BENCH_FSTORE_DB`` choose others) are flushed and used; nothing else in
Redis is touched.

``--spark-remote`` also measures fstore's Spark side against a warm Spark Connect server
(``fstore_connect`` in the results): one started for the run with ``fstore spark up`` (on a
free loopback port, stopped at the end), or the server a ``sc://…`` URL names. The cold
figures (a JVM per process) are measured in the same run, before the server starts.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

from bench import feast_side, fstore_side, httpload, report
from bench.data import Dataset, bench_dir, generate

FEAST_DB, FSTORE_DB = int(os.environ.get("BENCH_FEAST_DB", 8)), int(os.environ.get("BENCH_FSTORE_DB", 9))
FEAST_PORT, FSTORE_PORT = 16566, 18002
REPO_ROOT = Path(__file__).resolve().parents[1]
PART_TIMEOUT = 1800  # seconds; any one subprocess of the benchmark is stopped after this
LONG_LIVED_CALLS = 10  # historical: calls per entity file before the long-lived figure (bench.retrieval_calls)


@dataclass(kw_only=True)
class Context:
    """What every part shares: the data, scratch folders, Feast's presence and the run's size knobs."""

    dataset: Dataset
    work: Path
    feast: str | None
    quick: bool
    results: Path = report.RESULTS
    notes: list[str] = field(default_factory=list)
    spark_remote: str | None = None  # None: no Connect figures; "start": a server for this run; else its URL
    connect_url: str | None = None  # the URL (with token) once the server is there
    connect: dict = field(default_factory=dict)  # how the server was had: start wall, load average

    @property
    def feast_repo(self) -> Path:
        return self.work / "feast-repo"

    @property
    def fstore_store(self) -> Path:
        return self.work / "fstore-store"

    def output(self, system: str, rows: int) -> str:
        return str(self.work / f"historical-{system}-{rows}.parquet")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def flush(db: int) -> None:
    subprocess.run(["redis-cli", "-p", "6379", "-n", str(db), "flushdb"], check=True, capture_output=True, timeout=60)


def dbsize(db: int) -> int:
    out = subprocess.run(["redis-cli", "-p", "6379", "-n", str(db), "dbsize"], check=True, capture_output=True,
                         text=True, timeout=60)
    return int(out.stdout.strip())


def run_json(command: list[str], *, env: dict | None = None, cwd: Path = REPO_ROOT) -> tuple[dict, float]:
    """Run a subprocess that prints JSON on its last stdout line; returns it and the wall seconds."""
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=PART_TIMEOUT)
    wall = time.perf_counter() - began
    lines = [l for l in done.stdout.splitlines() if l.strip().startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command[:6])} … failed (exit {done.returncode}):\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return json.loads(lines[-1]), wall


def py(module: str, *args: str) -> list[str]:
    """``python -m module …``; Feast's side runs on the interpreter that has Feast (``$FEAST_PYTHON``)."""
    feast = module in ("bench.feast_side", "bench.wide_feast")
    return [feast_side.feast_python() if feast else sys.executable, "-m", module, *args]


# -- set-up ---------------------------------------------------------------------------------------

def ensure_setup(ctx: Context) -> None:
    """Both systems' definitions, applied once per data set (markers in the scratch folder)."""
    marker = ctx.work / "setup.json"
    if marker.exists():
        return
    if ctx.feast:
        log("Feast: writing the repo and applying definitions")
        feast_side.write_repo(ctx.feast_repo, ctx.dataset.events_path, FEAST_DB)
        run_json(py("bench.feast_side", "setup", "--repo", str(ctx.feast_repo), "--events", ctx.dataset.events_path,
                    "--redis-db", str(FEAST_DB)))
    log("fstore: applying definitions")
    run_json(py("bench.fstore_side", "--store", str(ctx.fstore_store), "--redis-db", str(FSTORE_DB), "setup",
                "--events", ctx.dataset.events_path))
    marker.write_text(json.dumps({"feast": ctx.feast}))


def ensure_materialized(ctx: Context) -> None:
    """Online parts need both Redis databases loaded, historical needs fstore's offline table."""
    ensure_setup(ctx)
    if not (ctx.work / "materialized.json").exists() or dbsize(FSTORE_DB) == 0:
        log("fstore: materializing once (prerequisite)")
        flush(FSTORE_DB)
        run_json(fstore_side.job_command(ctx.dataset.start, ctx.dataset.end),
                 env=fstore_side.environment(ctx.fstore_store, FSTORE_DB))
        (ctx.work / "materialized.json").write_text("{}")
    if ctx.feast and dbsize(FEAST_DB) == 0:
        log("Feast: materializing once (prerequisite)")
        run_json(py("bench.feast_side", "materialize", "--repo", str(ctx.feast_repo),
                    "--start", ctx.dataset.start.isoformat(), "--end", ctx.dataset.end.isoformat()))


def ensure_windows(ctx: Context) -> list[dict]:
    """``user_windows`` (windows exact at the request's time) applied and loaded online, for the online part's
    windowed rows: recreated with windows sized from today, materialized on DuckDB (its online records are
    the Spark run's: tests/integration/test_online_windows.py)."""
    ensure_materialized(ctx)
    log("fstore: user_windows (6 row features + 4 windows), applied and materialized")
    answer, _ = run_json(py("bench.fstore_side", "--store", str(ctx.fstore_store), "--redis-db", str(FSTORE_DB),
                            "setup-windows", "--events", ctx.dataset.events_path,
                            "--start", ctx.dataset.start.isoformat(), "--end", ctx.dataset.end.isoformat()))
    run_json(fstore_side.job_command(ctx.dataset.start, ctx.dataset.end, fstore_side.WINDOW_SET),
             env={**fstore_side.environment(ctx.fstore_store, FSTORE_DB), "COMPUTE_ENGINE": "duckdb"})
    return answer["features"]


def ensure_connect(ctx: Context) -> str:
    """The warm Spark Connect server's URL: started once per run (`fstore spark up`, in a process of its own
    so this one never becomes a Connect client), or the one ``--spark-remote URL`` names."""
    if ctx.connect_url:
        return ctx.connect_url
    if ctx.spark_remote != "start":
        ctx.connect_url = ctx.spark_remote
        ctx.connect = {"url": "given"}
        return ctx.connect_url
    env = {**fstore_side.environment(ctx.fstore_store, FSTORE_DB), "SPARK_CONNECT_DIR": str(ctx.work / "spark-connect")}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log(f"fstore: fstore spark up --port {port} (a warm Spark Connect server for the Connect figures)")
    load = list(os.getloadavg())
    began = time.perf_counter()
    cli = [sys.executable, str(REPO_ROOT / "cli.py")]
    done = subprocess.run(cli + ["--json", "spark", "up", "--port", str(port)], env=env, capture_output=True,
                          text=True, cwd=REPO_ROOT, timeout=PART_TIMEOUT)
    if done.returncode != 0:
        raise RuntimeError(f"fstore spark up failed: {done.stderr[-3000:]}")
    ctx.connect = {"up_seconds": time.perf_counter() - began, "load_avg_start": load, "port": port,
                   "pid": json.loads(done.stdout)["pid"], "env": env}
    url = subprocess.run(cli + ["spark", "url"], env=env, capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    ctx.connect_url = url.stdout.strip()
    return ctx.connect_url


def stop_connect(ctx: Context) -> None:
    if ctx.spark_remote == "start" and ctx.connect.get("env"):
        subprocess.run([sys.executable, str(REPO_ROOT / "cli.py"), "spark", "down"], env=ctx.connect["env"],
                       capture_output=True, cwd=REPO_ROOT, timeout=120)
        log(f"fstore: stopped the Spark Connect server (pid {ctx.connect['pid']})")


# -- parts ------------------------------------------------------------------------------------------

def part_materialize(ctx: Context) -> dict:
    """Whole range into Redis: CLI wall and in-process times for both, fstore's stages, Redis' HSET rate."""
    ensure_setup(ctx)
    rows = ctx.dataset.sizes.events
    out: dict = {"source_rows": rows}
    log("redis-benchmark HSET reference (DB 8)")
    flush(FEAST_DB)
    bench_out = subprocess.run(["redis-benchmark", "-q", "-P", "16", "-t", "hset", "-n", "1000000", "-p", "6379",
                                "--dbnum", str(FEAST_DB)], capture_output=True, text=True, timeout=300)
    out["redis_hset"] = bench_out.stdout.strip().splitlines()[-1].split("\r")[-1].strip() if bench_out.stdout else None
    rate = re.search(r"HSET: ([0-9.]+) requests per second", out["redis_hset"] or "")
    out["redis_hset_per_s"] = float(rate.group(1)) if rate else None
    flush(FEAST_DB)
    if ctx.feast:
        f: dict = {}
        log("Feast: `feast materialize` (CLI)")
        began = time.perf_counter()
        done = subprocess.run(feast_side.cli_materialize_command(ctx.feast_repo, ctx.dataset.start, ctx.dataset.end),
                              capture_output=True, text=True, cwd=ctx.work, timeout=PART_TIMEOUT)
        f["cli_seconds"] = time.perf_counter() - began
        if done.returncode != 0:
            raise RuntimeError(f"feast materialize failed: {done.stderr[-3000:]}")
        f["cli_keys"] = dbsize(FEAST_DB)
        flush(FEAST_DB)
        log("Feast: FeatureStore.materialize (in-process)")
        result, wall = run_json(py("bench.feast_side", "materialize", "--repo", str(ctx.feast_repo),
                                   "--start", ctx.dataset.start.isoformat(), "--end", ctx.dataset.end.isoformat()))
        f.update(inprocess_seconds=result["seconds"], inprocess_process_wall=wall, inprocess_keys=dbsize(FEAST_DB))
        f["cli_rows_per_s"] = rows / f["cli_seconds"]
        f["inprocess_rows_per_s"] = rows / f["inprocess_seconds"]
        out["feast"] = f
    out["fstore"] = _fstore_materialize(ctx, "spark")
    out["fstore_duckdb"] = _fstore_materialize(ctx, "duckdb")
    if ctx.spark_remote:
        out["fstore_connect"] = _fstore_materialize(ctx, "spark", remote=ensure_connect(ctx))
        out["fstore_connect"]["server"] = {k: v for k, v in ctx.connect.items() if k != "env"}
    (ctx.work / "materialized.json").write_text("{}")
    return out


def _fstore_materialize(ctx: Context, engine: str, remote: str | None = None) -> dict:
    """fstore's in-process runs (cold, then warm) and its CLI job on one engine (COMPUTE_ENGINE), on a Spark
    of each process's own or, with ``remote``, on that Spark Connect server."""
    rows = ctx.dataset.sizes.events
    env = {**fstore_side.environment(ctx.fstore_store, FSTORE_DB, remote), "COMPUTE_ENGINE": engine}
    engine = f"{engine} over Spark Connect" if remote else engine
    s: dict = {"engine": engine, "load_avg_start": list(os.getloadavg())}
    log(f"fstore ({engine}): store.materialize in-process, cold then warm")
    result, wall = run_json(py("bench.fstore_side", "--store", str(ctx.fstore_store), "--redis-db", str(FSTORE_DB),
                               "materialize", "--start", ctx.dataset.start.isoformat(),
                               "--end", ctx.dataset.end.isoformat(), "--repeats", "3"), env=env)
    # The JVM keeps compiling for a few runs: warm is the best run after the first (as a scheduler's session is).
    cold, warm = result["runs"][0], min(result["runs"][1:], key=lambda run: run["seconds"])
    s.update(session_seconds=result["session_seconds"], cold_seconds=cold["seconds"], warm_seconds=warm["seconds"],
             cold_stages=cold["stages"], warm_stages=warm["stages"], runs=result["runs"], inprocess_process_wall=wall,
             cold_rows_per_s=rows / cold["seconds"], warm_rows_per_s=rows / warm["seconds"])
    if warm.get("online_rows") and (warm.get("stages") or {}).get("online"):
        # Each key is one hash: the features plus the event time field.
        s["online_load"] = {"keys": warm["online_rows"], "fields_per_key": len(fstore_side.FEATURES) + 1,
                            "seconds": warm["stages"]["online"]}
    flush(FSTORE_DB)
    log(f"fstore ({engine}): python jobs/materialize.py (CLI)")
    job, wall = run_json(fstore_side.job_command(ctx.dataset.start, ctx.dataset.end), env=env)
    s.update(cli_seconds=wall, cli_run=job, cli_rows_per_s=rows / wall, cli_keys=dbsize(FSTORE_DB),
             load_avg_end=list(os.getloadavg()))
    return s


def _wait_http(target: httpload.Target, body: bytes, process: subprocess.Popen, seconds: float = 180) -> dict:
    deadline = time.time() + seconds
    last: Exception | None = None
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{target.name} server exited with {process.returncode} before answering")
        try:
            return httpload.check(target, body)
        except (OSError, RuntimeError) as exc:
            last = exc
            time.sleep(0.3)
    raise RuntimeError(f"{target.name} server did not answer within {seconds:.0f} s: {last}")


@contextmanager
def server(command: list[str], *, env: dict | None, log_path: Path, port: int) -> Iterator[subprocess.Popen]:
    """Start a server in its own process group; stop exactly that group afterwards."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise RuntimeError(f"port {port} is already in use; stop what listens there first")
    with open(log_path, "w") as logfile:
        process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=logfile, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            yield process
        finally:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def feast_body(ids: list[int]) -> bytes:
    return json.dumps({"features": feast_side.feature_refs(), "entities": {"user_id": ids}}).encode()


def fstore_body(ids: list[int]) -> bytes:
    return json.dumps({"features": fstore_side.feature_refs(), "entities": {"user_id": ids}}).encode()


def fstore_windows_body(ids: list[int]) -> bytes:
    features = [f"{fstore_side.WINDOW_SET}:{f}" for f in fstore_side.FEATURES[:6]]
    features += [f"{fstore_side.WINDOW_SET}:{f}" for f in ("cnt_short", "sum_short", "avg_long", "max_long")]
    return json.dumps({"features": features, "entities": {"user_id": ids}}).encode()


def windows_oracle(ctx: Context, features: list[dict], ids: list[int], at) -> dict[int, dict]:
    """The four windows of ``ids`` at ``at``, computed with pandas from the generated events: (at - size, at]."""
    import pandas as pd

    events = pd.read_parquet(ctx.dataset.events_path, columns=["user_id", "event_timestamp", "f0", "f1", "f2"])
    events = events[events["user_id"].isin(ids)]
    ts = pd.to_datetime(events["event_timestamp"], utc=True)
    at = pd.Timestamp(at)
    out: dict[int, dict] = {u: {} for u in ids}
    for f in features:
        if "window_size" not in f:
            continue
        inside = events[(ts > at - pd.Timedelta(days=int(f["window_size"][:-1]))) & (ts <= at)]
        grouped = inside.groupby("user_id")
        column = {"count": lambda g: g.size(), "sum": lambda g: g[f.get("transformation")].sum(),
                  "avg": lambda g: g[f.get("transformation")].mean(),
                  "max": lambda g: g[f.get("transformation")].max()}[f["aggregation"]](grouped)
        for u in ids:
            value = column.get(u)
            out[u][f["name"]] = (0 if f["aggregation"] == "count" else None) if value is None else float(value)
    return out


def windows_check(ctx: Context, features: list[dict], answer: dict, ids: list[int], at) -> dict:
    """fstore's online windows against ``windows_oracle`` at the instant of the request (relative 1e-9)."""
    import math

    expected = windows_oracle(ctx, features, ids, at)
    differing, non_empty = [], 0
    for u in ids:
        row = answer["features"].get(str(u), {})
        for name, want in expected[u].items():
            non_empty += want not in (None, 0)
            got = row.get(f"{fstore_side.WINDOW_SET}:{name}", row.get(name))
            same = (got is None and want is None) or (
                got is not None and want is not None and math.isclose(float(got), want, rel_tol=1e-9, abs_tol=1e-12))
            if not same:
                differing.append({"user_id": u, "feature": name, "fstore": got, "oracle": want})
    return {"entities": len(ids), "windows": 4, "non_empty": non_empty, "n_differing": len(differing),
            "differing": differing[:10]}


def _load(target: httpload.Target, ctx: Context, *, concurrent: bool) -> dict:
    """Sequential or 4-client load at 1 and 100 entities per request (same bodies for both systems)."""
    users = ctx.dataset.sizes.users
    scale = 5 if ctx.quick else 1
    out = {}
    for batch, n_seq, n_conc in ((1, 3000, 1500), (100, 600, 300)):
        n_seq, n_conc = n_seq // scale, n_conc // scale
        warm = max(20, n_seq // 10)
        key = f"batch{batch}"
        if not concurrent:
            payloads = httpload.bodies(target, requests=warm + n_seq, batch=batch, users=users, seed=batch)
            out[key] = {"sequential": httpload.sequential(target, payloads, warmup=warm)}
        else:
            payloads = [httpload.bodies(target, requests=warm + n_conc, batch=batch, users=users, seed=1000 * batch + c)
                        for c in range(4)]
            out[key] = {"concurrent": httpload.concurrent(target, payloads, warmup=warm)}
        log(f"{target.name} batch {batch} {'4 clients' if concurrent else '1 client'}: {out[key]}")
    return out


def _merge(a: dict, b: dict) -> dict:
    return {k: {**a.get(k, {}), **b.get(k, {})} for k in set(a) | set(b)}


def _online_values(answer: dict, system: str) -> dict[int, list]:
    """``{user_id: [f0..f9]}`` from either server's answer (for the online cross-check)."""
    if system == "feast":
        names = answer["metadata"]["feature_names"]
        columns = {name: r["values"] for name, r in zip(names, answer["results"])}
        return {int(u): [columns[f][i] for f in feast_side.FEATURES] for i, u in enumerate(columns["user_id"])}
    features = answer["features"]  # {"<user_id>": {"user_events:f0": value, …}, …}
    return {int(u): [row.get(f"user_events:{f}", row.get(f)) for f in fstore_side.FEATURES]
            for u, row in features.items()}


def part_online(ctx: Context) -> dict:
    """HTTP online serving: `feast serve` against fstore under gunicorn, same Redis, same client; fstore also
    with windowed features (exact at the request's time) in the same server."""
    window_features = ensure_windows(ctx)
    out: dict = {"client": "Python http.client keep-alive, 1 process per client, on the same cores as the servers"}
    probe_ids = list(range(0, ctx.dataset.sizes.users, max(1, ctx.dataset.sizes.users // 100)))[:100]
    answers = {}
    env = fstore_side.environment(ctx.fstore_store, FSTORE_DB)
    target = httpload.Target(name="fstore", port=FSTORE_PORT, path="/api/v1/serving/online", body=fstore_body)
    log("fstore: gunicorn, 2 workers")
    with server(fstore_side.server_command(FSTORE_PORT, 2), env=env, log_path=ctx.work / "fstore-server.log",
                port=FSTORE_PORT) as process:
        _wait_http(target, fstore_body([1]), process)
        answers["fstore"] = httpload.check(target, fstore_body(probe_ids))
        out["fstore"] = _merge(_load(target, ctx, concurrent=False), _load(target, ctx, concurrent=True))
        out["fstore"]["server"] = " ".join(fstore_side.server_command(FSTORE_PORT, 2)[1:])
        windows = httpload.Target(name="fstore-windows", port=FSTORE_PORT, path="/api/v1/serving/online",
                                  body=fstore_windows_body)
        from datetime import datetime, timezone

        at = datetime.now(timezone.utc)
        out["windows_check"] = windows_check(ctx, window_features, httpload.check(windows, fstore_windows_body(probe_ids)),
                                             probe_ids, at)
        log(f"fstore windows against pandas at the request's time: {out['windows_check']}")
        out["fstore_windows"] = _merge(_load(windows, ctx, concurrent=False), _load(windows, ctx, concurrent=True))
        out["fstore_windows"]["features"] = window_features
    log("fstore: gunicorn, 2 gevent workers (GUNICORN_WORKER_CLASS=gevent, for online-serving pods)")
    with server(fstore_side.server_command(FSTORE_PORT, 2), env={**env, "GUNICORN_WORKER_CLASS": "gevent"},
                log_path=ctx.work / "fstore-server-gevent.log", port=FSTORE_PORT) as process:
        _wait_http(target, fstore_body([1]), process)
        out["fstore_gevent"] = _merge(_load(target, ctx, concurrent=False), _load(target, ctx, concurrent=True))
        out["fstore_gevent"]["server"] = "GUNICORN_WORKER_CLASS=gevent " + out["fstore"]["server"]
    log("fstore: granian, 2 workers (fstore serve --server granian, for online-serving pods)")
    with server(fstore_side.granian_command(FSTORE_PORT, 2), env=env, log_path=ctx.work / "fstore-server-granian.log",
                port=FSTORE_PORT) as process:
        _wait_http(target, fstore_body([1]), process)
        out["fstore_granian"] = _merge(_load(target, ctx, concurrent=False), _load(target, ctx, concurrent=True))
        out["fstore_granian"]["server"] = " ".join(fstore_side.granian_command(FSTORE_PORT, 2)[1:])
        granian_windows = httpload.Target(name="fstore-granian-windows", port=FSTORE_PORT,
                                          path="/api/v1/serving/online", body=fstore_windows_body)
        out["fstore_granian_windows"] = _merge(_load(granian_windows, ctx, concurrent=False),
                                               _load(granian_windows, ctx, concurrent=True))
    if ctx.feast:
        target = httpload.Target(name="feast", port=FEAST_PORT, path="/get-online-features", body=feast_body)
        log("Feast: feast serve (defaults: 1 worker) for one client")
        with server(feast_side.serve_command(ctx.feast_repo, FEAST_PORT, 1), env=None,
                    log_path=ctx.work / "feast-serve-1.log", port=FEAST_PORT) as process:
            _wait_http(target, feast_body([1]), process)
            answers["feast"] = httpload.check(target, feast_body(probe_ids))
            sequential = _load(target, ctx, concurrent=False)
        log("Feast: feast serve -w 2 for 4 clients")
        with server(feast_side.serve_command(ctx.feast_repo, FEAST_PORT, 2), env=None,
                    log_path=ctx.work / "feast-serve-2.log", port=FEAST_PORT) as process:
            _wait_http(target, feast_body([1]), process)
            concurrent = _load(target, ctx, concurrent=True)
        # fstore's access log is off by default and Feast's is on: measure Feast without it too.
        log("Feast: feast serve -w 2 --no-access-log for 4 clients, 1 entity")
        with server(feast_side.serve_command(ctx.feast_repo, FEAST_PORT, 2, access_log=False), env=None,
                    log_path=ctx.work / "feast-serve-2-quiet.log", port=FEAST_PORT) as process:
            _wait_http(target, feast_body([1]), process)
            n = 1500 // (5 if ctx.quick else 1)
            payloads = [httpload.bodies(target, requests=n + 150, batch=1, users=ctx.dataset.sizes.users, seed=1000 + c)
                        for c in range(4)]
            out["feast_no_access_log"] = {"batch1": {"concurrent": httpload.concurrent(target, payloads, warmup=150)}}
        out["feast"] = _merge(sequential, concurrent)
        out["feast"]["server"] = ("1 client: feast serve (defaults: 1 worker, access log on); "
                                  "4 clients: feast serve -w 2 (other defaults, incl. --max-requests 1000)")
        try:
            f_vals, s_vals = _online_values(answers["feast"], "feast"), _online_values(answers["fstore"], "fstore")
            differing = [u for u in probe_ids if f_vals.get(u) != s_vals.get(u)]
            out["cross_check"] = {"entities": len(probe_ids), "differing": differing[:20], "n_differing": len(differing)}
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            out["cross_check"] = {"error": f"could not read the answers: {exc!r}",
                                  "fstore_sample": json.dumps(answers["fstore"])[:800]}
    return out


def part_historical(ctx: Context) -> dict:
    """Historical retrieval at the small and large entity frames: best of N warm, and cold."""
    ensure_materialized(ctx)
    sizes = [ctx.dataset.sizes.entities_small, ctx.dataset.sizes.entities_large]
    repeats = 1 if ctx.quick else 3
    long_lived = 0 if ctx.quick else LONG_LIVED_CALLS
    files = [ctx.dataset.entities_path(n) for n in sizes]
    out: dict = {"sizes": sizes, "repeats": repeats, "long_lived_calls": long_lived}
    fstore_args = ["--store", str(ctx.fstore_store), "--redis-db", str(FSTORE_DB)]
    fstore_env = fstore_side.environment(ctx.fstore_store, FSTORE_DB)
    systems = [("feast", "bench.feast_side", ["--repo", str(ctx.feast_repo)], None),
               ("fstore", "bench.fstore_side", fstore_args, {**fstore_env, "COMPUTE_ENGINE": "spark"}),
               ("fstore_duckdb", "bench.fstore_side", fstore_args, {**fstore_env, "COMPUTE_ENGINE": "duckdb"})]
    if ctx.spark_remote:
        systems.append(("fstore_connect", "bench.fstore_side", fstore_args, None))
    for system, module, extra, env in systems:
        if system == "feast" and not ctx.feast:
            continue
        if system == "fstore_connect":
            env = {**fstore_side.environment(ctx.fstore_store, FSTORE_DB, ensure_connect(ctx)), "COMPUTE_ENGINE": "spark"}
        load = list(os.getloadavg())
        log(f"{system}: historical retrieval {sizes}")
        command = py(module, *(extra if system != "feast" else []), "historical",
                     *(extra if system == "feast" else []), "--entities", *files,
                     "--outputs", *[ctx.output(system, n) for n in sizes], "--repeats", str(repeats),
                     "--long-lived", str(long_lived))
        result, wall = run_json(command, env=env)
        per = result["files"]
        best = {str(n): min(per[f]["seconds"]) for n, f in zip(sizes, files)}
        late = {str(n): per[f]["long_lived_seconds"] for n, f in zip(sizes, files)}
        out[system] = {"best_seconds": best, "all_seconds": {str(n): per[f]["seconds"] for n, f in zip(sizes, files)},
                       "long_lived_best_seconds": {n: min(t) for n, t in late.items() if t}, "long_lived_seconds": late,
                       "rows_out": {str(n): per[f]["rows_out"] for n, f in zip(sizes, files)},
                       "cold_seconds": per[files[0]]["cold_seconds"], "session_seconds": result.get("session_seconds"),
                       "ratio_large_small": best[str(sizes[1])] / best[str(sizes[0])], "process_wall": wall,
                       "load_avg_start": load, "load_avg_end": list(os.getloadavg())}
        log(f"{system}: {out[system]}")
    return out


def part_correctness(ctx: Context) -> dict:
    from bench.compare import compare_all

    sizes = [ctx.dataset.sizes.entities_small, ctx.dataset.sizes.entities_large]
    if not all(Path(ctx.output(system, n)).exists() for system in ("fstore", "fstore_duckdb") for n in sizes) or (
            ctx.feast and not all(Path(ctx.output("feast", n)).exists() for n in sizes)):
        report.write_part("historical", _wrap(ctx, part_historical(ctx)), ctx.results)
    out = compare_all(ctx.dataset, {n: ctx.output("fstore", n) for n in sizes},
                      {n: ctx.output("feast", n) for n in sizes} if ctx.feast else None)
    log("fstore on DuckDB (COMPUTE_ENGINE=duckdb) against the oracle")
    out["fstore_duckdb"] = compare_all(ctx.dataset, {n: ctx.output("fstore_duckdb", n) for n in sizes}, None)
    if all(Path(ctx.output("fstore_connect", n)).exists() for n in sizes):
        log("fstore over Spark Connect against the oracle")
        out["fstore_connect"] = compare_all(ctx.dataset, {n: ctx.output("fstore_connect", n) for n in sizes}, None)
    return out


PARTS = {"materialize": part_materialize, "online": part_online, "historical": part_historical,
         "correctness": part_correctness}


def _wrap(ctx: Context, data: dict, *, start: dict | None = None, date: str | None = None) -> dict:
    return {"date": date or report.now(), "machine": start or report.machine(), "load_avg_end": list(os.getloadavg()),
            "feast_version": ctx.feast, "data": {"scale": ctx.dataset.scale, "sizes": asdict(ctx.dataset.sizes),
                                                  "path": ctx.dataset.root},
            "quick": ctx.quick, "notes": ctx.notes, **data}


WIDE_POINT = (1000, 17_000)  # features, labels: the issue's case (feast#3003's shape)
SWEEP = [(f, n) for n in (17_000, 170_000) for f in (100, 300, 1000)]


def run_wide(points: list[tuple[int, int]], *, calls: int, engines: tuple[str, ...]) -> int:
    """The wide case, one process per system, engine and point, on the same data: Feast first
    (``bench.wide_feast`` on ``$FEAST_PYTHON``; skipped with a note when Feast is not installed there), then
    fstore on each engine (``bench.wide``). Each engine's last call is compared with Feast's value for value
    (``bench.wide_compare``); ``bench.wide_report`` writes the table. fstore's online loads go to Redis
    database 9 (``FSTORE_BENCH_REDIS_DB`` picks another), flushed first.

    Without a Feast measurement at 1,000 x 17,000, that point's ratio falls back to issue #33's figure
    (``wide_report.FEAST_ISSUE_SECONDS``), and the table says so."""
    from bench import wide_report

    root = bench_dir()
    data, work = root / "wide-data", root / "wide-work"
    work.mkdir(parents=True, exist_ok=True)
    notes, measured = [], []
    version = feast_side.feast_version()
    if version is None:
        notes.append(f"Feast is not installed under {feast_side.feast_python()} (`$FEAST_PYTHON`): not measured. "
                     f"The 1,000 x 17,000 point's ratio uses issue #33's figure instead ("
                     f"{wide_report.FEAST_ISSUE_SECONDS} s for call 1, Feast 0.67 on this machine).")
        log(notes[-1])
    else:
        notes.append(f"Feast {version}: file offline store (dask), which reads the Parquet source in every call; "
                     "fstore reads the sets' materialized offline tables (materialize s). Same data, same labels.")
    start = report.machine()
    for features, labels in points:
        common = ["--features", str(features), "--labels", str(labels), "--calls", str(calls),
                  "--data", str(data), "--work", str(work)]
        feast_output = work / f"feast-{features}x{labels}.parquet"
        feast = _wide_feast(common, feast_output, notes) if version else None
        if feast:
            measured.append(feast)
        for engine in engines:
            log(f"wide: {engine}, {features} features, {labels} labels")
            output = work / f"{engine}-{features}x{labels}.parquet"
            command = py("bench.wide", "--engine", engine, *common, "--output", str(output),
                         "--redis-db", os.environ.get("FSTORE_BENCH_REDIS_DB", str(FSTORE_DB)))
            try:
                result, _ = run_json(command)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                notes.append(f"{engine} {features} features x {labels} labels failed: {str(exc)[-300:]}")
                log(notes[-1])
                continue
            if "materialize_seconds" not in result:
                notes.append(f"fstore {engine} at {features} x {labels} reused the stores it materialized in an earlier "
                             f"run (under {work}): this run did not time materialization (delete them to time it)")
            if feast:
                result["feast_agreement"] = _wide_agreement(result, output, feast_output, notes)
            output.unlink(missing_ok=True)
            measured.append(result)
            log(f"wide: {result}")
        feast_output.unlink(missing_ok=True)
    start["load_avg_end"] = list(os.getloadavg())
    path = wide_report.write(measured, report.RESULTS, machine=start, notes=notes)
    print(path.read_text())
    return 0


def _wide_feast(common: list[str], output: Path, notes: list[str]) -> dict | None:
    """Feast's point (``bench.wide_feast``), its last call's rows in ``output``; None (and a note) if it failed."""
    log(f"wide: Feast, {' '.join(common[:4])}")
    try:
        result, _ = run_json(py("bench.wide_feast", *common, "--output", str(output)))
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        notes.append(f"Feast {' '.join(common[:4])} failed: {str(exc)[-300:]}")
        log(notes[-1])
        return None
    log(f"wide: {result}")
    return result


def _wide_agreement(fstore: dict, output: Path, feast_output: Path, notes: list[str]) -> dict | None:
    """fstore's last call (its rows in ``output``) against Feast's (in ``feast_output``), on the same labels and
    events; None (and a note) when the files cannot be compared."""
    import pandas as pd

    from bench import wide, wide_compare

    folder = Path(fstore["data"])
    engine = fstore["engine"]
    try:
        summary = wide_compare.compare(
            pd.read_parquet(wide.label_path(folder, fstore["labels"])),
            pd.read_parquet(folder / "events.parquet", columns=[wide.ENTITY, "event_timestamp"]),
            pd.read_parquet(output),
            pd.read_parquet(feast_output),
            wide_compare.column_pairs(fstore["sets"], fstore["features"] // fstore["sets"]))
    except (OSError, ValueError) as exc:
        notes.append(f"{engine} {fstore['features']} x {fstore['labels']}: no comparison with Feast: {exc}")
        log(notes[-1])
        return None
    summary["line"] = wide_compare.agreement_line(summary, engine)
    log(f"wide: {summary['line']}")
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The command line. ``part``'s default is the string "all", not ``["all"]``: Python 3.11's argparse checks
    an empty ``nargs="*"`` positional's default against ``choices`` as one value, and a list is no choice."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="*", default="all", choices=(*PARTS, "all"),
                        help="one or more parts, in order (default: all)")
    parser.add_argument("--scale", type=float, default=None, help="multiply the data sizes (default 1; 0.1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="fewer requests and repeats, scale 0.1 unless --scale")
    parser.add_argument("--spark-remote", nargs="?", const="start", default=None, metavar="URL",
                        help="also measure fstore's Spark side on a warm Spark Connect server: one `fstore spark up` "
                             "starts for the run (no URL), or the sc:// server named")
    parser.add_argument("--wide", action="store_true",
                        help="the wide case: 1,000 features x 17,000 labels, Feast and both engines")
    parser.add_argument("--sweep", nargs="*", metavar="FEATURESxLABELS", default=None,
                        help="the wide sweep: 100/300/1,000 features x 17k/170k labels, or the points given (100x17000)")
    parser.add_argument("--calls", type=int, default=10, help="wide: consecutive retrievals per point")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    parts = [args.part] if isinstance(args.part, str) else args.part
    if args.spark_remote not in (None, "start") and not args.spark_remote.startswith("sc://"):
        parser.error("--spark-remote takes a sc://HOST:PORT URL, or nothing to start a server for the run")
    if args.wide or args.sweep is not None:
        points = [WIDE_POINT] if args.wide else []
        if args.sweep is not None:
            points += [tuple(int(x) for x in p.split("x")) for p in args.sweep] if args.sweep else SWEEP
        return run_wide(points, calls=args.calls, engines=("spark", "duckdb"))
    scale = args.scale if args.scale is not None else (0.1 if args.quick else 1.0)
    if not scale > 0:
        parser.error("--scale must be positive")
    log(f"generating data (scale {scale:g}) under {bench_dir()}")
    dataset = generate(scale)
    version = feast_side.feast_version()
    # Only the reference run (scale 1, full length) is committed; other runs write beside their data.
    results = report.RESULTS if scale == 1 and not args.quick else bench_dir() / "results" / f"scale-{scale:g}{'-quick' if args.quick else ''}"
    ctx = Context(dataset=dataset, work=bench_dir() / f"work-scale-{scale:g}", feast=version, quick=args.quick,
                  results=results, spark_remote=args.spark_remote)
    ctx.work.mkdir(parents=True, exist_ok=True)
    if version is None:
        ctx.notes.append("Feast is not installed (pip install -e .[bench]); fstore measured alone.")
        log(ctx.notes[-1])
    try:
        for name in (PARTS if "all" in parts else dict.fromkeys(parts)):
            start, date = report.machine(), report.now()
            log(f"== {name} (load average {start['load_avg']})")
            data = PARTS[name](ctx)
            path = report.write_part(name, _wrap(ctx, data, start=start, date=date), results)
            log(f"wrote {path}")
    finally:
        stop_connect(ctx)
    md = report.write_markdown(results)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
