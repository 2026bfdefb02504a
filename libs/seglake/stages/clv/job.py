"""The ``seglake run clv --as-of D`` job: BG/NBD + Gamma-Gamma fitted on compressed cells,
customers scored per cell, gold.customer_value written for D.

1. Purchases (``clv.purchase_event_types`` or ``features.purchase_event_types``) of consented
   customers before D, from silver.enriched_events (optionally only the last
   ``clv.history_days``), become per-customer summaries (:mod:`.summary`), in Spark.
2. The BG/NBD cells (x, t_x, T, count) and Gamma-Gamma cells (x, rounded m_bar, count) are
   collected (bounded by ``clv.max_cells``, never one row per customer) and fitted by maximum
   likelihood on the driver (:mod:`.model`).
3. P(alive), expected purchases in 30/90/365 days and the discounted expected purchases over
   ``clv.horizon_days`` are computed once per BG/NBD cell, and joined back to the customers;
   the Gamma-Gamma expected spend is a column expression per customer; CLV = expected spend *
   discounted expected purchases.
4. gold.customer_value's slice of D is replaced in one commit (a rerun converges); an MLflow
   run holds the parameters, their standard errors, the log-likelihoods, the cell counts and
   the input table versions.
"""
from __future__ import annotations

import logging
import math
import time
from datetime import timedelta

import numpy as np
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.context import JobContext
from seglake.core.contracts import CONSENT_LEDGER, CUSTOMER_VALUE, ENRICHED_EVENTS, IDENTITY_MAP
from seglake.stages import enriched
from seglake.stages.clv import model as M
from seglake.stages.clv.summary import (bgnbd_cells, collect_cells, customer_summary, gamma_gamma_cells,
                                        purchase_days)

log = logging.getLogger(__name__)

#: the stage runner resolves ``--as-of`` (default: the day after the last event) before run()
USES_AS_OF = True

#: horizons (days) of the expected-purchase columns of gold.customer_value
PURCHASE_HORIZONS = (30, 90, 365)
VALUE_COLUMNS = ("customer_id", "as_of_date", "frequency", "recency_days", "age_days", "monetary_value",
                 "p_alive", *(f"expected_purchases_{h}d" for h in PURCHASE_HORIZONS), "expected_spend",
                 "clv", "clv_horizon_days", "discount_rate", "model_run_id", "run_id")


class ClvSettings:
    """``clv.*`` of the config, checked (a ValueError naming the key otherwise)."""

    def __init__(self, cfg, horizon_override: int | None = None):
        c = cfg.get("clv") or {}
        self.purchase_types = list(c.get("purchase_event_types") or cfg.get("features.purchase_event_types")
                                   or ["purchase"])
        self.history_days = int(c.get("history_days") or 0) or None     # 0 = all history
        self.horizon_days = int(horizon_override or c.get("horizon_days", 365))
        self.discount_rate = float(c.get("discount_rate", 0.10))
        self.step_days = int(c.get("discount_step_days", 30))
        self.penalizer = float(c.get("penalizer", 0.0))
        self.digits = int(c.get("spend_significant_digits", 3))
        self.max_cells = int(c.get("max_cells", 2_000_000))
        problems = []
        if self.history_days is not None and self.history_days < 2:
            problems.append(f"clv.history_days must be 0 (all history) or >= 2, got {self.history_days}")
        if self.horizon_days < 1:
            problems.append(f"clv.horizon_days must be >= 1, got {self.horizon_days}")
        if not -1.0 < self.discount_rate < 10.0:
            problems.append(f"clv.discount_rate is an annual rate such as 0.10, got {self.discount_rate}")
        if self.step_days < 1:
            problems.append(f"clv.discount_step_days must be >= 1, got {self.step_days}")
        if self.penalizer < 0:
            problems.append(f"clv.penalizer must be >= 0, got {self.penalizer}")
        if not 1 <= self.digits <= 8:
            problems.append(f"clv.spend_significant_digits must be in 1..8, got {self.digits}")
        if self.max_cells < 1:
            problems.append(f"clv.max_cells must be >= 1, got {self.max_cells}")
        if problems:
            raise ValueError("; ".join(problems))


def add_arguments(parser) -> None:
    parser.add_argument("--horizon-days", type=int, default=None, dest="horizon_days",
                        help="override clv.horizon_days (the CLV horizon)")


class NotIdentified(ValueError):
    """The purchases cannot identify the models yet (none, or no repeat purchase): the job writes
    nothing for the as-of, says so in its summary and lets the chain go on (a young or small data
    set is not an error; the CLV tiers are then skipped by segments)."""


