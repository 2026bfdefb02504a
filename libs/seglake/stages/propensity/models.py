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
from pyspark.ml.feature import QuantileDiscretizer, SQLTransformer, StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.ml.tuning import CrossValidator, ParamGridBuilder, TrainValidationSplit
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


def tune_gbt(train: DataFrame, input_cols: Sequence[str], seed: int, max_depths: Sequence[int],
             max_iters: Sequence[int], folds: int = 3, parallelism: int = 1, method: str = "cv",
             train_ratio: float = 0.75) -> tuple[PipelineModel, dict]:
    """The GBT of the best (maxDepth x maxIter) grid point, refitted on all of ``train``; (model, tuning info).

    ``method="cv"``: k-fold CrossValidator (folds x grid + 1 fits); ``"holdout"``: one random
    train/validation split (TrainValidationSplit, ``train_ratio`` to fit; grid + 1 fits). A grid
    of one point is fitted once, without tuning. Both score AUC-ROC on the left-out rows;
    ties go to the earlier grid point (depth, then iterations, in the order given).
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
                               evaluator=evaluator, parallelism=parallelism)
    else:
        tuner = TrainValidationSplit(estimator=pipeline, estimatorParamMaps=grid, trainRatio=train_ratio,
                                     seed=seed, evaluator=evaluator, parallelism=parallelism)
    fitted = tuner.fit(train)
    scores = fitted.avgMetrics if method == "cv" else fitted.validationMetrics
    best_i = int(np.argmax(scores))  # the tuner's own choice (the first maximum; NaN-aware alike)
    info = {"tuning": f"{folds}-fold cv" if method == "cv" else f"holdout (train ratio {train_ratio})"}
    info.update({"tuned_best_" + p.name: v for p, v in grid[best_i].items()})
    info["tuned_best_auc_roc"] = float(scores[best_i])
    return fitted.bestModel, info


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
