"""JSON rendering shared by the views: timestamps as ISO 8601 with ``Z``, NaN as null, frames as rows.

Every timestamp in fstore is UTC; a naive ``datetime`` is read as UTC and an aware
one is converted, so clients always get the same ``…Z`` spelling.
"""
from __future__ import annotations

import math
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any


def iso_utc(value: datetime) -> str:
    """``2024-01-01T00:00:00Z`` (microseconds kept when present)."""
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.isoformat() + "Z"


def to_json_value(o: Any) -> Any:
    """A JSON-ready value for the types the library and pandas hand back; TypeError for anything else."""
    if isinstance(o, datetime):
        return iso_utc(o)
    if isinstance(o, date):
        return o.isoformat()
    if isinstance(o, Decimal):
        return float(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    item = getattr(o, "item", None)  # numpy scalars
    if callable(item):
        return _clean(item())
    tolist = getattr(o, "tolist", None)  # numpy arrays
    if callable(tolist):
        return [_clean(v) for v in tolist()]
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def _clean(value: Any) -> Any:
    """One cell of a frame as JSON: NaN/NaT/None → null, timestamps → ISO ``Z``, arrays → lists."""
    if value is None:
        return None
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, datetime):  # pandas Timestamp is a datetime; NaT is caught below
        if value != value:  # NaT
            return None
        return iso_utc(value.to_pydatetime() if hasattr(value, "to_pydatetime") else value)
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    try:
        if value != value:  # NaT, pandas NA, numpy nan
            return None
    except (TypeError, ValueError):
        pass
    if type(value).__name__ in {"NaTType", "NAType"}:
        return None
    return _clean(to_json_value(value))


def frame_to_json(df: Any, metadata: dict | None = None) -> dict:
    """A pandas DataFrame as ``{"columns", "data", "metadata"}``, row order kept."""
    columns = [str(c) for c in df.columns]
    data = [[_clean(v) for v in row] for row in df.itertuples(index=False, name=None)]
    return {"columns": columns, "data": data, "metadata": {"rows": len(data), **(metadata or {})}}
