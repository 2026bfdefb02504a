"""Churn without the shortcut: the propensity model beats recency on customers who are still active.

The generator plants churn as a decline before it (model.CHURN_AT: sessions thin out, searches
fail, support is contacted, then nothing). Among customers active in the 14 days before a
snapshot, recency says little about who leaves next; the behaviour before the label window does.
The test builds point-in-time features of the planted events with the features stage's own
``compute_features``, labels them with the propensity stage's ``build_labels``, fits the stage's
GBT (the default one-point grid of conf/base.yaml) on half of the customers at earlier
snapshots, and scores the other half at two later snapshots whose label windows start after
every training label window ends. The AUCs are scikit-learn's on the collected scores (a few
thousand rows), the model's against recency's on the same customers.
"""
from __future__ import annotations

from datetime import date, timedelta

import pytest
from pyspark.sql import functions as F
from sklearn.metrics import roc_auc_score

pytestmark = pytest.mark.slow

START, END = date(2026, 6, 1), date(2026, 10, 31)
HORIZON = 30
ACTIVE_DAYS = 14
TRAIN = [date(2026, 8, 5), date(2026, 8, 12), date(2026, 8, 19), date(2026, 8, 26)]
HELD_OUT = [date(2026, 9, 25), date(2026, 10, 2)]   # after the last training label window (Aug 26 + 30 d)
MARGIN = 0.05


@pytest.fixture(scope="module")
def snapshots(spark, tmp_path_factory):
    """Labelled point-in-time feature rows of every training and held-out snapshot (cached)."""
    from seglake.devtools.generate import DEVICE_KINDS, generate
    from seglake.stages.features import FeatureParams, compute_features
    from seglake.stages.propensity.labels import build_labels

    from conftest import make_cfg

    out = tmp_path_factory.mktemp("churn_signal")
    generate(spark, out / "gen", events=160_000, customers=3_200, seed=23, start_date=START, end_date=END)
    truth = spark.read.parquet(str(out / "gen" / "ground_truth" / "events.parquet"))
    # the planted events as the enriched table would hold them: one customer per person
    device = F.element_at(F.array(*[F.lit(k) for k in DEVICE_KINDS]), F.col("dev_kind") + 1)
    events = truth.select(
        F.col("person_id").alias("customer_id"),
        F.concat_ws("/", "person_id", F.col("session_no").cast("string")).alias("session_key"),
        "event_type", "event_ts", "source", F.when(F.col("dev_kind") >= 0, device).alias("device_type"),
        F.when(F.col("revenue_c") >= 0, F.col("revenue_c") / 100.0).alias("revenue_usd"),
        F.when(F.col("scroll") >= 0, F.col("scroll") / 100.0).alias("scroll_depth"),
        F.when(F.col("dur_ms") >= 0, F.col("dur_ms") / 1000.0).alias("duration_s"),
        F.when(F.col("results") >= 0, F.create_map(F.lit("results"), F.col("results").cast("string")))
        .alias("properties")).cache()
    cfg = make_cfg(out / "lakehouse")
    params = FeatureParams.from_config(cfg)
    frames = [compute_features(events, d, params) for d in TRAIN + HELD_OUT]
    feats = frames[0]
    for f in frames[1:]:
        feats = feats.unionByName(f)
    labelled = (build_labels(feats, events, HORIZON, list(params.purchase_event_types))
                .withColumn("label", F.col("churn_label")).cache())
    labelled.count()
    yield cfg, labelled
    labelled.unpersist()
    events.unpersist()


def test_the_model_beats_recency_on_active_customers_at_held_out_future_snapshots(snapshots):
    from seglake.stages.propensity.models import customer_split, input_features, tune_gbt
    from seglake.stages.propensity.registry import score

    cfg, labelled = snapshots
    pc = cfg["propensity"]
    fit_customers, other_customers = customer_split(labelled, 0.5, 1)
    train = fit_customers.where(F.col("as_of_date").isin(TRAIN)).cache()
    model, _ = tune_gbt(train, input_features(cfg), int(pc["seed"]), pc["grid_max_depth"], pc["grid_max_iter"],
                        int(pc["cv_folds"]), 1, str(pc["tuning"]), float(pc["holdout_train_ratio"]))
    held = other_customers.where(F.col("as_of_date").isin(HELD_OUT))
    local = score(model, held).select("as_of_date", "p", "label", "recency_days").toPandas()   # ~3,000 rows
    train.unpersist()
    assert set(local["as_of_date"]) == set(HELD_OUT)
    for d, rows in local.groupby("as_of_date"):
        active = rows[rows["recency_days"] <= ACTIVE_DAYS]
        positives = int(active["label"].sum())
        # honest data: most held-out customers are active, few of them leave, and recency alone
        # still ranks them better than chance (sparser visits), so the margin is earned
        assert len(active) >= 0.5 * len(rows) and 20 <= positives <= 0.2 * len(active), (d, len(active), positives)
        model_auc = roc_auc_score(active["label"], active["p"])
        recency_auc = roc_auc_score(active["label"], active["recency_days"])
        print(f"{d}: {len(active)} active customers, {positives} churn in {HORIZON} days: "
              f"AUC model {model_auc:.3f} vs recency {recency_auc:.3f}")
        assert recency_auc > 0.5, (d, recency_auc)
        assert model_auc >= recency_auc + MARGIN, (d, model_auc, recency_auc)
