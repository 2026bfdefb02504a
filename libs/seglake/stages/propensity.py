"""Propensity: churn and purchase probabilities per customer, trained point-in-time.

``seglake run propensity --as-of D`` (D = the scoring date; features use events before D):

- **Labels** (:func:`build_labels`), for a snapshot date t and horizon h = ``propensity.horizon_days``:
  churn = 1 when the customer has NO profiling event in ``[t, t + h)``; purchase = 1 when it
  has a purchase (``features.purchase_event_types``) in ``[t, t + h)``.
- **No leakage** (:func:`snapshot_dates`): the evaluation snapshot is ``D - h`` (its labels
  end at D, so they are observed); training snapshots are ``D - 2h, D - 2h - step, ...``
  (``propensity.train_snapshots`` of them, ``propensity.train_step_days`` apart): every
  training label window ends on or before the evaluation date. Features of a snapshot come
  from gold.customer_features when that as-of date is there, else they are computed with
  :func:`seglake.stages.features.compute_features` (same code, same point-in-time cut).
- **Models**: a Spark ML Pipeline (null fill -> VectorAssembler -> GBTClassifier) tuned by
  ``CrossValidator`` over ``propensity.grid_max_depth`` x ``propensity.grid_max_iter``, against
  a logistic-regression baseline (fill -> assemble -> standardize -> LogisticRegression).
  The model inputs are the RAW features (``propensity.inputs`` or ``features.model_inputs``), so
  a model scores any as-of date without that date's scaling statistics.
- **Evaluation** on the evaluation snapshot: AUC-ROC, AUC-PR, log loss, Brier score, a
  calibration table by decile of predicted probability (+ plot), feature importances; all in
  MLflow (a parent run per job run, a child run per target and model).
- **Registry**: the better of GBT and baseline (on ``propensity.selection_metric``) is logged
  with its signature and registered as ``<propensity.model_name_prefix>-<target>``; the alias
  ``champion`` moves to it only when it beats the current champion, both scored on the same
  held-out snapshot, by more than ``propensity.min_improvement`` (retraining on the same data
  gives metrics equal up to float rounding, and such a tie must not move the alias).
- **Scoring**: the champions score the features at D -> gold.propensity_scores
  (customer_id, as_of_date, churn_probability, purchase_probability, model_version, ...).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Sequence

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, LogisticRegression
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import QuantileDiscretizer, SQLTransformer, StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.contracts import customer_events
from seglake.core.context import JobContext

log = logging.getLogger(__name__)

#: the stage runner resolves ``--as-of`` (default: the day after the last event) before run()
USES_AS_OF = True

TARGETS = ("churn", "purchase")
LABEL_COL = "label"
PROB_COL = "p"
FEATURES_TABLE = "gold.customer_features"
EVENTS_TABLE = "silver.events"
SCORES_TABLE = "gold.propensity_scores"
CHAMPION = "champion"
#: metric differences up to this are float noise (a retrain on the same data differs by ~1e-16)
TIE_TOLERANCE = 1e-9
_METRIC_KEYS = {"auc_roc": "areaUnderROC", "auc_pr": "areaUnderPR"}


# --------------------------------------------------------------------------- labels and dates


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


# --------------------------------------------------------------------------- models


def input_features(cfg) -> list[str]:
    """Raw feature columns the models use: ``propensity.inputs`` or ``features.model_inputs``."""
    names = list(cfg.get("propensity.inputs") or cfg.get("features.model_inputs") or [])
    if not names:
        raise ValueError("no propensity inputs: set features.model_inputs (or propensity.inputs) in the config")
    return names


def _fill_stage(input_cols: Sequence[str], fill_value: float) -> SQLTransformer:
    """Cast inputs to double and fill nulls and NaN (e.g. recency_purchase_days of a non-buyer)."""
    exprs = ", ".join(f"nanvl(coalesce(CAST(`{c}` AS DOUBLE), {float(fill_value)!r}), {float(fill_value)!r}) "
                      f"AS `_in_{c}`"
                      for c in input_cols)
    return SQLTransformer(statement=f"SELECT *, {exprs} FROM __THIS__")


def gbt_pipeline(input_cols: Sequence[str], seed: int, fill_value: float = -1.0) -> tuple[Pipeline, GBTClassifier]:
    """Fill -> VectorAssembler -> GBTClassifier (returned too, for the tuning grid)."""
    gbt = GBTClassifier(featuresCol="features", labelCol=LABEL_COL, seed=seed)
    assembler = VectorAssembler(inputCols=[f"_in_{c}" for c in input_cols], outputCol="features")
    return Pipeline(stages=[_fill_stage(input_cols, fill_value), assembler, gbt]), gbt


def lr_pipeline(input_cols: Sequence[str], fill_value: float = -1.0, reg_param: float = 0.01) -> Pipeline:
    """Fill -> VectorAssembler -> StandardScaler -> LogisticRegression (the baseline)."""
    assembler = VectorAssembler(inputCols=[f"_in_{c}" for c in input_cols], outputCol="raw_features")
    scaler = StandardScaler(inputCol="raw_features", outputCol="features", withMean=True, withStd=True)
    lr = LogisticRegression(featuresCol="features", labelCol=LABEL_COL, maxIter=100, regParam=reg_param)
    return Pipeline(stages=[_fill_stage(input_cols, fill_value), assembler, scaler, lr])


def tune_gbt(train: DataFrame, input_cols: Sequence[str], seed: int, max_depths: Sequence[int],
             max_iters: Sequence[int], folds: int, parallelism: int = 1) -> tuple[PipelineModel, dict]:
    """Cross-validated GBT over the (maxDepth x maxIter) grid; (best pipeline model, cv info)."""
    pipeline, gbt = gbt_pipeline(input_cols, seed)
    grid = (ParamGridBuilder().addGrid(gbt.maxDepth, [int(d) for d in max_depths])
            .addGrid(gbt.maxIter, [int(i) for i in max_iters]).build())
    cv = CrossValidator(estimator=pipeline, estimatorParamMaps=grid, numFolds=folds, seed=seed,
                        evaluator=BinaryClassificationEvaluator(labelCol=LABEL_COL, metricName="areaUnderROC"),
                        parallelism=parallelism)
    model = cv.fit(train)
    best_i = max(range(len(grid)), key=lambda i: model.avgMetrics[i])
    best = {p.name: v for p, v in grid[best_i].items()}
    info = {"cv_best_" + k: v for k, v in best.items()}
    info["cv_best_auc_roc"] = float(model.avgMetrics[best_i])
    return model.bestModel, info


def with_probability(predictions: DataFrame) -> DataFrame:
    """Add ``p`` = P(label = 1) from the probability vector (built-in vector_to_array, no UDF)."""
    return predictions.withColumn(PROB_COL, vector_to_array(F.col("probability")).getItem(1))


def evaluate(scored: DataFrame, label_col: str = LABEL_COL, prob_col: str = PROB_COL) -> dict[str, float]:
    """AUC-ROC, AUC-PR, log loss, Brier score, positives and count of scored rows (in Spark).

    AUCs are NaN when the labels have only one class.
    """
    eps = 1e-15
    p = F.least(F.greatest(F.col(prob_col), F.lit(eps)), F.lit(1 - eps))
    y = F.col(label_col)
    row = scored.agg(
        F.count("*").alias("n"), F.sum(y).alias("pos"),
        F.avg(-(y * F.log(p) + (1 - y) * F.log(1 - p))).alias("log_loss"),
        F.avg((F.col(prob_col) - y) * (F.col(prob_col) - y)).alias("brier")).first()
    n, pos = int(row["n"]), float(row["pos"] or 0.0)
    nan = float("nan")
    out = {"n": float(n), "positives": pos,
           "log_loss": nan if row["log_loss"] is None else float(row["log_loss"]),
           "brier": nan if row["brier"] is None else float(row["brier"])}
    for key, metric in _METRIC_KEYS.items():
        if 0 < pos < n:
            # numBins=0: the exact curve (the default 1000 bins shifts AUC in the 6th decimal)
            ev = BinaryClassificationEvaluator(rawPredictionCol=prob_col, labelCol=label_col,
                                               metricName=metric, numBins=0)
            out[key] = float(ev.evaluate(scored))
        else:
            out[key] = float("nan")
    return out


def calibration(scored: DataFrame, buckets: int = 10, label_col: str = LABEL_COL,
                prob_col: str = PROB_COL) -> DataFrame:
    """Calibration by decile of predicted probability: bucket, n, mean predicted, observed rate.

    Buckets come from approximate quantiles (ties may merge deciles).
    """
    qd = QuantileDiscretizer(numBuckets=buckets, inputCol=prob_col, outputCol="_bucket",
                             relativeError=0.001, handleInvalid="keep")
    binned = qd.fit(scored).transform(scored)
    return (binned.groupBy(F.col("_bucket").cast("int").alias("decile"))
            .agg(F.count("*").alias("n"), F.avg(prob_col).alias("mean_predicted"),
                 F.avg(label_col).alias("observed_rate"), F.min(prob_col).alias("min_predicted"),
                 F.max(prob_col).alias("max_predicted"))
            .orderBy("decile"))


def feature_importances(model: PipelineModel, input_cols: Sequence[str]) -> dict[str, float]:
    """GBT feature importances, or absolute standardized LR coefficients, by input name."""
    last = model.stages[-1]
    if hasattr(last, "featureImportances"):
        values = last.featureImportances.toArray()
    else:
        values = [abs(v) for v in last.coefficients.toArray()]
    return {c: float(v) for c, v in zip(input_cols, values)}


@dataclass
class Candidate:
    """One trained model of one target with its held-out metrics."""

    kind: str
    model: PipelineModel
    metrics: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- plots


def _calibration_plot(rows: list[dict], title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    ax.plot([r["mean_predicted"] for r in rows], [r["observed_rate"] for r in rows], marker="o", label="model")
    ax.set(xlabel="mean predicted probability (decile)", ylabel="observed rate", title=title,
           xlim=(0, 1), ylim=(0, 1))
    ax.legend()
    return fig


def _log_figure(fig, path: str) -> None:
    import matplotlib.pyplot as plt
    import mlflow

    mlflow.log_figure(fig, path)
    plt.close(fig)


# --------------------------------------------------------------------------- I/O helpers


def features_at(ctx: JobContext, dates: Sequence[date], events: DataFrame | None = None) -> DataFrame:
    """Features for ``dates``: from gold.customer_features, computing dates absent there."""
    from seglake.stages import features as feat
    from seglake.stages import sessions

    spark, cfg = ctx.spark, ctx.cfg
    dates = sorted(set(dates))
    have: set[date] = set()
    frames = []
    if tables.exists(spark, cfg, FEATURES_TABLE):
        table = tables.read(spark, cfg, FEATURES_TABLE).filter(F.col("as_of_date").isin(dates))
        # at most len(dates) rows: small.
        have = {r[0] for r in table.select("as_of_date").distinct().collect()}
        if have:
            frames.append(table.select(*feat.FEATURE_COLUMNS))
    missing = [d for d in dates if d not in have]
    if missing:
        log.info("propensity: computing features for snapshot dates %s (not in %s)", missing, FEATURES_TABLE)
        ev = events if events is not None else customer_events(spark, cfg, drop_unattached=False)
        ev = ev.filter(F.col("event_ts") < F.lit(max(missing)).cast("timestamp"))
        sev = sessions.sessionize(ev, int(cfg.get("sessions.inactivity_minutes")),
                                  bool(cfg.get("sessions.split_on_session_id", True)))
        params = feat.FeatureParams.from_config(cfg)
        for d in missing:
            frames.append(feat.compute_features(sev, d, params).select(*feat.FEATURE_COLUMNS))
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out


def _champion(client, name: str):
    from mlflow.exceptions import MlflowException
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def score(model: PipelineModel, features: DataFrame) -> DataFrame:
    """``features`` + ``p`` (probability of the positive class) from a fitted pipeline."""
    return with_probability(model.transform(features)).select(*features.columns, PROB_COL)


def log_and_register(best: Candidate, held: DataFrame, inputs: Sequence[str], name: str,
                     tags: dict[str, str] | None = None) -> int:
    """Log ``best.model`` (with its signature) in its own MLflow run and register it; the version.

    The held-out metrics are set as ``heldout_<metric>`` tags of the model version.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from seglake.core import tracking

    with mlflow.start_run(run_id=best.info["run_id"], nested=True):
        sample = held.limit(20)  # 20 rows for the signature: small
        signature = infer_signature(sample.select(*inputs).toPandas(),
                                    best.model.transform(sample).select("prediction").toPandas())
        logged = mlflow.spark.log_model(best.model, artifact_path="model", signature=signature,
                                        pip_requirements=tracking.model_pip_requirements())
    version = mlflow.register_model(logged.model_uri, name, tags={"model": best.kind, **(tags or {})})
    client = MlflowClient()
    for key, value in best.metrics.items():
        if value == value:
            client.set_model_version_tag(name, str(version.version), f"heldout_{key}", f"{value:.6f}")
    return int(version.version)


