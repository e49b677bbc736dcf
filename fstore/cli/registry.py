"""Registry commands: apply/plan, entities, feature sets, features, search, the schema, the server."""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import click

from fstore.cli import main
from fstore.registry.apply import describe
from fstore.cli.output import CliState, emit, fields, json_option, page_footer, pass_cli, table

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGE = [click.option("--limit", type=int, default=50, show_default=True, help="At most this many (1-500)."),
        click.option("--offset", type=int, default=0, show_default=True, help="Skip this many first.")]


def paged(command):
    for option in reversed(PAGE):
        command = option(command)
    return command


ALLOW_MISSING = click.option("--allow-missing-sources", is_flag=True,
                             help="Accept a local source path that does not exist yet; its SQL is checked when a run "
                                  "of the set fails instead.")


@main.command()
@click.argument("path", type=click.Path(exists=True))
@ALLOW_MISSING
@json_option
@pass_cli
def apply(cli: CliState, path: str, allow_missing_sources: bool) -> None:
    """Apply a YAML file or folder of definitions (in one transaction; idempotent)."""
    emit(cli, cli.store.apply(path, actor=cli.actor, allow_missing_sources=allow_missing_sources), describe)


@main.command()
@click.argument("path", type=click.Path(exists=True))
@ALLOW_MISSING
@json_option
@pass_cli
def plan(cli: CliState, path: str, allow_missing_sources: bool) -> None:
    """Show what `fstore apply PATH` would change, changing nothing."""
    emit(cli, cli.store.plan(path, allow_missing_sources=allow_missing_sources), describe)


def _confirm(yes: bool, what: str) -> None:
    if not yes:
        click.confirm(f"delete {what}?", abort=True)


# -- entities ------------------------------------------------------------------------------

@main.group()
def entities() -> None:
    """Entities: what features describe, and their join keys."""


@entities.command("list")
@click.option("--query", "-q", help="Text in the name or description.")
@paged
@json_option
@pass_cli
def entities_list(cli: CliState, query: str | None, limit: int, offset: int) -> None:
    """List entities."""
    page = cli.store.list_entities(query=query, limit=limit, offset=offset)
    emit(cli, page, lambda p: table(p["items"], ["id", "name", "join_keys", "value_type", "version", "description"])
         + "\n" + page_footer(p))


@entities.command("show")
@click.argument("ref")
@json_option
@pass_cli
def entities_show(cli: CliState, ref: str) -> None:
    """Show one entity (by id, name or join key)."""
    emit(cli, cli.store.get_entity(ref), fields)


@entities.command("versions")
@click.argument("ref")
@json_option
@pass_cli
def entities_versions(cli: CliState, ref: str) -> None:
    """List every version of an entity: what changed, when, by whom."""
    rows = cli.store.entity_versions(ref)
    emit(cli, rows, lambda vs: table([{**v, "changes": _changes(v["changes"])} for v in vs],
                                     ["version", "created_at", "created_by", "changes"]))


@entities.command("delete")
@click.argument("ref")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_cli
def entities_delete(cli: CliState, ref: str, yes: bool) -> None:
    """Delete an entity no feature set uses."""
    _confirm(yes, f"entity {ref}")
    cli.store.delete_entity(ref, actor=cli.actor)
    click.echo(f"deleted entity {ref}")


# -- feature sets --------------------------------------------------------------------------

SET_COLUMNS = ["id", "name", "version", "entities", "owner", "features", "materialization_schedule", "watermark"]


@main.group("feature-sets")
def feature_sets() -> None:
    """Feature sets: features computed together from one source."""


@feature_sets.command("list")
@click.option("--query", "-q", help="Text in the name, description, owner or tags.")
@click.option("--entity", help="Only sets keyed by this entity.")
@click.option("--owner")
@click.option("--tag", help="A tag key, or key=value.")
@paged
@json_option
@pass_cli
def feature_sets_list(cli: CliState, query, entity, owner, tag, limit: int, offset: int) -> None:
    """List feature sets."""
    page = cli.store.list_feature_sets(query=query, entity=entity, owner=owner, tag=tag, limit=limit, offset=offset)
    emit(cli, page, lambda p: table(p["items"], SET_COLUMNS) + "\n" + page_footer(p))


@feature_sets.command("show")
@click.argument("ref")
@click.option("--version", type=int, help="An old version instead of the current one.")
@json_option
@pass_cli
def feature_sets_show(cli: CliState, ref: str, version: int | None) -> None:
    """Show one feature set (by id or name)."""
    emit(cli, cli.store.get_feature_set(ref, version=version), fields)


@feature_sets.command("versions")
@click.argument("ref")
@json_option
@pass_cli
def feature_sets_versions(cli: CliState, ref: str) -> None:
    """List every version of a feature set: what changed, when, by whom."""
    rows = cli.store.feature_set_versions(ref)
    emit(cli, rows, lambda vs: table([{**v, "changes": _changes(v["changes"])} for v in vs],
                                     ["version", "created_at", "created_by", "changes", "features"]))


@feature_sets.command("delete")
@click.argument("ref")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_cli
def feature_sets_delete(cli: CliState, ref: str, yes: bool) -> None:
    """Delete a feature set and its features (the offline data stays on disk)."""
    _confirm(yes, f"feature set {ref} and its features")
    cli.store.delete_feature_set(ref, actor=cli.actor)
    click.echo(f"deleted feature set {ref}")


def _changes(changes: list[dict]) -> str:
    return ", ".join(c["field"] if c["field"] != "created" else "created" for c in changes)


# -- features ------------------------------------------------------------------------------

FEATURE_COLUMNS = ["id", "name", "feature_set", "version", "data_type", "owner", "description"]


@main.group()
def features() -> None:
    """Features: named values computed per entity and event time."""


