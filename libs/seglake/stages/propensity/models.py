"""Propensity models: the GBT and logistic-regression pipelines, their tuning and evaluation.

:func:`gbt_pipeline` and :func:`lr_pipeline` build Spark ML pipelines over the raw inputs of
:func:`input_features` (nulls filled by :func:`_fill_stage`), :func:`tune_gbt` tunes the GBT grid
(one holdout split or k-fold cross-validation), and :func:`evaluate`, :func:`calibration` and
:func:`feature_importances` measure a model on held-out rows; :class:`Candidate` carries one
trained model and its metrics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, LogisticRegression
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import QuantileDiscretizer, SQLTransformer, StandardScaler, VectorAssembler, VectorSlicer
from pyspark.ml.functions import vector_to_array
from pyspark.ml.regression import IsotonicRegression
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seglake.stages.propensity.common import _METRIC_KEYS, LABEL_COL, PROB_COL


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


def reliability(scored: DataFrame, bins: int = 10, label_col: str = LABEL_COL,
                prob_col: str = PROB_COL) -> tuple[list[dict], float]:
    """(reliability curve on ``bins`` equal-width bins of predicted probability: bin, n, mean
    predicted, observed rate; expected calibration error = sum over bins of n_b/n * |mean
    predicted - observed|). One aggregation; at most ``bins`` rows reach the driver."""
    b = F.least(F.floor(F.col(prob_col) * bins), F.lit(bins - 1)).cast("int")
    rows = [r.asDict() for r in scored.groupBy(b.alias("bin"))
            .agg(F.count(F.lit(1)).alias("n"), F.avg(prob_col).alias("mean_predicted"),
                 F.avg(label_col).alias("observed_rate")).orderBy("bin").collect()]   # <= bins rows
    n = sum(r["n"] for r in rows)
    ece = sum(r["n"] / n * abs(r["mean_predicted"] - r["observed_rate"]) for r in rows) if n else float("nan")
    return rows, float(ece)


def score_auc(rows: DataFrame, score_col, label_col: str = LABEL_COL) -> float:
    """AUC-ROC of a plain score column (e.g. recency alone as a churn score); NaN with one class."""
    df = rows.select(score_col.cast("double").alias("_s"), F.col(label_col))
    ev = BinaryClassificationEvaluator(rawPredictionCol="_s", labelCol=label_col, metricName="areaUnderROC",
                                       numBins=0)
    stats = df.agg(F.count(F.lit(1)).alias("n"), F.sum(label_col).alias("pos")).first()
    return float(ev.evaluate(df)) if stats["n"] and 0 < (stats["pos"] or 0) < stats["n"] else float("nan")


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
