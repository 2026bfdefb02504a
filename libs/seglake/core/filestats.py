"""Which columns Delta keeps file statistics (min/max) of, per seglake's rules: never identifying
columns (an erased person leaves no value in ``_delta_log``), and for the event-sized tables only
the columns their readers filter on. Re-exported by :mod:`seglake.core.tables`, which applies them
when it creates a table."""
from __future__ import annotations

from pyspark.sql import DataFrame

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


def kept_stats_columns(props: dict, fields: list) -> set[str]:
    """Top-level columns Delta keeps min/max statistics of, by the table's properties (``props``,
    as DESCRIBE DETAIL gives them) and its schema's ``fields``."""
    listed = props.get("delta.dataSkippingStatsColumns")
    if listed:
        return {c.strip().strip("`").split(".")[0] for c in listed.split(",") if c.strip()}
    n = int(props.get("delta.dataSkippingNumIndexedCols", 32))
    return {f.name for f in (fields if n < 0 else fields[:n])}


#: The event-sized tables keep min/max statistics only of the columns their readers filter on (time,
#: batch and run): Delta computes the statistics of every indexed column of every row it writes, and
#: on silver.events' ~20 non-identifying columns that was about a third of the write's CPU (1.1M rows
#: in one JVM, warm: 14.7 s with 32 indexed columns, 10.7 s with 7, 8.3 s with none); min/max of
#: page URLs, product ids or UTM values skip no file. Set when a table is created; an existing
#: table keeps its properties.
STATS_COLUMNS_OF = {
    "bronze.events_raw": ("_batch_id", "_ingested_at", "_source_file", "_format"),
    "silver.events": ("event_ts", "_ingested_at", "_batch_id", "_run_id"),
    "silver.enriched_events": ("event_ts", "event_type"),
}
