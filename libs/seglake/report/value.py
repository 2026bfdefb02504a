"""The customer lifetime value section of the report (gold.customer_value, the MLflow run of the
``clv`` stage) and the lazy aggregates behind it, which the ``value_*`` helpers of
notebooks/customer_value.py reuse.

For the latest as-of date (or a given one): what was valued (BG/NBD + Gamma-Gamma), the fitted
parameters with their standard errors, CLV deciles (cut at exact quantiles,
:func:`seglake.core.quantiles.exact_quantiles`), the P(alive) distribution, mean CLV per decile
and the high-value segments of gold.segment_membership. Everything is aggregated in Spark; only
summaries are collected (one row, ten deciles, ten buckets, a few segments, nine cut points).
"""
from __future__ import annotations

from functools import reduce
from typing import Any, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.config import Config
from seglake.core.contracts import CUSTOMER_VALUE, SEGMENT_MEMBERSHIP
from seglake.core.quantiles import exact_quantiles
from seglake.report.blocks import _plt, esc, figure_html, finite, html_table, not_built, pct
from seglake.report.data import _latest, _parent_and_children, _read, mlflow_runs

#: segments of gold.segment_membership the section sizes up against CLV (when they exist)
CLV_SEGMENTS = ("high_value_at_risk", "high_value_loyal")
DECILES = 10
P_ALIVE_BUCKETS = 10
#: (model, parameter, meaning) of the MLflow params of a clv run, in the order shown
PARAMETERS: tuple[tuple[str, str, str], ...] = (
    ("BG/NBD", "r", "shape of the Gamma spread of purchase rates"),
    ("BG/NBD", "alpha", "scale of the Gamma spread of purchase rates (days)"),
    ("BG/NBD", "a", "Beta shape a of the drop-out probability after a repeat purchase"),
    ("BG/NBD", "b", "Beta shape b of the drop-out probability after a repeat purchase"),
    ("Gamma-Gamma", "p", "shape of the Gamma of spend per purchase"),
    ("Gamma-Gamma", "q", "shape of the Gamma spread of customers' mean spend"),
    ("Gamma-Gamma", "v", "scale of the Gamma spread of customers' mean spend"),
)
PARAMETER_SCHEMA = "model string, parameter string, estimate double, std_error double, meaning string"


def money(value: Any) -> str:
    """``12,345`` at or above 1,000, else ``12.34``; ``n/a`` when not a finite number."""
    v = finite(value)
    if v is None:
        return "n/a"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.2f}"


def _num(value: Any, digits: int = 3) -> str:
    v = finite(value)
    return "n/a" if v is None else f"{v:.{digits}f}"


# --------------------------------------------------------------------------- lazy aggregates


def customer_value_at(spark: SparkSession, cfg: Config, as_of: Any = None) -> tuple[DataFrame, Any]:
    """(rows of gold.customer_value at ``as_of``, that date); default the latest as-of date
    (None when the table is empty). ``Missing`` when the table is not built."""
    values = _read(spark, cfg, CUSTOMER_VALUE, "clv")
    day = as_of if as_of is not None else _latest(values)
    return values.where(F.col("as_of_date") == F.lit(day)), day


def _value_aggregates() -> list:
    """The CLV aggregates the summary and the segment table share."""
    return [F.count("clv").alias("valued"), F.sum("clv").alias("total_clv"), F.avg("clv").alias("mean_clv"),
            F.avg("p_alive").alias("mean_p_alive"),
            F.avg("expected_purchases_365d").alias("mean_expected_purchases_365d")]


def summary_frame(rows: DataFrame) -> DataFrame:
    """One row: customers, repeat customers, total / mean CLV, mean P(alive), the horizon and the
    annual discount rate (min and max: one value unless several fits were mixed), the model run."""
    return rows.agg(
        F.count(F.lit(1)).alias("customers"),
        F.sum(F.when(F.col("frequency") > 0, 1).otherwise(0)).alias("repeat_customers"),
        *_value_aggregates(),
        F.min("clv_horizon_days").alias("horizon_days"),
        F.max("clv_horizon_days").alias("horizon_days_max"),
        F.min("discount_rate").alias("discount_rate"),
        F.max("discount_rate").alias("discount_rate_max"),
        F.min("model_run_id").alias("model_run_id"),
        F.max("model_run_id").alias("model_run_id_max"),
    )


