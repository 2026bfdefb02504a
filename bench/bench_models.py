"""Benchmark: the model stages on synthetic feature tables (k-means sweep, GBT training).

Benchmark-module contract: ``benchmarks() -> {name: fn(spark, workdir, events) -> dict}``.
For these two benchmarks ``events`` is the number of CUSTOMERS (rows of a synthetic
gold.customer_features-like table), e.g. ``python bench/run.py --events 100000 1000000
--only cluster_sweep gbt_train``.

- ``cluster_sweep``: the cluster stage's sweep (pipeline fit + WSSSE + silhouette +
  Davies-Bouldin) for k = cluster.k_min..cluster.k_max on the z_<f> columns of
  features.model_inputs; planted blobs (6 centres), so the chosen k is checkable.
- ``gbt_train``: one GBTClassifier pipeline fit (maxDepth 5, maxIter 20) and the
  logistic-regression baseline on a planted churn label, plus held-out AUC.
  The cross-validated grid costs about folds x grid size x this fit (+ 1).

The synthetic table is generated in Spark (``spark.range`` + seeded ``rand``/``randn``) and
written to ``<workdir>/features.parquet`` once (not timed).

Standalone: ``python bench/bench_models.py --customers 100000 --workdir /tmp/bench_models``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

CENTRES = 6


def _cfg(workdir: Path):
    from seglake.core.config import load_config
    return load_config("local", overrides={"paths": {"lakehouse": str(Path(workdir) / "lakehouse")}})


def synthetic_features(spark, customers: int, inputs: list[str], seed: int = 7):
    """A customer_features-like table: planted blob per customer, raw + z_ columns, churn label."""
    from pyspark.sql import functions as F

    df = spark.range(customers).withColumn("blob", (F.col("id") % CENTRES).cast("int"))
    cols = {}
    for i, name in enumerate(inputs):
        # centre of blob b on feature i: a fixed pseudo-random offset in [-3, 3]
        centre = ((F.col("blob") * 7 + i * 13) % 11 - 5) * 0.6
        cols[name] = centre + F.randn(seed + i)
    df = df.withColumns(cols)
    stats = df.agg(*[F.avg(c).alias(f"m_{c}") for c in inputs],
                   *[F.stddev_pop(c).alias(f"s_{c}") for c in inputs]).first()  # one row
    df = df.withColumns({f"z_{c}": (F.col(c) - F.lit(stats[f"m_{c}"])) / F.lit(stats[f"s_{c}"]) for c in inputs})
    logit = 0.9 * F.col(inputs[0]) - 0.7 * F.col(inputs[1]) + 0.3 * F.col("blob") - 0.8
    label = (F.rand(seed + 999) < 1 / (1 + F.exp(-logit))).cast("double")
    return df.select(F.format_string("c%09d", "id").alias("customer_id"), "blob", *inputs,
                     *[f"z_{c}" for c in inputs], label.alias("label"))


def _table(spark, workdir: Path, customers: int, inputs: list[str]):
    path = Path(workdir) / "features.parquet"
    if not path.exists():
        synthetic_features(spark, customers, inputs).write.mode("overwrite").parquet(str(path))
    return spark.read.parquet(str(path))


def cluster_sweep(spark, workdir, events: int) -> dict:
    """Time the k sweep of the cluster stage on ``events`` customers."""
    from seglake.stages import cluster

    workdir = Path(workdir)
    cfg = _cfg(workdir)
    inputs = cluster.input_features(cfg)
    table = _table(spark, workdir, events, inputs)
    zcols = cluster.scaled_columns(inputs)
    data = cluster.prepare_inputs(table, zcols).select("customer_id", *zcols).cache()
    data.count()
    ks = list(range(int(cfg.get("cluster.k_min")), int(cfg.get("cluster.k_max")) + 1))
    t0 = time.perf_counter()
    results = cluster.sweep(data, zcols, cfg.get("cluster.algorithm"), ks, int(cfg.get("cluster.seed")),
                            int(cfg.get("cluster.max_iter")))
    seconds = time.perf_counter() - t0
    by_k = {r.k: r.metrics for r in results}
    chosen, reason = cluster.choose_k(by_k, float(cfg.get("cluster.silhouette_tolerance")))
    data.unpersist()
    return {"events": events, "customers": events, "seconds": seconds, "ks": ks,
            "seconds_per_k": round(seconds / len(ks), 2), "planted_k": CENTRES, "chosen_k": chosen,
            "reason": reason, "silhouette": {k: round(m["silhouette"], 4) for k, m in by_k.items()},
            "algorithm": cfg.get("cluster.algorithm"), "inputs": len(zcols)}


def gbt_train(spark, workdir, events: int) -> dict:
    """Time one GBT pipeline fit and the LR baseline on ``events`` customers; held-out AUC."""
    from seglake.stages import propensity

    workdir = Path(workdir)
    cfg = _cfg(workdir)
    inputs = propensity.input_features(cfg)
    table = _table(spark, workdir, events, inputs)
    train, held = table.randomSplit([0.8, 0.2], seed=5)
    train, held = train.cache(), held.cache()
    train.count(), held.count()
    pipeline, gbt = propensity.gbt_pipeline(inputs, seed=3)
    gbt.setMaxDepth(5).setMaxIter(20)
    t0 = time.perf_counter()
    model = pipeline.fit(train)
    gbt_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    lr = propensity.lr_pipeline(inputs).fit(train)
    lr_s = time.perf_counter() - t1
    auc = propensity.evaluate(propensity.score(model, held))["auc_roc"]
    auc_lr = propensity.evaluate(propensity.score(lr, held))["auc_roc"]
    grid = len(cfg.get("propensity.grid_max_depth")) * len(cfg.get("propensity.grid_max_iter"))
    if str(cfg.get("propensity.tuning")) == "cv":
        folds = int(cfg.get("propensity.cv_folds"))
        fits, share = folds * grid + 1, (folds - 1) / folds     # each fold model sees (k-1)/k of the rows
    else:
        fits, share = grid + 1, float(cfg.get("propensity.holdout_train_ratio"))
    if grid == 1:                                                  # a one-point grid is fitted once
        fits, share = 1, 0.0
    train.unpersist(), held.unpersist()
    return {"events": events, "customers": events, "seconds": gbt_s, "gbt_fit_s": round(gbt_s, 2),
            "lr_fit_s": round(lr_s, 2), "gbt_auc_roc": round(auc, 4), "lr_auc_roc": round(auc_lr, 4),
            "inputs": len(inputs), "tuning": str(cfg.get("propensity.tuning")), "tuning_fits_with_config": fits,
            "tuning_estimate_s": round(gbt_s * ((fits - 1) * share + 1), 1)}


def benchmarks() -> dict[str, Callable]:
    return {"cluster_sweep": cluster_sweep, "gbt_train": gbt_train}


def main() -> int:
    import sys
    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "libs"))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--workdir", default="/tmp/seglake-bench-models")
    parser.add_argument("--only", nargs="+", choices=list(benchmarks()), default=list(benchmarks()))
    args = parser.parse_args()
    from seglake.core.spark import get_spark
    workdir = Path(args.workdir)
    spark = get_spark(_cfg(workdir), app_name="seglake-bench-models")
    for name in args.only:
        out = benchmarks()[name](spark, workdir / f"{name}-{args.customers}", args.customers)
        print(json.dumps({"benchmark": name, **out}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