@features.command("list")
@click.option("--query", "-q", help="Text in the name, description, owner or tags.")
@click.option("--feature-set", help="Only features of this set.")
@click.option("--entity", help="Only features of sets keyed by this entity.")
@click.option("--owner")
@click.option("--data-type")
@click.option("--tag", help="A tag key, or key=value.")
@paged
@json_option
@pass_cli
def features_list(cli: CliState, query, feature_set, entity, owner, data_type, tag, limit: int, offset: int) -> None:
    """List features."""
    page = cli.store.list_features(query=query, feature_set=feature_set, entity=entity, owner=owner, data_type=data_type,
                                   tag=tag, limit=limit, offset=offset)
    emit(cli, page, lambda p: table(p["items"], FEATURE_COLUMNS) + "\n" + page_footer(p))


@features.command("show")
@click.argument("ref")
@click.option("--feature-set", help="The set, when the name is in several.")
@click.option("--version", type=int, help="An old version instead of the current one.")
@json_option
@pass_cli
def features_show(cli: CliState, ref: str, feature_set: str | None, version: int | None) -> None:
    """Show one feature (by id, name, or SET:NAME)."""
    emit(cli, cli.store.get_feature(ref, feature_set=feature_set, version=version), fields)


@features.command("versions")
@click.argument("ref")
@click.option("--feature-set", help="The set, when the name is in several.")
@json_option
@pass_cli
def features_versions(cli: CliState, ref: str, feature_set: str | None) -> None:
    """List every version of a feature, with its lineage."""
    rows = cli.store.feature_versions(ref, feature_set=feature_set)
    emit(cli, rows, lambda vs: table([{**v, "changes": _changes(v["changes"])} for v in vs],
                                     ["version", "created_at", "created_by", "changes", "lineage"]))


@features.command("delete")
@click.argument("ref")
@click.option("--feature-set", help="The set, when the name is in several.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_cli
def features_delete(cli: CliState, ref: str, feature_set: str | None, yes: bool) -> None:
    """Delete a feature no other feature depends on."""
    _confirm(yes, f"feature {ref}")
    cli.store.delete_feature(ref, feature_set=feature_set, actor=cli.actor)
    click.echo(f"deleted feature {ref}")


# -- search, schema, server ----------------------------------------------------------------

@main.command()
@click.argument("text")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["entity", "feature_set", "feature"]),
              help="Only these kinds (repeatable).")
@paged
@json_option
@pass_cli
def search(cli: CliState, text: str, kinds: tuple[str, ...], limit: int, offset: int) -> None:
    """Search entities, feature sets and features by name, description, owner and tags."""
    page = cli.store.search(text, kinds=kinds or ("entity", "feature_set", "feature"), limit=limit, offset=offset)
    emit(cli, page, lambda p: table(p["items"], ["kind", "id", "name", "feature_set", "owner", "description"])
         + "\n" + page_footer(p))


@main.group()
def db() -> None:
    """The registry database."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Bring the registry schema to the newest revision (what `alembic upgrade head` does)."""
    from fstore.registry.db import upgrade
    from fstore.core.settings import Settings

    settings = Settings.from_env()
    upgrade(settings, revision)
    click.echo(f"registry at {settings.database_url.split('@')[-1]} upgraded to {revision}")


@main.command()
@click.option("--host", help="Default: the HOST setting (0.0.0.0).")
@click.option("--port", type=int, help="Default: the PORT setting (8002).")
@click.option("--workers", type=int, help="Worker processes. Default: WEB_CONCURRENCY (2).")
@click.option("--server", "server_name", type=click.Choice(["gunicorn", "granian"]), default="gunicorn",
              show_default=True, help="granian: a Rust HTTP server, for pods that serve online lookups (README).")
def serve(host: str | None, port: int | None, workers: int | None, server_name: str) -> None:
    """Serve the REST API: gunicorn when installed, else Flask's development server; or Granian.

    Options left out come from the environment, as ``conf/gunicorn.conf.py`` reads it.
    """
    from fstore.core.settings import Settings

    settings = Settings.from_env()
    bind_host = host or os.environ.get("HOST", "0.0.0.0")
    port = port or settings.port
    if server_name == "granian":
        if importlib.util.find_spec("granian") is None:
            raise click.UsageError("--server granian needs the granian package (pip install granian)")
        command = [sys.executable, "-m", "fstore.api.serve_granian", "--host", bind_host, "--port", str(port)]
        if workers is not None:
            command += ["--workers", str(workers)]
        click.echo(f"serving on http://{bind_host}:{port} with granian", err=True)
        # fstore found from this tree, the user's working directory kept; the server replaces this process,
        # so signals (Ctrl-C, a supervisor's TERM) reach it directly
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        os.execve(sys.executable, command, {**os.environ, "PYTHONPATH": path})
    if importlib.util.find_spec("gunicorn") is not None:
        # --pythonpath finds server.py, so the user's working directory (and a relative STORAGE_PATH) stays
        command = [sys.executable, "-m", "gunicorn", "server:app", "-c", str(REPO_ROOT / "conf" / "gunicorn.conf.py"),
                   "--pythonpath", str(REPO_ROOT), "--bind", f"{bind_host}:{port}"]
        if workers is not None:
            command += ["--workers", str(workers)]
        click.echo(f"serving on http://{bind_host}:{port} with gunicorn", err=True)
        # gunicorn replaces this process, so signals (Ctrl-C, a supervisor's TERM) reach it directly
        os.execv(sys.executable, command)
    from fstore.api import create_app

    click.echo(f"gunicorn is not installed: serving on http://{bind_host}:{port} with Flask's development server",
               err=True)
    create_app(settings.with_(bind_host=bind_host)).run(host=bind_host, port=port, threaded=True)  # bind decides auth
