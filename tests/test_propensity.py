"""Propensity: point-in-time labels, metrics against scikit-learn, champion alias, reload, e2e churners."""
from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from seglake.stages import propensity

sk_metrics = pytest.importorskip("sklearn.metrics")

INPUTS = ["recency_days", "sessions_30d", "purchases_90d"]


def test_snapshot_dates_keep_every_training_label_window_before_evaluation():
    train, evaluation = propensity.snapshot_dates(date(2026, 11, 1), 30, 3, 7, earliest=date(2026, 8, 15))
    assert evaluation == date(2026, 10, 2)
    assert train == [date(2026, 8, 19), date(2026, 8, 26), date(2026, 9, 2)]
    assert all(t + timedelta(days=30) <= evaluation for t in train)
    # a snapshot before the earliest usable date is dropped
    train, _ = propensity.snapshot_dates(date(2026, 11, 1), 30, 3, 7, earliest=date(2026, 8, 20))
    assert train == [date(2026, 8, 26), date(2026, 9, 2)]
    with pytest.raises(ValueError, match="not enough history"):
        propensity.snapshot_dates(date(2026, 9, 1), 30, 3, 7, earliest=date(2026, 8, 15))


def test_build_labels_point_in_time(spark):
    t1, t2 = date(2026, 9, 1), date(2026, 9, 11)
    snaps = spark.createDataFrame(
        [("a", t1), ("b", t1), ("c", t1), ("d", t1), ("a", t2), ("b", t2)],
        "customer_id STRING, as_of_date DATE")
    ts = lambda s: datetime.fromisoformat(s)  # noqa: E731
    events = spark.createDataFrame([
        ("a", ts("2026-08-31 23:59:59"), "purchase"),      # before t1: ignored
        ("a", ts("2026-09-01 00:00:00"), "page_view"),     # first instant of t1's window
        ("b", ts("2026-09-10 12:00:00"), "store_purchase"),  # in t1's window (h=10), before t2
        ("c", ts("2026-09-11 00:00:00"), "purchase"),      # the end of t1's window is exclusive
        ("a", ts("2026-09-15 08:00:00"), "purchase"),      # in t2's window
    ], "customer_id STRING, event_ts TIMESTAMP, event_type STRING")
    got = propensity.build_labels(snaps, events, 10, ["purchase", "store_purchase"]).toPandas()
    got = {(r.customer_id, r.as_of_date): (r.churn_label, r.purchase_label) for r in got.itertuples()}
    assert got == {
        ("a", t1): (0.0, 0.0), ("b", t1): (0.0, 1.0), ("c", t1): (1.0, 0.0), ("d", t1): (1.0, 0.0),
        ("a", t2): (0.0, 1.0), ("b", t2): (1.0, 0.0),
    }


