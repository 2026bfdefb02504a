"""Customer-value columns for segment rules (CLV tiers such as ``high_value_at_risk``).

A rule may name the columns of :data:`VALUE_RULE_COLUMNS` beside the feature columns; they come
from gold.customer_value (``seglake run clv``, which ``run all`` runs before segments) at the
same as-of date, joined on customer_id. A customer without a value row (no purchase yet) has
nulls there, so a comparison on them is false and the customer is not in such a segment.

When gold.customer_value has no rows for the as-of date, the segments whose rules need these
columns are left out of the run with a warning and named in the summary (``skipped``); every
other segment is evaluated as usual.
"""
from __future__ import annotations

import logging
from datetime import date

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from seglake.core import tables
from seglake.core.contracts import CUSTOMER_VALUE
from seglake.stages.segments.model import Segment
from seglake.stages.segments.rules import rule_columns

log = logging.getLogger(__name__)

VALUE_RULE_COLUMNS = ("p_alive", "expected_purchases_30d", "expected_purchases_90d", "expected_purchases_365d",
                      "expected_spend", "clv")


def rule_schema(features_schema: T.StructType) -> T.StructType:
    """The columns a rule may name: the features' and :data:`VALUE_RULE_COLUMNS` (doubles)."""
    present = set(features_schema.fieldNames())
    extra = [T.StructField(c, T.DoubleType(), True) for c in VALUE_RULE_COLUMNS if c not in present]
    return T.StructType([*features_schema.fields, *extra])


def needs_value(segment: Segment) -> bool:
    """Does the segment's rule or one of its quantile thresholds use a customer-value column?"""
    cols = set(rule_columns(segment, list(VALUE_RULE_COLUMNS)))
    cols |= {t.of for t in segment.thresholds.values() if t.type == "quantile"} & set(VALUE_RULE_COLUMNS)
    return bool(cols)


def with_value(spark: SparkSession, cfg, features: DataFrame, segments: list[Segment],
               as_of: date) -> tuple[DataFrame, list[Segment], list[str]]:
    """(features + the value columns when a segment needs them, the segments to evaluate, the
    names of the segments skipped because gold.customer_value has no rows for ``as_of``)."""
    wanting = [s for s in segments if needs_value(s)]
    if not wanting:
        return features, segments, []
    value = None
    if tables.exists(spark, cfg, CUSTOMER_VALUE):
        value = tables.read(spark, cfg, CUSTOMER_VALUE).where(F.col("as_of_date") == F.lit(as_of))
        if value.limit(1).count() == 0:
            value = None
    if value is None:
        skipped = [s.name for s in wanting]
        log.warning("segments %s use customer-value columns but %s has no rows for %s: they are left out of "
                    "this run; run `seglake run clv --as-of %s` first", ", ".join(skipped), CUSTOMER_VALUE,
                    as_of, as_of)
        return features, [s for s in segments if s not in wanting], skipped
    cols = [c for c in VALUE_RULE_COLUMNS if c in value.columns and c not in features.columns]
    return features.join(value.select("customer_id", *cols), "customer_id", "left"), segments, []
