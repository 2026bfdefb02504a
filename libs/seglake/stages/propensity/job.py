"""The ``seglake run propensity`` job: labels, training, evaluation, champions and scores.

:func:`run` labels the snapshots, trains and evaluates a tuned GBT and a logistic-regression
baseline per target (MLflow child runs), compares the better one with the current champion
and, only when it wins, registers it and moves the ``champion`` alias to it (a losing
candidate is not registered: the parent run says why), and writes the champions' scores at
the as-of date to gold.propensity_scores; :func:`add_arguments` adds ``--horizon-days``.
"""
from __future__ import annotations

import functools
import logging
import time
from datetime import timedelta
from typing import Any

from pyspark.ml import PipelineModel
from pyspark.sql import functions as F

from seglake.core import parallel, tables
from seglake.core.context import JobContext
from seglake.core.spark import release_checkpoint, stable_layout
from seglake.core.contracts import CONSENT_LEDGER, ENRICHED_EVENTS, IDENTITY_MAP, consent_actions, exclude_withdrawn
from seglake.stages import enriched
from seglake.stages.propensity.common import (_METRIC_KEYS, CHAMPION, EVENTS_TABLE, LABEL_COL,
                                              PROB_COL, SCORES_TABLE, TARGETS, _num)
from seglake.stages.propensity.labels import build_labels, drop_censored, snapshot_dates
from seglake.stages.propensity.snapshots import snapshot_features
from seglake.stages.propensity.models import (CALIBRATION_METHODS, Candidate, assess, calibrate, check_tuning,
                                              customer_split, feature_importances, input_features, lr_pipeline,
                                              score_aucs, tune_gbt)
from seglake.stages.propensity.registry import (ChampionOutcome, _calibration_plot, _log_figure, current_champion,
                                                promote_if_better, score)

log = logging.getLogger(__name__)

#: the stage runner resolves ``--as-of`` (default: the day after the last event) before run()
USES_AS_OF = True


def add_arguments(parser) -> None:
    parser.add_argument("--horizon-days", type=int, default=None, dest="horizon_days",
                        help="override propensity.horizon_days")