def update_champion(name: str, version: int, new_metric: float, held: DataFrame,
                    selection: str, min_improvement: float = 0.0) -> tuple[bool, float, int, PipelineModel | None]:
    """Move alias ``champion`` of ``name`` to ``version`` when it beats the current champion.

    The current champion is loaded and scored on the same held-out rows; the new version
    wins when its ``selection`` metric is higher by more than ``min_improvement`` (and by more
    than float noise, ``TIE_TOLERANCE``, even when that is 0), when there is no champion yet,
    or when the champion cannot score these rows (e.g. other inputs).

    Returns:
        (promoted, champion's held-out metric or NaN, champion version after the call,
        the champion's model when it was kept, else None).
    """
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    current = _champion(client, name)
    champ_metric, champ_model = float("nan"), None
    if current is not None:
        try:
            champ_model = mlflow.spark.load_model(f"models:/{name}@{CHAMPION}")
            champ_metric = evaluate(score(champ_model, held))[selection]
        except Exception as exc:  # noqa: BLE001 - an incompatible old champion loses
            log.warning("propensity: the current %s champion (v%s) cannot score the held-out rows (%s); "
                        "the new model replaces it", name, current.version, exc)
            champ_model = None
    margin = max(float(min_improvement), TIE_TOLERANCE)
    promote = current is None or champ_model is None or _num(new_metric) > _num(champ_metric) + margin
    if promote:
        client.set_registered_model_alias(name, CHAMPION, str(version))
        return True, champ_metric, version, None
    log.info("propensity: %s v%d (%s %.4f) does not beat champion v%s (%.4f) by more than %g; alias unchanged",
             name, version, selection, new_metric, current.version, champ_metric, margin)
    return False, champ_metric, int(current.version), champ_model


