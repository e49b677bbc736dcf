"""``fstore spark up|down|status|url``: one warm Spark (a Spark Connect server) for every fstore process.

Thin over ``fstore.engine.connect_server`` (start, stop) and ``fstore.engine.connect`` (status). The
settings are the environment's, as for every command, so start the server with the environment the other
processes run with.
"""
from __future__ import annotations

import click

from fstore.cli import main
from fstore.cli.output import CliState, emit, fields, json_option, pass_cli


def _settings():
    from fstore.core.settings import Settings

    return Settings.from_env()


@main.group()
def spark() -> None:
    """A Spark Connect server that the CLI, the scheduler, the server and jobs share (no JVM per command)."""


@spark.command("up")
@click.option("--port", default=15002, show_default=True, type=click.IntRange(1, 65535),
              help="Port on 127.0.0.1 (the server listens on loopback only).")
@click.option("--no-warm-up", is_flag=True, help="Skip the warm-up run (a Delta write, a mapInArrow).")
@click.option("--timeout", default=180, show_default=True, type=click.IntRange(10), help="Seconds to wait for it.")
@json_option
@pass_cli
def up(cli: CliState, port: int, no_warm_up: bool, timeout: int) -> None:
    """Start the server (pyspark's own Spark Connect jar) and record it; processes find it by themselves."""
    from fstore.engine import connect, connect_server

    settings = _settings()
    connect_server.start(settings, port=port, timeout=timeout, warm_up=not no_warm_up)
    emit(cli, connect.status(settings), _status_text)


@spark.command("down")
@json_option
@pass_cli
def down(cli: CliState) -> None:
    """Stop the server ``fstore spark up`` started and forget it."""
    from fstore.engine import connect_server

    server = connect_server.stop(_settings())
    answer = {"stopped": server is not None, "pid": server.pid if server else None}
    emit(cli, answer, lambda a: f"stopped the Spark Connect server (pid {a['pid']})" if a["stopped"]
         else "no Spark Connect server was recorded")


@spark.command("status")
@json_option
@pass_cli
def status(cli: CliState) -> None:
    """Whether the server runs, where, and whether processes with this environment use it."""
    from fstore.engine import connect

    emit(cli, connect.status(_settings()), _status_text)


@spark.command("url")
@pass_cli
def url(cli: CliState) -> None:
    """Print the running server's URL with its token, for SPARK_REMOTE elsewhere (keep it secret)."""
    from fstore.core.errors import NotFound
    from fstore.engine import connect

    server = connect.running(_settings())
    if server is None:
        raise NotFound("no Spark Connect server started by fstore spark up is running")
    click.echo(server.url)


def _status_text(state: dict) -> str:
    if state.get("url") is None:
        return f"no Spark Connect server recorded ({state['state']}); start one with: fstore spark up"
    shown = dict(state)
    shown["differs_from_here"] = ", ".join(state["differs_from_here"]) or "-"
    return fields(shown, ["running", "url", "pid", "started", "used_here", "differs_from_here", "log", "state"])
