"""Computation commands: compile, materialize, incremental runs, backfills, runs, the scheduler, online reload, stream."""
from __future__ import annotations

import sys

import click

from fstore.cli import main, stoppable
from fstore.cli.output import CliState, emit, fields, json_option, pass_cli, table, page_footer
from fstore.definitions.model import parse_duration

RUN_FIELDS = ["id", "feature_set", "feature_set_version", "kind", "status", "start", "end", "rows_read", "rows_written",
              "rows_rejected", "online_rows", "offline_version", "duration_s", "stages", "error"]
RUN_COLUMNS = ["id", "feature_set", "kind", "status", "start", "end", "rows_written", "rows_rejected", "duration_s"]


def run_text(run: dict) -> str:
    """A run's figures, then its quality report per feature when it has one."""
    text = fields(run, [k for k in RUN_FIELDS if k in run])
    quality = run.get("quality") or {}
    if isinstance(quality, dict) and quality:
        rows = [{"feature": name, **(q if isinstance(q, dict) else {"value": q})} for name, q in quality.items()]
        columns = ["feature"] + [c for c in ("count", "nulls", "violations", "min", "max", "mean", "distinct") if any(c in r for r in rows)]
        text += "\n\nquality\n" + table(rows, columns)
    return text


@main.command("compile")
@click.argument("name")
@click.option("--version", type=int, help="An old version of the set.")
@json_option
@pass_cli
def compile_(cli: CliState, name: str, version: int | None) -> None:
    """Print the Spark SQL that computes a feature set."""
    emit(cli, {"feature_set": name, "version": version, "sql": cli.store.compile(name, version=version)},
         lambda compiled: compiled["sql"])


@main.command("sql-functions")
@json_option
@pass_cli
def sql_functions(cli: CliState) -> None:
    """List the SQL functions a transformation, window filter or query source may call (the allow-list)."""
    from fstore.compiler.sql_policy import allowed_functions

    names = allowed_functions()
    emit(cli, {"functions": names}, lambda data: "\n".join(data["functions"]))


@main.command()
@click.argument("names", nargs=-1, required=True)
@click.option("--start", required=True, help="ISO 8601 date or time (UTC unless an offset is given).")
@click.option("--end", required=True, help="Exclusive end, ISO 8601.")
@json_option
@pass_cli
def materialize(cli: CliState, names: tuple[str, ...], start: str, end: str) -> None:
    """Compute [START, END) of one or more feature sets into the offline and online stores.

    Several sets are one run each, and sets over the same source read it once. A set that fails does not
    stop the others; the exit code is then 8 (a run failed) or 5 (a set was refused: running, unknown).
    Progress per stage goes to stderr: a bar on a terminal, a plain line per stage otherwise.
    Ctrl-C or SIGTERM records the run cancelled and frees the set at once (exit 130)."""
    if len(names) == 1:
        with stoppable(), StageProgress() as progress:
            run = cli.store.materialize(names[0], start, end, actor=cli.actor, progress=progress)
        emit(cli, run, run_text)
        return
    with stoppable(), StageProgress() as progress:
        records = cli.store.materialize_many(list(names), start, end, actor=cli.actor, progress=progress)
    emit(cli, records, lambda rows: table(rows, [c for c in RUN_COLUMNS + ["error"] if any(c in r for r in rows)]))
    statuses = {r["status"] for r in records}
    if "failed" in statuses or "cancelled" in statuses:
        sys.exit(8)
    if "refused" in statuses:
        sys.exit(5)


@main.command("materialize-incremental")
@click.argument("name")
@click.option("--end", help="Exclusive end, ISO 8601 (default: now).")
@json_option
@pass_cli
def materialize_incremental(cli: CliState, name: str, end: str | None) -> None:
    """Compute a feature set from its watermark to END (default now); progress as for materialize."""
    with stoppable(), StageProgress() as progress:
        run = cli.store.materialize_incremental(name, end=end, actor=cli.actor, progress=progress)
    emit(cli, run, run_text)


