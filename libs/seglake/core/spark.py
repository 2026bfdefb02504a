"""The one SparkSession factory. Nothing here runs at import time."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import TYPE_CHECKING

from seglake.core import jvm
from seglake.core.config import Config, join

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


@contextlib.contextmanager
def session_settings(spark: "SparkSession", settings: dict[str, str]):
    """Set these runtime SQL settings for the block; the previous values (or their being unset)
    come back afterwards, whatever happens in it. Session-wide: a job running beside it in the same
    session sees them too, so use it only for settings that change speed, never results."""
    old = {key: spark.conf.get(key, None) for key in settings}
    for key, value in settings.items():
        spark.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in old.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


class SparkStartError(RuntimeError):
    """The JVM could not start; the message carries the JVM's own reason."""


def session_conf(cfg: Config) -> dict[str, str]:
    """Spark settings shared by both modes (everything but master, memory and jars)."""
    spark_cfg = cfg["spark"]
    conf = dict(DELTA_CONF)
    conf.update({
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.sql.shuffle.partitions": str(spark_cfg["shuffle_partitions"]),
        # a session seglake creates starts in its calendar zone; a notebook's keeps its own
        # (each job sets time.zone for its duration: seglake.core.timezones.job_zone)
        "spark.sql.session.timeZone": cfg.get("time.zone") or "UTC",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        # PySpark 4 sends the Python call site of every DataFrame and Column call to the JVM (for
        # the "== DataFrame ==" context of runtime errors): 13 py4j round trips per F.col instead
        # of 3 (1.2 ms against 0.25 ms here), 5-9% of a stage run on small data. Errors still name
        # the failing expression; a user who wants the Python line back sets it in extra_conf
        "spark.python.sql.dataFrameDebugging.enabled": "false",
        # Delta's VACUUM retention check stays on: only seglake.core.tables.vacuum switches it off,
        # for one call whose caller chose a short retention (maintain's flag, erase's exclusive lease)
    })
    if not spark_cfg.get("codegen", True):
        # no Java generated per query (Janino, then the JIT, compiling classes used for a few rows):
        # on a small lakehouse that compiling is most of a job's CPU; the interpreted path gives
        # the same results (Spark's own test suites run both)
        conf.update({"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN"})
    conf.update({str(k): str(v) for k, v in (spark_cfg.get("extra_conf") or {}).items()})
    return conf


def get_spark(cfg: Config, app_name: str | None = None) -> "SparkSession":
    """Return the SparkSession for ``cfg``, creating it if there is none.

    * ``spark.mode: local`` — embedded Spark (``spark.master``, e.g. ``local[*]``), driver
      memory from config, Delta jars (and ``spark.extra_packages``), Spark's Kafka source and the
      PostgreSQL JDBC driver from the local cache (resolved once with Maven).
    * ``spark.mode: cluster`` — master, resources and jars come from ``spark-submit``
      (``--packages``, see README); only SQL settings are applied here.

    An already active session (a notebook, Databricks, a test fixture) is reused, with the
    shuffle partitions applied to it; its time zone is left as it is (jobs set ``time.zone``
    only while they run, see :mod:`seglake.core.timezones`).
    """
    from pyspark.sql import DataFrame, SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.conf.set("spark.sql.shuffle.partitions", session_conf(cfg)["spark.sql.shuffle.partitions"])
        return active

    spark_cfg = cfg["spark"]
    coords = jvm.coordinates(spark_cfg.get("extra_packages"))  # checked in both modes
    builder = SparkSession.builder.appName(app_name or spark_cfg["app_name"])
    for key, value in session_conf(cfg).items():
        builder = builder.config(key, value)

    if spark_cfg["mode"] == "local":
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Python workers must be this interpreter (the venv with pandas/pyarrow), not
        # whatever `python3` is first on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        jars = jvm.ensure_jars(coords) + jvm.kafka_source_jars() + jvm.postgres_jdbc_jars()
        builder = (
            builder.master(spark_cfg["master"])
            .config("spark.driver.memory", spark_cfg["driver_memory"])
            .config("spark.jars", ",".join(str(j) for j in jars))
            .config("spark.ui.enabled", str(spark_cfg["ui_enabled"]).lower())
            .config("spark.sql.warehouse.dir", join(cfg.path("checkpoints"), "warehouse"))
            .config("spark.driver.extraJavaOptions", "-Dderby.system.home=" + join(cfg.path("checkpoints"), "derby"))
        )
    elif spark_cfg["mode"] != "cluster":
        raise ValueError(f"spark.mode must be 'local' or 'cluster', got {spark_cfg['mode']!r}")

    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # the gateway dies with JAVA_GATEWAY_EXITED; say why
        raise SparkStartError(
            f"Spark could not start ({type(exc).__name__}: {exc}). The JVM's own error is "
            "printed above this message; check Java 17 is installed and the jars in "
            f"{jvm.jar_dir(coords)} are readable."
        ) from exc
    spark.sparkContext.setLogLevel(spark_cfg["log_level"])
    _quiet_small_window_warning(spark)
    spark.sparkContext.setCheckpointDir(join(cfg.path("checkpoints"), "spark"))
    log.info("Spark %s session '%s' on %s", spark.version, spark.sparkContext.appName,
             spark.sparkContext.master)
    return spark