def fit(bg_cells: dict[str, np.ndarray], gg_cells: dict[str, np.ndarray],
        penalizer: float = 0.0) -> tuple[M.BGNBDParams, M.GammaGammaParams]:
    """Both models fitted on collected cells (ValueError with the reason when the data do not allow it)."""
    try:
        bg = M.fit_bgnbd(bg_cells["frequency"], bg_cells["recency_days"], bg_cells["age_days"],
                         weights=bg_cells["n"], penalizer=penalizer)
    except M.FitError as exc:
        raise NotIdentified(f"the BG/NBD cannot be fitted on these purchases: {exc}") from None
    try:
        gg = M.fit_gamma_gamma(gg_cells["frequency"], gg_cells["m"], weights=gg_cells["n"])
    except M.FitError as exc:
        raise NotIdentified(f"the Gamma-Gamma spend model cannot be fitted: {exc}") from None
    if gg.q <= 1.0:
        raise ValueError(f"clv: the fitted Gamma-Gamma q = {gg.q:.3f} <= 1 means an infinite mean spend "
                         "(a few very large orders dominate); cap or clean revenue_usd outliers")
    return bg, gg


def cell_predictions(spark, bg: M.BGNBDParams, cells: dict[str, np.ndarray], s: ClvSettings):
    """One row per BG/NBD cell: p_alive, expected purchases per horizon, discounted purchases."""
    x, t_x, T = cells["frequency"], cells["recency_days"], cells["age_days"]
    cols = {"frequency": x.astype(int).tolist(), "recency_days": t_x.astype(int).tolist(),
            "age_days": T.astype(int).tolist(), "p_alive": M.bgnbd_p_alive(bg, x, t_x, T).tolist()}
    for h in PURCHASE_HORIZONS:
        cols[f"expected_purchases_{h}d"] = M.bgnbd_expected_purchases(bg, float(h), x, t_x, T).tolist()
    cols["_discounted"] = M.discounted_purchases(bg, x, t_x, T, s.horizon_days, s.discount_rate,
                                                 s.step_days).tolist()
    names = list(cols)
    schema = ", ".join(f"{n} {'int' if n in ('frequency', 'recency_days', 'age_days') else 'double'}"
                       for n in names)
    return spark.createDataFrame(list(zip(*(cols[n] for n in names))), schema)


def expected_spend(gg: M.GammaGammaParams):
    """Gamma-Gamma E(spend per purchase | x, m_bar) as a column expression (population mean for x = 0)."""
    population = gg.p * gg.v / (gg.q - 1.0)
    x = F.col("frequency").cast("double")
    weight = F.lit(gg.p) * x / (F.lit(gg.p) * x + F.lit(gg.q - 1.0))
    return F.when((x > 0) & F.col("monetary_value").isNotNull(),
                  (1 - weight) * F.lit(population) + weight * F.col("monetary_value")).otherwise(F.lit(population))


def _params_log(bg: M.BGNBDParams, gg: M.GammaGammaParams) -> tuple[dict, dict]:
    params = {**dict(zip(M.BGNBD_NAMES, bg.as_tuple())), **dict(zip(M.GG_NAMES, gg.as_tuple()))}
    metrics = {"bgnbd_log_likelihood": bg.log_likelihood, "gg_log_likelihood": gg.log_likelihood}
    for ses in (bg.standard_errors, gg.standard_errors):
        metrics.update({f"se_{k}": v for k, v in (ses or {}).items() if math.isfinite(v)})
    return params, metrics


def run(ctx: JobContext) -> dict:
    """Fit, score and write gold.customer_value for ``--as-of``."""
    spark, cfg = ctx.spark, ctx.cfg
    s = ClvSettings(cfg, ctx.args.get("horizon_days"))
    as_of = ctx.resolve_as_of()
    start = as_of - timedelta(days=int(s.history_days)) if s.history_days is not None else None
    events = enriched.read(spark, cfg, start=start, end=as_of, consent_at=as_of, event_types=s.purchase_types,
                           columns=("event_type", "event_date", "revenue_usd"))
    return value_customers(ctx, events, as_of, s)


