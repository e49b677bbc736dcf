"""fstore: a feature store whose heavy work runs on Apache Spark."""
from __future__ import annotations

__version__ = "0.1.0"
