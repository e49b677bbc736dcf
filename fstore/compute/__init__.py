"""Compute: the jobs that turn definitions into stored features.

Owns ``materialize`` (one run: read, compute, validate, write offline then online,
recorded in the registry), ``backfill`` (a long range in chunks), ``scheduler``
(cron schedules), ``source_read`` (which source files each run read, late data),
``validation`` (a set's rules over computed rows), ``reload`` (online values
rebuilt from the offline table) and ``vacuum`` (old offline files). May import
``ops``, ``registry``, ``storage``, ``engine``, ``compiler``, ``definitions``,
``core``; receives the store as a ``StoreContext``.
"""
