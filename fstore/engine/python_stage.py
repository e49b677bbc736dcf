"""Python features (``module:function``) applied to one pandas batch, whatever the engine.

Spark runs ``apply_batch`` on the executors (``mapInPandas``); the DuckDB engine runs it
in-process over Arrow record batches. The function sees the source's columns and every
SQL feature under its own name (a feature shadows a source column of the same name) and
returns a Series of the batch's length, or a DataFrame (the column named like the
feature, else its first column). Later python features see earlier ones.
"""
from __future__ import annotations

import importlib
from typing import Callable

from fstore.compiler import CompiledQuery, internal_column
from fstore.core.errors import ComputeError, InvalidDefinition


_NUMERIC_TYPES = ("DOUBLE", "BIGINT")


def load_python(spec: str, *, feature: str, settings) -> Callable:
    """The callable named ``module:function``, imported only if PYTHON_FEATURE_MODULES allows the module
    (checked first: a refused module is never imported); an import failure names the feature."""
    from fstore.definitions.guard import check_defined_in_allowed, check_python

    module_name, func_name = check_python(settings, spec, feature=feature)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure makes the definition unusable
        raise InvalidDefinition(f"feature {feature}: python module {module_name!r} cannot be imported: "
                                f"{exc}", field="python") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise InvalidDefinition(f"feature {feature}: {spec!r} is not a callable in module {module_name}", field="python")
    check_defined_in_allowed(settings, func, spec, feature=feature)
    return func


def load_functions(compiled: CompiledQuery, settings) -> list[tuple[str, Callable, str]]:
    """(feature name, callable, Spark type) per python feature; a bad ``module:function``, or a module that
    PYTHON_FEATURE_MODULES does not allow (refused before any import), fails here, naming the feature."""
    from fstore.definitions.guard import check_python

    for name, spec, _ in compiled.python_features:
        check_python(settings, spec, feature=name)
    return [(name, load_python(spec, feature=name, settings=settings), spark_type)
            for name, spec, spark_type in compiled.python_features]


def apply_batch(pdf, funcs: list[tuple[str, Callable, str]]):
    """``pdf`` (the wide frame's columns) with each python feature's internal column appended."""
    import pandas as pd

    internal = {c: c[len("__f_"):] for c in pdf.columns if c.startswith("__f_")}
    hidden = [c for c in pdf.columns if c.startswith("__fs_")]
    shadowed = [v for v in internal.values() if v in pdf.columns]
    shown = pdf.drop(columns=hidden + shadowed).rename(columns=internal)
    for name, func, spark_type in funcs:
        result = func(shown.copy())
        if isinstance(result, pd.DataFrame):
            result = result[name] if name in result.columns else result.iloc[:, 0]
        if not isinstance(result, pd.Series) or len(result) != len(pdf):
            raise ComputeError(f"python feature {name} returned {type(result).__name__} of length "
                               f"{len(result) if hasattr(result, '__len__') else '?'}; expected a Series of {len(pdf)} rows")
        values = result.reset_index(drop=True)
        if spark_type.upper() in _NUMERIC_TYPES and not pd.api.types.is_numeric_dtype(values.dtype) and values.notna().any():
            # a cast would turn each value into NULL without a word
            sample = values[values.notna()].iloc[0]
            raise ComputeError(f"python feature {name} returned {type(sample).__name__} values such as {sample!r}; "
                               f"its data_type needs numbers ({spark_type})")
        pdf[internal_column(name)] = values.values
        shown[name] = values.values
    return pdf