# --------------------------------------------------------------------------- job


def add_arguments(parser) -> None:
    parser.add_argument("--horizon-days", type=int, default=None, dest="horizon_days",
                        help="override propensity.horizon_days")


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
    as_of = ctx.resolve_as_of()
    horizon = int(ctx.args.get("horizon_days") or pc["horizon_days"])
    seed = int(pc["seed"])
    inputs = input_features(cfg)
    purchase_types = list(cfg.get("features.purchase_event_types") or ["purchase"])

    events = customer_events(spark, cfg, drop_unattached=False).select("customer_id", "event_key", "event_type", "event_ts", "session_id",
                                           "source", "device_type", "revenue_usd", "scroll_depth",
                                           "duration_s", "properties")
    first = tables.read(spark, cfg, EVENTS_TABLE).agg(F.min("event_date")).first()[0]
    if first is None:
        raise ValueError("silver.events is empty: nothing to train propensity models on")
    earliest = first + timedelta(days=int(pc["min_history_days"]))
    train_dates, eval_date = snapshot_dates(as_of, horizon, int(pc["train_snapshots"]),
                                            int(pc["train_step_days"]), earliest)

    snaps = features_at(ctx, [*train_dates, eval_date, as_of], events).persist()
    labelled = build_labels(snaps.filter(F.col("as_of_date") < F.lit(as_of)), events, horizon,
                            purchase_types).persist()
    current = snaps.filter(F.col("as_of_date") == F.lit(as_of))
    n_current = current.count()
    if n_current == 0:
        raise ValueError(f"no customers with features at as_of {as_of}: run features first")

    summary: dict[str, Any] = {"as_of": as_of.isoformat(), "train_snapshots": ", ".join(map(str, train_dates)),
                               "eval_snapshot": eval_date.isoformat()}
    champions: dict[str, tuple[PipelineModel, str, int]] = {}
    with tracking.start_run(spark, cfg, "propensity", [EVENTS_TABLE, FEATURES_TABLE, "silver.identity_map"],
                            f"propensity {as_of}", ctx.run_id, as_of) as parent:
        mlflow.log_params({"horizon_days": horizon, "train_dates": ",".join(map(str, train_dates)),
                           "eval_date": str(eval_date), "inputs": ",".join(inputs),
                           "selection_metric": selection})
        for target in TARGETS:
            data = labelled.withColumn(LABEL_COL, F.col(f"{target}_label"))
            train = data.filter(F.col("as_of_date").isin(train_dates)).cache()
            held = data.filter(F.col("as_of_date") == F.lit(eval_date)).cache()
            counts = train.agg(F.count("*").alias("n"), F.sum(LABEL_COL).alias("pos")).first()
            if held.limit(1).count() == 0:
                raise ValueError(f"propensity: no customers at the evaluation snapshot {eval_date}")
            if not counts["pos"] or counts["pos"] == counts["n"]:
                raise ValueError(f"propensity: the {target} training labels have a single class "
                                 f"({counts['pos']} positives of {counts['n']}): need more history or customers")
            candidates = []
            gbt_model, cv_info = tune_gbt(train, inputs, seed, pc["grid_max_depth"], pc["grid_max_iter"],
                                          int(pc["cv_folds"]), int(pc["cv_parallelism"]))
            lr_model = lr_pipeline(inputs).fit(train)
            for kind, model, info in (("gbt", gbt_model, cv_info), ("logistic_regression", lr_model, {})):
                scored = score(model, held).cache()
                metrics = evaluate(scored)
                calib = [r.asDict() for r in calibration(scored).collect()]  # <= 10 rows
                importances = feature_importances(model, inputs)
                with mlflow.start_run(run_name=f"{target} {kind}", nested=True) as child:
                    mlflow.set_tags({"seglake.stage": "propensity", "seglake.target": target, "seglake.model": kind})
                    mlflow.log_params({"target": target, "model": kind, "train_rows": int(counts["n"]),
                                       "train_positives": int(counts["pos"]), **info})
                    mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})
                    mlflow.log_table({k: [r[k] for r in calib] for k in calib[0]}, "calibration.json")
                    _log_figure(_calibration_plot(calib, f"{target} {kind}"), "plots/calibration.png")
                    mlflow.log_dict(dict(sorted(importances.items(), key=lambda kv: -kv[1])),
                                    "feature_importances.json")
                candidates.append(Candidate(kind, model, metrics, {"run_id": child.info.run_id,
                                                                   "calibration": calib}))
                scored.unpersist()
            best = max(candidates, key=lambda c: (_num(c.metrics[selection]), c.kind == "gbt"))
            for c in candidates:
                mlflow.log_metrics({f"{target}_{c.kind}_{k}": v for k, v in c.metrics.items() if v == v})

            name = f"{pc['model_name_prefix']}-{target}"
            v = log_and_register(best, held, inputs, name, tags={"target": target, "as_of": str(as_of)})
            promote, champ_metric, champ_v, champ_model = update_champion(
                name, v, best.metrics[selection], held, selection, min_improvement)
            champions[target] = (best.model if promote else champ_model, name, champ_v)
            new_metric = best.metrics[selection]
            mlflow.log_metric(f"{target}_promoted", float(promote))
            if new_metric == new_metric:
                mlflow.log_metric(f"{target}_heldout_{selection}", new_metric)
            if champ_metric == champ_metric:
                mlflow.log_metric(f"{target}_champion_heldout_{selection}", champ_metric)
            summary[f"{target}_model"] = f"{best.kind} v{v}" + (" -> champion" if promote else
                                                                   f" (champion stays v{champ_v})")
            summary[f"{target}_heldout_{selection}"] = round(_num(new_metric), 4)
            if champ_metric == champ_metric:
                summary[f"{target}_champion_heldout_{selection}"] = round(champ_metric, 4)
            summary[f"{target}_heldout_brier"] = round(best.metrics["brier"], 4)
            train.unpersist()
            held.unpersist()

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
    labelled.unpersist()
    snaps.unpersist()
    return summary


def _num(x: float) -> float:
    """NaN-safe ordering value (NaN counts as worst)."""
    return float("-inf") if x != x else float(x)
