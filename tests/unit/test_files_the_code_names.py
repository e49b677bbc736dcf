"""Files the library finds next to its own source exist (a module moved to another package must follow)."""
from fstore.compute.materialize import JOB_SCRIPT as RUN_JOB
from fstore.demo import EXAMPLES
from fstore.engine.class_archive import DEMO_SCRIPT
from fstore.engine.spark_env import DEFAULTS_FILE, LOG4J_FILE
from fstore.registry.db import MIGRATIONS
from fstore.serving.retrieval.batch import JOB_SCRIPT as BATCH_JOB


def test_every_file_the_library_names_exists():
    for path in (RUN_JOB, BATCH_JOB, EXAMPLES, DEMO_SCRIPT, DEFAULTS_FILE, LOG4J_FILE, MIGRATIONS):
        assert path.exists(), path
    assert RUN_JOB.name == "materialize.py" and BATCH_JOB.name == "retrieve.py"
