"""seglake run experiments: configuration, hash assignment, outcomes and statistics.

The job tests plant per-customer truth with numpy (variants recomputed with hashlib, outcomes
drawn with a planted effect), turn it into events, run the job, and compare gold.ab_results with
scipy / statsmodels run on the planted per-customer vectors: the Spark aggregation and the
driver statistics together must give the library's numbers to 1e-9. The generator's planted
experiment is checked end to end in the slow test at the bottom.
"""
from __future__ import annotations

import hashlib
import json
import math
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from conftest import make_cfg
from seglake.stages.experiments.settings import (BUCKETS, ExperimentConfigError, load_experiments,
                                                 parse_experiments)

REPO = Path(__file__).resolve().parents[1]
START, END, AS_OF = date(2026, 10, 1), date(2026, 10, 29), date(2026, 11, 1)
PRE = 28

GOOD = """
experiments:
  - name: offer_test
    segments: [vip, repeat_buyers]
    start: 2026-10-01
    end: 2026-10-29
    salt: s1
    variants:
      - {name: control, weight: 0.5, control: true}
      - {name: treatment, weight: 0.5}
    primary_metric: conversion_rate
    secondary_metrics: [revenue_per_customer, average_order_value, orders_per_customer]
    guardrails: [retention_14d]
    minimum_detectable_effect: 0.1
  - name: site_tags
    start: 2026-10-01
    end: 2026-10-29
    assignment: logged
    logged_as: site_exp
    variants:
      - {name: A, weight: 1}
      - {name: B, weight: 1}
    primary_metric: conversion_rate
    pre_period_days: 0
"""


# --------------------------------------------------------------------------- configuration
def test_the_shipped_experiments_file_is_valid():
    from seglake.stages.segments.validation import load_segments
    known = {s.name for s in load_segments(REPO / "conf" / "segments.yaml") if s.enabled}
    exps = load_experiments(REPO / "conf" / "experiments.yaml", known)
    assert [e.name for e in exps] == ["exp_checkout_v2", "free_shipping_loyal"]
    assert exps[0].assignment == "logged" and exps[1].segments == ("repeat_buyers", "vip")


def test_a_good_file_parses_with_defaults():
    a, b = parse_experiments(GOOD, "x.yaml", {"vip", "repeat_buyers"})
    assert a.control == "control" and a.pre_period_days == 28 and a.alpha == 0.05 and a.power == 0.8
    assert a.metrics()[0] == ("conversion_rate", "primary") and a.metrics()[-1] == ("retention_14d", "guardrail")
    assert b.control == "A" and b.logged_as == "site_exp" and b.segments == ()
    assert b.bucket_bounds() == [("A", 0, 5000), ("B", 5000, BUCKETS)]


@pytest.mark.parametrize("edit, expected", [
    (("salt: s1", "slat: s1"), "line 7, experiment 'offer_test': unknown key 'slat' (did you mean 'salt'?)"),
    (("primary_metric: conversion_rate\n    secondary", "primary_metric: conversion\n    secondary"),
     "primary_metric 'conversion' is not a metric (did you mean 'conversion_rate'?)"),
    (("end: 2026-10-29\n    salt", "end: 2026-09-29\n    salt"), "line 6, experiment 'offer_test': end 2026-09-29 must be after start"),
    (("[retention_14d]", "[retention_40d]"), "'retention_40d' needs 0 < N < the experiment's length (28 days)"),
    (("[vip, repeat_buyers]", "[vip, repeat_buyer]"), "names 'repeat_buyer', which is not an enabled segment of segments.yaml (did you mean 'repeat_buyers'?)"),
    (("{name: treatment, weight: 0.5}", "{name: treatment, weight: 0.5, control: true}"), "has 2 controls"),
    (("    segments: [vip, repeat_buyers]\n", ""), "segments is required for hash assignment"),
    (("name: site_tags", "name: offer_test"), "the name is used twice (first at line 3)"),
    (("weight: 1}\n      - {name: B", "weight: -1}\n      - {name: B"), "weight of 'A' must be a positive number"),
])
def test_each_mistake_is_one_sentence_naming_line_experiment_and_key(edit, expected):
    text = GOOD.replace(*edit)
    assert text != GOOD
    with pytest.raises(ExperimentConfigError) as err:
        parse_experiments(text, "x.yaml", {"vip", "repeat_buyers"})
    assert expected in str(err.value), str(err.value)
    assert "nothing was written" in str(err.value)


