"""The foundation every layer stands on: errors, settings and the store context.

Owns ``errors`` (the one exception tree, each error with its HTTP status and exit
code), ``settings`` (``Settings.from_env``: every environment variable, checked)
and ``context`` (``StoreContext``: what the layers below the ``FeatureStore``
facade may ask of a store — settings, a registry transaction, Spark, the online
store, the secret box). Imports nothing of fstore's.
"""