def test_assessment_matches_sklearn_and_pandas(spark):
    """assess() = one Spark query: its metrics equal scikit-learn's on the same rows, its deciles
    pandas' qcut groups, its reliability curve and ECE a numpy computation; repartitioning the
    rows changes nothing."""
    rng = np.random.RandomState(4)
    p = rng.beta(2, 5, size=2000)
    y = (rng.rand(2000) < p).astype(float)
    df = spark.createDataFrame(pd.DataFrame({"p": p, "label": y}))
    got = propensity.assess(df)
    m = got.metrics
    assert m["n"] == 2000 and m["positives"] == y.sum()
    assert m["auc_roc"] == pytest.approx(sk_metrics.roc_auc_score(y, p), abs=1e-12)
    assert m["auc_pr"] == pytest.approx(sk_metrics.average_precision_score(y, p), abs=1e-12)
    assert m["log_loss"] == pytest.approx(sk_metrics.log_loss(y, p), rel=1e-9)
    assert m["brier"] == pytest.approx(sk_metrics.brier_score_loss(y, p), rel=1e-9)
    assert propensity.evaluate(df) == m

    deciles = pd.qcut(p, 10, labels=False)
    expected = pd.DataFrame({"p": p, "y": y, "d": deciles}).groupby("d").agg(
        n=("p", "size"), mean_predicted=("p", "mean"), observed_rate=("y", "mean"), lo=("p", "min"), hi=("p", "max"))
    cal = pd.DataFrame(got.deciles)
    assert list(cal["decile"]) == list(range(10)) and list(cal["n"]) == list(expected["n"])
    for col, ref in (("mean_predicted", "mean_predicted"), ("observed_rate", "observed_rate"),
                     ("min_predicted", "lo"), ("max_predicted", "hi")):
        np.testing.assert_allclose(cal[col].to_numpy(), expected[ref].to_numpy(), rtol=1e-12)

    bins = np.minimum(np.floor(p * 10), 9)
    curve = pd.DataFrame(got.reliability)
    assert list(curve["bin"]) == [int(b) for b in np.unique(bins)]
    np.testing.assert_allclose(curve["observed_rate"], [y[bins == b].mean() for b in np.unique(bins)], rtol=1e-12)
    expected_ece = sum((bins == b).mean() * abs(p[bins == b].mean() - y[bins == b].mean()) for b in np.unique(bins))
    assert got.ece == pytest.approx(expected_ece, rel=1e-9)

    again = propensity.assess(df.repartition(7, "p")).metrics
    assert again == pytest.approx(m, rel=1e-12)
    # one-class labels: AUCs are undefined, not an error
    assert np.isnan(propensity.evaluate(df.withColumn("label", F.lit(0.0)))["auc_roc"])


def test_auc_of_tied_and_unbounded_scores_matches_sklearn(spark):
    """Plain scores (recency in days: ties everywhere, a 1e6 fill for "never") in several groups of
    one query: each AUC equals scikit-learn's, ties counted one half."""
    from seglake.stages.propensity.models import score_aucs

    rng = np.random.RandomState(9)
    recency = rng.choice([0, 1, 2, 3, 5, 8, 13, 40, 90, 1e6], size=3000).astype(float)
    y = (rng.rand(3000) < 1 / (1 + np.exp(-(np.minimum(recency, 120) - 20) / 15))).astype(float)
    df = spark.createDataFrame(pd.DataFrame({"r": recency, "label": y})).cache()
    recent = df.where("r <= 8")
    got = score_aucs({"all": (df, F.col("r")), "negated": (df, -F.col("r")), "recent": (recent, F.col("r")),
                      "one_class": (df.where("label = 1"), F.col("r"))})
    assert got["all"] == pytest.approx(sk_metrics.roc_auc_score(y, recency), abs=1e-12)
    assert got["negated"] == pytest.approx(1 - got["all"], abs=1e-12)
    keep = recency <= 8
    assert got["recent"] == pytest.approx(sk_metrics.roc_auc_score(y[keep], recency[keep]), abs=1e-12)
    assert np.isnan(got["one_class"])
    df.unpersist()


def synthetic(spark, n: int, seed: int, shuffle: bool = False):
    """Customers whose churn label depends on recency and sessions (a planted signal)."""
    rng = np.random.RandomState(seed)
    recency = rng.exponential(15, n)
    sessions = rng.poisson(6, n).astype(float)
    purchases = rng.poisson(1, n).astype(float)
    logit = 0.15 * recency - 0.6 * sessions + 1.0
    label = (rng.rand(n) < 1 / (1 + np.exp(-logit))).astype(float)
    if shuffle:
        label = rng.permutation(label)
    pdf = pd.DataFrame({"customer_id": [f"c{i}" for i in range(n)], "recency_days": recency,
                        "sessions_30d": sessions, "purchases_90d": purchases, "label": label})
    pdf.loc[::17, "purchases_90d"] = np.nan           # nulls are filled inside the pipeline
    return spark.createDataFrame(pdf, "customer_id STRING, recency_days DOUBLE, sessions_30d DOUBLE, "
                                      "purchases_90d DOUBLE, label DOUBLE")


