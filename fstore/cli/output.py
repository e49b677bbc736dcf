"""What every command shares: the lazily built store, ``--json``, and readable tables."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import click


@dataclass
class CliState:
    """The group's context object: options given before the command and the one ``FeatureStore``."""

    actor: str = ""
    as_json: bool = False
    debug: bool = False
    _store: Any = field(default=None, repr=False)

    @property
    def store(self):
        """The ``FeatureStore`` for the environment's settings, built on first use."""
        if self._store is None:
            import os

            from fstore.core.settings import Settings
            from fstore.store import FeatureStore

            # Spark's Java log (stack traces of a failure the CLI reports in one line) only with --debug.
            quiet = {} if self.debug or "SPARK_LOG_LEVEL" in os.environ else {"spark_log_level": "off"}
            self._store = FeatureStore(Settings.from_env(**quiet))
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


pass_cli = click.make_pass_decorator(CliState)


def json_option(command: Callable) -> Callable:
    """``--json`` after the command name too (``fstore features list --json``)."""

    def set_json(ctx: click.Context, _param, value: bool) -> bool:
        if value:
            ctx.find_object(CliState).as_json = True
        return value

    return click.option("--json", "as_json_local", is_flag=True, expose_value=False, callback=set_json,
                        help="Print JSON instead of a table.")(command)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=str, sort_keys=False)


def cell(value: Any, width: int = 60) -> str:
    """One table cell: lists joined, maps as k=v, long text cut."""
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, float):
        text = f"{value:.10g}"  # no binary noise like 151.26999999999998
    elif isinstance(value, (list, tuple)):
        text = ", ".join(cell(v, width) for v in value)
    elif isinstance(value, dict):
        text = ", ".join(f"{k}={cell(v, width)}" if v not in ("", None) else str(k) for k, v in value.items())
    else:
        text = str(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A plain aligned table with a header line."""
    if not rows:
        return "(none)"
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def fields(item: dict, keys: Iterable[str] | None = None) -> str:
    """One object as ``key: value`` lines."""
    keys = list(keys) if keys is not None else list(item)
    width = max((len(k) for k in keys), default=0)
    return "\n".join(f"{k.ljust(width)}  {cell(item.get(k), 200)}" for k in keys)


def emit(state: CliState, data: Any, render: Callable[[Any], str]) -> None:
    """JSON when asked for, else the readable rendering."""
    click.echo(to_json(data) if state.as_json else render(data))


def page_footer(page: dict) -> str:
    shown = len(page["items"])
    if not shown:
        return f"{page['total']} in total"
    return f"{page['offset'] + 1}-{page['offset'] + shown} of {page['total']}"
