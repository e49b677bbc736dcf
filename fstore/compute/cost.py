"""What one materialization run cost: CPU seconds, bytes read and written, shuffle bytes, peak memory.

Recorded on the run (``materialization_runs.cost``), summed per feature set by ``fstore.ops.cost``.

How each figure is measured, by engine:

* **Spark in process** (a local or cluster master): the run's Spark jobs carry its job group (``run_group``),
  and the driver's status store (the data behind the Spark UI, kept with the UI disabled too) gives each of
  their stages' task metrics once the listener bus has drained: ``cpu_seconds`` is the sum of
  ``executorCpuTime`` (JVM task threads; Python workers' own CPU is not in it), ``executor_run_seconds`` of
  ``executorRunTime``, ``shuffle_read_bytes``/``shuffle_write_bytes`` of the stages' shuffle bytes.
  ``peak_memory_bytes`` is the peak heap of the driver JVM during the run (its heap pools' peaks, reset when
  the run starts) on a local master, where the tasks run in that JVM; on a cluster it is None (executors'
  memory is theirs) and ``peak_execution_memory_bytes`` (Spark's per-stage figure, the largest) stands.
* **Spark Connect**: the tasks run in the server's JVM, out of this process's reach: CPU, shuffle and memory
  are None, listed in ``unmeasured``.
* **DuckDB**: the process's CPU time (``getrusage``: user + system, every thread) over the run, and its peak
  resident memory (``ru_maxrss``, a high-water mark since the process started). Other work the same process
  did meanwhile (a server's requests) is counted too: an upper bound. No shuffle.

Either engine: ``bytes_read`` is the size of the source files the run listed before reading (what it reads at
most; None for sources without a listing), ``bytes_written`` the size of the files its Delta commit added
(None without an offline write, or in Parquet mode).
"""
from __future__ import annotations

import logging
import resource
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fstore.core.settings import Settings

log = logging.getLogger(__name__)


def run_group(run_id: str) -> str:
    """The Spark job group of a run's jobs (what the status store is asked about)."""
    return f"fstore-run-{run_id}"


def _rusage_cpu() -> tuple[float, int]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024  # Linux counts ru_maxrss in KiB


def _is_connect(spark) -> bool:
    return type(spark).__module__.startswith("pyspark.sql.connect")


class RunMeter:
    """Measures one run: ``start()`` before its work, ``finish(...)`` after it, in the run's thread."""

    def __init__(self, engine: str, run_id: str, spark=None) -> None:
        self.engine, self.run_id, self.spark = engine, run_id, spark
        self.began = time.perf_counter()
        self._cpu0 = 0.0
        self._pools: list = []

    def start(self) -> "RunMeter":
        self.began = time.perf_counter()
        if self.engine == "duckdb":
            self._cpu0 = _rusage_cpu()[0]
        elif self.spark is not None and not _is_connect(self.spark) and self._local():
            try:
                pools = self.spark._jvm.java.lang.management.ManagementFactory.getMemoryPoolMXBeans()
                self._pools = [p for p in pools if p.getType().toString() == "Heap memory"]
                for pool in self._pools:
                    pool.resetPeakUsage()
            except Exception:  # noqa: BLE001 - a measurement must never fail a run
                log.debug("could not reset the JVM heap peaks", exc_info=True)
                self._pools = []
        return self

    def _local(self) -> bool:
        try:
            return self.spark.sparkContext.master.startswith("local")
        except Exception:  # noqa: BLE001
            return False

    def finish(self, settings: "Settings", name: str, *, source_read: dict | None, offline_version: int | None) -> dict[str, Any]:
        """The run's cost figures (JSON-ready). Never raises: a figure that could not be read is None."""
        cost: dict[str, Any] = {"engine": self.engine, "seconds": round(time.perf_counter() - self.began, 3),
                                "cpu_seconds": None, "bytes_read": None, "bytes_written": None,
                                "shuffle_read_bytes": None, "shuffle_write_bytes": None, "peak_memory_bytes": None,
                                "unmeasured": []}
        try:
            if self.engine == "duckdb":
                cpu, peak = _rusage_cpu()
                cost.update(cpu_seconds=round(cpu - self._cpu0, 6), peak_memory_bytes=peak,
                            peak_memory_source="ru_maxrss")
            elif self.spark is not None and _is_connect(self.spark):
                cost["engine"] = "spark-connect"
                cost["unmeasured"] = ["cpu_seconds", "shuffle_read_bytes", "shuffle_write_bytes", "peak_memory_bytes"]
            elif self.spark is not None:
                cost.update(self._spark_figures())
        except Exception:  # noqa: BLE001 - a measurement must never fail a run
            log.warning("could not measure the compute cost of run %s", self.run_id, exc_info=True)
        files = (source_read or {}).get("files")
        if files is not None:
            cost["bytes_read"] = int(sum(stat[0] for stat in files.values()))
        if offline_version is not None and settings.storage_format == "delta":
            from fstore.storage.offline_table import commit_added_bytes

            try:
                cost["bytes_written"] = commit_added_bytes(settings, name, offline_version)
            except Exception:  # noqa: BLE001
                log.warning("could not read the Delta commit %s of %s", offline_version, name, exc_info=True)
        return cost

    def _spark_figures(self) -> dict[str, Any]:
        """The task metrics of the run's stages, from the driver's status store."""
        sc = self.spark.sparkContext
        jsc = sc._jsc.sc()
        jsc.listenerBus().waitUntilEmpty()  # task-end events are counted asynchronously
        tracker = sc.statusTracker()
        stage_ids: set[int] = set()
        for job_id in tracker.getJobIdsForGroup(run_group(self.run_id)):
            info = tracker.getJobInfo(job_id)
            if info is not None:
                stage_ids.update(info.stageIds)
        status = jsc.statusStore()
        cpu_ns = run_ms = shuffle_read = shuffle_write = peak_execution = 0
        for stage_id in stage_ids:
            try:
                stage = status.lastStageAttempt(stage_id)
            except Exception:  # noqa: BLE001 - a stage the store no longer keeps (spark.ui.retainedStages)
                continue
            cpu_ns += stage.executorCpuTime()
            run_ms += stage.executorRunTime()
            shuffle_read += stage.shuffleReadBytes()
            shuffle_write += stage.shuffleWriteBytes()
            peak_execution = max(peak_execution, stage.peakExecutionMemory())
        out: dict[str, Any] = {"cpu_seconds": round(cpu_ns / 1e9, 6), "executor_run_seconds": round(run_ms / 1e3, 3),
                               "shuffle_read_bytes": int(shuffle_read), "shuffle_write_bytes": int(shuffle_write),
                               "peak_execution_memory_bytes": int(peak_execution), "spark_stages": len(stage_ids)}
        if self._pools:
            out["peak_memory_bytes"] = int(sum(pool.getPeakUsage().getUsed() for pool in self._pools))
            out["peak_memory_source"] = "jvm_heap"
        return out