def test_tuning_picks_the_depth_an_interaction_needs_by_holdout_and_by_cv(spark):
    # planted: the label is an XOR of two inputs, which stumps (depth 1, additive) cannot express
    # and depth 3 can; the third input is noise. Both tuning methods must choose depth 3.
    rng = np.random.default_rng(11)
    n = 1200
    x1, x2, x3 = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    label = ((x1 > 0) ^ (x2 > 0)).astype(float)
    flip = rng.random(n) < 0.05
    label[flip] = 1.0 - label[flip]
    pdf = pd.DataFrame({"customer_id": [f"c{i}" for i in range(n)], "recency_days": x1, "sessions_30d": x2,
                        "purchases_90d": x3, "label": label})
    train = spark.createDataFrame(pdf).coalesce(1).cache()
    for method in ("holdout", "cv"):
        model, info = propensity.tune_gbt(train, INPUTS, seed=3, max_depths=[1, 3], max_iters=[10], folds=2,
                                          method=method)
        assert info["tuned_best_maxDepth"] == 3, (method, info)
        assert info["tuned_best_auc_roc"] > 0.85, (method, info)
        assert model.stages[-1].getMaxDepth() == 3      # the refitted model has the chosen depth
    # one grid point: fitted once, untuned
    model, info = propensity.tune_gbt(train, INPUTS, seed=3, max_depths=[1], max_iters=[5], method="holdout")
    assert info["tuning"].startswith("none") and model.stages[-1].getMaxDepth() == 1
    assert model.stages[-1].getNumTrees == 5
    with pytest.raises(ValueError, match="propensity.tuning must be one of"):
        propensity.tune_gbt(train, INPUTS, seed=3, max_depths=[1, 3], max_iters=[5], method="bayes")
    train.unpersist()


def test_folds_and_holdout_keep_every_snapshot_of_a_customer_on_one_side(spark):
    from seglake.stages.propensity.models import FOLD_COL, customer_folds, customer_split

    rows = [(f"c{i}", date(2026, 9, 1) + timedelta(days=7 * k)) for i in range(600) for k in range(3)]
    df = spark.createDataFrame(rows, "customer_id STRING, as_of_date DATE")
    folds = customer_folds(df, 3, seed=42).toPandas()
    per_customer = folds.groupby("customer_id")[FOLD_COL].nunique()
    assert (per_customer == 1).all() and set(folds[FOLD_COL]) == {0, 1, 2}
    sizes = folds.groupby(FOLD_COL)["customer_id"].nunique()
    assert sizes.between(150, 250).all(), sizes           # ~200 customers each (binomial sd ~12)
    fit, val = customer_split(df, 0.75, seed=42)
    a = set(fit.toPandas()["customer_id"])
    b = set(val.toPandas()["customer_id"])
    assert not a & b and len(a | b) == 600 and 400 < len(a) < 500
    assert fit.count() == 3 * len(a)                      # all three snapshots of each
    # the split is a function of the customer, not of the partitioning
    again = set(customer_split(df.repartition(7), 0.75, seed=42)[0].toPandas()["customer_id"])
    assert again == a


