# `make demo`: set up (.venv) and run the main job end to end on the embedded defaults.
# `make test`: set up and run the whole suite. `make bench`: the side-by-side benchmark.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= $(CURDIR)/.demo

.PHONY: setup services demo test test-unit bench cluster-up cluster-down clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# The jars Spark needs beyond pyspark's (delta-spark, hadoop-aws + AWS SDK, spark-sql-kafka + its deps) and a Kafka
# broker's jars (for the streaming tests and bench) into ~/.cache/fstore/jars, once;
# goes on without them when Maven or the network is missing. Then the class archive (which dumps Delta's classes too).
setup: $(VENV)/.installed
	$(PY) -m fstore.engine.jars
	$(PY) -m fstore.engine.class_archive

# PostgreSQL and Redis on 127.0.0.1 for the integration tests (installed from Debian's packages when absent).
services:
	bash scripts/services.sh
	bash scripts/browser.sh

demo: setup
	STORAGE_PATH=$(DEMO_DIR) $(PY) -m fstore.demo

test: setup services
	$(PY) -m pytest -p no:cacheprovider tests

test-unit: setup
	$(PY) -m pytest -p no:cacheprovider tests/unit

bench: setup
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench
	$(PY) -m bench --wide --sweep --calls 3
	$(PY) bench/online_cache.py --own-redis  # ONLINE_CACHE off / ttl / tracking: hit rate and p99

# A standalone Spark cluster on 127.0.0.1 (a master, two 1-core workers): `eval "$$(make -s cluster-up)"` sets
# SPARK_MASTER (and SPARK_LOCAL_IP) for the commands that follow; `make cluster-down` stops it. It uses the jars
# and class archive of `make setup` when they are there.
cluster-up: $(VENV)/.installed
	@PYTHON=$(PY) bash scripts/cluster.sh up

cluster-down:
	@PYTHON=$(PY) bash scripts/cluster.sh down

clean:
	rm -rf $(DEMO_DIR) spark-warehouse metastore_db derby.log
