"""Propensity models: the GBT and logistic-regression pipelines, their tuning and evaluation.

:func:`gbt_pipeline` and :func:`lr_pipeline` build Spark ML pipelines over the raw inputs of
:func:`input_features` (nulls filled by :func:`_fill_stage`), :func:`tune_gbt` tunes the GBT grid
(one holdout split or k-fold cross-validation), :func:`assess` measures a model on held-out rows
in one Spark query (metrics, calibration deciles, reliability curve; :func:`evaluate` = its
metrics), :func:`score_aucs` the AUC of plain scores (baselines) and :func:`feature_importances`
what the model uses; :class:`Candidate` carries one trained model and its metrics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, LogisticRegression
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import SQLTransformer, StandardScaler, VectorAssembler, VectorSlicer
from pyspark.ml.functions import vector_to_array
from pyspark.ml.regression import IsotonicRegression
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seglake.stages.propensity.common import LABEL_COL, PROB_COL


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


TUNING_METHODS = ("holdout", "cv")


def check_tuning(method: str, train_ratio: float, folds: int) -> None:
    """Raise ValueError naming the setting when ``propensity.tuning``, ``holdout_train_ratio``
    or ``cv_folds`` is unusable (the job calls it before any work)."""
    if method not in TUNING_METHODS:
        raise ValueError(f"propensity.tuning must be one of {', '.join(TUNING_METHODS)}, got {method!r}")
    if method == "holdout" and not 0.0 < train_ratio < 1.0:
        raise ValueError(f"propensity.holdout_train_ratio must be in (0, 1), got {train_ratio}")
    if method == "cv" and folds < 2:
        raise ValueError(f"propensity.cv_folds must be >= 2, got {folds}")


FOLD_COL = "_fold"
_SPLIT_BUCKETS = 10_000


def _customer_hash(seed: int):
    return F.pmod(F.xxhash64(F.lit(int(seed)), F.col("customer_id")), F.lit(_SPLIT_BUCKETS))


def customer_folds(df: DataFrame, folds: int, seed: int) -> DataFrame:
    """``df`` + ``_fold`` in [0, folds) from a hash of customer_id: all the snapshots of a
    customer fall in ONE fold, so no customer is in training and validation at once."""
    return df.withColumn(FOLD_COL, F.pmod(_customer_hash(seed), F.lit(int(folds))).cast("int"))


def customer_split(df: DataFrame, share: float, seed: int) -> tuple[DataFrame, DataFrame]:
    """(rows of about ``share`` of the customers, the rest), split by a hash of customer_id:
    deterministic, independent of partitioning, and every snapshot of a customer on one side."""
    inside = _customer_hash(seed) < F.lit(int(round(share * _SPLIT_BUCKETS)))
    return df.where(inside), df.where(~inside)


def tune_gbt(train: DataFrame, input_cols: Sequence[str], seed: int, max_depths: Sequence[int],
             max_iters: Sequence[int], folds: int = 3, parallelism: int = 1, method: str = "cv",
             train_ratio: float = 0.75) -> tuple[PipelineModel, dict]:
    """The GBT of the best (maxDepth x maxIter) grid point, refitted on all of ``train``; (model, tuning info).

    Both methods keep a customer's snapshots together (``customer_id`` is required):
    ``method="cv"``: k-fold CrossValidator over customer folds (:func:`customer_folds`; folds x
    grid + 1 fits); ``"holdout"``: one split of the customers (:func:`customer_split`,
    ``train_ratio`` of them to fit; grid + 1 fits). A grid of one point is fitted once, without
    tuning. Both score AUC-ROC on the left-out customers; ties go to the earlier grid point
    (depth, then iterations, in the order given).
    """
    check_tuning(method, train_ratio, folds)
    pipeline, gbt = gbt_pipeline(input_cols, seed)
    grid = (ParamGridBuilder().addGrid(gbt.maxDepth, [int(d) for d in max_depths])
            .addGrid(gbt.maxIter, [int(i) for i in max_iters]).build())
    if not grid:
        raise ValueError("propensity.grid_max_depth and grid_max_iter need at least one value each")
    if len(grid) == 1:  # nothing to choose: tuning would only fit more models with the same parameters
        model = pipeline.fit(train, grid[0])
        return model, {"tuning": "none (one grid point)",
                       **{"tuned_best_" + p.name: v for p, v in grid[0].items()}}
    evaluator = BinaryClassificationEvaluator(labelCol=LABEL_COL, metricName="areaUnderROC")
    if method == "cv":
        tuner = CrossValidator(estimator=pipeline, estimatorParamMaps=grid, numFolds=folds, seed=seed,
                               evaluator=evaluator, parallelism=parallelism, foldCol=FOLD_COL)
        fitted = tuner.fit(customer_folds(train, folds, seed))
        scores = list(fitted.avgMetrics)
        best_model = fitted.bestModel
    else:
        fit_part, validation = customer_split(train, train_ratio, seed)
        scores = [evaluator.evaluate(pipeline.fit(fit_part, pm).transform(validation)) for pm in grid]
        best_model = None
    best_i = int(np.argmax(scores))  # the first maximum
    if best_model is None:
        best_model = pipeline.fit(train, grid[best_i])
    info = {"tuning": f"{folds}-fold cv by customer" if method == "cv"
            else f"holdout by customer (train ratio {train_ratio})"}
    info.update({"tuned_best_" + p.name: v for p, v in grid[best_i].items()})
    info["tuned_best_auc_roc"] = float(scores[best_i])
    return best_model, info


CALIBRATED_COL = "calibrated_p"          # isotonic calibration's output (a probability)
_PLATT_PROB = "_platt_probability"       # Platt scaling's probability vector
CALIBRATION_METHODS = ("platt", "isotonic", "none")


def with_probability(predictions: DataFrame) -> DataFrame:
    """Add ``p`` = P(label = 1): the calibrated probability when the pipeline ends with a
    calibrator (:func:`calibrate`), else the classifier's probability vector (built-in
    vector_to_array, no UDF)."""
    if CALIBRATED_COL in predictions.columns:
        p = F.col(CALIBRATED_COL)
    elif _PLATT_PROB in predictions.columns:
        p = vector_to_array(F.col(_PLATT_PROB)).getItem(1)
    else:
        p = vector_to_array(F.col("probability")).getItem(1)
    return predictions.withColumn(PROB_COL, p)


def calibrate(model: PipelineModel, rows: DataFrame, method: str) -> PipelineModel:
    """``model`` + a calibrator fitted on ``rows`` (labelled rows the model was NOT trained on).

    ``platt``: a logistic regression on the classifier's margin (rawPrediction[1]), monotone
    (AUC unchanged), two parameters; ``isotonic``: Spark's IsotonicRegression of the label on the
    predicted probability (a monotone step function; needs more rows). The returned pipeline
    scores through :func:`with_probability` like any other and is what gets registered.
    """
    if method not in CALIBRATION_METHODS or method == "none":
        raise ValueError(f"calibrate: method must be platt or isotonic, got {method!r}")
    scored = model.transform(rows)
    if method == "isotonic":
        stage = IsotonicRegression(featuresCol="probability", featureIndex=1, labelCol=LABEL_COL,
                                   predictionCol=CALIBRATED_COL).fit(scored)
        return PipelineModel(stages=[*model.stages, stage])
    platt = Pipeline(stages=[
        VectorSlicer(inputCol="rawPrediction", outputCol="_margin", indices=[1]),
        LogisticRegression(featuresCol="_margin", labelCol=LABEL_COL, probabilityCol=_PLATT_PROB,
                           rawPredictionCol="_platt_raw", predictionCol="_platt_prediction", regParam=0.0,
                           maxIter=100)]).fit(scored)
    return PipelineModel(stages=[*model.stages, *platt.stages])


_ORDER_BUCKETS = 1024   # the running counts of a ranking are windows per bucket of the score


def _ranking(rows: DataFrame) -> DataFrame:
    """One row per (``_g``, distinct score ``_s``) of ``rows`` (``_g``, ``_s``, ``_y`` in {0, 1}): ``_n``
    rows and ``_pos`` positives with that score, and, counting from the highest score down, ``_ge``
    rows and ``_tp`` positives with a score >= it; ``_total`` rows of the group.

    The running counts are windows partitioned by (group, bucket of the score; the bucket is a
    monotone function of any double) plus each bucket's offset, a running sum over the buckets
    (at most ``_ORDER_BUCKETS`` rows per group): no single-partition sort of the rows, one job
    per stage of one query. Rows with a null or NaN score are left out.
    """
    from pyspark.sql import Window

    base = (rows.where(F.col("_s").isNotNull() & ~F.isnan("_s"))
            .groupBy("_g", "_s").agg(F.count(F.lit(1)).alias("_n"), F.sum("_y").alias("_pos"))
            .withColumn("_b", F.least(F.floor((F.atan("_s") / F.lit(math.pi) + F.lit(0.5)) * _ORDER_BUCKETS),
                                      F.lit(_ORDER_BUCKETS - 1)).cast("int")))
    down = Window.partitionBy("_g", "_b").orderBy(F.desc("_s")).rowsBetween(Window.unboundedPreceding, 0)
    ranked = base.select("*", F.sum("_n").over(down).alias("_ge_in"), F.sum("_pos").over(down).alias("_tp_in"))
    above = Window.partitionBy("_g").orderBy(F.desc("_b")).rowsBetween(Window.unboundedPreceding, -1)
    offsets = (base.groupBy("_g", "_b").agg(F.sum("_n").alias("_bn"), F.sum("_pos").alias("_bp"))
               .select("_g", "_b", F.coalesce(F.sum("_bn").over(above), F.lit(0)).alias("_ge_off"),
                       F.coalesce(F.sum("_bp").over(above), F.lit(0.0)).alias("_tp_off"),
                       F.sum("_bn").over(Window.partitionBy("_g")).alias("_total")))
    return (ranked.join(F.broadcast(offsets), ["_g", "_b"])
            .select("_g", "_s", "_n", "_pos", (F.col("_ge_off") + F.col("_ge_in")).alias("_ge"),
                    (F.col("_tp_off") + F.col("_tp_in")).alias("_tp"), "_total"))


def _auc_aggs() -> list:
    """AUC-ROC (ties count one half) and average precision of a :func:`_ranking` group; null
    with one class."""
    pos, n = F.col("_pos"), F.col("_n")
    neg = n - pos
    n_pos, n_neg = F.sum(pos), F.sum(neg)
    return [F.when((n_pos > 0) & (n_neg > 0),
                   F.sum(neg * (F.col("_tp") - pos / 2)) / (n_pos * n_neg)).alias("auc_roc"),
            F.when((n_pos > 0) & (n_neg > 0), F.sum(pos * F.col("_tp") / F.col("_ge")) / n_pos).alias("auc_pr")]


@dataclass(frozen=True)
class Assessment:
    """A model's scores on labelled rows, measured in one Spark query (:func:`assess`).

    ``metrics``: n, positives, log_loss, brier, auc_roc, auc_pr; ``deciles``: by decile of the
    predicted probability (exact ranks; tied scores stay in one decile, so a decile may be
    missing): decile, n, mean_predicted, observed_rate, min_predicted, max_predicted;
    ``reliability``: on ``bins`` equal-width bins of the probability: bin, n, mean_predicted,
    observed_rate; ``ece``: the expected calibration error, sum over bins of n_b / n * |mean
    predicted - observed rate|.
    """

    metrics: dict[str, float]
    deciles: list[dict]
    reliability: list[dict]
    ece: float


def assess(scored: DataFrame, label_col: str = LABEL_COL, prob_col: str = PROB_COL, bins: int = 10) -> Assessment:
    """Every held-out measure of ``scored`` (a probability ``prob_col`` and a 0/1 ``label_col``) from
    ONE Spark query whose result is at most 10 x ``bins`` small rows (:class:`Assessment`).

    AUC-ROC is exact (the Mann-Whitney statistic, ties counted one half: scikit-learn's
    ``roc_auc_score``); ``auc_pr`` is the average precision, the step-wise area under the
    precision-recall curve (scikit-learn's ``average_precision_score``); both NaN with one class.
    The per-score table it aggregates has one row per distinct score, and its running counts
    are computed without moving the rows to one partition (:func:`_ranking`).
    """
    eps = 1e-15
    rows = scored.select(F.lit(0).alias("_g"), F.col(prob_col).cast("double").alias("_s"),
                         F.col(label_col).cast("double").alias("_y"))
    s, pos, n, tp = F.col("_s"), F.col("_pos"), F.col("_n"), F.col("_tp")
    neg = n - pos
    pc = F.least(F.greatest(s, F.lit(eps)), F.lit(1 - eps))
    # one row per (decile, reliability bin) that holds a score: at most 10 x bins rows reach the driver
    cells = (_ranking(rows)
             .groupBy(F.least(F.floor((F.col("_total") - F.col("_ge")) * 10 / F.col("_total")), F.lit(9))
                      .cast("int").alias("decile"),
                      F.least(F.floor(s * bins), F.lit(bins - 1)).cast("int").alias("bin"))
             .agg(F.sum(n).alias("n"), F.sum(pos).alias("pos"), F.sum(n * s).alias("p_sum"),
                  F.min(s).alias("lo"), F.max(s).alias("hi"),
                  F.sum(neg * (tp - pos / 2)).alias("auc_num"),          # positives ranked above, ties 1/2
                  F.sum(pos * tp / F.col("_ge")).alias("ap_num"),         # recall step x precision
                  F.sum(-(pos * F.log(pc) + neg * F.log(1 - pc))).alias("ll_sum"),
                  F.sum(pos * (1 - s) * (1 - s) + neg * s * s).alias("brier_sum"))
             .collect())   # <= 10 x bins rows, whatever the number of customers
    nan = float("nan")
    total = sum(c["n"] for c in cells)
    positives = float(sum(c["pos"] for c in cells))
    negatives = total - positives
    both = positives > 0 and negatives > 0
    metrics = {"n": float(total), "positives": positives,
               "log_loss": sum(c["ll_sum"] for c in cells) / total if total else nan,
               "brier": sum(c["brier_sum"] for c in cells) / total if total else nan,
               "auc_roc": sum(c["auc_num"] for c in cells) / (positives * negatives) if both else nan,
               "auc_pr": sum(c["ap_num"] for c in cells) / positives if both else nan}

    def by(key: str) -> list[dict]:
        out = []
        for k in sorted({c[key] for c in cells}):
            part = [c for c in cells if c[key] == k]
            m = sum(c["n"] for c in part)
            out.append({key: k, "n": m, "mean_predicted": sum(c["p_sum"] for c in part) / m,
                        "observed_rate": sum(c["pos"] for c in part) / m,
                        "min_predicted": min(c["lo"] for c in part), "max_predicted": max(c["hi"] for c in part)})
        return out

    curve = [{k: r[k] for k in ("bin", "n", "mean_predicted", "observed_rate")} for r in by("bin")]
    ece = sum(c["n"] / total * abs(c["mean_predicted"] - c["observed_rate"]) for c in curve) if total else nan
    return Assessment(metrics, by("decile"), curve, float(ece))


def evaluate(scored: DataFrame, label_col: str = LABEL_COL, prob_col: str = PROB_COL) -> dict[str, float]:
    """AUC-ROC, AUC-PR (average precision), log loss, Brier score, positives and n of scored rows:
    :func:`assess`'s metrics."""
    return assess(scored, label_col, prob_col).metrics


def score_aucs(scores: dict[str, tuple[DataFrame, Any]], label_col: str = LABEL_COL) -> dict[str, float]:
    """AUC-ROC of several (rows, score column) pairs, e.g. recency alone as a churn score, in one
    Spark query; NaN where the rows have one class (or none)."""
    names = list(scores)
    rows = None
    for i, name in enumerate(names):
        df, score_col = scores[name]
        part = df.select(F.lit(i).alias("_g"), score_col.cast("double").alias("_s"),
                         F.col(label_col).cast("double").alias("_y"))
        rows = part if rows is None else rows.unionByName(part)
    per_group = _ranking(rows).groupBy("_g").agg(*_auc_aggs()).collect()   # one row per score given
    got = {int(r["_g"]): r["auc_roc"] for r in per_group}
    return {name: float("nan") if got.get(i) is None else float(got[i]) for i, name in enumerate(names)}


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
