"""CLV inputs in Spark: per-customer RFM summaries and the compressed cells the fits see.

:func:`purchase_days` turns purchase events into one row per (customer, purchase day) with the
day's revenue; :func:`customer_summary` gives each customer the standard (``lifetimes``)
summary at an as-of date, in DAYS:

* ``frequency`` x = distinct purchase days - 1 (repeat purchase days; several orders on one day
  count once, as ``summary_data_from_transaction_data`` does),
* ``recency_days`` t_x = last purchase day - first purchase day,
* ``age_days`` T = (as_of - 1 day) - first purchase day (the as-of date is exclusive: the last
  observed day is the day before it),
* ``monetary_value`` = mean revenue of the repeat purchase days (the first day left out), null
  when x = 0.

:func:`bgnbd_cells` and :func:`gamma_gamma_cells` group the summaries into cells with a customer
count; only those reach the driver. Their number does not grow with customers:

* BG/NBD cells (x, t_x, T) are whole days with x <= t_x <= T < W (W = days of history), so at
  most W(W+1)(W+2)/6 cells (plus W for x = 0) whatever the number of customers;
* Gamma-Gamma cells (x, m_bar) with m_bar rounded to ``digits`` significant digits (relative
  error <= 5 * 10^-digits), so at most (distinct x) * 9 * 10^(digits-1) per decade of m_bar.

The job refuses (a clear error, before collecting) when the count is above ``clv.max_cells``.
"""
from __future__ import annotations

from datetime import date, timedelta
from typing import Sequence

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

SUMMARY_COLUMNS = ("customer_id", "frequency", "recency_days", "age_days", "monetary_value")


def purchase_days(events: DataFrame, purchase_types: Sequence[str], as_of: date) -> DataFrame:
    """``customer_id, day, revenue``: one row per customer and purchase day before ``as_of``.

    ``events`` needs ``customer_id, event_type, event_date, revenue_usd`` (silver.enriched_events);
    a missing revenue counts as 0 (an order without a price still is a purchase day).
    """
    return (events.where(F.col("event_type").isin(*purchase_types) & (F.col("event_date") < F.lit(as_of))
                         & F.col("customer_id").isNotNull())
            .groupBy("customer_id", F.col("event_date").alias("day"))
            .agg(F.sum(F.coalesce(F.col("revenue_usd").cast("double"), F.lit(0.0))).alias("revenue")))


def customer_summary(days: DataFrame, as_of: date) -> DataFrame:
    """Per customer with a purchase day before ``as_of``: :data:`SUMMARY_COLUMNS` (module docstring)."""
    last_day = F.lit(as_of - timedelta(days=1))
    agg = days.groupBy("customer_id").agg(
        F.min("day").alias("_first"), F.max("day").alias("_last"), F.count(F.lit(1)).alias("_n"),
        F.sum("revenue").alias("_total"), F.min_by("revenue", "day").alias("_first_revenue"))
    x = (F.col("_n") - 1).cast("int")
    return agg.select(
        "customer_id", x.alias("frequency"),
        F.datediff("_last", "_first").cast("int").alias("recency_days"),
        F.datediff(last_day, "_first").cast("int").alias("age_days"),
        F.when(x > 0, (F.col("_total") - F.col("_first_revenue")) / x).alias("monetary_value"))


def rounded_spend(col: str, digits: int):
    """``col`` rounded to ``digits`` significant digits (null and values <= 0 stay as they are)."""
    c = F.col(col)
    scale = F.pow(F.lit(10.0), F.floor(F.log10(c)) - F.lit(digits - 1))
    return F.when(c > 0, F.round(c / scale) * scale).otherwise(c)


def bgnbd_cells(summary: DataFrame) -> DataFrame:
    """``frequency, recency_days, age_days, n``: customers per BG/NBD cell."""
    return summary.groupBy("frequency", "recency_days", "age_days").agg(F.count(F.lit(1)).alias("n"))


def gamma_gamma_cells(summary: DataFrame, digits: int) -> DataFrame:
    """``frequency, m, n``: repeat buyers with a positive spend per (x, rounded m_bar) cell."""
    return (summary.where((F.col("frequency") > 0) & (F.col("monetary_value") > 0))
            .groupBy("frequency", rounded_spend("monetary_value", digits).alias("m"))
            .agg(F.count(F.lit(1)).alias("n")))


def collect_cells(cells: DataFrame, columns: Sequence[str], max_cells: int, what: str) -> dict[str, np.ndarray]:
    """The cells as numpy arrays (``n`` included), after checking their number against ``max_cells``.

    Raises:
        ValueError: more than ``max_cells`` cells (the fit would load them all on the driver).
    """
    rows = cells.limit(max_cells + 1).collect()  # at most max_cells + 1 rows: bounded, not per customer
    if len(rows) > max_cells:
        raise ValueError(
            f"clv: more than {max_cells:,} distinct {what} cells; raise clv.max_cells (the driver holds "
            "them, ~40 bytes each) or shorten clv.history_days (BG/NBD cells grow with the days of "
            "history cubed) or lower clv.spend_significant_digits")
    return {c: np.array([r[c] for r in rows], dtype=float) for c in (*columns, "n")}
