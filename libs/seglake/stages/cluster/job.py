"""The ``seglake run cluster`` job: sweep k, pick one, profile, label, write and compare.

:func:`run` reads gold.customer_features for the as-of date, sweeps k with MLflow child runs,
picks k (:func:`~seglake.stages.cluster.metrics.choose_k`), profiles and labels the clusters,
writes gold.clusters and gold.cluster_profiles (replaceWhere on the as-of date) and compares
the assignment with the previous ones (:func:`_previous_assignments`); :func:`_plots` draws the
elbow and silhouette figures logged to MLflow.
"""
from __future__ import annotations

import logging
from datetime import date
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.context import JobContext
from seglake.core.spark import stable_layout
from seglake.core.contracts import CLUSTER_PROFILES, CLUSTERS, CUSTOMER_FEATURES, exclude_withdrawn
from seglake.stages.cluster.common import ALGORITHMS, FEATURES_COL, PREDICTION_COL
from seglake.stages.cluster.inputs import input_features, prepare_inputs, scaled_columns
from seglake.stages.cluster.metrics import choose_k, sweep
from seglake.stages.cluster.outliers import centres, flag_outliers
from seglake.stages.cluster.profiles import PROFILE_FEATURES, cluster_profile, derive_labels
from seglake.stages.cluster.stability import agreement, contingency

log = logging.getLogger(__name__)

#: the stage runner resolves ``--as-of`` (default: the day after the last event) before run()
USES_AS_OF = True

INPUT_TABLE = CUSTOMER_FEATURES
CLUSTERS_TABLE = CLUSTERS
PROFILES_TABLE = CLUSTER_PROFILES


def _plots(metrics_by_k: dict[int, dict[str, float]], chosen: int):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(metrics_by_k)
    figs = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, [metrics_by_k[k]["wssse"] for k in ks], marker="o")
    ax.axvline(chosen, color="grey", linestyle="--", label=f"chosen k={chosen}")
    ax.set(xlabel="k", ylabel="WSSSE", title="Elbow: within-cluster sum of squares")
    ax.legend()
    figs["plots/elbow.png"] = fig
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ks, [metrics_by_k[k]["silhouette"] for k in ks], marker="o", label="silhouette")
    ax.set(xlabel="k", ylabel="silhouette (squared euclidean)", title="Silhouette and Davies-Bouldin by k")
    ax2 = ax.twinx()
    ax2.plot(ks, [metrics_by_k[k]["davies_bouldin"] for k in ks], marker="s", color="tab:red",
             label="Davies-Bouldin")
    ax2.set_ylabel("Davies-Bouldin (lower is better)")
    ax.axvline(chosen, color="grey", linestyle="--")
    fig.legend(loc="upper right")
    figs["plots/silhouette.png"] = fig
    return figs


def add_arguments(parser) -> None:
    parser.add_argument("--algorithm", choices=ALGORITHMS, default=None,
                        help="override cluster.algorithm for this run")


def _previous_assignments(ctx: JobContext, as_of: date) -> dict[str, DataFrame]:
    """The assignments to compare with: a rerun of this as-of date, and the latest earlier one."""
    if not tables.exists(ctx.spark, ctx.cfg, CLUSTERS_TABLE):
        return {}
    # Materialized as a Delta version so the overwrite below cannot change what we compare to.
    version = tables.version(ctx.spark, ctx.cfg, CLUSTERS_TABLE)
    old = tables.read(ctx.spark, ctx.cfg, CLUSTERS_TABLE, version=version)
    out = {}
    if old.filter(F.col("as_of_date") == F.lit(as_of)).limit(1).count():
        out["rerun"] = old.filter(F.col("as_of_date") == F.lit(as_of))
    earlier = old.filter(F.col("as_of_date") < F.lit(as_of)).agg(F.max("as_of_date")).first()[0]
    if earlier is not None:
        out["window"] = old.filter(F.col("as_of_date") == F.lit(earlier))
    return out