def test_several_mistakes_are_listed_together():
    text = GOOD.replace("salt: s1", "slat: s1").replace("alpha", "alpha").replace("pre_period_days: 0", "pre_period_days: -3")
    with pytest.raises(ExperimentConfigError, match="has 2 problems"):
        parse_experiments(text, "x.yaml", {"vip", "repeat_buyers"})


def test_the_cli_exits_2_with_the_sentence(tmp_path, capsys):
    from seglake.cli import main
    bad = tmp_path / "conf"
    bad.mkdir()
    for f in (REPO / "conf").iterdir():
        (bad / f.name).write_text(f.read_text())
    (bad / "experiments.yaml").write_text(GOOD.replace("salt: s1", "slat: s1"))
    code = main(["run", "experiments", "--conf-dir", str(bad), "--lakehouse", str(tmp_path / "lh")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown key 'slat' (did you mean 'salt'?)" in err and "Traceback" not in err


# --------------------------------------------------------------------------- assignment
def _bucket(salt: str, cid: str) -> int:
    return int(hashlib.sha256(f"{salt}:{cid}".encode()).hexdigest()[:15], 16) % BUCKETS


def test_hash_buckets_equal_an_independent_sha256_and_cut_by_the_weights(spark):
    from seglake.stages.experiments import data as D
    exp = parse_experiments(GOOD.replace("weight: 0.5, control: true}", "weight: 0.2, control: true}")
                            .replace("{name: treatment, weight: 0.5}", "{name: treatment, weight: 0.8}"),
                            "x.yaml", {"vip", "repeat_buyers"})[0]
    ids = [f"cust-{i:05d}" for i in range(3000)] + ["é-ünïcode", ""]
    df = spark.createDataFrame([(c, []) for c in ids], "customer_id string, segments array<string>")
    got = {r["customer_id"]: (r["bucket"], r["variant"]) for r in D.hash_assign(exp, df).collect()}
    for c in ids:
        b = _bucket("s1", c)
        assert got[c] == (b, "control" if b < 2000 else "treatment"), c
    share = sum(v == "treatment" for _, v in got.values()) / len(got)
    assert abs(share - 0.8) < 4 * math.sqrt(0.8 * 0.2 / len(got))


# --------------------------------------------------------------------------- planted lakehouse
N = 2000


def _plant(seed: int = 5, effect: float = 1.25, skew_logged: float = 0.5):
    """Per-customer truth and its events. Returns (truth dict of numpy arrays, events rows, members rows)."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"c{i:05d}" for i in range(N)])
    seg_vip = np.arange(N) < 1200
    seg_rep = np.arange(N) >= 800
    treat = np.array([_bucket("s1", c) >= 5000 for c in ids])
    pre_conv = rng.random(N) < 0.3
    pre_orders = np.where(pre_conv, rng.integers(1, 4, N), 0)
    p = 0.2 + 0.35 * pre_conv
    conv = rng.random(N) < np.where(treat, p * effect, p)
    orders = np.where(conv, rng.integers(1, 3, N), 0)
    active14 = rng.random(N) < np.where(pre_conv, 0.7, 0.4)
    active_pre14 = rng.random(N) < 0.5
    tagged_b = rng.random(N) < skew_logged
    rows, rev_w, rev_p = [], np.zeros(N), np.zeros(N)
    for i, c in enumerate(ids):
        tag = {"experiment": "site_exp", "variant": "B" if tagged_b[i] else "A"}
        rows.append((c, START + timedelta(days=1), "page_view", None, tag))      # everyone is exposed
        if i % 97 == 0:                                                             # a conflicting tag
            rows.append((c, START + timedelta(days=2), "page_view", None, {"experiment": "site_exp", "variant": "A" if tagged_b[i] else "B"}))
        for k in range(pre_orders[i]):
            v = float(np.round(rng.lognormal(3.3, 0.7), 2))
            rev_p[i] += v
            rows.append((c, START - timedelta(days=int(rng.integers(1, PRE + 1))), "purchase", v, None))
        for k in range(orders[i]):
            v = float(np.round(rng.lognormal(3.5, 0.8), 2))
            rev_w[i] += v
            rows.append((c, START + timedelta(days=int(rng.integers(0, 14))), "store_purchase" if k else "purchase", v, None))
        if active14[i]:
            rows.append((c, START + timedelta(days=int(rng.integers(14, 28))), "page_view", None, None))
        if active_pre14[i]:
            rows.append((c, START - timedelta(days=int(rng.integers(1, 14))), "search", None, None))
        rows.append((c, END + timedelta(days=1), "purchase", 999.0, None))          # after the window: ignored
    members = ([(c, START, "vip") for c in ids[seg_vip]]
               + [(c, START, "repeat_buyers") for c in ids[seg_rep]])
    truth = dict(ids=ids, treat=treat, conv=conv, orders=orders, rev_w=rev_w, rev_p=rev_p, pre_conv=pre_conv,
                 pre_orders=pre_orders, active14=active14, active_pre14=active_pre14, seg_vip=seg_vip,
                 seg_rep=seg_rep, tagged_b=tagged_b)
    return truth, rows, members


@pytest.fixture(scope="module")
def planted(spark, tmp_path_factory):
    from seglake.core import tables
    from seglake.core.contracts import SEGMENT_MEMBERSHIP
    root = tmp_path_factory.mktemp("exp")
    truth, rows, members = _plant()
    events = spark.createDataFrame(rows, "customer_id string, event_date date, event_type string, "
                                         "revenue_usd double, properties map<string,string>")
    conf = root / "experiments.yaml"
    conf.write_text(GOOD)
    cfg = make_cfg(root / "lakehouse", experiments={"config_file": str(conf)})
    tables.overwrite(spark.createDataFrame(members, "customer_id string, as_of_date date, segment string"),
                     cfg, SEGMENT_MEMBERSHIP, partition_by=["as_of_date"])
    return truth, events.cache(), cfg


def _run(spark, cfg, events, monkeypatch, as_of=AS_OF, **args):
    from seglake.core.context import JobContext
    from seglake.stages import enriched
    from seglake.stages.experiments import job

    def fake_read(spark_, cfg_, *, start=None, end=None, consent_at=None, columns=None, **kw):
        df = events
        if start is not None:
            df = df.where(F.col("event_date") >= F.lit(start))
        if end is not None:
            df = df.where(F.col("event_date") < F.lit(end))
        return df.select("customer_id", *[c for c in columns if c != "customer_id"])
    monkeypatch.setattr(enriched, "read", fake_read)
    return job.run(JobContext(spark, cfg, as_of=as_of, args=args))


def _results(spark, cfg, experiment):
    from seglake.core import tables
    from seglake.core.contracts import AB_RESULTS
    return {(r["segment"], r["metric"], r["variant"]): r.asDict() for r in
            tables.read(spark, cfg, AB_RESULTS).where(F.col("experiment") == experiment).collect()}


def _close(a, b, rel=1e-9):
    assert a is not None and b is not None, (a, b)
    assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-12), (a, b)


def test_hash_experiment_equals_scipy_and_statsmodels_on_the_planted_vectors(spark, planted, monkeypatch):
    from scipy import stats as st
    from statsmodels.stats.multitest import multipletests
    from statsmodels.stats.proportion import proportions_ztest
    truth, events, cfg = planted
    summary = _run(spark, cfg, events, monkeypatch, experiment="offer_test")
    assert summary["offer_test: status"] == "complete" and summary["offer_test: membership"] == "history"
    res = _results(spark, cfg, "offer_test")
    t = truth
    for segment, mask in (("(all)", t["seg_vip"] | t["seg_rep"]), ("vip", t["seg_vip"]), ("repeat_buyers", t["seg_rep"])):
        tr, co = mask & t["treat"], mask & ~t["treat"]
        # conversion: z test, chi-square (Pearson and Yates), Wald interval
        r = res[(segment, "conversion_rate", "treatment")]
        assert (r["n_control"], r["n_variant"]) == (co.sum(), tr.sum())
        z, p = proportions_ztest([t["conv"][tr].sum(), t["conv"][co].sum()], [tr.sum(), co.sum()])
        _close(r["statistic"], z), _close(r["p_value"], p)
        table = [[t["conv"][co].sum(), (~t["conv"][co]).sum()], [t["conv"][tr].sum(), (~t["conv"][tr]).sum()]]
        _close(r["chi2"], st.chi2_contingency(table, correction=False)[0])
        _close(r["chi2_yates_p"], st.chi2_contingency(table, correction=True)[1])
        pt, pc = t["conv"][tr].mean(), t["conv"][co].mean()
        half = st.norm.ppf(0.975) * math.sqrt(pt * (1 - pt) / tr.sum() + pc * (1 - pc) / co.sum())
        _close(r["abs_ci_low"], pt - pc - half), _close(r["rel_uplift"], pt / pc - 1)
        # revenue per customer: Welch on the planted vectors
        r = res[(segment, "revenue_per_customer", "treatment")]
        w = st.ttest_ind(t["rev_w"][tr], t["rev_w"][co], equal_var=False)
        _close(r["statistic"], w.statistic), _close(r["p_value"], w.pvalue), _close(r["df"], w.df)
        # CUPED with the pre-period revenue as covariate
        x, y = t["rev_p"][mask], t["rev_w"][mask]
        theta = np.cov(x, y, ddof=1)[0, 1] / np.var(x, ddof=1)
        adj = t["rev_w"] - theta * (t["rev_p"] - x.mean())
        wc = st.ttest_ind(adj[tr], adj[co], equal_var=False)
        _close(r["cuped_p_value"], wc.pvalue), _close(r["cuped_abs_uplift"], adj[tr].mean() - adj[co].mean())
        assert r["cuped_variance_reduction"] > 0.0
        # average order value: converting customers only, no covariate
        aov = np.where(t["orders"] > 0, t["rev_w"] / np.maximum(t["orders"], 1), np.nan)
        r = res[(segment, "average_order_value", "treatment")]
        a_t, a_c = aov[tr & (t["orders"] > 0)], aov[co & (t["orders"] > 0)]
        assert (r["n_variant"], r["n_control"]) == (len(a_t), len(a_c)) and r["cuped_p_value"] is None
        _close(r["p_value"], st.ttest_ind(a_t, a_c, equal_var=False).pvalue)
        # retention_14d: active in [start + 14, end); covariate: active in [start - 14, start)
        r = res[(segment, "retention_14d", "treatment")]
        z, p = proportions_ztest([t["active14"][tr].sum(), t["active14"][co].sum()], [tr.sum(), co.sum()])
        _close(r["p_value"], p)
        # Holm across the three secondary metrics
        sec = {m: res[(segment, m, "treatment")] for m in ("revenue_per_customer", "average_order_value", "orders_per_customer")}
        adj_p = multipletests([s["p_value"] for s in sec.values()], method="holm")[1]
        for s, q in zip(sec.values(), adj_p):
            _close(s["p_value_holm"], q)
        # SRM: assigned counts against 50/50
        _close(r["srm_p"], st.chisquare([co.sum(), tr.sum()]).pvalue)
    assert not res[("(all)", "conversion_rate", "treatment")]["srm_flag"]
    # the planted 25% relative effect on conversion: inside the interval, and significant at this size
    r = res[("(all)", "conversion_rate", "treatment")]
    assert r["rel_ci_low"] < 0.25 < r["rel_ci_high"] and r["p_value"] < 0.05


def test_assignments_are_stable_across_reruns_and_later_segment_changes(spark, planted, monkeypatch):
    from seglake.core import tables
    from seglake.core.contracts import EXPERIMENT_ASSIGNMENTS, SEGMENT_MEMBERSHIP
    truth, events, cfg = planted
    _run(spark, cfg, events, monkeypatch, experiment="offer_test")
    before = sorted(tuple(r) for r in tables.read(spark, cfg, EXPERIMENT_ASSIGNMENTS)
                    .where("experiment = 'offer_test'").select("customer_id", "variant", "bucket").collect())
    ids = truth["ids"][truth["seg_vip"] | truth["seg_rep"]]
    assert [c for c, _, _ in before] == sorted(ids)
    assert all(v == ("treatment" if _bucket("s1", c) >= 5000 else "control") for c, v, _ in before)
    # membership on the start date rebuilt later with other members: the assignment does not move
    tables.overwrite(spark.createDataFrame([(c, START, "vip") for c in ids[:100]],
                                           "customer_id string, as_of_date date, segment string"),
                     cfg, SEGMENT_MEMBERSHIP, partition_by=["as_of_date"])
    _run(spark, cfg, events, monkeypatch, experiment="offer_test")
    after = sorted(tuple(r) for r in tables.read(spark, cfg, EXPERIMENT_ASSIGNMENTS)
                   .where("experiment = 'offer_test'").select("customer_id", "variant", "bucket").collect())
    assert after == before
    results = tables.read(spark, cfg, "gold.ab_results").where("experiment = 'offer_test'")
    assert results.count() == 3 * 5 and results.select("run_id").distinct().count() == 1  # replaced, not appended


def test_logged_assignment_reads_the_tags_and_reports_conflicts(spark, planted, monkeypatch):
    from scipy import stats as st
    truth, events, cfg = planted
    summary = _run(spark, cfg, events, monkeypatch, experiment="site_tags")
    res = _results(spark, cfg, "site_tags")
    conflicting = np.arange(N) % 97 == 0
    ok = ~conflicting
    b, a = ok & truth["tagged_b"], ok & ~truth["tagged_b"]
    r = res[("(all)", "conversion_rate", "B")]
    assert (r["n_control"], r["n_variant"]) == (a.sum(), b.sum())
    assert r["conflicting"] == conflicting.sum() and r["disagree"] == 0 and r["outside"] == conflicting.sum()
    assert summary["site_tags: tagged_conflicting"] == conflicting.sum()
    table = [[truth["conv"][a].sum(), (~truth["conv"][a]).sum()], [truth["conv"][b].sum(), (~truth["conv"][b]).sum()]]
    _close(r["chi2_p"], st.chi2_contingency(table, correction=False)[1])
    assert r["cuped_p_value"] is None                              # pre_period_days: 0
    assert not r["srm_flag"]


def test_a_skewed_split_is_flagged_and_a_running_experiment_is_partial(spark, tmp_path, monkeypatch):
    truth, rows, members = _plant(seed=9, skew_logged=0.6)
    events = spark.createDataFrame(rows, "customer_id string, event_date date, event_type string, "
                                         "revenue_usd double, properties map<string,string>")
    conf = tmp_path / "experiments.yaml"
    conf.write_text(GOOD)
    cfg = make_cfg(tmp_path / "lakehouse", experiments={"config_file": str(conf)})
    summary = _run(spark, cfg, events, monkeypatch, experiment="site_tags")
    assert summary["site_tags: srm"] == "FLAGGED"
    res = _results(spark, cfg, "site_tags")
    assert res[("(all)", "conversion_rate", "B")]["srm_p"] < 1e-6
    # ten days in: running, the window cut at the as-of date; retention_14d is not measurable yet
    from seglake.core import tables
    from seglake.core.contracts import SEGMENT_MEMBERSHIP
    tables.overwrite(spark.createDataFrame(members, "customer_id string, as_of_date date, segment string"),
                     cfg, SEGMENT_MEMBERSHIP, partition_by=["as_of_date"])
    summary = _run(spark, cfg, events, monkeypatch, as_of=START + timedelta(days=10), experiment="offer_test")
    assert summary["offer_test: status"] == "running"
    res = _results(spark, cfg, "offer_test")
    assert {m for (_, m, _) in res} == {"conversion_rate", "revenue_per_customer", "average_order_value", "orders_per_customer"}
    assert {r["window_end"] for r in res.values()} == {START + timedelta(days=10)}
    # not started: nothing written for it
    summary = _run(spark, cfg, events, monkeypatch, as_of=START, experiment="site_tags")
    assert summary["site_tags: status"] == "not started"


# --------------------------------------------------------------------------- generated data, whole chain
@pytest.mark.slow
def test_the_generators_planted_effect_is_recovered(spark, pipeline_through):
    """The planted coupon effect on the shared e2e data: every analysed customer's two potential
    outcomes are in the ground truth, so the true uplift on exactly the analysed population is
    known; it must lie in the 95% intervals; retention_14d (no effect) must not be significant."""
    from seglake.core import tables
    from seglake.core.contracts import AB_RESULTS, EXPERIMENT_ASSIGNMENTS
    cfg, gen_dir = pipeline_through("experiments")
    summary = pipeline_through.summaries["experiments"]
    assert summary["exp_checkout_v2: status"] == "complete" and summary["free_shipping_loyal: membership"] == "computed"
    gt = Path(gen_dir) / "ground_truth"
    counts = json.loads((gt / "counts.json").read_text())
    assert counts["experiment"]["start"] == "2026-10-01" and counts["experiment"]["end"] == "2026-10-29"
    persons = spark.read.parquet(str(gt / "persons.parquet"))
    uid = (spark.read.parquet(str(gt / "identifiers.parquet")).where("identifier_type = 'user_id'")
           .select("identifier", "person_id"))
    person_of = (tables.read(spark, cfg, "silver.identity_map").where("identifier_type = 'user_id'")
                 .join(uid, "identifier").select("customer_id", "person_id").distinct())
    assigned = tables.read(spark, cfg, EXPERIMENT_ASSIGNMENTS).where("experiment = 'exp_checkout_v2'")
    n_assigned = assigned.count()
    mapped = (assigned.select("customer_id", F.col("variant").alias("seen")).join(person_of, "customer_id")
              .join(persons.withColumnRenamed("variant", "truth_variant"), "person_id")
              .select("seen", "truth_variant", "exp_exposed", "exp_converted_a", "exp_converted_b").toPandas())
    # the tags are read back as planted, and only exposed persons are in the population
    assert len(mapped) >= 0.8 * n_assigned
    assert (mapped["seen"] == mapped["truth_variant"]).all() and mapped["exp_exposed"].all()
    # the true absolute uplift on the analysed population: persons without a user_id cannot
    # redeem the coupon (the effect archetypes all log in), so they add 0 to the difference
    true_abs = float((mapped["exp_converted_b"].astype(int) - mapped["exp_converted_a"].astype(int)).sum()) / n_assigned
    res = {(r["segment"], r["metric"], r["variant"]): r for r in
           tables.read(spark, cfg, AB_RESULTS).where("experiment = 'exp_checkout_v2'").collect()}
    conv = res[("(all)", "conversion_rate", "B")]
    print(f"\nplanted experiment: {n_assigned} customers, true abs uplift {true_abs:.4f}, estimate "
          f"{conv['abs_uplift']:.4f} [{conv['abs_ci_low']:.4f}, {conv['abs_ci_high']:.4f}], p={conv['p_value']:.3g}")
    assert true_abs > 0.03
    assert conv["abs_ci_low"] <= true_abs <= conv["abs_ci_high"]
    assert conv["n_control"] + conv["n_variant"] == n_assigned and not conv["srm_flag"]
    ret = res[("(all)", "retention_14d", "B")]            # no planted effect
    assert ret["abs_ci_low"] <= 0.0 <= ret["abs_ci_high"]
    # the hash experiment: members of repeat_buyers / vip on 2026-10-01, computed for that date
    loyal = {r["segment"] for r in tables.read(spark, cfg, AB_RESULTS).where("experiment = 'free_shipping_loyal'")
             .select("segment").distinct().collect()}
    assert loyal == {"(all)", "repeat_buyers", "vip"}


def test_the_generator_told_to_skew_the_split_gets_its_experiment_flagged(spark, tmp_path, monkeypatch):
    """`seglake generate --experiment-b-share 0.7`: the site put 70% in B against the 50/50 design.
    The generator's own per-event truth (person = customer, its tags as the site wrote them) goes
    through the job; the sample-ratio check must flag it (the fair default split is not flagged in
    the slow whole-chain test above, nor in the planted tests)."""
    from seglake.devtools.generate import generate
    flags = {}
    for share in (0.7,):
        out = tmp_path / f"gen{share}"
        generate(spark, str(out), events=6000, customers=400, seed=3, experiment_b_share=share)
        truth = spark.read.parquet(str(out / "ground_truth" / "events.parquet"))
        tag = F.when(F.col("variant") >= 0, F.create_map(F.lit("experiment"), F.lit("exp_checkout_v2"), F.lit("variant"),
                                                         F.element_at(F.array(F.lit("A"), F.lit("B")), F.col("variant") + 1)))
        events = truth.select(F.col("person_id").alias("customer_id"), F.to_date("event_ts").alias("event_date"),
                              "event_type", (F.col("revenue_c") / 100.0).alias("revenue_usd"), tag.alias("properties"))
        cfg = make_cfg(tmp_path / f"lake{share}")
        summary = _run(spark, cfg, events, monkeypatch, experiment="exp_checkout_v2")
        r = _results(spark, cfg, "exp_checkout_v2")[("(all)", "conversion_rate", "B")]
        persons = spark.read.parquet(str(out / "ground_truth" / "persons.parquet")).where("exp_exposed")
        by = {row["variant"]: row["count"] for row in persons.groupBy("variant").count().collect()}
        assert (r["n_control"], r["n_variant"]) == (by["A"], by["B"])
        flags[share] = (summary["exp_checkout_v2: srm"], r["srm_p"])
    print(f"\nsample-ratio check: {flags}")
    assert flags[0.7][0] == "FLAGGED" and flags[0.7][1] < 1e-6