def decile_frame(rows: DataFrame, deciles: int = DECILES) -> DataFrame:
    """One row per CLV decile (1 = lowest, ``deciles`` = highest): customers, CLV range, mean CLV,
    mean P(alive), mean expected purchases over 365 days, mean monetary value (of the customers
    with a repeat purchase). Cut at the exact quantiles of clv (one small job now); a customer
    goes to 1 + the number of cut points below their CLV, so ties stay together (a decile may be
    empty or larger than a tenth). Customers without a CLV are left out."""
    valued = rows.where(F.col("clv").isNotNull() & ~F.isnan("clv"))
    cuts = exact_quantiles(valued, {f"q{k}": ("clv", k / deciles) for k in range(1, deciles)})
    decile = reduce(lambda acc, c: acc + F.when(F.col("clv") > F.lit(c), 1).otherwise(0),
                    [v for v in cuts.values() if v is not None], F.lit(1))
    return (valued.groupBy(decile.cast("int").alias("decile")).agg(
        F.count(F.lit(1)).alias("customers"),
        F.min("clv").alias("clv_min"),
        F.max("clv").alias("clv_max"),
        F.avg("clv").alias("mean_clv"),
        F.avg("p_alive").alias("mean_p_alive"),
        F.avg("expected_purchases_365d").alias("mean_expected_purchases_365d"),
        F.avg("monetary_value").alias("mean_monetary_value"),
    ).orderBy("decile"))


def p_alive_frame(rows: DataFrame, buckets: int = P_ALIVE_BUCKETS) -> DataFrame:
    """``bucket, p_alive_from, p_alive_to, customers``: P(alive) in ``buckets`` equal-width buckets
    (1.0 in the last one); empty buckets are absent."""
    b = F.least(F.floor(F.col("p_alive") * buckets), F.lit(buckets - 1)).cast("int")
    return (rows.where(F.col("p_alive").isNotNull()).groupBy(b.alias("bucket"))
            .agg(F.count(F.lit(1)).alias("customers"))
            .select("bucket", (F.col("bucket") / buckets).alias("p_alive_from"),
                    ((F.col("bucket") + 1) / buckets).alias("p_alive_to"), "customers")
            .orderBy("bucket"))


def segment_frame(spark: SparkSession, cfg: Config, rows: DataFrame, day: Any,
                  segments: Sequence[str] | None = None) -> DataFrame:
    """Per segment of gold.segment_membership at ``day`` (only ``segments`` when given): members,
    members with a CLV row, total and mean CLV, mean P(alive), mean expected purchases over 365
    days (membership left-joined with ``rows`` on customer_id). ``Missing`` without membership."""
    members = _read(spark, cfg, SEGMENT_MEMBERSHIP, "segments").where(F.col("as_of_date") == F.lit(day))
    if segments is not None:
        members = members.where(F.col("segment").isin(*segments))
    joined = members.select("customer_id", "segment").join(
        rows.select("customer_id", "clv", "p_alive", "expected_purchases_365d"), "customer_id", "left")
    return (joined.groupBy("segment").agg(F.count(F.lit(1)).alias("members"), *_value_aggregates())
            .orderBy(F.desc("total_clv")))


# --------------------------------------------------------------------------- the MLflow run


def clv_run(cfg: Config, model_run_id: str | None = None) -> Any:
    """The MLflow run of the fit: ``model_run_id`` (from gold.customer_value) when given, else
    the newest top-level run tagged ``seglake.stage = clv``; None when the store has neither."""
    client, runs = mlflow_runs(cfg, "clv")
    if not model_run_id:
        return _parent_and_children(runs)[0]
    found = next((r for r in runs if r.info.run_id == model_run_id), None)
    if found is None and client is not None:
        try:
            found = client.get_run(model_run_id)
        except Exception:  # noqa: BLE001 - an unknown run id (another store, a deleted run)
            found = None
    return found