def value_customers(ctx: JobContext, events, as_of, s: ClvSettings) -> dict:
    """The job after reading: ``events`` (customer_id, event_type, event_date, revenue_usd, already
    cut to the history window and consent) -> fit, MLflow run, gold.customer_value slice of ``as_of``."""
    import mlflow

    from seglake.core import tracking

    spark, cfg = ctx.spark, ctx.cfg
    t0 = time.time()
    summary = customer_summary(purchase_days(events, s.purchase_types, as_of), as_of).persist()
    bg_cells = collect_cells(bgnbd_cells(summary), ("frequency", "recency_days", "age_days"), s.max_cells,
                             "BG/NBD (frequency, recency, age)")
    gg_cells = collect_cells(gamma_gamma_cells(summary, s.digits), ("frequency", "m"), s.max_cells,
                             "Gamma-Gamma (frequency, spend)")
    t_cells = time.time() - t0
    customers = int(bg_cells["n"].sum())
    repeat = int(bg_cells["n"][bg_cells["frequency"] > 0].sum())
    log.info("clv: %d customers (%d with repeat purchases) in %d BG/NBD and %d Gamma-Gamma cells (%.1fs)",
             customers, repeat, bg_cells["n"].size, gg_cells["n"].size, time.time() - t0)
    try:
        if bg_cells["n"].size == 0:
            raise NotIdentified(f"no purchases ({', '.join(s.purchase_types)}) before {as_of}")
        bg, gg = fit(bg_cells, gg_cells, s.penalizer)
    except NotIdentified as exc:
        summary.unpersist()
        log.warning("clv: nothing written for %s: %s", as_of, exc)
        return {"as_of": as_of.isoformat(), "status": f"not fitted: {exc}", "customers": customers,
                "repeat_customers": repeat, "rows_written": 0}
    t_fit = time.time() - t0 - t_cells
    log.info("clv: BG/NBD r=%.4g alpha=%.4g a=%.4g b=%.4g; Gamma-Gamma p=%.4g q=%.4g v=%.4g (%.1fs)",
             *bg.as_tuple(), *gg.as_tuple(), time.time() - t0)

    with tracking.start_run(spark, cfg, "clv", [ENRICHED_EVENTS, IDENTITY_MAP, CONSENT_LEDGER],
                            f"clv {as_of}", ctx.run_id, as_of) as mlrun:
        params, metrics = _params_log(bg, gg)
        mlflow.log_params({**params, "as_of": str(as_of), "history_days": s.history_days,
                           "horizon_days": s.horizon_days, "discount_rate": s.discount_rate,
                           "discount_step_days": s.step_days, "penalizer": s.penalizer,
                           "spend_significant_digits": s.digits,
                           "purchase_event_types": ",".join(s.purchase_types)})
        mlflow.log_metrics({**metrics, "customers": customers, "repeat_customers": repeat,
                            "bgnbd_cells": float(bg_cells["n"].size), "gg_cells": float(gg_cells["n"].size),
                            "gg_customers": float(gg_cells["n"].sum())})
        cells = cell_predictions(spark, bg, bg_cells, s)
        spend = expected_spend(gg)
        scored = (summary.join(F.broadcast(cells) if bg_cells["n"].size <= 200_000 else cells,
                               ["frequency", "recency_days", "age_days"])
                  .withColumn("expected_spend", spend)
                  .withColumn("clv", F.col("expected_spend") * F.col("_discounted"))
                  .select("customer_id", F.lit(as_of).cast("date").alias("as_of_date"), "frequency",
                          "recency_days", "age_days", "monetary_value", "p_alive",
                          *(f"expected_purchases_{h}d" for h in PURCHASE_HORIZONS), "expected_spend", "clv",
                          F.lit(s.horizon_days).alias("clv_horizon_days"),
                          F.lit(s.discount_rate).alias("discount_rate"),
                          F.lit(mlrun.info.run_id).alias("model_run_id"), F.lit(ctx.run_id).alias("run_id")))
        where = f"as_of_date = '{as_of.isoformat()}'"
        tables.overwrite(scored, cfg, CUSTOMER_VALUE, partition_by=("as_of_date",),
                         replace_where=where if tables.exists(spark, cfg, CUSTOMER_VALUE) else None)
        written = tables.read(spark, cfg, CUSTOMER_VALUE).where(F.col("as_of_date") == F.lit(as_of))
        stats = written.agg(F.count(F.lit(1)).alias("n"), F.sum("clv").alias("clv"),
                            F.avg("p_alive").alias("p_alive"),
                            F.sum("expected_purchases_365d").alias("e365")).first()
        mlflow.log_metrics({"valued_customers": float(stats["n"]), "total_clv": float(stats["clv"]),
                            "mean_p_alive": float(stats["p_alive"]),
                            "expected_purchases_365d_total": float(stats["e365"])})
    summary.unpersist()
    return {
        "as_of": as_of.isoformat(),
        "customers_valued": int(stats["n"]),
        "repeat_customers": repeat,
        "cells": f"{bg_cells['n'].size} BG/NBD, {gg_cells['n'].size} Gamma-Gamma",
        "bgnbd": "r={:.3g} alpha={:.3g}d a={:.3g} b={:.3g}".format(*bg.as_tuple()),
        "gamma_gamma": "p={:.3g} q={:.3g} v={:.3g}".format(*gg.as_tuple()),
        "mean_p_alive": round(float(stats["p_alive"]), 4),
        f"total_clv_{s.horizon_days}d": round(float(stats["clv"]), 2),
        "mean_clv": round(float(stats["clv"]) / max(1, int(stats["n"])), 2),
        "mlflow_run": mlrun.info.run_id,
        "seconds": f"summaries+cells {t_cells:.1f}, fit {t_fit:.1f}, score+write {time.time() - t0 - t_cells - t_fit:.1f}",
    }
