"""Helpers of the notebooks in notebooks/: small aggregated DataFrames (not collected) of the
gold tables (segment sizes and changes, segment health, cluster profiles and sizes, the wide
transition matrix, the funnel, journey metrics and top paths, A/B test assignments and results,
customer lifetime value), plus the two bits of glue a notebook needs outside Databricks
(widgets or environment parameters, and display).
"""
from __future__ import annotations

from typing import Any, Callable

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from seglake.core.config import Config
from seglake.core.contracts import (
    AB_RESULTS, CLUSTER_PROFILES, CLUSTERS, EXPERIMENT_ASSIGNMENTS, JOURNEY_METRICS, JOURNEY_PATHS, SEGMENT_CHANGES,
    SEGMENT_HEALTH,
    SEGMENT_MEMBERSHIP, TRANSITION_MATRIX,
)
from seglake.report.data import _latest, _read
from seglake.report.value import (
    PARAMETER_SCHEMA, chart_data, chart_html, clv_run, customer_value_at, decile_frame, model_html, p_alive_frame,
    parameter_rows, segment_frame, summary_frame,
)

AB_ALL = "(all)"  # gold.ab_results' segment of the whole population


def notebook_params(dbutils: Any = None, **defaults: str) -> dict[str, str]:
    """Notebook parameters: Databricks widgets when ``dbutils`` is given, else the environment.

    Each name ``x`` gets a text widget ``x`` (default from ``defaults``); outside Databricks the
    value is ``$SEGLAKE_<X>`` when set, else the default. Empty strings mean "not given".
    """
    import os

    values = {}
    for name, default in defaults.items():
        if dbutils is not None:
            dbutils.widgets.text(name, str(default), name)
            values[name] = dbutils.widgets.get(name)
        else:
            values[name] = os.environ.get(f"SEGLAKE_{name.upper()}", str(default))
    return values


def notebook_context(dbutils: Any = None, app_name: str = "seglake-notebook") -> tuple[SparkSession, Config, Any]:
    """(spark, cfg, as_of or None) from the widgets ``env``, ``lakehouse`` and ``as_of``.

    On Databricks the notebook's session is reused (``get_spark`` returns the active one).
    """
    from datetime import date as _date

    from seglake.core.config import load_config
    from seglake.core.spark import get_spark

    p = notebook_params(dbutils, env="local", lakehouse="", as_of="")
    cfg = load_config(p["env"] or "local", overrides={"paths": {"lakehouse": p["lakehouse"]}} if p["lakehouse"] else None)
    as_of = _date.fromisoformat(p["as_of"]) if p["as_of"] else None
    return get_spark(cfg, app_name), cfg, as_of


def show(df: DataFrame, display: Callable | None = None, rows: int = 50) -> None:
    """``display(df)`` on Databricks, else ``df.show()`` (the notebook passes its ``display``)."""
    if display is not None:
        display(df)
    else:
        df.show(rows, truncate=False)


def _at(df: DataFrame, as_of: Any) -> DataFrame:
    """Rows of ``as_of`` (default: the latest as-of date in ``df``)."""
    if "as_of_date" not in df.columns:
        return df
    day = as_of if as_of is not None else _latest(df)
    return df.where(F.col("as_of_date") == F.lit(day))


def segment_sizes(spark: SparkSession, cfg: Config) -> DataFrame:
    """``as_of_date, segment, customers`` from gold.segment_membership (every as-of date)."""
    members = _read(spark, cfg, SEGMENT_MEMBERSHIP, "segments")
    return (members.groupBy("as_of_date", "segment").agg(F.count(F.lit(1)).alias("customers"))
            .orderBy(F.desc("as_of_date"), F.desc("customers")))


def segment_change_counts(spark: SparkSession, cfg: Config) -> DataFrame:
    """``as_of_date, segment, entered, exited`` from gold.segment_changes."""
    changes = _read(spark, cfg, SEGMENT_CHANGES, "segments")
    return (changes.groupBy("as_of_date", "segment").pivot("change", ["entered", "exited"]).count()
            .na.fill(0, ["entered", "exited"]).orderBy(F.desc("as_of_date"), "segment"))


def segment_health(spark: SparkSession, cfg: Config, as_of: Any = None) -> DataFrame:
    """gold.segment_health at ``as_of`` (default latest), largest segment first."""
    return _at(_read(spark, cfg, SEGMENT_HEALTH, "segments"), as_of).orderBy(F.desc("size"))


def cluster_profile_matrix(spark: SparkSession, cfg: Config, as_of: Any = None) -> DataFrame:
    """One row per cluster: ``cluster, label, size, share`` + one column per feature holding the
    standardized difference of the cluster mean from the overall mean (gold.cluster_profiles)."""
    prof = _at(_read(spark, cfg, CLUSTER_PROFILES, "cluster"), as_of)
    return (prof.groupBy("cluster", "label", "size", "share").pivot("feature").agg(F.first("relative"))
            .orderBy("cluster"))


