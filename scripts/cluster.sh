#!/usr/bin/env bash
# A standalone Spark cluster on this machine: a master and two 1-core workers (JVMs of their own, from pyspark's
# bin/spark-class), everything on 127.0.0.1. Thin: the work is fstore/engine/cluster.py (the tests use it too).
#
#   eval "$(scripts/cluster.sh up)"    # prints: export SPARK_MASTER=spark://127.0.0.1:PORT  SPARK_LOCAL_IP=127.0.0.1
#   scripts/cluster.sh status
#   scripts/cluster.sh down
#
# Options after the action: --dir (state, logs; default ~/.cache/fstore/spark-cluster), --workers, --cores,
# --memory, --timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
exec "$PY" -m fstore.engine.cluster "$@"
