"""Serve: online features in milliseconds and point-in-time-correct training data.

Owns ``online`` (``get_online_features``: the online store read, the registry
snapshot it resolves names with, caches and degraded answers) and ``retrieval``
(historical retrieval on Spark or DuckDB, training sets, batch retrieval jobs).
May import everything below it (``compute`` and down); only the ``FeatureStore``
facade, the API and the CLI import it.
"""
