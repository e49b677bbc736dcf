"""Operations commands: ``fstore keys …``, ``fstore audit list``, ``fstore monitor …``.

Key commands talk to the registry directly (not through the REST API), which is
how the first admin key is made on a server that already requires one. Every
key change is written to the audit log with the CLI's ``--actor``.
"""
from __future__ import annotations

import socket
from datetime import timedelta

import click

from fstore.ops import audit
from fstore.ops import auth
from fstore.ops import monitoring
from fstore.ops import usage
from fstore.cli import main
from fstore.cli.output import CliState, emit, fields, json_option, page_footer, pass_cli, table
from fstore.registry.models import utcnow
from fstore.registry.runs import to_utc

KEY_COLUMNS = ["id", "prefix", "owner", "scopes", "grants", "status", "expires_at", "last_used_at"]


def _audit_key_change(cli: CliState, action: str, target: str, outcome: str, detail: dict) -> None:
    audit.record(cli.store.engine, actor=f"{cli.actor or 'cli'} (cli)", action=action, target=target,
                 source_ip=f"cli@{socket.gethostname()}"[:64], outcome=outcome, detail=detail)


def _split(values: tuple[str, ...]) -> list[str]:
    return [v for value in values for v in value.replace(",", " ").split() if v]


@main.group()
def keys() -> None:
    """API keys: create (the key is printed once), list, revoke."""


@keys.command("create")
@click.option("--owner", required=True, help="Who the key belongs to (a person or a service).")
@click.option("--scopes", "scopes", multiple=True, required=True,
              help=f"Comma separated, or repeated: {', '.join(auth.SCOPES)}.")
@click.option("--feature-sets", "feature_sets", multiple=True, help="Limit the key to these feature sets.")
@click.option("--features", "features", multiple=True, help="Limit the key to these features (name or set:name).")
@click.option("--expires-in", help="e.g. 30d, 12h; default: never.")
@json_option
@pass_cli
def create_key(cli: CliState, owner: str, scopes: tuple[str, ...], feature_sets: tuple[str, ...],
               features: tuple[str, ...], expires_in: str | None) -> None:
    """Create an API key and print it once; only its hash is stored."""
    detail = {"owner": owner, "scopes": _split(scopes), "feature_sets": _split(feature_sets), "features": _split(features)}
    try:
        with cli.store.transaction() as s:
            created = auth.create_key(s, owner=owner, scopes=_split(scopes), feature_sets=_split(feature_sets) or None,
                                      features=_split(features) or None, expires_in=expires_in, registered_only=True)
    except Exception as exc:
        _audit_key_change(cli, "keys create", owner, "rejected", {**detail, "error": str(exc)[:500]})
        raise
    _audit_key_change(cli, "keys create", created["prefix"], "ok", {**detail, "id": created["id"]})

    def render(item: dict) -> str:
        shown = {k: v for k, v in item.items() if k != "key"}
        return (f"{item['key']}\n\nStore this key now: it is shown once and cannot be recovered.\n\n"
                + fields(shown, ["id", "prefix", "owner", "scopes", "grants", "expires_at"]))

    emit(cli, created, render)


@keys.command("list")
@click.option("--owner", help="Only this owner's keys.")
@click.option("--active", is_flag=True, help="Only keys neither revoked nor expired.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--offset", default=0, type=click.IntRange(0))
@json_option
@pass_cli
def list_keys(cli: CliState, owner: str | None, active: bool, limit: int, offset: int) -> None:
    """List keys (never secrets or hashes)."""
    with cli.store.transaction() as s:
        page = auth.list_keys(s, owner=owner, include_inactive=not active, limit=limit, offset=offset)
    emit(cli, page, lambda p: table(p["items"], KEY_COLUMNS) + "\n" + page_footer(p))


@keys.command("revoke")
@click.argument("key")
@json_option
@pass_cli
def revoke_key(cli: CliState, key: str) -> None:
    """Revoke KEY (its id or prefix). Servers stop accepting it within seconds."""
    try:
        with cli.store.transaction() as s:
            revoked = auth.revoke_key(s, key)
    except Exception as exc:
        _audit_key_change(cli, "keys revoke", key, "rejected", {"error": str(exc)[:500]})
        raise
    _audit_key_change(cli, "keys revoke", revoked["prefix"], "ok", {"id": revoked["id"]})
    emit(cli, revoked, lambda k: fields(k, KEY_COLUMNS + ["revoked_at"]))


@main.group("audit")
def audit_group() -> None:
    """The audit log: who changed what, when, from where, and the outcome."""


