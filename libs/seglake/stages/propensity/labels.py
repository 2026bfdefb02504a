"""Propensity labels and snapshots: point-in-time dates, labels and features without leakage.

:func:`snapshot_dates` places the evaluation snapshot one horizon before the scoring date and
the training snapshots before it, :func:`build_labels` labels (customer, snapshot) rows from
the events of the following horizon (churn, purchase), :func:`drop_censored` leaves out the
snapshots whose label window holds a consent withdrawal (no events then means no consent, not
churn). The features of each snapshot come from :mod:`.snapshots` (point in time).
"""
from __future__ import annotations

from datetime import date, timedelta
from typing import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def snapshot_dates(as_of: date, horizon_days: int, train_snapshots: int, step_days: int,
                   earliest: date) -> tuple[list[date], date]:
    """(training snapshot dates, evaluation snapshot date) for scoring date ``as_of``.

    Evaluation = as_of - h; training = as_of - 2h - i*step for i < train_snapshots, keeping
    those not before ``earliest`` (the first date with enough history).

    Raises:
        ValueError: when the data is too short for an evaluation and a training snapshot.
    """
    if horizon_days < 1 or step_days < 1 or train_snapshots < 1:
        raise ValueError("propensity.horizon_days, train_step_days and train_snapshots must be >= 1")
    evaluation = as_of - timedelta(days=horizon_days)
    train = [as_of - timedelta(days=2 * horizon_days + i * step_days) for i in range(train_snapshots)]
    train = [d for d in train if d >= earliest]
    if evaluation < earliest or not train:
        raise ValueError(
            f"not enough history for propensity at as_of {as_of}: with horizon {horizon_days} days the "
            f"evaluation snapshot is {evaluation} and training needs snapshots from "
            f"{as_of - timedelta(days=2 * horizon_days)}, but events start {earliest}; lower "
            "propensity.horizon_days or propensity.min_history_days")
    return sorted(train), evaluation


def build_labels(snapshots: DataFrame, events: DataFrame, horizon_days: int,
                 purchase_types: Sequence[str]) -> DataFrame:
    """Point-in-time labels for (customer_id, as_of_date) snapshots.

    Args:
        snapshots: ``customer_id, as_of_date`` rows (customers known at each date).
        events: profiling events with ``customer_id, event_ts, event_type``.
        horizon_days: length of the label window ``[as_of_date, as_of_date + horizon)``.
        purchase_types: event types counted as a purchase.

    Returns:
        ``snapshots`` + ``churn_label`` (1.0 = no event in the window) and ``purchase_label``
        (1.0 = a purchase in the window).
    """
    for name, df, cols in (("snapshots", snapshots, ["customer_id", "as_of_date"]),
                           ("events", events, ["customer_id", "event_ts", "event_type"])):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"build_labels: {name} lacks column(s) {missing}")
    keys = snapshots.select("customer_id", "as_of_date").distinct()
    start = F.col("k.as_of_date").cast("timestamp")
    end = F.date_add(F.col("k.as_of_date"), horizon_days).cast("timestamp")
    future = (keys.alias("k")
              .join(events.select("customer_id", "event_ts", "event_type").alias("e"),
                    (F.col("k.customer_id") == F.col("e.customer_id"))
                    & (F.col("e.event_ts") >= start) & (F.col("e.event_ts") < end))
              .groupBy(F.col("k.customer_id").alias("customer_id"), F.col("k.as_of_date").alias("as_of_date"))
              .agg(F.max(F.col("e.event_type").isin(list(purchase_types)).cast("int")).alias("_bought")))
    return (snapshots.join(future, ["customer_id", "as_of_date"], "left")
            .withColumn("churn_label", F.when(F.col("_bought").isNull(), 1.0).otherwise(0.0))
            .withColumn("purchase_label", F.coalesce(F.col("_bought").cast("double"), F.lit(0.0)))
            .drop("_bought"))


def drop_censored(labelled: DataFrame, consent_actions: DataFrame, horizon_days: int) -> DataFrame:
    """``labelled`` without the (customer, snapshot) rows whose label window
    ``[as_of_date, as_of_date + horizon)`` holds a consent withdrawal of that customer.

    Their label is unknown: events missing after a withdrawal say nothing about churn or a
    purchase, so such a row is neither churned nor retained (left out of training and evaluation).

    Args:
        labelled: rows with ``customer_id, as_of_date`` (e.g. :func:`build_labels`' output).
        consent_actions: ``customer_id, action, effective_at``
            (:func:`seglake.core.contracts.consent_actions`); small.
        horizon_days: the label window's length.

    Returns:
        ``labelled``'s rows and columns, minus the censored rows.
    """
    for name, df, cols in (("labelled", labelled, ["customer_id", "as_of_date"]),
                           ("consent_actions", consent_actions, ["customer_id", "action", "effective_at"])):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"drop_censored: {name} lacks column(s) {missing}")
    w = (consent_actions.where(F.col("action") == F.lit("withdraw"))
         .select(F.col("customer_id").alias("_w_customer"), F.col("effective_at").alias("_w_at")))
    start = F.col("as_of_date").cast("timestamp")
    end = F.date_add(F.col("as_of_date"), horizon_days).cast("timestamp")
    cond = (F.col("customer_id") == F.col("_w_customer")) & (F.col("_w_at") >= start) & (F.col("_w_at") < end)
    return labelled.join(F.broadcast(w), cond, "left_anti")