def parameter_rows(run: Any) -> list[dict]:
    """``model, parameter, estimate, std_error, meaning`` per parameter of the run (None where a
    param or its ``se_<name>`` metric is absent or not finite)."""
    params, metrics = run.data.params, run.data.metrics
    out = []
    for model, name, meaning in PARAMETERS:
        try:
            estimate = finite(float(params[name]))
        except (KeyError, TypeError, ValueError):
            estimate = None
        out.append({"model": model, "parameter": name, "estimate": estimate,
                    "std_error": finite(metrics.get(f"se_{name}")), "meaning": meaning})
    return out


def _implied(est: dict) -> str:
    """The population averages the parameters imply, as a sentence ("" when they cannot be computed)."""
    r, alpha, a, b, p, q, v = (est.get(n) for n in ("r", "alpha", "a", "b", "p", "q", "v"))
    bits = []
    if r is not None and alpha:
        bits.append(f"{365 * r / alpha:.3g} purchases a year while alive")
    if a is not None and b is not None and a + b > 0:
        bits.append(f"a {pct(a / (a + b))} chance to drop out after each repeat purchase")
    if p is not None and v is not None and q is not None and q > 1:
        bits.append(f"a mean spend of {money(p * v / (q - 1))} per purchase")
    return f"<p>On average in the population: {', '.join(bits)}.</p>" if bits else ""


def model_html(cfg: Config, model_run_id: str | None) -> str:
    """The parameter table of the fit and its likelihoods, or a note that the store has no clv run."""
    run = clv_run(cfg, model_run_id)
    if run is None:
        what = f"the clv run {model_run_id} in the MLflow store" if model_run_id else "a clv run in the MLflow store"
        return not_built("clv", what)
    rows = parameter_rows(run)
    m = run.data.metrics

    def count(name: str) -> str:
        v = finite(m.get(name))
        return "n/a" if v is None else f"{int(v):,}"

    fit = (f"<p>MLflow run {esc(run.info.run_id)}: BG/NBD log-likelihood {_num(m.get('bgnbd_log_likelihood'), 1)} "
           f"on {count('bgnbd_cells')} cells of {count('customers')} customers; Gamma-Gamma log-likelihood "
           f"{_num(m.get('gg_log_likelihood'), 1)} on {count('gg_cells')} cells of "
           f"{count('gg_customers' if 'gg_customers' in m else 'repeat_customers')} customers with a repeat "
           "purchase. Standard errors from the inverse Hessian (n/a: absent, e.g. a Hessian that is not "
           "positive definite).</p>")
    shown = [{"model": r["model"], "parameter": r["parameter"],
              "estimate": "n/a" if r["estimate"] is None else f"{r['estimate']:.4g}",
              "standard error": "n/a" if r["std_error"] is None else f"{r['std_error']:.3g}",
              "meaning": r["meaning"]} for r in rows]
    return fit + html_table(shown) + _implied({r["parameter"]: r["estimate"] for r in rows})


# --------------------------------------------------------------------------- html


def chart_data(rows: DataFrame) -> tuple[list[dict], dict[int, int]]:
    """(the CLV deciles, the P(alive) histogram {bucket: customers}) of ``rows``, collected: at most
    DECILES and P_ALIVE_BUCKETS rows."""
    deciles = [r.asDict() for r in decile_frame(rows).collect()]   # at most DECILES rows
    hist = {r["bucket"]: r["customers"] for r in p_alive_frame(rows).collect()}   # at most P_ALIVE_BUCKETS rows
    return deciles, hist


