"""Serving commands: online lookups and point-in-time training data."""
from __future__ import annotations

import re
from pathlib import Path

import click

from fstore.cli import main
from fstore.cli.output import CliState, emit, json_option, pass_cli, table, to_json
from fstore.core.errors import AlreadyExists, InvalidDefinition, NotFound


def _names(text: str, option: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise InvalidDefinition(f"{option} needs at least one name", field=option.lstrip("-"))
    return names


def _entity_row(text: str) -> dict[str, str]:
    """``user_id=1`` or ``user_id=1,merchant_id=7`` (a compound key) as one entity row."""
    row: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise InvalidDefinition(f"--entity {text!r} must be KEY=VALUE[,KEY=VALUE…]", field="entity")
        row[key.strip()] = value.strip()
    return row


def _online_text(answer: dict) -> str:
    """One row per entity, one column per feature; a value that is not present shows its status."""
    statuses = answer.get("statuses", {})
    rows, columns = [], ["entity"]
    for entity, values in answer.get("features", {}).items():
        row = {"entity": entity}
        for name, value in (values or {}).items():
            status = statuses.get(entity, {}).get(name, "present")
            if status == "present":
                row[name] = value
            else:  # a missing or expired value is null or the feature's default: say which
                row[name] = f"({status})" if value is None else f"{value} ({status}, default)"
            if name not in columns:
                columns.append(name)
        rows.append(row)
    meta = answer.get("metadata", {})
    summary = ", ".join(f"{k}={meta[k]}" for k in ("latency_ms", "cache_hit", "degraded") if k in meta)
    return table(rows, columns) + (f"\n{summary}" if summary else "")


_RESULT_FILE = re.compile(r"^(part-.*|_SUCCESS|_committed_.*|_started_.*|\..*\.crc)$")
OUTPUT_HELP = "Where to write: FILE.csv, FILE.parquet, or a folder (Parquet)."
OVERWRITE_HELP = "Replace an existing output file, or a folder that holds only a result's Parquet part files."


def check_output(output: str, overwrite: bool) -> Path:
    """Where a result may be written: never over something that exists unless asked, never over a
    folder holding anything but a result's part files (a store, a home folder), whatever is asked."""
    if not output.strip():
        raise InvalidDefinition("--output is empty; name a FILE.csv, FILE.parquet or a folder", field="output")
    out = Path(output)
    if not out.exists():
        return out
    if not overwrite:
        raise AlreadyExists(f"--output {out} already exists; pass --overwrite to replace it", field="output")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if not _RESULT_FILE.match(p.name))
        if others:
            raise AlreadyExists(f"--output {out} is a folder holding files a result did not write ({', '.join(others[:3])}"
                                f"{', …' if len(others) > 3 else ''}); only a folder of Parquet part files is replaced",
                                field="output")
    elif out.suffix not in (".csv", ".parquet"):
        raise AlreadyExists(f"--output {out} is an existing file that is not .csv or .parquet; it is not replaced",
                            field="output")
    return out


def write_result(result, output: str) -> tuple[Path, int]:
    """Write a retrieval result (to an output ``check_output`` allowed): a CSV or Parquet file (pandas), or a
    Parquet folder (Spark; pyarrow on DuckDB)."""
    out = Path(output)
    if out.suffix in (".csv", ".parquet"):
        frame = result.to_df()
        out.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out, index=False) if out.suffix == ".csv" else frame.to_parquet(out, index=False)
        return out, len(frame)
    if getattr(result, "arrow", None) is not None:  # computed in this process: no Spark session for the write
        import shutil

        import pyarrow.parquet as pq

        from fstore.serving.retrieval.plan import utc_timestamps

        if out.is_dir():
            shutil.rmtree(out)  # holds only part files (check_output): replaced, as Spark's overwrite replaces it
        out.mkdir(parents=True)
        pq.write_table(utc_timestamps(result.arrow), out / "part-00000.parquet")
        return out, result.arrow.num_rows
    frame = result.to_spark()
    frame.write.mode("overwrite").parquet(str(out))
    # Count what was written (Parquet footers) rather than running the retrieval a second time.
    return out, frame.sparkSession.read.parquet(str(out)).count()