def test_platt_and_isotonic_calibration_equal_sklearn_and_fix_a_squeezed_model(spark):
    """A heavily regularized logistic regression squeezes its probabilities towards the base rate
    (a planted miscalibration). Platt scaling = sklearn's unpenalized LogisticRegression on the
    model's margin; isotonic = sklearn's IsotonicRegression (clip) on its probability; both
    fitted on calibration rows and compared on other rows, where they must lower Brier and ECE."""
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression as SkLR

    from seglake.stages.propensity.models import assess, calibrate

    train, calib, test = (synthetic(spark, 3000, s).cache() for s in (1, 2, 3))
    squeezed = propensity.lr_pipeline(INPUTS, reg_param=2.0).fit(train)
    raw_c = squeezed.transform(calib).select("customer_id", "rawPrediction", "probability", "label").toPandas()
    raw_t = squeezed.transform(test).select("customer_id", "rawPrediction", "probability", "label").toPandas()
    margin_c = np.array([v[1] for v in raw_c["rawPrediction"]])
    margin_t = np.array([v[1] for v in raw_t["rawPrediction"]])
    p_c = np.array([v[1] for v in raw_c["probability"]])
    p_t = np.array([v[1] for v in raw_t["probability"]])
    y_t = raw_t["label"].to_numpy()

    measured = assess(propensity.score(squeezed, test))
    before, ece_before = measured.metrics, measured.ece
    for method in ("platt", "isotonic"):
        model = calibrate(squeezed, calib, method)
        got = propensity.score(model, test).select("customer_id", "p").toPandas().set_index("customer_id")
        got = got.loc[raw_t["customer_id"], "p"].to_numpy()
        if method == "platt":
            ref = SkLR(C=np.inf, tol=1e-10, max_iter=1000).fit(margin_c.reshape(-1, 1), raw_c["label"])   # C = inf: unpenalized
            expected = ref.predict_proba(margin_t.reshape(-1, 1))[:, 1]
            np.testing.assert_allclose(got, expected, atol=1e-5)
        else:
            ref = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(p_c, raw_c["label"])
            np.testing.assert_allclose(got, ref.predict(p_t), atol=1e-9)
        measured = assess(propensity.score(model, test))
        after, ece_after = measured.metrics, measured.ece
        assert after["brier"] < before["brier"] - 0.005, (method, before["brier"], after["brier"])
        assert ece_after < ece_before / 2, (method, ece_before, ece_after)
    # ECE = sum over 10 equal-width bins of n_b/n * |mean p - observed rate| (numpy)
    bins = np.minimum(np.floor(p_t * 10), 9)
    expected_ece = sum((bins == b).mean() * abs(p_t[bins == b].mean() - y_t[bins == b].mean())
                       for b in np.unique(bins))
    assert ece_before == pytest.approx(expected_ece, rel=1e-9)
    for df in (train, calib, test):
        df.unpersist()