def _log_to(run_id: str, metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None) -> None:
    """Log ``metrics`` (NaN left out) and ``tags`` to the run ``run_id`` in one batch.

    The targets are trained in parallel threads and MLflow's active run is per thread, so the
    parent run is always addressed by its id.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    MlflowClient().log_batch(
        run_id, metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if v == v],
        tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])


def _record_champion(target: str, best: Candidate, out: ChampionOutcome, selection: str,
                     summary: dict[str, Any], parent_id: str) -> None:
    """Log ``target``'s champion decision in the parent run (metrics, a tag saying why) and the summary.

    The same text is tagged ``seglake.registration`` on the candidate's child run, which has no
    logged model when the candidate was not registered.
    """
    d, new_metric = out.decision, best.metrics[selection]
    status = (f"registered v{out.version} as champion: {d.reason}" if out.registered
              else f"not registered, champion v{out.version} stays: {d.reason}")
    _log_to(parent_id, {f"{target}_promoted": float(d.promote), f"{target}_registered": float(out.registered),
                        f"{target}_heldout_{selection}": new_metric,
                        f"{target}_champion_heldout_{selection}": d.champion_metric},
            {f"seglake.{target}.registration": status})
    _log_to(best.info["run_id"], tags={"seglake.registration": status})
    summary[f"{target}_model"] = (f"{best.kind} v{out.version} -> champion" if out.registered
                                  else f"{best.kind} (not registered; champion v{out.version} stays)")
    summary[f"{target}_heldout_{selection}"] = round(_num(new_metric), 4)
    if d.champion_metric == d.champion_metric:
        summary[f"{target}_champion_heldout_{selection}"] = round(d.champion_metric, 4)
    summary[f"{target}_heldout_brier"] = round(best.metrics["brier"], 4)


def _calibrated(target: str, best: Candidate, calib_rows, held, method: str, summary: dict,
                parent_id: str) -> Candidate:
    """``best`` with a calibrator fitted on ``calib_rows`` (method ``platt``/``isotonic``), measured
    on ``held`` before (``best.info``: the candidate loop's reliability) and after (Brier, log
    loss, expected calibration error, reliability curve; MLflow); the calibrated pipeline is the
    candidate that may become the champion."""
    from mlflow import MlflowClient

    before_curve, ece_before = best.info["reliability"], best.info["ece"]   # measured on ``held`` already
    if method == "none":
        _log_to(parent_id, {f"{target}_ece": ece_before})
        summary[f"{target}_heldout_ece"] = round(ece_before, 4)
        return best
    model = calibrate(best.model, calib_rows, method)
    after = assess(score(model, held))
    metrics, after_curve, ece_after = after.metrics, after.reliability, after.ece
    run_id = best.info["run_id"]
    _log_to(run_id, {"ece_uncalibrated": ece_before, "ece": ece_after, "brier_uncalibrated": best.metrics["brier"],
                     **{f"calibrated_{k}": v for k, v in metrics.items()}})
    MlflowClient().log_dict(run_id, {"method": method, "before": before_curve, "after": after_curve},
                            "reliability.json")
    _log_to(parent_id, {f"{target}_ece_uncalibrated": ece_before, f"{target}_ece": ece_after,
                        f"{target}_brier_uncalibrated": best.metrics["brier"]})
    summary[f"{target}_calibration"] = (f"{method}: Brier {best.metrics['brier']:.4f} -> {metrics['brier']:.4f}, "
                                        f"ECE {ece_before:.4f} -> {ece_after:.4f}")
    return Candidate(f"{best.kind}+{method}", model, metrics, {**best.info, "calibration": method})


def _recency_baseline(target: str, best: Candidate, held, active_days: int, summary: dict, parent_id: str) -> None:
    """The held-out AUC of recency alone (days since the last event: churn rises with it, a purchase
    falls with it) next to the model's, on all customers and on those active in the last
    ``active_days`` days (where recency cannot be the whole story); MLflow + summary."""
    sign = 1.0 if target == "churn" else -1.0
    recency = F.coalesce(F.col("recency_days").cast("double"), F.lit(1e6)) * F.lit(sign)
    active = held.where(F.col("recency_days") <= F.lit(active_days))
    out = score_aucs({"recency_auc_roc": (held, recency),
                      f"active{active_days}_auc_roc": (score(best.model, active), F.col(PROB_COL)),
                      f"active{active_days}_recency_auc_roc": (active, recency)})
    _log_to(parent_id, {f"{target}_{k}": v for k, v in out.items()})
    summary[f"{target}_recency_baseline"] = (
        f"AUC model {best.metrics['auc_roc']:.3f} vs recency {out['recency_auc_roc']:.3f}; active in "
        f"{active_days}d: model {out[f'active{active_days}_auc_roc']:.3f} vs recency "
        f"{out[f'active{active_days}_recency_auc_roc']:.3f}")


def _train_target(target: str, labelled, train_dates, eval_date, as_of, inputs: list[str], pc, seed: int,
                  selection: str, min_improvement: float, cal_method: str, cal_share: float, active_days: int,
                  parent_id: str) -> tuple[tuple[PipelineModel, str, int], dict[str, Any]]:
    """Fit, evaluate, calibrate and compare one target's models (child runs of ``parent_id``);
    ((the champion that scores, its registered name, its version), the target's summary entries).

    Runs in its own thread next to the other target's: MLflow is addressed by run id, the
    plots are drawn without pyplot, and every Spark frame it caches is its own.
    """
    import mlflow

    summary: dict[str, Any] = {}
    tuning, train_ratio, folds = str(pc["tuning"]), float(pc["holdout_train_ratio"]), int(pc["cv_folds"])
    data = labelled.withColumn(LABEL_COL, F.col(f"{target}_label"))
    # a fixed layout: the folds and GBT's split sampling draw per partition
    train = data.filter(F.col("as_of_date").isin(train_dates))
    counts = train.agg(F.count("*").alias("n"), F.sum(LABEL_COL).alias("pos")).first()
    held = data.filter(F.col("as_of_date") == F.lit(eval_date))
    calib_rows = None
    if cal_method != "none":   # the calibrator learns on some customers, the metrics on the others
        calib_rows, held = customer_split(held, cal_share, seed + 1)
    n_held = held.count()
    if n_held == 0:
        raise ValueError(f"propensity: no customers at the evaluation snapshot {eval_date}")
    if not counts["pos"] or counts["pos"] == counts["n"]:
        raise ValueError(f"propensity: the {target} training labels have a single class "
                         f"({counts['pos']} positives of {counts['n']}): need more history or customers")
    # cached only once the checks passed: a failed run leaves nothing cached behind
    train = stable_layout(train, "customer_id", "as_of_date", rows=counts["n"]).cache()
    held = stable_layout(held, "customer_id", "as_of_date", rows=n_held).cache()
    if calib_rows is not None:
        calib_rows = calib_rows.cache()
    t_target = time.time()
    fit_s: dict[str, float] = {}

    def candidate(kind: str) -> Candidate:
        """Fit one model on ``train``, measure it on ``held`` and log its child run."""
        t0 = time.time()
        if kind == "gbt":
            model, info = tune_gbt(train, inputs, seed, pc["grid_max_depth"], pc["grid_max_iter"],
                                   folds, int(pc["cv_parallelism"]), tuning, train_ratio)
        else:
            model, info = lr_pipeline(inputs).fit(train), {}
        fit_s[kind] = time.time() - t0
        measured = assess(score(model, held))   # one query
        metrics, calib = measured.metrics, measured.deciles
        importances = feature_importances(model, inputs)
        with mlflow.start_run(run_name=f"{target} {kind}", nested=True, parent_run_id=parent_id) as child:
            mlflow.set_tags({"seglake.stage": "propensity", "seglake.target": target, "seglake.model": kind})
            mlflow.log_params({"target": target, "model": kind, "train_rows": int(counts["n"]),
                               "train_positives": int(counts["pos"]), **info})
            mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})
            mlflow.log_table({k: [r[k] for r in calib] for k in calib[0]}, "calibration.json")
            _log_figure(_calibration_plot(calib, f"{target} {kind}"), "plots/calibration.png")
            mlflow.log_dict(dict(sorted(importances.items(), key=lambda kv: -kv[1])),
                            "feature_importances.json")
        return Candidate(kind, model, metrics, {"run_id": child.info.run_id, "calibration": calib,
                                                "reliability": measured.reliability, "ece": measured.ece,
                                                **info})

    name = f"{pc['model_name_prefix']}-{target}"

    def task(kind: str):
        return current_champion(name, held) if kind == CHAMPION else candidate(kind)

    # the GBT, the baseline and the current champion's scores at once: their Spark jobs are small,
    # one's waits are the other's work
    done = dict(_in_threads(("gbt", "logistic_regression", CHAMPION), task,
                            bool(pc.get("parallel_targets", True)), f"propensity-{target}"))
    candidates, current = [done["gbt"], done["logistic_regression"]], done[CHAMPION]
    t_fit = time.time()
    best = max(candidates, key=lambda c: (_num(c.metrics[selection]), c.kind == "gbt"))
    for c in candidates:
        _log_to(parent_id, {f"{target}_{c.kind}_{k}": v for k, v in c.metrics.items()})
    t_eval = time.time()
    best = _calibrated(target, best, calib_rows, held, cal_method, summary, parent_id)
    _recency_baseline(target, best, held, active_days, summary, parent_id)
    t_cal = time.time()

    # compare first: only a promoted candidate is logged (slow) and registered
    out = promote_if_better(best, held, inputs, name, selection, min_improvement,
                            tags={"target": target, "as_of": str(as_of)}, current=current)
    champion = (out.model, name, out.version)
    log.info("propensity %s: %.1fs fitting (GBT %.1fs, tuning %s; baseline %.1fs), evaluating and loading the "
             "champion, %.1fs "
             "comparing, %.1fs calibration and baselines, %.1fs champion", target, t_fit - t_target, fit_s["gbt"],
             candidates[0].info.get("tuning"), fit_s["logistic_regression"], t_eval - t_fit, t_cal - t_eval,
             time.time() - t_cal)
    _record_champion(target, best, out, selection, summary, parent_id)
    train.unpersist()
    held.unpersist()
    if calib_rows is not None:
        calib_rows.unpersist()

    return champion, summary


def _in_threads(names, work, side_by_side: bool, label: str = "propensity") -> list[tuple[str, Any]]:
    """``(name, work(name))`` for every name, in the order given; all at once in threads when
    ``side_by_side`` (their Spark jobs are small: one's driver-side waits are the other's working
    time). The first failure, in the order given, is raised after all have ended."""
    names = list(names)
    return list(zip(names, parallel.map_in_threads(names, work, len(names) if side_by_side else 1, label)))


def run(ctx: JobContext) -> dict:
    """Build labels, train and evaluate both targets, update champions, score as_of."""
    import mlflow

    from seglake.core import tracking

    spark, cfg = ctx.spark, ctx.cfg
    pc = cfg["propensity"]
    selection = str(pc["selection_metric"])
    if selection not in _METRIC_KEYS:
        raise ValueError(f"propensity.selection_metric must be one of {', '.join(_METRIC_KEYS)}, got {selection!r}")
    min_improvement = float(pc["min_improvement"])
    if not 0.0 <= min_improvement < 1.0:
        raise ValueError(f"propensity.min_improvement must be in [0, 1), got {min_improvement}")
    tuning, train_ratio, folds = str(pc["tuning"]), float(pc["holdout_train_ratio"]), int(pc["cv_folds"])
    check_tuning(tuning, train_ratio, folds)  # before any work, whatever the grid's size
    cal_method, cal_share = str(pc.get("calibration", "platt")), float(pc.get("calibration_share", 0.5))
    if cal_method not in CALIBRATION_METHODS:
        raise ValueError(f"propensity.calibration must be one of {', '.join(CALIBRATION_METHODS)}, got {cal_method!r}")
    if cal_method != "none" and not 0.0 < cal_share < 1.0:
        raise ValueError(f"propensity.calibration_share must be in (0, 1), got {cal_share}")
    active_days = int(pc.get("active_days", 14))
    as_of = ctx.resolve_as_of()
    horizon = int(ctx.args.get("horizon_days") or pc["horizon_days"])
    seed = int(pc["seed"])
    inputs = input_features(cfg)
    purchase_types = list(cfg.get("features.purchase_event_types") or ["purchase"])

    # consent: a customer withdrawn at as_of is in no snapshot, event or label of this run; a
    # snapshot whose label window holds a withdrawal is left out (unknown, not churned)
    events = enriched.read(spark, cfg, consent_at=as_of,
                           columns=("event_key", "event_type", "event_ts", "session_id", "session_key",
                                    "source", "device_type", "revenue_usd", "scroll_depth",
                                    "duration_s", "properties"))
    first = tables.read(spark, cfg, EVENTS_TABLE).agg(F.min("event_date")).first()[0]
    if first is None:
        raise ValueError("silver.events is empty: nothing to train propensity models on")
    earliest = first + timedelta(days=int(pc["min_history_days"]))
    train_dates, eval_date = snapshot_dates(as_of, horizon, int(pc["train_snapshots"]),
                                            int(pc["train_step_days"]), earliest)

    t0 = time.time()
    snaps, cuts = snapshot_features(ctx, [*train_dates, eval_date], as_of, events)
    # materialized and cut from their plan (the features of every snapshot date, the labels' join):
    # the training's hundreds of small queries each re-analyse the plan of the frames they read, which
    # with a persisted frame is that whole plan (measured: 2.9 s -> 1.0 s per Platt fit, the targets
    # 60 s -> 41 s one after the other). One row per customer and snapshot, in executor storage; a lost
    # executor fails the run, whose rerun recomputes them
    snaps = exclude_withdrawn(spark, cfg, snaps, as_of).localCheckpoint()
    labelled = build_labels(snaps.filter(F.col("as_of_date") < F.lit(as_of)), events, horizon, purchase_types)
    labelled = drop_censored(labelled, consent_actions(spark, cfg, as_of), horizon).localCheckpoint()
    current = snaps.filter(F.col("as_of_date") == F.lit(as_of))
    n_current = current.count()
    log.info("propensity: features of %d snapshot dates in %.1fs", len(cuts), time.time() - t0)
    if n_current == 0:
        raise ValueError(f"no customers with features at as_of {as_of}: run features first")

    summary: dict[str, Any] = {"as_of": as_of.isoformat(), "train_snapshots": ", ".join(map(str, train_dates)),
                               "eval_snapshot": eval_date.isoformat()}
    with tracking.start_run(spark, cfg, "propensity",
                            [EVENTS_TABLE, ENRICHED_EVENTS, IDENTITY_MAP, CONSENT_LEDGER],
                            f"propensity {as_of}", ctx.run_id, as_of) as parent:
        mlflow.log_params({"horizon_days": horizon, "train_dates": ",".join(map(str, train_dates)),
                           "eval_date": str(eval_date), "inputs": ",".join(inputs),
                           "selection_metric": selection,
                           "snapshot_knowledge": "; ".join(f"{d}: {c}" for d, c in sorted(cuts.items()))[:6000]})
        work = functools.partial(_train_target, labelled=labelled, train_dates=train_dates, eval_date=eval_date,
                                 as_of=as_of, inputs=inputs, pc=pc, seed=seed, selection=selection,
                                 min_improvement=min_improvement, cal_method=cal_method, cal_share=cal_share,
                                 active_days=active_days, parent_id=parent.info.run_id)
        champions: dict[str, tuple[PipelineModel, str, int]] = {}
        for target, (champion, part) in _in_threads(TARGETS, work, bool(pc.get("parallel_targets", True))):
            champions[target] = champion
            summary.update(part)

        scores = None
        for target, (model, name, v) in champions.items():
            col = score(model, current).select("customer_id", F.col(PROB_COL).alias(f"{target}_probability"))
            scores = col if scores is None else scores.join(col, "customer_id")
        scores = scores.select(
            "customer_id", F.lit(as_of).cast("date").alias("as_of_date"), "churn_probability",
            "purchase_probability",
            F.lit(";".join(f"{name}/{v}" for _, name, v in champions.values())).alias("model_version"),
            F.lit(champions["churn"][2]).alias("churn_model_version"),
            F.lit(champions["purchase"][2]).alias("purchase_model_version"),
            F.lit(parent.info.run_id).alias("model_run_id"))
        where = f"as_of_date = '{as_of.isoformat()}'"
        tables.overwrite(scores, cfg, SCORES_TABLE, partition_by=("as_of_date",),
                         replace_where=where if tables.exists(spark, cfg, SCORES_TABLE) else None)
        written = tables.read(spark, cfg, SCORES_TABLE).filter(F.col("as_of_date") == F.lit(as_of))
        stats = written.agg(F.count("*").alias("n"), F.avg("churn_probability").alias("churn"),
                            F.avg("purchase_probability").alias("purchase")).first()
        mlflow.log_metrics({"scored_customers": float(stats["n"]), "mean_churn_probability": stats["churn"],
                            "mean_purchase_probability": stats["purchase"]})
        summary["scored_customers"] = int(stats["n"])
        summary["mean_churn_probability"] = round(float(stats["churn"]), 4)
        summary["mean_purchase_probability"] = round(float(stats["purchase"]), 4)
        summary["mlflow_run"] = parent.info.run_id
    release_checkpoint(labelled)
    release_checkpoint(snaps)
    return summary
