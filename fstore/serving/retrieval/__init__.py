"""Historical retrieval: point-in-time-correct training data, training sets and batch retrieval jobs.

* ``get_historical_features`` — entity rows with timestamps → features as they
  were at each row's time (``fstore.serving.retrieval.historical`` documents exactly
  which value each kind of feature takes);
* ``recreate_training_set`` — a saved retrieval, again, pinned to its versions;
* ``start_batch_retrieval`` — a large entity source → a background job writing
  Delta or Parquet.

The Spark building blocks: ``pit`` (the one-shuffle as-of join), ``windows``
(windows evaluated at label time), ``entities`` (the entity frame). With
``COMPUTE_ENGINE=duckdb``, ``historical_duckdb`` answers the same retrievals in
this process (its as-of join and windows), reading the offline store's files
through ``fstore.storage.offline_arrow``.
"""
from __future__ import annotations

from fstore.serving.retrieval.batch import run_batch_job, start_batch_retrieval
from fstore.serving.retrieval.plan import RetrievalResult, output_name
from fstore.serving.retrieval.request import get_historical_features
from fstore.serving.retrieval.training import recreate_training_set

__all__ = ["RetrievalResult", "get_historical_features", "output_name", "recreate_training_set",
           "run_batch_job", "start_batch_retrieval"]