@audit_group.command("list")
@click.option("--actor", help="Actor contains this text.")
@click.option("--action", help="Action contains this text (e.g. 'feature-sets', 'keys').")
@click.option("--target", help="Target contains this text.")
@click.option("--outcome", type=click.Choice(audit.OUTCOMES))
@click.option("--since", help="ISO 8601 time.")
@click.option("--until", help="ISO 8601 time.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@click.option("--offset", default=0, type=click.IntRange(0))
@json_option
@pass_cli
def list_audit(cli: CliState, actor: str | None, action: str | None, target: str | None, outcome: str | None,
               since: str | None, until: str | None, limit: int, offset: int) -> None:
    """List audit records, newest first."""
    with cli.store.transaction() as s:
        page = audit.list_audit(s, actor=actor, action=action, target=target, outcome=outcome,
                                since=to_utc(since, field_name="since") if since else None,
                                until=to_utc(until, field_name="until") if until else None,
                                limit=limit, offset=offset)
    emit(cli, page, lambda p: table(p["items"], ["at", "actor", "action", "target", "source_ip", "outcome"])
         + "\n" + page_footer(p))


@main.group()
def monitor() -> None:
    """Feature statistics, data freshness, serving usage and training-serving skew."""


@monitor.command("statistics")
@click.option("--days", default=7, show_default=True, type=click.IntRange(1, 3660))
@click.option("--feature-set", help="Only this feature set.")
@json_option
@pass_cli
def statistics(cli: CliState, days: int, feature_set: str | None) -> None:
    """Per feature: counts, null rate, violations, min/max/mean and their change over DAYS."""
    with cli.store.transaction() as s:
        data = monitoring.statistics(s, days=days, feature_set=feature_set)

    def render(d: dict) -> str:
        rows = [{"feature_set": item["feature_set"], "feature": f["feature"], "runs": f["runs"], "count": f["count"],
                 "null_rate": f["null_rate"], "violations": f["violations"], "min": f["min"], "max": f["max"],
                 "mean": f["latest"].get("mean"), "mean_change": f["change"]["mean"]}
                for item in d["items"] for f in item["features"]]
        return table(rows, ["feature_set", "feature", "runs", "count", "null_rate", "violations", "min", "max",
                            "mean", "mean_change"])

    emit(cli, data, render)


@monitor.command("skew")
@click.argument("name")
@click.option("--sample", default=100, show_default=True, type=click.IntRange(1, 100_000),
              help="How many entity keys of the set's offline table to compare.")
@json_option
@pass_cli
def skew(cli: CliState, name: str, sample: int) -> None:
    """Training-serving skew of feature set NAME: SAMPLE entity keys served online at now against historical
    retrieval at the same instant; prints the rate of rows that differ and which features did."""
    from fstore.serving.skew_check import check_skew

    data = check_skew(cli.store, name, sample=sample)

    def render(d: dict) -> str:
        rate = "n/a (no entity keys)" if d["skew_rate"] is None else f"{d['skew_rate']:.4f}"
        head = (f"feature set {d['feature_set']} at {d['at']}: {d['skewed']} of {d['compared']} entities skewed, "
                f"skew rate {rate}")
        return head + ("\n" + table(d["features"], ["feature", "rows_skewed"]) if d["features"] else "")

    emit(cli, data, render)


@monitor.command("freshness")
@json_option
@pass_cli
def freshness(cli: CliState) -> None:
    """Per feature set: newest event offline and online, last succeeded run, late against its schedule."""
    data = monitoring.data_freshness(cli.store)
    emit(cli, data, lambda d: table(d["items"], ["feature_set", "schedule", "offline_newest_event",
                                                  "online_newest_event", "last_success_at", "late"])
         + (f"\nonline store: {d['online_store_error']}" if d.get("online_store_error") else ""))


@monitor.command("usage")
@click.option("--start-date", help="ISO 8601 (default: 24 hours ago).")
@click.option("--end-date", help="ISO 8601 (default: now).")
@click.option("--level", type=click.Choice(["key", "feature_set", "feature"]), default="feature_set", show_default=True)
@click.option("--granularity", type=click.Choice(["minute", "hour", "day"]))
@click.option("--api-key", help="Only this key prefix.")
@click.option("--feature-set", help="Only this feature set.")
@json_option
@pass_cli
def usage_report(cli: CliState, start_date: str | None, end_date: str | None, level: str, granularity: str | None,
                 api_key: str | None, feature_set: str | None) -> None:
    """Serving requests with p50/p95/p99 latency, cache hit rate and (per feature) coverage."""
    start = to_utc(start_date, field_name="start_date") if start_date else utcnow() - timedelta(days=1)
    end = to_utc(end_date, field_name="end_date") if end_date else None
    with cli.store.transaction() as s:
        data = usage.query_usage(s, start=start, end=end, level=level, granularity=granularity, api_key=api_key,
                                 feature_set=feature_set)

    def render(d: dict) -> str:
        rows = [{**i, "p50_ms": i["latency_ms"]["p50"], "p95_ms": i["latency_ms"]["p95"], "p99_ms": i["latency_ms"]["p99"]}
                for i in d["items"]]
        columns = (["period"] if granularity else []) + ["api_key", "endpoint"]
        columns += {"key": [], "feature_set": ["feature_set"], "feature": ["feature_set", "feature", "coverage"]}[level]
        return table(rows, columns + ["requests", "entities", "p50_ms", "p95_ms", "p99_ms", "cache_hit_rate"])

    emit(cli, data, render)


@monitor.command("drift")
@click.argument("feature_set")
@click.option("--baseline", default="previous", show_default=True,
              help="previous | training_set:NAME | window:START/END (ISO 8601).")
@json_option
@pass_cli
def drift(cli: CliState, feature_set: str, baseline: str) -> None:
    """PSI, KS and Jensen–Shannon of FEATURE_SET's newest run against a baseline, per feature."""
    from fstore.ops.drift import drift as measure

    with cli.store.transaction() as s:
        data = measure(s, feature_set, baseline)

    def render(d: dict) -> str:
        head = f"{d['feature_set']}: run {d['current']['run_id']} against {d['baseline']['kind']}"
        return head + "\n" + table(d["features"], ["feature", "kind", "psi", "band", "ks", "js", "baseline_rows",
                                                   "current_rows", "current_null_rate"])

    emit(cli, data, render)


@monitor.command("alerts")
@click.option("--feature-set", help="Only this feature set.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@json_option
@pass_cli
def alerts(cli: CliState, feature_set: str | None, limit: int) -> None:
    """Anomalies found in runs (robust z-score over the last runs), newest first."""
    from fstore.registry.quality import list_alerts

    with cli.store.transaction() as s:
        data = {"items": list_alerts(s, feature_set=feature_set, limit=limit)}
    emit(cli, data, lambda d: table(d["items"], ["created_at", "feature_set", "feature", "metric", "value", "median",
                                                 "score", "severity", "run_id"]))


@monitor.command("cost")
@click.option("--days", default=30, show_default=True, type=click.IntRange(1, 36500),
              help="Add up the runs of this many days (storage is priced for the same period).")
@json_option
@pass_cli
def cost(cli: CliState, days: int) -> None:
    """Cost per feature set: CPU seconds, bytes read and written and shuffle bytes of its runs, its offline bytes
    and online memory now; money too when COST_PRICES is set."""
    data = cli.store.cost_report(days)

    def render(d: dict) -> str:
        rows = [{**i, "money": None if i["money"] is None else i["money"]["total"]}
                for i in [*d["items"], {**d["total"], "feature_set": "(total)"}]]
        return table(rows, ["feature_set", "runs", "cpu_seconds", "bytes_read", "bytes_written", "shuffle_read_bytes",
                            "shuffle_write_bytes", "peak_memory_bytes", "offline_bytes", "online_bytes", "online_keys",
                            "money"])

    emit(cli, data, render)


@monitor.command("unused")
@click.option("--days", type=click.IntRange(1, 36500),
              help="Unused for this many days (default: UNUSED_ONLINE_DROP_DAYS, else 30).")
@click.option("--drop", is_flag=True, help="Apply the policy: drop the online values of the unused features "
                                           "(needs UNUSED_ONLINE_DROP_DAYS; definitions and offline rows stay).")
@click.option("--dry-run", is_flag=True, help="With --drop: say what would be dropped, drop nothing.")
@click.option("--restore", "restore", metavar="SET:FEATURE", help="Undo a drop and reload the set's online values.")
@json_option
@pass_cli
def unused(cli: CliState, days: int | None, drop: bool, dry_run: bool, restore: str | None) -> None:
    """Features neither served online nor used in a training set for DAYS days; --drop applies the policy."""
    store = cli.store
    if restore:
        set_name, _, feature = restore.partition(":")
        if not set_name or not feature:
            raise click.BadParameter("use SET:FEATURE", param_hint="--restore")
        data = store.restore_online_feature(set_name, feature, actor=cli.actor)
        emit(cli, data, lambda d: f"{d['feature_set']}:{d['feature']} restored: {d['reload']['keys_written']} keys "
                                  f"reloaded from offline version {d['reload']['offline_version']}")
        return
    if drop:
        data = store.drop_unused_online(days=days, actor=cli.actor, dry_run=dry_run)
        verb = "would drop" if dry_run else "dropped"
        emit(cli, data, lambda d: "\n".join(f"{verb} {x['feature_set']}: {', '.join(x['features'])}"
                                            + ("" if x["keys"] is None else f" ({x['keys']} keys)")
                                            for x in d["dropped"]) or "nothing to drop")
        return
    data = store.unused_features(days or store.settings.unused_online_drop_days or 30)

    def render(d: dict) -> str:
        rows = [{**i, "last_training_set": (i["last_training_set"] or {}).get("name")} for i in d["items"]]
        return (f"{d['unused']} of {d['features_checked']} features unused for {d['days']} days "
                f"(policy: {d['policy']['action']})\n"
                + table(rows, ["feature_set", "feature", "created_at", "last_served_online", "last_training_set",
                               "online_dropped_at"]))

    emit(cli, data, render)
