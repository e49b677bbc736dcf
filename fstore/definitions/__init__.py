"""Define: what a user declares, checked before anything runs.

Owns ``model`` (entities, sources, features, feature sets as plain domain objects,
parsed and validated), ``guard`` (where sources may be read and written, which
Python modules features may call), ``secrets`` (source secrets sealed with the
deployment's key and redacted on the way out) and ``examples`` (the spec's
example data). May import ``fstore.core`` only.
"""