def cluster_sizes(spark: SparkSession, cfg: Config, as_of: Any = None) -> DataFrame:
    """``as_of_date, cluster, label, customers`` from gold.clusters."""
    clusters = _at(_read(spark, cfg, CLUSTERS, "cluster"), as_of)
    return (clusters.groupBy("as_of_date", "cluster", "label").agg(F.count(F.lit(1)).alias("customers"))
            .orderBy("cluster"))


def transition_matrix_wide(spark: SparkSession, cfg: Config, as_of: Any = None, segment: str = "all",
                           channel: str = "all") -> DataFrame:
    """First-order transition probabilities as ``from_state`` x one column per ``to_state``."""
    matrix = _at(_read(spark, cfg, TRANSITION_MATRIX, "journeys"), as_of)
    sel = matrix.where((F.col("order") == 1) & (F.col("segment") == segment) & (F.col("channel") == channel))
    return sel.groupBy("from_state").pivot("to_state").agg(F.first("probability")).orderBy("from_state")


def funnel(spark: SparkSession, cfg: Config, as_of: Any = None, segment: str = "all") -> DataFrame:
    """``rank, step, journeys, step_rate, dropoff`` from gold.journey_metrics."""
    metrics = _at(_read(spark, cfg, JOURNEY_METRICS, "journeys"), as_of)
    sel = metrics.where(F.col("metric").startswith("funnel_") & (F.col("segment") == segment)
                        & (F.col("channel") == "all"))
    wide = sel.groupBy("rank", F.col("subject").alias("step")).pivot(
        "metric", ["funnel_journeys", "funnel_step_rate", "funnel_dropoff"]).agg(F.first("value"))
    return wide.select("rank", "step", F.col("funnel_journeys").cast("long").alias("journeys"),
                       F.col("funnel_step_rate").alias("step_rate"), F.col("funnel_dropoff").alias("dropoff")
                       ).orderBy("rank")


def journey_metric(spark: SparkSession, cfg: Config, metric: str, as_of: Any = None,
                   segment: str = "all") -> DataFrame:
    """One metric of gold.journey_metrics (e.g. ``removal_effect``, ``conversion_probability``)."""
    metrics = _at(_read(spark, cfg, JOURNEY_METRICS, "journeys"), as_of)
    return (metrics.where((F.col("metric") == metric) & (F.col("segment") == segment))
            .select("channel", "subject_type", "subject", "value", "rank").orderBy("channel", "rank", "subject"))


def top_journey_paths(spark: SparkSession, cfg: Config, as_of: Any = None, limit: int = 20) -> DataFrame:
    """The most frequent full journey paths (gold.journey_paths)."""
    paths = _at(_read(spark, cfg, JOURNEY_PATHS, "journeys"), as_of)
    if "path_kind" in paths.columns:
        paths = paths.where(F.col("path_kind") == "full")
    return paths.select("rank", "path", "journeys", "share").orderBy("rank").limit(limit)


# --------------------------------------------------------------------------- experiments
def experiment_assigned(spark: SparkSession, cfg: Config) -> DataFrame:
    """``experiment, assignment, variant, customers, share`` from gold.experiment_assignments."""
    assigned = _read(spark, cfg, EXPERIMENT_ASSIGNMENTS, "experiments")
    counts = assigned.groupBy("experiment", "assignment", "variant").agg(F.count(F.lit(1)).alias("customers"))
    total = F.sum("customers").over(Window.partitionBy("experiment"))
    return counts.withColumn("share", F.round(F.col("customers") / total, 4)).orderBy("experiment", "variant")


def experiment_results(spark: SparkSession, cfg: Config, role: str = "primary") -> DataFrame:
    """The ``role`` metrics of gold.ab_results with their intervals (every segment, '(all)' first)."""
    results = _read(spark, cfg, AB_RESULTS, "experiments").where(F.col("role") == role)
    return results.select(
        "experiment", "status", "segment", "metric", "variant", "control", "n_control", "n_variant", "mean_control",
        "mean_variant", "abs_uplift", "abs_ci_low", "abs_ci_high", "rel_uplift", "rel_ci_low", "rel_ci_high",
        "p_value", "p_value_holm", "cuped_abs_uplift", "cuped_ci_low", "cuped_ci_high", "achieved_power",
        "significant").orderBy("experiment", F.col("segment") != AB_ALL, "segment", "metric", "variant")