@pytest.mark.slow
def test_gbt_beats_baseline_floor_champion_alias_and_reload(spark, cfg):
    import mlflow
    from mlflow import MlflowClient

    from seglake.core import tracking

    experiment = tracking.setup(cfg)
    train, held = synthetic(spark, 600, 1).cache(), synthetic(spark, 400, 2).cache()
    gbt, info = propensity.tune_gbt(train, INPUTS, seed=3, max_depths=[2, 3], max_iters=[10], folds=2)
    assert info["tuned_best_maxDepth"] in (2, 3) and info["tuned_best_auc_roc"] > 0.75
    lr = propensity.lr_pipeline(INPUTS).fit(train)
    m_gbt = propensity.evaluate(propensity.score(gbt, held))
    m_lr = propensity.evaluate(propensity.score(lr, held))
    assert m_gbt["auc_roc"] > 0.8 and m_lr["auc_roc"] > 0.8      # the planted signal is found
    imp = propensity.feature_importances(gbt, INPUTS)
    assert max(imp, key=imp.get) in ("recency_days", "sessions_30d") and imp["purchases_90d"] < 0.2
    noise = propensity.gbt_pipeline(INPUTS, seed=3)[0].fit(synthetic(spark, 600, 1, shuffle=True))
    m_noise = propensity.evaluate(propensity.score(noise, held))

    client = MlflowClient()

    def versions() -> int:  # the registry's own count, not what the code under test returns
        return len(client.search_model_versions("name='t-churn'"))

    def logged_models() -> int:  # runs holding a logged model (mlflow 3.17 with artifact_path: the run's "model" folder)
        runs = client.search_runs([experiment])
        return sum(any(a.path == "model" for a in client.list_artifacts(r.info.run_id)) for r in runs)

    def alias() -> int:
        return int(client.get_model_version_by_alias("t-churn", "champion").version)

    def publish(model, metrics):
        with mlflow.start_run() as run:
            pass
        cand = propensity.Candidate("gbt", model, metrics, {"run_id": run.info.run_id})
        return propensity.promote_if_better(cand, held, INPUTS, "t-churn", "auc_roc", 0.001)

    # no champion yet: even a model trained on shuffled labels is logged, registered and aliased
    first = publish(noise, m_noise)
    assert first.registered and first.decision.champion_version is None
    assert np.isnan(first.decision.champion_metric)
    assert versions() == 1 and logged_models() == 1 and alias() == first.version
    # the planted-signal GBT beats that champion: exactly one new version, which takes the alias
    better = publish(gbt, m_gbt)
    assert better.registered and better.decision.champion_version == first.version
    assert better.decision.champion_metric == pytest.approx(m_noise["auc_roc"])
    assert versions() == 2 and logged_models() == 2 and alias() == better.version != first.version
    champ_v = better.version
    # the noise model again loses: not logged, not registered, alias unchanged, the champion scores on
    worse = publish(noise, m_noise)
    assert not worse.registered and worse.version == champ_v and worse.model is not None
    assert worse.decision.champion_metric == pytest.approx(m_gbt["auc_roc"])
    assert "does not beat champion" in worse.decision.reason
    assert versions() == 2 and logged_models() == 2 and alias() == champ_v
    # decide_champion alone writes nothing: a retrain that differs by float noise is a tie, and a
    # gain within min_improvement is not enough
    for metric, margin in ((m_gbt["auc_roc"] + 1e-15, 0.0), (m_gbt["auc_roc"] + 0.0005, 0.001)):
        decision = propensity.decide_champion("t-churn", metric, held, "auc_roc", margin)
        assert not decision.promote and decision.champion_version == champ_v
        assert decision.champion_model is not None
    decision = propensity.decide_champion("t-churn", m_gbt["auc_roc"] + 0.002, held, "auc_roc", 0.001)
    assert decision.promote and decision.champion_version == champ_v and decision.champion_model is None
    # a model that ranks as well and states better probabilities (e.g. the champion recalibrated) wins;
    # equal Brier (a retrain) or a better Brier bought with a worse ranking does not
    ranked, brier = m_gbt["auc_roc"], m_gbt["brier"]
    won = propensity.decide_champion("t-churn", {"auc_roc": ranked, "brier": brier - 0.002}, held, "auc_roc", 0.001)
    assert won.promote and "no worse than champion" in won.reason
    for cand in ({"auc_roc": ranked, "brier": brier}, {"auc_roc": ranked, "brier": brier - 0.0005},
                 {"auc_roc": ranked - 0.01, "brier": brier - 0.05}):
        lost = propensity.decide_champion("t-churn", cand, held, "auc_roc", 0.001)
        assert not lost.promote and "nor its Brier score" in lost.reason, cand
    assert versions() == 2 and alias() == champ_v
    assert client.get_model_version("t-churn", str(champ_v)).tags["heldout_auc_roc"] == f"{m_gbt['auc_roc']:.6f}"

    # the reloaded champion scores identically to the in-memory model
    reloaded = mlflow.spark.load_model("models:/t-churn@champion")
    a = propensity.score(gbt, held).select("customer_id", F.col("p").alias("a"))
    b = propensity.score(reloaded, held).select("customer_id", F.col("p").alias("b"))
    diff = a.join(b, "customer_id").agg(F.count("*").alias("n"), F.max(F.abs(F.col("a") - F.col("b"))).alias("d")).first()
    assert diff["n"] == 400 and diff["d"] == 0.0
    # the logged model carries its input signature
    info = mlflow.models.get_model_info("models:/t-churn@champion")
    assert [c.name for c in info.signature.inputs] == INPUTS