def _quiet_small_window_warning(spark: SparkSession) -> None:
    """Raise WindowExec's logger to ERROR.

    seglake's only unpartitioned windows rank results that are small by construction (the
    top-k journey paths after ``limit``, PageRank of page vertices). Spark warns "No Partition
    Defined for Window operation" for each of them (about 40 lines per journeys run), which
    reads like a fault to users; a literal partition key does not help, Spark folds it away.
    """
    try:
        jvm = spark.sparkContext._jvm
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(
            "org.apache.spark.sql.execution.window.WindowExec", jvm.org.apache.logging.log4j.Level.ERROR)
    except Exception as exc:  # no JVM gateway (e.g. Spark Connect): keep Spark's default
        log.debug("could not quiet WindowExec warnings: %s", exc)


def persist_events(df: "DataFrame") -> "DataFrame":
    """Persist an event-sized DataFrame on local disk (serialized), not in the JVM heap.

    MEMORY_AND_DISK keeps deserialized blocks in the heap until it is full; at 10M events on a
    6g driver that starved execution memory and ended in ``OutOfMemoryError`` (GC thrash)
    before the spill to disk helped. DISK_ONLY costs a little read-back time and never does.
    """
    from pyspark import StorageLevel

    return df.persist(StorageLevel.DISK_ONLY)


def release_checkpoint(df: "DataFrame") -> None:
    """Free the executor blocks of a ``localCheckpoint()``ed frame now.

    ``unpersist()`` does nothing there: the data is an RDD held by the frame's plan (a
    ``LogicalRDD``), not a cache entry, and is otherwise freed only when the JVM collects it.
    """
    plan = df._jdf.queryExecution().logical()
    if plan.getClass().getSimpleName() != "LogicalRDD":
        raise ValueError("release_checkpoint: the frame is not a localCheckpoint() result")
    plan.rdd().unpersist(False)


def stable_layout(df: "DataFrame", *keys: str, rows: int, rows_per_partition: int = 100_000) -> "DataFrame":
    """``df`` hash-partitioned by ``keys`` (default ``customer_id``) into
    ``ceil(rows / rows_per_partition)`` partitions and sorted by them within each.

    Spark ML's randomized steps (k-means|| initialisation, CrossValidator folds, GBT split
    sampling) draw per partition, so their result depends on how the input rows happen to be
    split into files and tasks. Model inputs go through this first: the same rows then give the
    same models whatever the file layout of the table they came from, the shuffle settings or
    the number of cores. The partition count follows the data (model inputs are one row per
    customer, small next to events): few partitions for small data, where each of the hundreds
    of small jobs of a fit pays per task, and more as customers grow.
    """
    keys = keys or ("customer_id",)
    n = max(1, -(-int(rows) // int(rows_per_partition)))
    return df.repartition(n, *keys).sortWithinPartitions(*keys)


def literal_row(spark: SparkSession, values: tuple, ddl: str) -> "DataFrame":
    """A one-row DataFrame of ``values`` with the schema ``ddl``, built from literals.

    For bookkeeping rows (a lease, a run-log row): ``spark.createDataFrame([row])`` plans a scan of
    a parallelized RDD of pickled rows, which took twice as long to append to Delta (0.65 s vs
    0.32 s per one-row append, local[2]). A literal projection is a local plan of one row, in one
    partition (``spark.range(1)`` has one per core: each append then also wrote an empty Parquet
    file in a task of its own). ``None`` gives a typed null; a ``dict`` for a map column a map of
    its items.
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import MapType, _parse_datatype_string

    schema = _parse_datatype_string(ddl)
    if len(values) != len(schema.fields):
        raise ValueError(f"literal_row: {len(values)} values for {len(schema.fields)} columns of {ddl!r}")
    cols = []
    for value, f in zip(values, schema.fields):
        if isinstance(f.dataType, MapType) and value is not None:
            col = F.create_map(*[F.lit(part) for item in dict(value).items() for part in item])
        else:
            col = F.lit(value)
        cols.append(col.cast(f.dataType).alias(f.name))
    return spark.range(0, 1, 1, 1).select(*cols)