def experiment_srm(spark: SparkSession, cfg: Config) -> DataFrame:
    """One sample-ratio check line per experiment and segment: ``assigned, srm_chi2, srm_df, srm_p, check``."""
    results = _read(spark, cfg, AB_RESULTS, "experiments")
    check = F.when(F.col("srm_flag"), F.lit("SAMPLE RATIO MISMATCH: results not trustworthy")).otherwise(F.lit("ok"))
    return (results.select("experiment", "segment", "assigned", "srm_chi2", "srm_df", "srm_p", "srm_flag")
            .dropDuplicates(["experiment", "segment"]).withColumn("check", check).drop("srm_flag")
            .orderBy("experiment", F.col("segment") != AB_ALL, "segment"))


def experiment_uplift_chart(spark: SparkSession, cfg: Config, display_html: Callable | None = None) -> str:
    """The report's uplift charts, one per experiment, as HTML; shown with ``display_html`` (Databricks'
    ``displayHTML``) when given, else a one-line note is printed."""
    # experiments x segments x metrics x variants: small
    from seglake.report.sections import _uplift_chart
    rows = [r.asDict() for r in _read(spark, cfg, AB_RESULTS, "experiments").collect()]
    html = "\n".join(_uplift_chart(n, [r for r in rows if r["experiment"] == n])
                     for n in sorted({r["experiment"] for r in rows}))
    if display_html is not None:
        display_html(html)
    else:
        print(f"uplift charts of {len({r['experiment'] for r in rows})} experiment(s) rendered "
              "(shown on Databricks; locally see `seglake report`)")
    return html


# --------------------------------------------------------------------------- customer lifetime value
def value_summary(spark: SparkSession, cfg: Config, as_of: Any = None) -> DataFrame:
    """One row of gold.customer_value at ``as_of`` (default latest): customers, repeat customers, total and
    mean CLV, mean P(alive), horizon, annual discount rate and model run (min and max of each: one value
    unless several fits were mixed)."""
    rows, day = customer_value_at(spark, cfg, as_of)
    return summary_frame(rows).select(F.lit(day).cast("date").alias("as_of_date"), "*")


def value_deciles(spark: SparkSession, cfg: Config, as_of: Any = None) -> DataFrame:
    """``decile`` (10 = highest CLV), ``customers, clv_min, clv_max, mean_clv, mean_p_alive,
    mean_expected_purchases_365d, mean_monetary_value`` at ``as_of`` (cut at exact quantiles of clv)."""
    return decile_frame(customer_value_at(spark, cfg, as_of)[0])


def value_p_alive(spark: SparkSession, cfg: Config, as_of: Any = None) -> DataFrame:
    """``bucket, p_alive_from, p_alive_to, customers``: the P(alive) distribution at ``as_of`` in 10 buckets."""
    return p_alive_frame(customer_value_at(spark, cfg, as_of)[0])


def value_segments(spark: SparkSession, cfg: Config, as_of: Any = None,
                   segments: list[str] | None = None) -> DataFrame:
    """Per segment of gold.segment_membership at the same as-of (``segments``, default all): members,
    members with a CLV, total and mean CLV, mean P(alive), mean expected purchases in 365 days."""
    rows, day = customer_value_at(spark, cfg, as_of)
    return segment_frame(spark, cfg, rows, day, segments)


def value_parameters(spark: SparkSession, cfg: Config, as_of: Any = None) -> DataFrame:
    """``model, parameter, estimate, std_error, meaning, mlflow_run``: the BG/NBD and Gamma-Gamma fit behind
    gold.customer_value at ``as_of`` (its ``model_run_id`` in the MLflow store); no rows when the store does
    not hold that run."""
    rows, _ = customer_value_at(spark, cfg, as_of)
    run = clv_run(cfg, rows.agg(F.min("model_run_id")).first()[0])   # one value
    params = [] if run is None else [{**r, "mlflow_run": run.info.run_id} for r in parameter_rows(run)]
    return spark.createDataFrame(params, PARAMETER_SCHEMA + ", mlflow_run string")


def value_chart(spark: SparkSession, cfg: Config, as_of: Any = None, display_html: Callable | None = None) -> str:
    """The report's model parameters and CLV charts (P(alive) histogram, mean CLV per decile) as HTML;
    shown with ``display_html`` (Databricks' ``displayHTML``) when given, else a one-line note is printed."""
    rows, day = customer_value_at(spark, cfg, as_of)
    s = summary_frame(rows).first()   # one row
    deciles, hist = chart_data(rows)
    html = model_html(cfg, s["model_run_id"]) + chart_html(day, hist, deciles, s["horizon_days"])
    if display_html is not None:
        display_html(html)
    else:
        print(f"CLV parameters and charts at {day} rendered (shown on Databricks; locally see `seglake report`)")
    return html
