"""Training-set commands: list the saved ones, show one, re-create one exactly."""
from __future__ import annotations

import click

from fstore.cli import main
from fstore.cli.output import CliState, emit, fields, json_option, page_footer, pass_cli, table, to_json
from fstore.cli.registry import paged
from fstore.cli.serving import OUTPUT_HELP, OVERWRITE_HELP, check_output, write_result

LIST_COLUMNS = ["id", "name", "status", "entity_count", "feature_sets", "created_at", "created_by"]
SHOW_KEYS = ["id", "name", "status", "entity_count", "features", "groups", "as_of", "timestamp_column",
             "entity_source", "columns", "output_path", "created_at", "created_by", "importances"]


def _sets(item: dict) -> list[str]:
    """``set@version`` of every feature set the training set read."""
    return [f"{g['feature_set']}@{g['version']}" for g in item.get("groups") or ()]


def _group_lines(item: dict) -> list[str]:
    """One readable entry per feature set: version, offline version (or as_of) and its features."""
    lines = []
    for g in item.get("groups") or ():
        pinned = f"offline v{g['offline_version']}" if g.get("offline_version") is not None \
            else f"as of {g.get('as_of') or 'latest'}"
        lines.append(f"{g['feature_set']}@{g['version']} ({pinned}): {' '.join(g['features'])}")
    return lines


def _importance_lines(item: dict) -> str:
    return "; ".join(f"{i['label']} by {i['method']}: " + ", ".join(f"{x['feature']} {x['score']:.4g}" for x in i["scores"])
                     for i in item.get("importances") or ())


def _show_text(item: dict) -> str:
    return fields({**item, "groups": "; ".join(_group_lines(item)), "importances": _importance_lines(item)},
                  [k for k in SHOW_KEYS if k in item or k == "groups"])


@main.group("training-sets")
def training_sets() -> None:
    """Training sets: saved retrievals (get-historical-features --save-as), re-creatable exactly."""


@training_sets.command("list")
@paged
@json_option
@pass_cli
def training_sets_list(cli: CliState, limit: int, offset: int) -> None:
    """List saved training sets, newest first."""
    page = cli.store.list_training_sets(limit=limit, offset=offset)
    emit(cli, page, lambda p: table([{**i, "feature_sets": _sets(i)} for i in p["items"]], LIST_COLUMNS)
         + "\n" + page_footer(p))


@training_sets.command("show")
@click.argument("name")
@json_option
@pass_cli
def training_sets_show(cli: CliState, name: str) -> None:
    """Show one training set (by name or id): features, versions, pinned offline versions, paths."""
    emit(cli, cli.store.get_training_set(name), _show_text)


@training_sets.command("recreate")
@click.argument("name")
@click.option("--output", required=True, help=OUTPUT_HELP)
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
@json_option
@pass_cli
def training_sets_recreate(cli: CliState, name: str, output: str, overwrite: bool) -> None:
    """Re-run a training set's retrieval pinned to its recorded versions and write the rows."""
    check_output(output, overwrite)
    result = cli.store.recreate_training_set(name)
    out, rows = write_result(result, output)
    summary = {"training_set": result.meta["training_set"]["name"], "output": str(out), "rows": rows,
               "notes": result.meta.get("notes", [])}
    click.echo(to_json(summary) if cli.as_json else f"wrote {rows} rows of training set {summary['training_set']} to {out}")
    if not cli.as_json:
        for note in summary["notes"]:
            click.echo(f"note: {note}")


@main.group("analyze")
def analyze() -> None:
    """Analyses of saved training sets."""


@analyze.command("importance")
@click.option("--training-set", "training_set", required=True, help="The saved training set's name.")
@click.option("--label", required=True, help="The label column (a column of the entity rows it was saved with).")
@click.option("--method", "methods", multiple=True, type=click.Choice(["mutual_information", "gbt"]),
              help="Repeatable; default mutual_information (numpy), and gbt too on Spark (MLlib).")
@json_option
@pass_cli
def importance(cli: CliState, training_set: str, label: str, methods: tuple[str, ...]) -> None:
    """Rank a training set's features by importance for LABEL, and store the scores with the training set."""
    from fstore.ops.importance import analyze as measure

    store = cli.store
    if not methods:
        methods = ("mutual_information", "gbt") if store.settings.compute_engine == "spark" else ("mutual_information",)
    data = measure(store, training_set, label, methods=methods, actor=cli.actor or "")
    emit(cli, data, lambda d: "\n".join(
        f"{m}:\n" + table(scores, ["feature", "score"]) for m, scores in d["methods"].items()))