@main.command()
@click.argument("name")
@click.option("--start", required=True, help="ISO 8601 date or time.")
@click.option("--end", required=True, help="Exclusive end, ISO 8601.")
@click.option("--chunk", default="1d", show_default=True, help="Chunk length: 6h, 1d, 7d…")
@json_option
@pass_cli
def backfill(cli: CliState, name: str, start: str, end: str, chunk: str) -> None:
    """Materialize a long range chunk by chunk; a re-run resumes after the last chunk done."""
    seconds = parse_duration(chunk, field_name="chunk")

    def progress(event: dict) -> None:
        rows = "" if event.get("rows_written") is None else f", {event['rows_written']} rows"
        error = f": {event['error']}" if event.get("error") else ""
        click.echo(f"[{event['chunk']}/{event['chunks']}] {event['start']} .. {event['end']} {event['status']}{rows}{error}",
                   err=cli.as_json)

    with stoppable():
        result = cli.store.backfill(name, start, end, chunk_seconds=seconds, actor=cli.actor, progress=progress)
    emit(cli, result, lambda r: fields(r, ["id", "feature_set", "status", "resumed", "chunks", "chunks_run",
                                           "chunks_skipped", "rows_written"]))


@main.group()
def runs() -> None:
    """Materialization runs."""


@runs.command("list")
@click.argument("name", required=False)
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--offset", type=int, default=0, show_default=True)
@json_option
@pass_cli
def runs_list(cli: CliState, name: str | None, limit: int, offset: int) -> None:
    """List runs, newest first (of one feature set when NAME is given)."""
    page = cli.store.list_runs(name, limit=limit, offset=offset)
    emit(cli, page, lambda p: table(p["items"], RUN_COLUMNS) + "\n" + page_footer(p))


@runs.command("show")
@click.argument("run_id")
@json_option
@pass_cli
def runs_show(cli: CliState, run_id: str) -> None:
    """Show one run: figures, error, quality report."""
    emit(cli, cli.store.get_run(run_id), run_text)


@main.command()
@click.argument("name")
@click.option("--retain-hours", type=int, default=None, show_default="168",
              help="Keep files removed less than this many hours ago (time travel within it keeps working).")
@click.option("--dry-run", is_flag=True, help="Only list the files that would be deleted.")
@json_option
@pass_cli
def vacuum(cli: CliState, name: str, retain_hours: int | None, dry_run: bool) -> None:
    """Delete offline files no version worth keeping reads (training sets' versions are kept)."""
    result = cli.store.vacuum_offline(name, retain_hours=retain_hours, dry_run=dry_run, actor=cli.actor)
    emit(cli, result, lambda r: (f"{'would delete' if r['dry_run'] else 'deleted'} {r['files']} file(s) of "
                                 f"{r['feature_set']} (retention {r['retain_hours']} h; versions kept for training "
                                 f"sets: {', '.join(map(str, r['kept_versions'])) or 'none'})"))


@main.group()
def retention() -> None:
    """Offline retention: delete rows older than a set's ``retention``."""


@retention.command("apply")
@click.argument("name", required=False)
@click.option("--dry-run", is_flag=True, help="Only count the rows that would be deleted.")
@click.option("--retain-hours", type=int, default=None, show_default="168",
              help="The vacuum after the delete keeps files removed less than this many hours ago.")
@json_option
@pass_cli
def retention_apply(cli: CliState, name: str | None, dry_run: bool, retain_hours: int | None) -> None:
    """Delete NAME's (default: every set declaring one) offline rows older than its retention, then vacuum.

    Training sets keep their pinned versions' files; those whose version holds deleted rows are listed."""
    results = cli.store.apply_retention(name, dry_run=dry_run, retain_hours=retain_hours, actor=cli.actor)
    emit(cli, results, lambda rs: "\n".join(_retention_line(r) for r in rs) or "no feature set declares a retention")