@pytest.mark.slow
def test_propensity_on_generated_data_registers_once_and_a_rerun_keeps_the_champions(spark, pipeline_through,
                                                                                   monkeypatch):
    """The shared pipeline's propensity run (the first in its lakehouse's fresh MLflow store) and a
    rerun on the same data. Whether the model finds churn without the recency shortcut is
    tests/test_churn_signal.py's question, on a data set big enough to answer it."""
    from mlflow import MlflowClient

    from seglake.core import tables, tracking
    from seglake.core.context import JobContext

    cfg, gen_dir = pipeline_through("propensity")
    summary = pipeline_through.summaries["propensity"]
    small = cfg   # the shared pipeline's 1-point grid (conftest.E2E_PROPENSITY)
    # the pipeline logged to the lakehouse's own store (conftest._Pipeline): the client and the rerun use it
    store = f"sqlite:///{Path(cfg.lakehouse) / '_mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    assert tracking.tracking_uri(small) == store
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    names = {t: f"{small.get('propensity.model_name_prefix')}-{t}" for t in ("churn", "purchase")}

    # independent facts from the registry and the tracking store, not from the job's summary
    def versions() -> dict[str, int]:
        return {t: len(client.search_model_versions(f"name='{n}'")) for t, n in names.items()}

    def champions() -> dict[str, int]:
        return {t: int(client.get_model_version_by_alias(n, "champion").version) for t, n in names.items()}

    def children(parent_id: str) -> list:
        experiment = client.get_run(parent_id).info.experiment_id
        return client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_id}'")

    def logged_models(parent_id: str) -> list:  # child runs holding a model (their "model" artifact folder)
        return [r.info.run_id for r in children(parent_id)
                if any(a.path == "model" for a in client.list_artifacts(r.info.run_id))]

    # a fresh store: both targets promoted, one version and one logged model each
    promoted = {t: summary[f"{t}_model"].endswith("-> champion") for t in names}
    assert promoted == {t: True for t in names}, summary
    assert versions() == {t: 1 for t in names}
    assert len(logged_models(summary["mlflow_run"])) == 2
    first_champions = champions()
    metrics = client.get_run(summary["mlflow_run"]).data.metrics
    for target in names:   # calibrated on other customers of the evaluation snapshot; recency next to it
        assert summary[f"{target}_calibration"].startswith("platt: Brier "), summary
        assert "vs recency" in summary[f"{target}_recency_baseline"]
        assert 0 <= metrics[f"{target}_ece"] < 1 and 0 <= metrics[f"{target}_ece_uncalibrated"] < 1
        assert 0.5 <= metrics[f"{target}_recency_auc_roc"] <= 1
    for target, v in first_champions.items():
        assert summary[f"{target}_model"].endswith(f" v{v} -> champion"), summary
    scores = tables.read(spark, cfg, "gold.propensity_scores")
    n = scores.count()
    assert n == summary["scored_customers"] > 100
    row = scores.agg(F.min("churn_probability"), F.max("churn_probability"),
                     F.min("purchase_probability"), F.max("purchase_probability")).first()
    assert 0.0 <= row[0] < row[1] <= 1.0 and 0.0 <= row[2] < row[3] <= 1.0
    assert scores.select("model_version").distinct().count() == 1
    assert [tuple(r) for r in scores.select("churn_model_version", "purchase_model_version").distinct().collect()] \
        == [(first_champions["churn"], first_champions["purchase"])]

    # rerun: same scores table, the equal model does not take the alias
    registered = versions()
    again = propensity.run(JobContext(spark, small))
    rescored = tables.read(spark, cfg, "gold.propensity_scores")
    assert rescored.count() == n
    # same data, same seed: equal up to float noise, so the champion stays (a one-ulp "gain"
    # once moved the alias here) and the candidate is neither registered nor logged as a model
    assert again["churn_heldout_auc_roc"] == summary["churn_heldout_auc_roc"]
    assert versions() == registered and champions() == first_champions
    assert logged_models(again["mlflow_run"]) == []
    runs = children(again["mlflow_run"])
    assert len(runs) == 4                                   # 2 targets x (gbt, baseline): the audit trail stays
    for child in runs:
        paths = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert "model" not in paths and {"calibration.json", "feature_importances.json"} <= paths, paths
        assert "auc_roc" in child.data.metrics
    parent = client.get_run(again["mlflow_run"])
    for target, v in first_champions.items():
        assert f"(not registered; champion v{v} stays)" in again[f"{target}_model"], again
        champion_auc = summary[f"{target}_heldout_auc_roc" if promoted[target] else f"{target}_champion_heldout_auc_roc"]
        assert again[f"{target}_champion_heldout_auc_roc"] == champion_auc
        assert parent.data.metrics[f"{target}_registered"] == 0.0
        assert parent.data.tags[f"seglake.{target}.registration"].startswith("not registered"), parent.data.tags
    assert [tuple(r) for r in rescored.select("churn_model_version", "purchase_model_version").distinct().collect()] \
        == [(first_champions["churn"], first_champions["purchase"])]