def chart_html(day: Any, hist: dict[int, int], deciles: list[dict], horizon: Any) -> str:
    """P(alive) histogram and mean CLV per decile, side by side, as an <img>."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.4))
    left.bar([(b + 0.5) / P_ALIVE_BUCKETS for b in range(P_ALIVE_BUCKETS)],
             [hist.get(b, 0) for b in range(P_ALIVE_BUCKETS)], width=0.9 / P_ALIVE_BUCKETS, color="#3b75af")
    left.set(xlabel="P(alive)", ylabel="customers", title=f"P(alive) at {day}", xlim=(0, 1))
    right.bar([str(d["decile"]) for d in deciles], [d["mean_clv"] or 0 for d in deciles], color="#4c9a2a")
    right.set(xlabel=f"CLV decile ({DECILES} = highest)", ylabel=f"mean CLV ({horizon} days)",
              title="Mean CLV per decile")
    fig.tight_layout()
    return figure_html(fig, "P(alive) distribution and mean CLV per decile")


def _decile_row(d: dict) -> dict:
    return {"decile": d["decile"], "customers": d["customers"],
            "CLV range": f"{money(d['clv_min'])} to {money(d['clv_max'])}", "mean CLV": money(d["mean_clv"]),
            "mean P(alive)": _num(d["mean_p_alive"]),
            "mean expected purchases 365d": _num(d["mean_expected_purchases_365d"], 2),
            "mean monetary value": money(d["mean_monetary_value"])}


def _segment_row(s: dict) -> dict:
    return {"segment": s["segment"], "members": s["members"], "with a CLV": s["valued"],
            "total CLV": money(s["total_clv"]), "mean CLV": money(s["mean_clv"]),
            "mean P(alive)": _num(s["mean_p_alive"]),
            "mean expected purchases 365d": _num(s["mean_expected_purchases_365d"], 2)}


def _span(low: Any, high: Any, show) -> str:
    return show(low) if low == high else f"{show(low)} to {show(high)}"


def section_value(spark: SparkSession, cfg: Config) -> str:
    rows, day = customer_value_at(spark, cfg)
    if day is None:
        return "<p class='note'>gold.customer_value is empty</p>"
    s = summary_frame(rows).first().asDict()   # one row
    horizon = _span(s["horizon_days"], s["horizon_days_max"], lambda v: "n/a" if v is None else f"{int(v):,}")
    mixed = s["model_run_id"] != s["model_run_id_max"]
    parts = [
        f"<p>Customer lifetime value from the BG/NBD model (repeat purchases and P(alive)) and the "
        f"Gamma-Gamma model (spend per purchase) of Fader, Hardie &amp; Lee, as-of <b>{esc(day)}</b>: "
        f"<b>{s['customers']:,}</b> customers valued (at least one purchase before the as-of date; "
        f"{s['repeat_customers'] or 0:,} with a repeat purchase), total CLV <b>{money(s['total_clv'])}</b> over "
        f"the next {horizon} days (mean <b>{money(s['mean_clv'])}</b> per customer), discounted at "
        f"{_span(s['discount_rate'], s['discount_rate_max'], pct)} a year.</p>"]
    if mixed:
        parts.append("<p class='error'>the rows of this as-of date come from several model runs "
                     f"({esc(s['model_run_id'])} ... {esc(s['model_run_id_max'])}).</p>")
    parts.append("<h3>Model parameters</h3>" + model_html(cfg, None if mixed else s["model_run_id"]))
    deciles, hist = chart_data(rows)
    parts.append(chart_html(day, hist, deciles, horizon))
    parts.append(f"<h3>CLV deciles ({DECILES} = highest; cut at exact quantiles, ties kept together; mean "
                 "monetary value over customers with a repeat purchase)</h3>"
                 + html_table([_decile_row(d) for d in deciles]))
    if tables.exists(spark, cfg, SEGMENT_MEMBERSHIP):
        # at most len(CLV_SEGMENTS) rows
        segs = [r.asDict() for r in segment_frame(spark, cfg, rows, day, CLV_SEGMENTS).collect()]
        if segs:
            parts.append(f"<h3>High-value segments at {esc(day)}</h3>"
                         + html_table([_segment_row(r) for r in segs]))
    return "\n".join(parts)
