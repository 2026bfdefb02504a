"""Clustering: metrics against scikit-learn, stability against scikit-learn, planted blobs end to end."""
from __future__ import annotations

from datetime import date
from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from seglake.stages import cluster

sk_metrics = pytest.importorskip("sklearn.metrics")

RAW = ["recency_days", "tenure_days", "sessions_30d", "pages_per_session", "revenue_90d"]
#: planted groups: name -> raw feature means (order of RAW)
PLANTED = {
    "power users": [2.0, 200.0, 40.0, 9.0, 50.0],
    "at-risk high spenders": [60.0, 210.0, 6.0, 3.0, 900.0],
    "new users": [3.0, 4.0, 7.0, 3.5, 40.0],
}
SPREAD = [1.5, 8.0, 2.0, 0.6, 30.0]


def blob_frame(n_per: int = 60, seed: int = 0, as_of: date = date(2026, 10, 1)) -> pd.DataFrame:
    """Three well-separated Gaussian blobs in raw units, with z_<f> columns and planted truth."""
    rng = np.random.RandomState(seed)
    parts = []
    for name, means in PLANTED.items():
        raw = rng.normal(means, SPREAD, size=(n_per, len(RAW)))
        part = pd.DataFrame(raw, columns=RAW)
        part["planted"] = name
        parts.append(part)
    df = pd.concat(parts, ignore_index=True)
    for f in RAW:
        df[f"z_{f}"] = (df[f] - df[f].mean()) / df[f].std(ddof=0)
    df.insert(0, "customer_id", [f"c{i:04d}" for i in range(len(df))])
    df.insert(1, "as_of_date", as_of)
    return df


def to_spark(spark, pdf: pd.DataFrame):
    ddl = ("customer_id STRING, as_of_date DATE, " + ", ".join(f"{f} DOUBLE" for f in RAW)
           + ", planted STRING, " + ", ".join(f"z_{f} DOUBLE" for f in RAW))
    return spark.createDataFrame(pdf[[c.split()[0] for c in ddl.split(", ")]], ddl)


ZCOLS = [f"z_{f}" for f in RAW]


def test_silhouette_and_davies_bouldin_match_sklearn(spark):
    # overlapping blobs at k=4 so neither metric is trivially perfect
    pdf = blob_frame(n_per=50, seed=3)
    noisy = pdf.copy()
    noisy[ZCOLS] = noisy[ZCOLS] + np.random.RandomState(1).normal(0, 0.6, size=(len(noisy), len(ZCOLS)))
    df = cluster.prepare_inputs(to_spark(spark, noisy), ZCOLS)
    model = cluster.build_pipeline(ZCOLS, "kmeans", 4, seed=7).fit(df)
    pred = model.transform(df).select("customer_id", *ZCOLS, "features", "cluster")
    local = pred.select("customer_id", *ZCOLS, "cluster").toPandas().sort_values("customer_id")
    X, labels = local[ZCOLS].to_numpy(), local["cluster"].to_numpy()

    ours_sil = cluster.silhouette(pred)
    sk_sil = sk_metrics.silhouette_score(X, labels, metric="sqeuclidean")
    assert 0.2 < sk_sil < 0.95
    assert ours_sil == pytest.approx(sk_sil, abs=0.02)

    ours_db = cluster.davies_bouldin(pred)
    sk_db = sk_metrics.davies_bouldin_score(X, labels)
    assert sk_db > 0.1
    assert ours_db == pytest.approx(sk_db, rel=1e-6)


def test_cluster_scatter_matches_numpy(spark):
    pdf = blob_frame(n_per=20, seed=5)
    df = cluster.prepare_inputs(to_spark(spark, pdf), ZCOLS)
    pred = cluster.build_pipeline(ZCOLS, "kmeans", 3, seed=1).fit(df).transform(df)
    rows = {r["cluster"]: r for r in cluster.cluster_scatter(pred).collect()}
    local = pred.select(*ZCOLS, "cluster").toPandas()
    for c, grp in local.groupby("cluster"):
        X = grp[ZCOLS].to_numpy()
        centroid = X.mean(axis=0)
        d2 = ((X - centroid) ** 2).sum(axis=1)
        assert rows[c]["n"] == len(grp)
        assert rows[c]["centroid"] == pytest.approx(list(centroid), abs=1e-9)
        assert rows[c]["sse"] == pytest.approx(d2.sum(), rel=1e-9)
        assert rows[c]["mean_distance"] == pytest.approx(np.sqrt(d2).mean(), rel=1e-9)


