"""The registry: every definition, version, run, job and training set, in SQLite or PostgreSQL.

Owns the schema (``models``, Alembic ``migrations``, ``db``), the repositories
(``repo`` for entities, sets and features with their versions; ``runs``,
``jobs``, ``training_sets``; ``lookup`` and ``search``), ``apply`` (YAML
definitions applied declaratively), ``references`` (feature names resolved to
set versions), ``snapshot`` (the copy online serving reads without a query) and
``guard`` (a database that stops or freezes fails fast). May import ``storage``,
``engine``, ``compiler``, ``definitions`` and ``core``.
"""