def _retention_line(r: dict) -> str:
    rows = f"would delete {r['rows_to_delete']}" if r["dry_run"] else f"deleted {r['rows_deleted']}"
    vacuumed = f", vacuumed {r['vacuum']['files']} file(s)" if "vacuum" in r else ""
    pinned = "; training sets reading rows deleted from the current version (kept through their pinned " \
             "version): " + ", ".join(f"{t['name']} (v{t['version']}, {t['rows_older']} rows)" for t in r["training_sets"]) \
        if r["training_sets"] else ""
    return f"{r['feature_set']}: {rows} row(s) older than {r['cutoff']}{vacuumed}{pinned}"


@main.group()
def tiers() -> None:
    """Storage tiers: move old offline days to the cold table (COLD_STORAGE_PATH)."""


@tiers.command("apply")
@click.argument("name", required=False)
@click.option("--dry-run", is_flag=True, help="Only count the rows that would move.")
@json_option
@pass_cli
def tiers_apply(cli: CliState, name: str | None, dry_run: bool) -> None:
    """Move NAME's (default: every set declaring ``cold_after``) offline days older than its ``cold_after`` from
    warm to cold storage. Retrieval and training sets read both tiers: their answers do not change."""
    results = cli.store.apply_tiers(name, dry_run=dry_run, actor=cli.actor)
    emit(cli, results, lambda rs: "\n".join(_tiers_line(r) for r in rs) or "no feature set declares cold_after")


def _tiers_line(r: dict) -> str:
    rows = f"would move {r['rows_to_move']}" if r["dry_run"] else f"moved {r['rows_moved']}"
    versions = "" if r["dry_run"] else f" (warm version {r['warm_version']}, cold version {r['cold_version']})"
    recovered = " after undoing an unfinished move" if r.get("recovered") else ""
    return f"{r['feature_set']}: {rows} row(s) older than {r['boundary']} to cold storage{versions}{recovered}"


@main.group()
def online() -> None:
    """The online store: reload a set's values after the store lost them."""


@online.command("reload")
@click.argument("name")
@json_option
@pass_cli
def online_reload(cli: CliState, name: str) -> None:
    """Rebuild NAME's online values from its offline table (newest row per key, no recomputation).

    For an online store that restarted empty: answers say degraded and an incremental run cannot help.
    """
    result = cli.store.reload_online(name, actor=cli.actor)
    skipped = f"; features skipped (no offline column): {', '.join(result['features_skipped'])}" \
        if result["features_skipped"] else ""
    emit(cli, result, lambda r: (f"reloaded {r['feature_set']} online: {r['keys_written']} key(s) written from offline "
                                 f"version {r['offline_version']} in {r['seconds']}s ({r['engine']}){skipped}"))
class StageProgress:
    """Shows a run's stages on stderr: one bar rewritten in place on a terminal, a plain line per finished
    stage otherwise (logs, CI). Used as ``with StageProgress() as progress: ...materialize(progress=progress)``."""

    WIDTH = 24

    def __init__(self, stream=None) -> None:
        self.stream = stream or click.get_text_stream("stderr")
        self.tty = self.stream.isatty()
        self.open_line = False

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *exc) -> bool:
        if self.open_line:  # an error or the result starts on its own line
            self.stream.write("\n")
            self.stream.flush()
        return False

    def __call__(self, event: dict) -> None:
        rows = f", {event['rows']:,} rows" if event.get("rows") is not None else ""
        pct, stage, done = event["percent"], event["stage"], event["state"] == "done"
        if self.tty:
            filled = self.WIDTH * pct // 100
            text = (f"\r{event['feature_set']} [{'#' * filled}{'.' * (self.WIDTH - filled)}] {pct:3d}% "
                    f"{stage} {'done' if done else '...'}{rows}")
            self.stream.write(text.ljust(100))
            self.open_line = pct < 100
            if pct >= 100:
                self.stream.write("\n")
        elif done:
            self.stream.write(f"{event['feature_set']}: {stage} done{rows} ({pct}%)\n")
        self.stream.flush()


