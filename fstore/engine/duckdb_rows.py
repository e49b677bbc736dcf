"""A compiled query over a few rows given as statement parameters: push's computation on DuckDB.

``fstore.engine.duckdb.run_compiled`` registers the rows as an Arrow view and runs the query through the
relation API, which binds the statement, then runs it: ~4 ms of a single-row push, where the query itself
takes well under 1 ms. Here the rows travel as one parameter list per source column
(``SELECT UNNEST($1::BIGINT[]) AS "user_id", …``, typed as DuckDB's Arrow scan types those columns) and
the statement runs in one ``execute``; the result is fetched as Python rows and built into the Arrow schema
the same statement gave the first time (``run_rows``). Measured on one row (bench/push_latency.py and
README-NOTES.md): about half the time of the Arrow view.

Only columns whose values round-trip exactly through Python take this path (integers, floats, booleans,
strings, dates, microsecond timestamps; in and out): ``parameter_source`` answers None otherwise and the
caller runs ``run_compiled`` as before. Python features are never computed here.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from fstore.compiler.dialect import quote
from fstore.engine.duckdb import SOURCE_VIEW, _strip_header, ident, query_error, to_duckdb

if TYPE_CHECKING:
    import pyarrow

    from fstore.compiler import CompiledQuery
    from fstore.definitions.model import FeatureSetVersion


def _parameter_type(arrow_type) -> str | None:
    """The DuckDB type an Arrow scan gives ``arrow_type``, for the types whose Python values are exact."""
    import pyarrow as pa

    simple = {pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER", pa.int64(): "BIGINT",
              pa.uint8(): "UTINYINT", pa.uint16(): "USMALLINT", pa.uint32(): "UINTEGER", pa.uint64(): "UBIGINT",
              pa.float32(): "FLOAT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN", pa.string(): "VARCHAR",
              pa.large_string(): "VARCHAR", pa.date32(): "DATE"}
    if arrow_type in simple:
        return simple[arrow_type]
    if pa.types.is_timestamp(arrow_type) and arrow_type.unit == "us":  # ns would lose digits in a datetime
        return "TIMESTAMPTZ" if arrow_type.tz is not None else "TIMESTAMP"
    return None


def exact_output(schema: "pyarrow.Schema") -> bool:
    """True when every column of a result in ``schema`` converts from DuckDB's Python values without loss."""
    import pyarrow as pa

    return all(_parameter_type(f.type) is not None or pa.types.is_null(f.type) for f in schema)


def parameter_source(schema: "pyarrow.Schema") -> str | None:
    """A subquery giving the rows of ``schema`` from one parameter list per column (``$1`` the first), or None
    when a column's type has no exact parameter form."""
    types = [_parameter_type(f.type) for f in schema]
    if not schema.names or None in types:
        return None
    columns = ", ".join(f"UNNEST(${i}::{t}[]) AS {ident(f.name)}" for i, (f, t) in enumerate(zip(schema, types), 1))
    return f"(SELECT {columns})"


def compiled_statement(compiled: "CompiledQuery", source: str) -> str:
    """The DuckDB statement of ``compiled`` (no Python features) reading its source rows from ``source`` (a
    parenthesised query), as ``run_compiled`` runs it over its source view."""
    wide_sql = compiled.wide_sql.replace(f"`{compiled.source_view}`", quote(SOURCE_VIEW))
    projection = to_duckdb("SELECT " + ", ".join(compiled.projection) + " FROM wide")
    return f"WITH {ident(SOURCE_VIEW)} AS {source}, wide AS ({to_duckdb(_strip_header(wide_sql))}) {projection}"


def run_rows(con, fsv: "FeatureSetVersion", statement: str, table: "pyarrow.Table",
             schema: "pyarrow.Schema | None" = None) -> "pyarrow.Table":
    """``statement`` (from ``compiled_statement`` over ``parameter_source(table.schema)``) over ``table``'s rows.

    ``schema`` is the result schema an earlier run of the same statement gave: with it (and ``exact_output``)
    the rows are fetched as Python values and built in it; without, DuckDB's Arrow output is returned."""
    import duckdb
    import pyarrow as pa

    values = [column.to_pylist() for column in table.columns]
    try:
        if schema is None:
            return con.sql(statement, params=values).to_arrow_table()
        rows = con.execute(statement, values).fetchall()
    except duckdb.Error as exc:
        raise query_error(fsv, exc) from None
    return pa.Table.from_pydict({f.name: [r[i] for r in rows] for i, f in enumerate(schema)}, schema=schema)