def _pair_jaccard(a, b) -> float:
    both = either = 0
    for i, j in combinations(range(len(a)), 2):
        same_a, same_b = a[i] == a[j], b[i] == b[j]
        both += same_a and same_b
        either += same_a or same_b
    return both / either


@pytest.mark.parametrize("noise", [0.0, 0.2, 0.7])
def test_agreement_matches_sklearn_ari_and_pair_jaccard(spark, noise):
    rng = np.random.RandomState(11)
    old = rng.randint(0, 4, size=150)
    new = (old + 1) % 4                       # same partition, renamed clusters
    flip = rng.rand(150) < noise
    new[flip] = rng.randint(0, 5, size=flip.sum())
    ids = [f"c{i}" for i in range(150)]
    prev = spark.createDataFrame(list(zip(ids, old.tolist())), "customer_id STRING, cluster INT")
    # an extra customer only in the new assignment must be ignored
    cur = spark.createDataFrame(list(zip(ids + ["extra"], new.tolist() + [0])), "customer_id STRING, cluster INT")
    got = cluster.agreement(cluster.contingency(prev, cur))
    assert got["customers"] == 150
    assert got["ari"] == pytest.approx(sk_metrics.adjusted_rand_score(old, new), abs=1e-9)
    assert got["jaccard"] == pytest.approx(_pair_jaccard(old, new), abs=1e-9)
    if noise == 0.0:
        assert got["ari"] == pytest.approx(1.0) and got["jaccard"] == pytest.approx(1.0)


def test_choose_k_prefers_elbow_among_near_best_silhouette():
    metrics = {
        2: {"silhouette": 0.60, "wssse": 1000.0},
        3: {"silhouette": 0.71, "wssse": 300.0},
        4: {"silhouette": 0.72, "wssse": 260.0},
        5: {"silhouette": 0.55, "wssse": 240.0},
        6: {"silhouette": 0.50, "wssse": 225.0},
    }
    assert cluster.elbow_k(sorted(metrics), [metrics[k]["wssse"] for k in sorted(metrics)]) == 3
    k, reason = cluster.choose_k(metrics, tolerance=0.02)
    assert k == 3 and "elbow at k=3" in reason
    # with no tolerance the best silhouette wins outright
    assert cluster.choose_k(metrics, tolerance=0.0)[0] == 4


def test_derive_labels_are_readable_and_unique():
    rel = {
        0: {"sessions_30d": 1.4, "pages_per_session": 1.3, "recency_days": -0.7, "revenue_90d": -0.3},
        1: {"sessions_30d": -0.7, "pages_per_session": -0.6, "recency_days": 1.4, "revenue_90d": 1.4},
        2: {"sessions_30d": -0.7, "pages_per_session": -0.7, "recency_days": -0.7, "revenue_90d": -1.1,
            "tenure_days": -1.4},
        3: {"sessions_30d": 0.01, "pages_per_session": 0.0, "recency_days": 0.0, "revenue_90d": 0.02},
        4: {"sessions_30d": 1.5, "pages_per_session": 1.5, "recency_days": -0.5},  # a second power cluster
    }
    labels = cluster.derive_labels(rel, min_score=0.25)
    assert labels[0] in ("power users",) or labels[4] == "power users"
    assert labels[1] == "at-risk high spenders"
    assert labels[2] == "new users"
    assert labels[3] == "average customers"
    assert len(set(labels.values())) == len(labels)


def test_prepare_inputs_rejects_missing_columns(spark):
    df = spark.createDataFrame([("c1", 1.0)], "customer_id STRING, z_a DOUBLE")
    with pytest.raises(ValueError, match="z_b"):
        cluster.prepare_inputs(df, ["z_a", "z_b"])
    with pytest.raises(ValueError, match="cluster.algorithm"):
        cluster.build_pipeline(["z_a"], "dbscan", 3, 1)


