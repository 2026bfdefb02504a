"""The thin I/O layer: every Delta read and write of the pipeline goes through here.

Tables are addressed by contract name (``silver.events``) and live at
``<lakehouse>/<layer>/<name>/``. Writes are idempotent by construction: MERGE on keys,
``replaceWhere`` on the slice being rebuilt, or a full overwrite of a derived table.
"""
from __future__ import annotations

import logging
from typing import Iterable, Sequence

from pyspark.sql import DataFrame, SparkSession

from seglake.core.config import Config

log = logging.getLogger(__name__)


def exists(spark: SparkSession, cfg: Config, table: str) -> bool:
    from delta.tables import DeltaTable
    return DeltaTable.isDeltaTable(spark, cfg.table_path(table))


def read(spark: SparkSession, cfg: Config, table: str, version: int | None = None) -> DataFrame:
    """Read a table (optionally an older version). A missing table is a clear error."""
    if not exists(spark, cfg, table):
        raise FileNotFoundError(
            f"table {table} does not exist yet at {cfg.table_path(table)}: run the job that builds it first"
        )
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(cfg.table_path(table))


def version(spark: SparkSession, cfg: Config, table: str) -> int | None:
    """Current Delta version of a table, or None when it does not exist."""
    if not exists(spark, cfg, table):
        return None
    from delta.tables import DeltaTable
    row = DeltaTable.forPath(spark, cfg.table_path(table)).history(1).select("version").first()
    return int(row["version"]) if row else None


#: Columns that identify a person. Delta keeps min/max statistics of indexed columns in
#: its transaction log, which VACUUM never removes; so these are never indexed, and an
#: erased person leaves no value behind in ``_delta_log`` either.
IDENTIFYING_COLUMNS = frozenset({
    "user_id", "anonymous_id", "device_id", "email", "phone", "email_hash", "phone_hash",
    "identifier", "customer_id", "src", "dst", "_raw", "event_id", "event_key", "session_id",
    "session_key", "properties", "reason",
})
_STATS_TYPES = ("string", "int", "bigint", "smallint", "tinyint", "double", "float", "date",
                "timestamp", "decimal")


def stats_columns(df: DataFrame) -> list[str]:
    """Columns Delta may keep statistics for: atomic types, nothing identifying."""
    return [f.name for f in df.schema.fields
            if f.name not in IDENTIFYING_COLUMNS and not f.name.endswith("_hash")
            and f.dataType.simpleString().startswith(_STATS_TYPES)]


def _creation_options(df: DataFrame, cfg: Config, table: str, partition_by: Sequence[str]) -> dict:
    """Writer options for a table's first write: statistics only for non-identifying columns."""
    if exists(df.sparkSession, cfg, table):
        return {}
    cols = [c for c in stats_columns(df) if c not in partition_by]
    if cols:
        return {"delta.dataSkippingStatsColumns": ",".join(f"`{c}`" for c in cols)}
    return {"delta.dataSkippingNumIndexedCols": "0"}


def append(df: DataFrame, cfg: Config, table: str, partition_by: Sequence[str] = ()) -> None:
    writer = df.write.format("delta").mode("append").options(**_creation_options(df, cfg, table, partition_by))
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(cfg.table_path(table))


def overwrite(df: DataFrame, cfg: Config, table: str, partition_by: Sequence[str] = (),
              replace_where: str | None = None) -> None:
    """Overwrite the table, or only the rows matching ``replace_where``."""
    writer = df.write.format("delta").mode("overwrite").options(**_creation_options(df, cfg, table, partition_by))
    if replace_where:
        writer = writer.option("replaceWhere", replace_where)
    else:
        writer = writer.option("overwriteSchema", "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(cfg.table_path(table))


def merge(spark: SparkSession, df: DataFrame, cfg: Config, table: str, keys: Iterable[str],
          partition_by: Sequence[str] = (), update: bool = False, extra_condition: str | None = None) -> None:
    """Insert rows whose ``keys`` are new (and update matches when ``update``).

    The first write creates the table. ``extra_condition`` (on ``t.``/``s.``) can prune
    the target, e.g. to the partitions the batch touches.
    """
    keys = list(keys)
    if not keys:
        raise ValueError("merge needs at least one key column")
    if not exists(spark, cfg, table):
        append(df, cfg, table, partition_by)
        return
    from delta.tables import DeltaTable
    cond = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
    if extra_condition:
        cond = f"({extra_condition}) AND {cond}"
    builder = DeltaTable.forPath(spark, cfg.table_path(table)).alias("t").merge(df.alias("s"), cond)
    if update:
        builder = builder.whenMatchedUpdateAll()
    builder.whenNotMatchedInsertAll().execute()