def outcome_line(o: dict) -> str:
    """One scheduled run as a log line: when, set, range, status, rows, seconds (and why, or the retry)."""
    from fstore.registry.models import utcnow
    from fstore.registry.runs import iso

    span = f"[{o['start']}, {o.get('end')})" if o.get("start") else f"(up to {o.get('end') or '-'})"
    text = (f"{iso(utcnow().replace(microsecond=0))} {o['feature_set']} {span} {o['status']} "
            f"{o.get('rows_written') or 0} rows {o.get('seconds', 0):.1f}s")
    if o.get("error") or o.get("reason"):
        text += f": {' '.join(str(o.get('error') or o.get('reason')).split())}"
    if o.get("retry_in") is not None:
        text += f" (retrying in {o['retry_in']:g}s)"
    return text


@main.command()
@click.option("--once", is_flag=True, help="Run what is due now (and its retries), then exit (for cron or Airflow).")
@click.option("--poll", default=30.0, show_default=True, help="Seconds between passes.")
@json_option
@pass_cli
def scheduler(cli: CliState, once: bool, poll: float) -> None:
    """Run feature sets by their materialization_schedule (until interrupted).

    Every run prints one line on stderr (set, range, status, rows, seconds). With --once the exit code is 0
    when every due set's last attempt succeeded or had nothing to do, 8 when one failed, 5 when one was
    refused (its set was running). SCHEDULER_CONCURRENCY, SCHEDULER_RETRIES, SCHEDULER_RETRY_SECONDS tune it."""
    from fstore.compute.scheduler import run_scheduler

    def report(outcome: dict) -> None:
        click.echo(outcome_line(outcome), err=True)

    with stoppable():
        outcomes = run_scheduler(cli.store, once=once, poll_seconds=poll, report=report)
    emit(cli, outcomes, lambda rows: table(rows, sorted({k for r in rows for k in r if not isinstance(r[k], (dict, list))}))
         if rows else "nothing was due")
    last = {o["feature_set"]: o["status"] for o in outcomes}
    if "failed" in last.values():
        sys.exit(8)
    if "refused" in last.values():
        sys.exit(5)


@main.command()
@click.argument("name")
@click.option("--trigger", default=1.0, show_default=True, type=float, help="Seconds between micro-batches.")
@click.option("--max-offsets-per-trigger", type=int, default=None, help="Cap on Kafka messages per micro-batch.")
@click.option("--warm-up/--no-warm-up", default=True, show_default=True,
              help="Run the batch path over made-up messages before subscribing (faster first batches).")
@json_option
@pass_cli
def stream(cli: CliState, name: str, trigger: float, max_offsets_per_trigger: int | None, warm_up: bool) -> None:
    """Stream feature set NAME from its Kafka topic (Spark Structured Streaming) until SIGTERM or Ctrl-C.

    Every event goes to the offline Delta table exactly once, the newest value per key online (newer wins).
    The checkpoint is STORAGE_PATH/_streams/NAME/checkpoint: a restart goes on where the last run stopped.
    One line per micro-batch on stderr (events, appended, online rows, p99 event time -> online seconds)."""
    import signal
    import threading

    from fstore.compute.stream import run_stream

    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}

    def report(result: dict) -> None:
        p99 = (result.get("freshness") or {}).get("last_batch_p99_seconds")
        click.echo(f"{name} batch {result['batch_id']}: {result['events']} events, {result.get('appended', 0)} appended"
                   f"{' (replayed: skipped)' if result.get('replayed') else ''}, {result['online_rows']} online, "
                   f"{result['dropped']} dropped, p99 {p99 if p99 is not None else '-'} s", err=True)

    try:
        totals = run_stream(cli.store, name, trigger_seconds=trigger, stop=stop,
                            max_offsets_per_trigger=max_offsets_per_trigger, on_batch=report, warm=warm_up)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    emit(cli, totals, lambda t: f"stopped {name}: " + ", ".join(f"{k} {v}" for k, v in t.items()))
