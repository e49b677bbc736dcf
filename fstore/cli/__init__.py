"""The ``fstore`` command line: a thin click group over ``FeatureStore``.

The group builds one ``FeatureStore`` (on first use, so ``--help`` needs no
database) and passes it to every command through ``pass_cli``. Every
``FStoreError`` becomes one line ``error: …`` on stderr and the error's exit
code; nothing prints a traceback unless ``--debug`` is given.

Command modules register themselves on ``main`` when imported; the list
``COMMAND_MODULES`` below is where a new area (``fstore keys``, ``fstore
monitor`` from ``fstore/cli/ops.py``) is added.
"""
from __future__ import annotations

import contextlib
import getpass
import importlib
import logging
import os
import signal
import sys
import threading

import click

from fstore.cli.output import CliState, pass_cli
from fstore.core.errors import FStoreError

COMMAND_MODULES = (
    "fstore.cli.registry",   # apply, plan, entities, feature-sets, features, search, db, serve
    "fstore.cli.compute",    # compile, materialize, materialize-incremental, backfill, runs, scheduler
    "fstore.cli.serving",    # get-online-features, get-historical-features
    "fstore.cli.training",   # training-sets list/show/recreate
    "fstore.cli.ops",        # keys, monitor (operations; optional until that module exists)
)


INTERRUPTED = 130  # exit code after Ctrl-C or SIGTERM (128 + SIGINT, as shells report it)


@contextlib.contextmanager
def stoppable():
    """SIGTERM acts like Ctrl-C while the block runs (``KeyboardInterrupt``), so a run in progress is recorded
    cancelled and its set's lock released before the process ends, instead of blocking the set for a lease."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _OneLine(logging.Formatter):
    """``warning: message``: no traceback, no logger name (those come with --debug)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {' '.join(record.getMessage().split())}"


def _setup_logging(debug: bool) -> logging.Handler:
    """Library warnings print once, as one line each; an error the command reports itself (a failed run) is
    not printed again. ``--debug`` shows everything from INFO on, with tracebacks."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    if debug:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("fstore").setLevel(logging.INFO)
    else:
        handler.setLevel(logging.WARNING)
        handler.setFormatter(_OneLine())
        handler.addFilter(lambda record: not getattr(record, "reported", False))
        for noisy in ("py4j", "pyspark"):  # their warnings arrive as our errors already
            logging.getLogger(noisy).setLevel(logging.ERROR)
    root.addHandler(handler)
    return handler


def _default_actor() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return ""


class FStoreGroup(click.Group):
    """A click group that turns library errors into one line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FStoreError as exc:
            if ctx.find_object(CliState) is not None and ctx.find_object(CliState).debug:
                raise
            click.echo("error: " + " ".join(line.strip() for line in exc.message.splitlines() if line.strip()), err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            state = ctx.find_object(CliState)
            if state is not None and state.debug:
                raise
            click.echo("\nstopped (interrupted); a run in progress was recorded cancelled", err=True)
            ctx.exit(INTERRUPTED)
        except Exception as exc:  # noqa: BLE001 - a bug still ends with one line, not a traceback
            state = ctx.find_object(CliState)
            if state is not None and state.debug:
                raise
            click.echo(f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
            ctx.exit(1)


@click.group(cls=FStoreGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--actor", default=_default_actor, show_default="$USER", help="Who makes the changes (recorded in versions).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables (also accepted after each command).")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx: click.Context, actor: str, as_json: bool, debug: bool) -> None:
    """fstore: a feature store whose heavy work runs on Apache Spark.

    Settings come from the environment (DATABASE_URL, STORAGE_PATH, REDIS_URL, SPARK_MASTER, …).
    """
    ctx.obj = CliState(actor=actor, as_json=as_json, debug=debug)
    ctx.call_on_close(ctx.obj.close)
    handler = _setup_logging(debug)
    ctx.call_on_close(lambda: logging.getLogger().removeHandler(handler))


for _name in COMMAND_MODULES:
    try:
        importlib.import_module(_name)
    except ModuleNotFoundError as _exc:
        if _exc.name != _name:  # a missing dependency inside the module is a real error
            raise

__all__ = ["main", "pass_cli", "COMMAND_MODULES"]