@pytest.mark.parametrize("algorithm", ["bisecting_kmeans", "gaussian_mixture"])
def test_alternative_algorithms_recover_blobs(spark, algorithm):
    pdf = blob_frame(n_per=30, seed=2)
    df = cluster.prepare_inputs(to_spark(spark, pdf), ZCOLS).cache()
    [res] = cluster.sweep(df, ZCOLS, algorithm, [3], seed=3, max_iter=100)
    assert res.metrics["silhouette"] > 0.7
    assert sorted(res.sizes.values()) == [30, 30, 30]
    df.unpersist()


@pytest.mark.slow
def test_run_writes_labelled_clusters_profiles_mlflow_and_stability(spark, lakehouse):
    import mlflow
    from mlflow import MlflowClient

    from seglake.core import tables
    from seglake.core.context import JobContext
    from conftest import make_cfg

    cfg = make_cfg(lakehouse, cluster={"inputs": RAW, "k_min": 2, "k_max": 4, "max_iter": 20})
    as_of, later = date(2026, 10, 1), date(2026, 10, 8)
    pdf = pd.concat([blob_frame(40, seed=0, as_of=as_of), blob_frame(40, seed=9, as_of=later)])
    tables.overwrite(to_spark(spark, pdf), cfg, "gold.customer_features")

    summary = cluster.run(JobContext(spark, cfg, as_of=as_of))
    assert summary["k"] == 3 and summary["customers"] == 120
    got = tables.read(spark, cfg, "gold.clusters").toPandas()
    assert len(got) == 120 and set(got["as_of_date"]) == {as_of}
    merged = got.merge(pdf[pdf.as_of_date == as_of][["customer_id", "planted"]], on="customer_id")
    assert sk_metrics.adjusted_rand_score(merged["planted"], merged["cluster"]) == pytest.approx(1.0)
    # each planted group received the label named after it
    assert (merged["planted"] == merged["label"]).all(), merged.groupby(["planted", "label"]).size()
    assert set(got["algorithm"]) == {"kmeans"} and set(got["k"]) == {3}
    # 40 per cluster: the 0.99-quantile of the distances is each cluster's largest, so no outlier
    assert not got["outlier"].any() and (got["centre_distance"] > 0).all() and summary["outliers"] == 0

    prof = tables.read(spark, cfg, "gold.cluster_profiles").toPandas()
    first = pdf[pdf.as_of_date == as_of]
    for _, row in prof[prof.feature == "revenue_90d"].iterrows():
        members = merged[merged.cluster == row["cluster"]]["customer_id"]
        expected = first[first.customer_id.isin(members)]["revenue_90d"].mean()
        assert row["cluster_mean"] == pytest.approx(expected, rel=1e-9)
        assert row["size"] == 40 and row["share"] == pytest.approx(1 / 3)

    client = MlflowClient()
    run = client.get_run(summary["mlflow_run"])
    assert run.data.params["chosen_k"] == "3"
    assert run.data.tags["input.gold.customer_features.version"] == str(tables.version(spark, cfg, "gold.customer_features"))
    assert run.data.tags["seglake.git_commit"]
    children = mlflow.search_runs(experiment_ids=[run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(children) == 3
    assert set(children["params.k"]) == {"2", "3", "4"}
    assert children["metrics.davies_bouldin"].notna().all()
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/elbow.png", "plots/silhouette.png"}

    # rerun (same seed and k): same tables, stability with the previous run = 1
    quick = make_cfg(lakehouse, cluster={"inputs": RAW, "k_min": 3, "k_max": 3, "log_model": False})
    again = cluster.run(JobContext(spark, quick, as_of=as_of))
    assert again["stability_rerun_ari"] == pytest.approx(1.0)
    assert tables.read(spark, cfg, "gold.clusters").count() == 120

    # a later window with a threshold above 1 raises the alert
    strict = make_cfg(lakehouse, cluster={"inputs": RAW, "k_min": 3, "k_max": 3,
                                          "stability_alert_ari": 1.01, "log_model": False})
    nxt = cluster.run(JobContext(spark, strict, as_of=later))
    assert "stability_window_ari" in nxt and "stability_alert" in nxt
    assert tables.read(spark, cfg, "gold.clusters").count() == 240
    alert_metric = client.get_run(nxt["mlflow_run"]).data.metrics["stability_alert"]
    assert alert_metric == 1.0


def test_run_refuses_an_as_of_without_features(spark, lakehouse):
    from seglake.core import tables
    from seglake.core.context import JobContext
    from conftest import make_cfg

    cfg = make_cfg(lakehouse, cluster={"inputs": RAW})
    tables.overwrite(to_spark(spark, blob_frame(10)), cfg, "gold.customer_features")
    with pytest.raises(ValueError, match="no rows for as_of_date 2030-01-01"):
        cluster.run(JobContext(spark, cfg, as_of=date(2030, 1, 1)))


def test_a_withdrawn_customer_is_not_clustered(spark, lakehouse):
    """Feature rows written before a withdrawal was recorded: cluster leaves the customer out
    (as segments and propensity do), judged at its as_of."""
    from datetime import datetime, timezone

    from seglake.core import tables
    from seglake.core.context import JobContext
    from seglake.stages.consent import LEDGER_DDL
    from conftest import make_cfg

    cfg = make_cfg(lakehouse, cluster={"inputs": RAW, "k_min": 3, "k_max": 3, "log_model": False})
    as_of = date(2026, 10, 1)
    pdf = blob_frame(40, seed=0, as_of=as_of)
    tables.overwrite(to_spark(spark, pdf), cfg, "gold.customer_features")
    tables.overwrite(spark.createDataFrame([("user_id", "u-7", "c0007"), ("user_id", "u-8", "c0008")],
                                           "identifier_type STRING, identifier STRING, customer_id STRING"),
                     cfg, "silver.identity_map")
    at = datetime(2026, 9, 30, tzinfo=timezone.utc)          # before as_of: in effect
    late = datetime(2026, 10, 5, tzinfo=timezone.utc)        # after as_of: not yet
    tables.overwrite(spark.createDataFrame(
        [("r1", "user_id", "u-7", "c0007", "withdraw", at, "cli", at, "x"),
         ("r2", "user_id", "u-8", "c0008", "withdraw", late, "cli", late, "x")], LEDGER_DDL), cfg, "ops.consent")

    summary = cluster.run(JobContext(spark, cfg, as_of=as_of))
    ids = {r["customer_id"] for r in tables.read(spark, cfg, "gold.clusters").select("customer_id").collect()}
    assert summary["customers"] == len(pdf) - 1 == len(ids)
    assert "c0007" not in ids and "c0008" in ids


def test_outliers_are_beyond_the_clusters_distance_quantile_as_numpy_finds_them(spark):
    """flag_outliers against numpy: Euclidean distance to the given centre, and per cluster the
    inverted-cdf q-quantile of the distances as threshold (distance > threshold = outlier)."""
    from pyspark.ml.linalg import Vectors

    from seglake.stages.cluster.common import FEATURES_COL, PREDICTION_COL
    from seglake.stages.cluster.outliers import flag_outliers
    rng = np.random.default_rng(8)
    centre_of = {0: [0.0, 0.0, 0.0], 1: [5.0, 5.0, -2.0], 2: [-4.0, 3.0, 1.0]}
    rows, pts, lab = [], [], []
    for c, centre in centre_of.items():
        n = 150 + 40 * c
        x = rng.normal(centre, 1.0, size=(n, 3))
        x[:3] += 8.0                                               # three planted far points per cluster
        for i, v in enumerate(x):
            rows.append((f"c{c}-{i:04d}", Vectors.dense(v.tolist()), float(c)))
            pts.append(v)
            lab.append(c)
    df = spark.createDataFrame(rows, ["customer_id", FEATURES_COL, PREDICTION_COL]).repartition(5)
    q = 0.97
    got = {r["customer_id"]: (r["centre_distance"], r["outlier"])
           for r in flag_outliers(df, centre_of, q).collect()}
    pts, lab = np.array(pts), np.array(lab)
    d = np.linalg.norm(pts - np.array([centre_of[c] for c in lab]), axis=1)
    flagged = set()
    for c in centre_of:
        thr = np.quantile(d[lab == c], q, method="inverted_cdf")
        flagged |= {rows[i][0] for i in np.flatnonzero((lab == c) & (d > thr))}
    assert {k for k, (_, o) in got.items() if o} == flagged
    assert all(abs(got[rows[i][0]][0] - d[i]) < 1e-9 for i in range(len(rows)))
    assert {f"c{c}-{i:04d}" for c in centre_of for i in range(3)} <= flagged   # the planted far points
    assert not any(o for _, o in (r for r in
                   {r["customer_id"]: (0, r["outlier"]) for r in flag_outliers(df, centre_of, None).collect()}.values()))
