"""Observe and protect: API keys and grants, the audit log, usage, metrics and monitoring.

Owns ``auth`` (keys, roles, per-set grants), ``audit`` (who changed or read what),
``usage`` (which features are served and to whom), ``metrics`` (Prometheus
figures) and ``monitoring`` (freshness, statistics, drift). May import
``registry``, ``storage`` and below; the jobs and serving above record into it.
"""
