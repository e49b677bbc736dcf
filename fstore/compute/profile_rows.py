"""Profiles of rows that are not a run's (a saved training set's), with the same code as a run's profile."""
from __future__ import annotations

from typing import Any

from fstore.compiler.dialect import quote
from fstore.definitions.model import FeatureSetVersion


def profile_rows(rows, fsv: FeatureSetVersion, columns: dict[str, str], *, con=None) -> dict[str, Any]:
    """The profile of rows that are not a run's (a training set's): ``rows`` a Spark DataFrame, or a pyarrow
    Table with ``con`` a DuckDB connection; ``columns`` maps each profiled feature to its column in ``rows``.

    The features are profiled without their validation rules (nothing is checked or replaced here)."""
    import dataclasses

    from fstore.compute.validation import validate, validate_arrow
    from fstore.definitions.model import ValidationRules

    keys = [k for e in fsv.entities for k in e.join_keys]
    features = tuple(dataclasses.replace(f, validation=ValidationRules()) for f in fsv.features if f.name in columns)
    plain = dataclasses.replace(fsv, features=features)
    picked = [(columns[f.name], f.name) for f in features]
    present = set(rows.columns if con is None else rows.column_names)
    picked += [(k, k) for k in keys if k in present and k not in columns.values() and k not in columns]
    if con is None:
        selected = rows.selectExpr(*[f"{quote(src)} AS {quote(dst)}" for src, dst in picked])
        return validate(selected, plain, profile=True).profile
    selected = rows.select([src for src, _ in picked]).rename_columns([dst for _, dst in picked])
    return validate_arrow(con, selected, plain, profile=True).profile
