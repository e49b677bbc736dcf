"""Spark's Python daemon for local sessions, importing pyspark from site-packages rather than a zip.

Spark puts ``pyspark.zip`` and py4j's zip first on its Python workers' path. Python
cannot cache bytecode for modules imported from a zip, so every daemon and worker
process compiled pyspark's sources again: 2.5 s of CPU in a cold 1M-row
materialization on 2 cores (py-spy). The same pyspark is installed in this
interpreter's site-packages with compiled ``.pyc`` files, so this daemon moves the
zips to the end of the path and then runs Spark's own daemon. ``get_spark`` names
it in ``spark.python.daemon.module`` for local masters, whose workers run this
interpreter.
"""
import os
import sys

_zips = [entry for entry in sys.path
         if os.path.basename(entry) == "pyspark.zip" or (os.path.basename(entry).startswith("py4j-")
                                                         and entry.endswith("-src.zip"))]
sys.path[:] = [entry for entry in sys.path if entry not in _zips] + _zips

from pyspark import daemon  # noqa: E402  (the path must be set first)

if __name__ == "__main__":
    daemon.manager()