@main.command("get-online-features")
@click.option("--features", required=True, help="Comma-separated: name, set:name or set@version:name.")
@click.option("--entity", "entities", multiple=True, required=True,
              help="KEY=VALUE (repeat for more entities; KEY=V,KEY2=V2 for a compound key).")
@click.option("--feature-sets", help="Comma-separated sets to look names up in.")
@json_option
@pass_cli
def get_online_features(cli: CliState, features: str, entities: tuple[str, ...], feature_sets: str | None) -> None:
    """Latest feature values for some entities, from the online store."""
    answer = cli.store.get_online_features(features=_names(features, "--features"),
                                           entities=[_entity_row(e) for e in entities],
                                           feature_sets=_names(feature_sets, "--feature-sets") if feature_sets else None)
    emit(cli, answer, _online_text)


def _read_entities(path: str):
    """The entity rows of a CSV or Parquet file; a file pandas cannot read is an error naming it."""
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise NotFound(f"entities file {path} does not exist", field="entities")
    if p.suffix != ".csv" and p.suffix != ".parquet" and not p.is_dir():
        raise InvalidDefinition(f"entities file {path}: use a .csv or .parquet file (or a Parquet folder)", field="entities")
    try:
        return pd.read_csv(p) if p.suffix == ".csv" else pd.read_parquet(p)
    except pd.errors.EmptyDataError:
        raise InvalidDefinition(f"entities file {path}: the file is empty (no header, no rows)", field="entities") from None
    except (ValueError, OSError) as exc:  # ParserError, UnicodeDecodeError, Arrow's errors: their first line
        text = str(exc).strip()
        detail = text.splitlines()[0] if text else type(exc).__name__
        raise InvalidDefinition(f"entities file {path}: {detail}", field="entities") from None


@main.command("get-historical-features")
@click.option("--entities", "entities_path", required=True, help="A CSV or Parquet file of entity keys and timestamps.")
@click.option("--features", required=True, help="Comma-separated: name, set:name or set@version:name.")
@click.option("--output", required=True, help=OUTPUT_HELP)
@click.option("--overwrite", is_flag=True, help=OVERWRITE_HELP)
@click.option("--feature-sets", help="Comma-separated sets to look names up in.")
@click.option("--as-of", help="Read the offline store as it was: a Delta version number or a timestamp.")
@click.option("--timestamp-column", help="The entity file's timestamp column (default: found by name).")
@click.option("--save-as", help="Record the result as a training set of this name.")
@json_option
@pass_cli
def get_historical_features(cli: CliState, entities_path: str, features: str, output: str, overwrite: bool,
                            feature_sets: str | None, as_of: str | None, timestamp_column: str | None,
                            save_as: str | None) -> None:
    """Point-in-time-correct features for each row of an entity file (training data)."""
    check_output(output, overwrite)
    entity_df = _read_entities(entities_path)
    as_of_value: int | str | None = int(as_of) if as_of and as_of.isascii() and as_of.isdigit() else as_of
    try:
        result = cli.store.get_historical_features(
            entity_df=entity_df, features=_names(features, "--features"),
            feature_sets=_names(feature_sets, "--feature-sets") if feature_sets else None,
            as_of=as_of_value, timestamp_column=timestamp_column, save_as=save_as, actor=cli.actor)
    except InvalidDefinition as exc:
        if not exc.message.startswith("entity_df"):
            raise
        # What is wrong with the entity rows is wrong with the file: say which.
        raise InvalidDefinition(f"entities file {entities_path}: {exc.message}", field=exc.field) from None
    out, rows = write_result(result, output)
    summary = {"output": str(out), "rows": rows, "entities": len(entity_df)}
    click.echo(to_json(summary) if cli.as_json else f"wrote {rows} rows to {out}")