def run(ctx: JobContext) -> dict:
    """Sweep k, pick one, label and write the clusters; track everything in MLflow."""
    import mlflow

    from seglake.core import tracking

    spark, cfg = ctx.spark, ctx.cfg
    as_of = ctx.resolve_as_of()
    algorithm = ctx.args.get("algorithm") or cfg.get("cluster.algorithm")
    k_min, k_max = int(cfg.get("cluster.k_min")), int(cfg.get("cluster.k_max"))
    if not 2 <= k_min <= k_max:
        raise ValueError(f"cluster.k_min/k_max must satisfy 2 <= k_min <= k_max, got {k_min}..{k_max}")
    seed = int(cfg.get("cluster.seed"))
    raw_inputs = input_features(cfg)
    input_cols = scaled_columns(raw_inputs)

    feats = tables.read(spark, cfg, INPUT_TABLE).filter(F.col("as_of_date") == F.lit(as_of))
    # as segments and propensity do: a customer withdrawn at as_of is not profiled, also when the
    # feature rows of that as_of were written before the withdrawal was recorded
    feats = exclude_withdrawn(spark, cfg, feats, as_of)
    n = feats.count()
    data = stable_layout(prepare_inputs(feats, input_cols), rows=n).cache()
    if n == 0:
        raise ValueError(f"gold.customer_features has no rows for as_of_date {as_of}: run features first")
    if n < k_max:
        raise ValueError(f"only {n} customers for as_of_date {as_of}: fewer than cluster.k_max={k_max}")

    with tracking.start_run(spark, cfg, "cluster", [INPUT_TABLE], f"cluster {as_of}",
                            ctx.run_id, as_of) as parent:
        mlflow.log_params({"algorithm": algorithm, "k_min": k_min, "k_max": k_max, "seed": seed,
                           "inputs": ",".join(input_cols), "customers": n})
        results = []
        for k in range(k_min, k_max + 1):
            with mlflow.start_run(run_name=f"k={k}", nested=True):
                mlflow.set_tags({"seglake.stage": "cluster", "seglake.as_of": str(as_of)})
                result = sweep(data, input_cols, algorithm, [k], seed,
                               int(cfg.get("cluster.max_iter")))[0]
                mlflow.log_params({"k": k, "algorithm": algorithm})
                mlflow.log_metrics(result.metrics)
                results.append(result)
        by_k = {r.k: r.metrics for r in results}
        chosen, reason = choose_k(by_k, float(cfg.get("cluster.silhouette_tolerance")))
        best = next(r for r in results if r.k == chosen)
        mlflow.set_tag("seglake.k_rule", reason)
        mlflow.log_param("chosen_k", chosen)
        mlflow.log_metrics({f"chosen_{m}": v for m, v in best.metrics.items()})
        import matplotlib.pyplot as plt
        for path, fig in _plots(by_k, chosen).items():
            mlflow.log_figure(fig, path)
            plt.close(fig)
        mlflow.log_dict({str(k): m for k, m in by_k.items()}, "sweep_metrics.json")

        # noise: beyond the cluster.outlier_quantile of the distances to the centre (no DBSCAN in Spark)
        q = cfg.get("cluster.outlier_quantile")
        assigned = flag_outliers(best.model.transform(data), centres(best.model),
                                 None if q is None else float(q)).drop(FEATURES_COL).cache()
        profile_cols = list(dict.fromkeys(raw_inputs + list(PROFILE_FEATURES)))
        profile = cluster_profile(assigned.where(~F.col("outlier")), profile_cols).cache()
        # k x features rows: small.
        prof_rows = [r.asDict() for r in profile.collect()]
        relative: dict[int, dict[str, float]] = {}
        sizes: dict[int, int] = {}
        for r in prof_rows:
            relative.setdefault(int(r["cluster"]), {})[r["feature"]] = r["relative"]
            sizes[int(r["cluster"])] = int(r["size"])
        labels = derive_labels(relative, float(cfg.get("cluster.label_min_score")))
        label_df = spark.createDataFrame([(int(c), lab) for c, lab in labels.items()],
                                         "cluster INT, label STRING")
        model_run_id = parent.info.run_id
        clusters = (assigned.select("customer_id", F.lit(as_of).cast("date").alias("as_of_date"),
                                    F.col(PREDICTION_COL).cast("int").alias("cluster"), "centre_distance", "outlier")
                    .join(F.broadcast(label_df), "cluster")
                    .select("customer_id", "as_of_date", "cluster", "label", "centre_distance", "outlier",
                            F.lit(algorithm).alias("algorithm"), F.lit(chosen).alias("k"),
                            F.lit(model_run_id).alias("model_run_id")))
        profiles = (profile.join(F.broadcast(label_df), "cluster")
                    .select(F.lit(as_of).cast("date").alias("as_of_date"), "cluster", "label", "size",
                            "share", "feature", "cluster_mean", "overall_mean", "overall_stddev",
                            "relative", F.lit(algorithm).alias("algorithm"), F.lit(chosen).alias("k"),
                            F.lit(model_run_id).alias("model_run_id")))
        mlflow.log_dict({"labels": {str(c): l for c, l in labels.items()},
                         "sizes": {str(c): s for c, s in sizes.items()},
                         "centroids": [{k: (str(v) if k == "cluster" else v) for k, v in r.items()}
                                       for r in prof_rows]}, "cluster_profile.json")

        stability: dict[str, float] = {}
        for name, previous in _previous_assignments(ctx, as_of).items():
            agree = agreement(contingency(previous, clusters))
            stability[f"stability_{name}_ari"] = agree["ari"]
            stability[f"stability_{name}_jaccard"] = agree["jaccard"]
            stability[f"stability_{name}_customers"] = agree["customers"]
        alert_ari = float(cfg.get("cluster.stability_alert_ari"))
        primary = stability.get("stability_rerun_ari", stability.get("stability_window_ari"))
        alert = primary is not None and primary < alert_ari
        if stability:
            mlflow.log_metrics({**stability, "stability_alert": float(alert)})
        if alert:
            log.warning("cluster stability alert: ARI %.3f with the previous assignment is below %.2f",
                        primary, alert_ari)
            mlflow.set_tag("seglake.stability_alert", f"ARI {primary:.3f} < {alert_ari}")

        where = f"as_of_date = '{as_of.isoformat()}'"
        outliers = n - sum(sizes.values())   # profile sizes count the non-outliers only
        mlflow.log_metric("outliers", outliers)
        tables.overwrite(clusters, cfg, CLUSTERS_TABLE, partition_by=("as_of_date",),
                         replace_where=where if tables.exists(spark, cfg, CLUSTERS_TABLE) else None,
                         merge_schema=True)   # centre_distance, outlier: added to older tables
        tables.overwrite(profiles, cfg, PROFILES_TABLE,
                         replace_where=where if tables.exists(spark, cfg, PROFILES_TABLE) else None)

        if cfg.get("cluster.log_model"):
            mlflow.spark.log_model(best.model, artifact_path="model",
                                   pip_requirements=tracking.model_pip_requirements())
        assigned.unpersist()
        profile.unpersist()
    data.unpersist()

    summary: dict[str, Any] = {
        "as_of": as_of.isoformat(),
        "customers": n,
        "algorithm": algorithm,
        "k": chosen,
        "silhouette": round(best.metrics["silhouette"], 4),
        "davies_bouldin": round(best.metrics["davies_bouldin"], 4),
        "clusters": ", ".join(f"{labels[c]} ({sizes[c]})" for c in sorted(labels)),
        "outliers": outliers,
        "mlflow_run": model_run_id,
    }
    for name in ("rerun", "window"):
        if f"stability_{name}_ari" in stability:
            summary[f"stability_{name}_ari"] = round(stability[f"stability_{name}_ari"], 4)
    if alert:
        summary["stability_alert"] = f"ARI {primary:.3f} < {alert_ari}"
    return summary
