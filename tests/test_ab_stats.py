"""A/B statistics from sufficient statistics (seglake.stages.experiments.stats) against
scipy / statsmodels run on the raw per-customer vectors. Pure Python: no Spark."""
from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_effectsize,
    proportions_ztest,
)
from statsmodels.stats.weightstats import CompareMeans

from seglake.stages.experiments import stats as ab
from seglake.stages.experiments.stats import Moments


def close(a, b):
    return pytest.approx(b, rel=1e-9, abs=1e-12) == a


def mom(y, x=None) -> Moments:
    """Reduce raw vectors to the sufficient statistics Spark would aggregate."""
    y = np.asarray(y, dtype=float)
    x = np.zeros_like(y) if x is None else np.asarray(x, dtype=float)
    return Moments(n=len(y), sum_y=float(np.sum(y)), sum_y2=float(np.sum(y * y)),
                   sum_x=float(np.sum(x)), sum_x2=float(np.sum(x * x)), sum_xy=float(np.sum(x * y)))


def binary(seed, sizes, rates):
    rng = np.random.default_rng(seed)
    return [(rng.random(n) < p).astype(float) for n, p in zip(sizes, rates)]


#: (seed, sizes, rates): small, larger & unbalanced, tiny, 3 variants; first = control
PROP_SETS = [
    (1, [500, 480], [0.10, 0.12]),
    (2, [20_000, 9_000], [0.031, 0.036]),
    (3, [60, 45], [0.30, 0.50]),
    (4, [3_000, 3_100, 2_900], [0.20, 0.21, 0.23]),
]


def revenue(seed, sizes, lifts, zero_share=0.6):
    """Skewed revenue with many zeros (lognormal spend), and a correlated pre-period covariate."""
    rng = np.random.default_rng(seed)
    out = []
    for n, lift in zip(sizes, lifts):
        base = rng.lognormal(3.0, 1.0, n)
        x = base * (rng.random(n) < 0.7) * rng.lognormal(0.0, 0.3, n)
        y = base * (1 + lift) * rng.lognormal(0.0, 0.4, n) * (rng.random(n) >= zero_share)
        out.append((y, x))
    return out


MEAN_SETS = [
    (11, [400, 350], [0.0, 0.10]),
    (12, [8_000, 3_000], [0.0, 0.05]),
    (13, [25, 40], [0.0, 0.30]),
    (14, [2_000, 2_100, 1_900], [0.0, 0.02, 0.08]),
]


# --------------------------------------------------------------------------- moments / imports
def test_moments_match_numpy():
    (y, x), _ = revenue(5, [300, 10], [0, 0])
    m = mom(y, x)
    assert close(m.mean, np.mean(y)) and close(m.var, np.var(y, ddof=1)) and close(m.sd, np.std(y, ddof=1))
    assert close(m.mean_x, np.mean(x)) and close(m.var_x, np.var(x, ddof=1))
    assert close(m.cov_xy, np.cov(x, y, ddof=1)[0, 1])
    # a constant metric: the one-pass variance is floored to exactly 0 (numpy's two-pass
    # variance is round-off only, ~1e-30), so a flat metric gives no spurious test
    const = mom(np.full(1000, 3.7))
    assert np.var(np.full(1000, 3.7), ddof=1) < 1e-25 and const.var == 0.0
    assert mom(np.full(1000, 3.7)).sum_y2 - 1000 * 3.7 ** 2 != 0.0  # the floor is what makes it 0
    assert Moments(n=1, sum_y=2.0, sum_y2=4.0).var is None and Moments(n=0, sum_y=0, sum_y2=0).mean is None


def test_stats_imports_no_statsmodels():
    tree = ast.parse(Path(ab.__file__).read_text())
    roots = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module}
    assert roots <= {"__future__", "math", "dataclasses", "typing", "numpy", "scipy"}, roots


# --------------------------------------------------------------------------- SRM / chi-square
@pytest.mark.parametrize("observed, weights", [
    ({"a": 5030, "b": 4970}, {"a": 0.5, "b": 0.5}),
    ({"a": 5030, "b": 4970}, {"a": 50, "b": 50}),
    ({"c": 5120, "t1": 2400, "t2": 2480}, {"c": 0.5, "t1": 0.25, "t2": 0.25}),
    ({"c": 900, "t": 100}, {"c": 0.8, "t": 0.2}),
])
def test_srm_matches_scipy(observed, weights):
    obs = np.array([observed[k] for k in weights], dtype=float)
    w = np.array(list(weights.values()), dtype=float)
    ref = sps.chisquare(obs, obs.sum() * w / w.sum())
    res = ab.srm(observed, weights)
    assert close(res["srm_chi2"], ref.statistic) and close(res["srm_p"], ref.pvalue)
    assert res["srm_df"] == len(weights) - 1


def test_srm_flags_a_skewed_split_not_a_fair_one():
    skew = ab.srm({"control": 4500, "treatment": 5500}, {"control": 0.5, "treatment": 0.5})
    assert skew["srm_chi2"] == pytest.approx(100.0)  # by hand: 2 * 500^2 / 5000
    assert skew["srm_p"] < 0.001
    fair_a = int(np.random.default_rng(2024).binomial(10_000, 0.5))
    fair = ab.srm({"control": fair_a, "treatment": 10_000 - fair_a}, {"control": 0.5, "treatment": 0.5})
    print(f"fair split {fair_a}/{10_000 - fair_a}: srm_p = {fair['srm_p']:.4f}")
    assert fair["srm_p"] > 0.01
    # a variant with a weight but nobody assigned counts 0; an unknown variant is an error
    assert ab.srm({"control": 100}, {"control": 0.5, "treatment": 0.5})["srm_p"] < 1e-10
    with pytest.raises(ValueError):
        ab.srm({"x": 1}, {"control": 1.0})


@pytest.mark.parametrize("successes, totals", [
    ({"a": 50, "b": 61}, {"a": 500, "b": 480}),
    ({"a": 5, "b": 5}, {"a": 10, "b": 11}),          # |O-E| < 0.5: Yates term clipped to 0
    ({"a": 620, "b": 331}, {"a": 20_000, "b": 9_000}),
    ({"a": 600, "b": 640, "c": 690}, {"a": 3_000, "b": 3_100, "c": 2_900}),
])
def test_chi_square_table_matches_scipy(successes, totals):
    names = list(totals)
    table = np.array([[successes[v] for v in names], [totals[v] - successes[v] for v in names]])
    res = ab.chi_square_table(successes, totals)
    ref = sps.chi2_contingency(table, correction=False)
    assert close(res["chi2"], ref.statistic) and close(res["chi2_p"], ref.pvalue)
    assert res["chi2_df"] == ref.dof
    if len(names) == 2:
        yates = sps.chi2_contingency(table, correction=True)
        assert close(res["chi2_yates"], yates.statistic) and close(res["chi2_yates_p"], yates.pvalue)
    else:
        assert res["chi2_yates"] is None and res["chi2_yates_p"] is None


def test_chi_square_table_degenerate_is_none():
    for succ, tot in [({"a": 0, "b": 0}, {"a": 10, "b": 12}),    # nobody converted
                      ({"a": 10, "b": 12}, {"a": 10, "b": 12}),  # everybody converted
                      ({"a": 3, "b": 0}, {"a": 10, "b": 0}),     # an empty variant
                      ({"a": 3}, {"a": 10})]:                    # one variant
        assert all(v is None for v in ab.chi_square_table(succ, tot).values())


# --------------------------------------------------------------------------- proportions
def _complex_step_se(f, p_t, p_c, var_t, var_c):
    """Delta-method se with the gradient of f taken numerically (complex step: exact to ~1e-15)."""
    h = 1e-20
    g_t = f(complex(p_t, h), p_c).imag / h
    g_c = f(p_t, complex(p_c, h)).imag / h
    return math.sqrt(g_t ** 2 * var_t + g_c ** 2 * var_c)


def _rel(a, b):
    return a / b - 1


@pytest.mark.parametrize("seed, sizes, rates", PROP_SETS)
def test_proportion_comparison_matches_statsmodels(seed, sizes, rates):
    groups = binary(seed, sizes, rates)
    c = groups[0]
    z = sps.norm.ppf(0.975)
    for t in groups[1:]:
        res = ab.proportion_comparison(mom(c), mom(t))
        x_t, n_t, x_c, n_c = int(t.sum()), len(t), int(c.sum()), len(c)
        p_t, p_c = x_t / n_t, x_c / n_c
        assert close(res["mean_control"], c.mean()) and close(res["mean_variant"], t.mean())
        assert close(res["sd_control"], np.std(c, ddof=1)) and close(res["sd_variant"], np.std(t, ddof=1))
        stat, p = proportions_ztest([x_t, x_c], [n_t, n_c])
        assert close(res["statistic"], stat) and close(res["p_value"], p)
        assert res["test"] == "two-proportion z" and res["df"] is None
        low, high = confint_proportions_2indep(x_t, n_t, x_c, n_c, method="wald", compare="diff")
        assert close(res["abs_uplift"], p_t - p_c)
        assert close(res["abs_ci_low"], low) and close(res["abs_ci_high"], high)
        se = _complex_step_se(_rel, p_t, p_c, p_t * (1 - p_t) / n_t, p_c * (1 - p_c) / n_c)
        assert close(res["rel_uplift"], p_t / p_c - 1)
        assert close(res["rel_ci_low"], p_t / p_c - 1 - z * se)
        assert close(res["rel_ci_high"], p_t / p_c - 1 + z * se)


def test_proportion_alpha_changes_the_quantile():
    c, t = binary(1, [500, 480], [0.10, 0.12])
    res = ab.proportion_comparison(mom(c), mom(t), alpha=0.1)
    low, high = confint_proportions_2indep(int(t.sum()), len(t), int(c.sum()), len(c),
                                           method="wald", compare="diff", alpha=0.1)
    assert close(res["abs_ci_low"], low) and close(res["abs_ci_high"], high)


def _finite_or_none(d):
    for k, v in d.items():
        assert v is None or isinstance(v, (str, bool, int)) or math.isfinite(v), (k, v)


def test_proportion_degenerate_inputs_are_none():
    zero = Moments(n=100, sum_y=0, sum_y2=0)
    some = Moments(n=100, sum_y=7, sum_y2=7)
    res = ab.proportion_comparison(zero, zero)  # nobody converted anywhere
    _finite_or_none(res)
    assert res["abs_uplift"] == 0.0 and res["rel_uplift"] is None and res["statistic"] is None
    assert res["p_value"] is None and res["abs_ci_low"] is None and res["sd_control"] == 0.0
    res = ab.proportion_comparison(zero, some)  # p_c == 0: no relative uplift
    _finite_or_none(res)
    assert res["rel_uplift"] is None and res["rel_ci_low"] is None
    stat, p = proportions_ztest([7, 0], [100, 100])
    assert close(res["statistic"], stat) and close(res["p_value"], p)
    one = Moments(n=1, sum_y=1, sum_y2=1)
    res = ab.proportion_comparison(one, some)
    _finite_or_none(res)
    assert res["sd_control"] is None and res["statistic"] is None and res["mean_control"] == 1.0
    res = ab.proportion_comparison(Moments(n=0, sum_y=0, sum_y2=0), some)
    _finite_or_none(res)
    assert res["mean_control"] is None and res["abs_uplift"] is None


# --------------------------------------------------------------------------- means
@pytest.mark.parametrize("seed, sizes, lifts", MEAN_SETS)
def test_welch_matches_scipy_and_statsmodels(seed, sizes, lifts):
    data = revenue(seed, sizes, lifts)
    c = data[0][0]
    for t, _ in data[1:]:
        res = ab.welch_comparison(mom(c), mom(t))
        ref = sps.ttest_ind(t, c, equal_var=False)
        assert close(res["statistic"], ref.statistic) and close(res["p_value"], ref.pvalue)
        assert close(res["df"], ref.df) and res["test"] == "welch t"
        low, high = CompareMeans.from_data(t, c).tconfint_diff(alpha=0.05, usevar="unequal")
        assert close(res["abs_ci_low"], low) and close(res["abs_ci_high"], high)
        assert close(res["abs_uplift"], t.mean() - c.mean())
        assert close(res["mean_control"], c.mean()) and close(res["mean_variant"], t.mean())
        assert close(res["sd_control"], np.std(c, ddof=1)) and close(res["sd_variant"], np.std(t, ddof=1))
        q = sps.t.ppf(0.975, ref.df)
        se = _complex_step_se(_rel, t.mean(), c.mean(), np.var(t, ddof=1) / len(t), np.var(c, ddof=1) / len(c))
        rel = t.mean() / c.mean() - 1
        assert close(res["rel_uplift"], rel)
        assert close(res["rel_ci_low"], rel - q * se) and close(res["rel_ci_high"], rel + q * se)


def test_welch_degenerate_inputs_are_none():
    flat = mom(np.full(50, 2.0))
    res = ab.welch_comparison(flat, flat)  # zero variance in both
    _finite_or_none(res)
    assert res["abs_uplift"] == 0.0 and res["statistic"] is None and res["p_value"] is None
    assert res["sd_control"] == 0.0 and res["df"] is None
    res = ab.welch_comparison(mom([0.0] * 30), mom([1.0, 3.0, 2.0]))  # control mean 0: no relative
    _finite_or_none(res)
    assert res["rel_uplift"] is None and res["rel_ci_low"] is None
    ref = sps.ttest_ind([1.0, 3.0, 2.0], [0.0] * 30, equal_var=False)
    assert close(res["statistic"], ref.statistic) and close(res["df"], ref.df)
    res = ab.welch_comparison(mom([5.0]), mom([1.0, 3.0]))  # n == 1
    _finite_or_none(res)
    assert res["sd_control"] is None and res["statistic"] is None and res["abs_uplift"] == -3.0


# --------------------------------------------------------------------------- CUPED
def _cuped_reference(c, xc, t, xt):
    x_all, y_all = np.concatenate([xc, xt]), np.concatenate([c, t])
    theta = np.cov(x_all, y_all, ddof=1)[0, 1] / np.var(x_all, ddof=1)
    adj_c = c - theta * (xc - x_all.mean())
    adj_t = t - theta * (xt - x_all.mean())
    return theta, adj_c, adj_t


@pytest.mark.parametrize("seed, sizes, lifts", MEAN_SETS)
def test_cuped_matches_numpy_adjusted_welch(seed, sizes, lifts):
    data = revenue(seed, sizes, lifts)
    c, xc = data[0]
    for t, xt in data[1:]:
        res = ab.cuped_comparison(mom(c, xc), mom(t, xt), "mean")
        theta, adj_c, adj_t = _cuped_reference(c, xc, t, xt)
        ref = sps.ttest_ind(adj_t, adj_c, equal_var=False)
        low, high = CompareMeans.from_data(adj_t, adj_c).tconfint_diff(alpha=0.05, usevar="unequal")
        assert close(res["cuped_theta"], theta)
        assert close(res["cuped_abs_uplift"], adj_t.mean() - adj_c.mean())
        assert close(res["cuped_p_value"], ref.pvalue)
        assert close(res["cuped_ci_low"], low) and close(res["cuped_ci_high"], high)
        plain = np.var(t, ddof=1) / len(t) + np.var(c, ddof=1) / len(c)
        adjusted = np.var(adj_t, ddof=1) / len(t) + np.var(adj_c, ddof=1) / len(c)
        assert close(res["cuped_variance_reduction"], 1 - adjusted / plain)
        if min(sizes) >= 300:  # the covariate is correlated by construction (tiny sets: noisy)
            assert res["cuped_variance_reduction"] > 0.05


def test_cuped_on_a_proportion_with_a_binary_covariate():
    rng = np.random.default_rng(21)
    xc, xt = (rng.random(4000) < 0.3).astype(float), (rng.random(3500) < 0.3).astype(float)
    c = ((rng.random(4000) < 0.05 + 0.2 * xc)).astype(float)
    t = ((rng.random(3500) < 0.06 + 0.2 * xt)).astype(float)
    res = ab.cuped_comparison(mom(c, xc), mom(t, xt), "proportion")
    theta, adj_c, adj_t = _cuped_reference(c, xc, t, xt)
    ref = sps.ttest_ind(adj_t, adj_c, equal_var=False)
    assert close(res["cuped_theta"], theta) and close(res["cuped_p_value"], ref.pvalue)


def test_cuped_without_pre_period_variation_is_plain_welch():
    (c, _), (t, _) = revenue(11, [400, 350], [0.0, 0.1])
    res = ab.cuped_comparison(mom(c, np.full(len(c), 4.0)), mom(t, np.full(len(t), 4.0)), "mean")
    ref = sps.ttest_ind(t, c, equal_var=False)
    low, high = CompareMeans.from_data(t, c).tconfint_diff(alpha=0.05, usevar="unequal")
    assert res["cuped_theta"] == 0.0 and res["cuped_variance_reduction"] == 0.0
    assert close(res["cuped_p_value"], ref.pvalue) and close(res["cuped_ci_low"], low)
    assert close(res["cuped_ci_high"], high) and close(res["cuped_abs_uplift"], t.mean() - c.mean())
    # no covariate at all (x sums default 0) behaves the same; n < 2 gives None, not an error
    assert ab.cuped_comparison(mom(c), mom(t), "mean")["cuped_p_value"] == res["cuped_p_value"]
    assert all(v is None for v in ab.cuped_comparison(mom([1.0]), mom(t), "mean").values())


# --------------------------------------------------------------------------- power
# statsmodels' solve_power is a numerical root search (brentq_expanding with its default
# tolerances), so the unrounded sizes are compared at rel 1e-6 (observed: ~1e-8 or better).
# The rounded-up ints must then be equal -- unless statsmodels' root lies within that
# tolerance of an integer, where solver noise may flip the ceiling by one.
def _check_needed(ours_float, ours_int, sm_root):
    assert ours_float == pytest.approx(sm_root, rel=1e-6)
    assert ours_int == math.ceil(ours_float)
    if abs(sm_root - round(sm_root)) > 1e-6 * sm_root:
        assert ours_int == math.ceil(sm_root)
    else:
        assert abs(ours_int - math.ceil(sm_root)) <= 1


@pytest.mark.parametrize("seed, sizes, rates", PROP_SETS[:3])
@pytest.mark.parametrize("mde", [0.05, 0.2, -0.1])
def test_power_proportions_matches_normal_ind_power(seed, sizes, rates, mde):
    c, t = binary(seed, sizes, rates)[:2]
    p_c = c.mean()
    h = proportion_effectsize(min(p_c * (1 + mde), 1 - 1e-12), p_c)
    res = ab.power_and_sample_size("proportion", mom(c), len(t), mde)
    ref = NormalIndPower().power(effect_size=h, nobs1=len(t), alpha=0.05, ratio=len(c) / len(t),
                                 alternative="two-sided")
    assert close(res["achieved_power"], ref)
    sm_root = NormalIndPower().solve_power(effect_size=abs(h), nobs1=None, alpha=0.05, power=0.8, ratio=1.0)
    _check_needed(ab._needed_float("proportion", mom(c), mde, 0.05, 0.8), res["needed_per_variant"], sm_root)


@pytest.mark.parametrize("seed, sizes, lifts", MEAN_SETS[:3])
@pytest.mark.parametrize("mde", [0.05, 0.25])
def test_power_means_matches_ttest_ind_power(seed, sizes, lifts, mde):
    (c, _), (t, _) = revenue(seed, sizes, lifts)[:2]
    d = mde * abs(c.mean()) / np.std(c, ddof=1)
    res = ab.power_and_sample_size("mean", mom(c), len(t), mde, alpha=0.05, power=0.9)
    ref = TTestIndPower().power(effect_size=d, nobs1=len(t), alpha=0.05, ratio=len(c) / len(t))
    assert close(res["achieved_power"], ref)
    sm_root = TTestIndPower().solve_power(effect_size=d, nobs1=None, alpha=0.05, power=0.9, ratio=1.0)
    _check_needed(ab._needed_float("mean", mom(c), mde, 0.05, 0.9), res["needed_per_variant"], sm_root)


def test_power_hand_checked_sample_size():
    # p = 0.10 -> 0.12: h = 2 asin(sqrt .12) - 2 asin(sqrt .10) = 0.0639821; the difference
    # of the two arcsine-transformed rates has variance 1/n + 1/n, so per group
    # n = 2 ((1.959964 + 0.841621) / h)^2 = 2 (2.801585 / 0.0639821)^2 = 3834.6 -> 3835
    # (the opposite tail only adds ~1e-8 of power and moves the root by ~0.01)
    res = ab.power_and_sample_size("proportion", Moments(n=1000, sum_y=100, sum_y2=100), 1000, 0.2)
    assert res["needed_per_variant"] == 3835


def test_power_degenerate_is_none():
    for kind, m in [("proportion", Moments(n=100, sum_y=0, sum_y2=0)),   # p_c == 0
                    ("mean", mom(np.full(20, 3.0))),                      # sd == 0
                    ("mean", mom([2.0]))]:                                # sd undefined
        res = ab.power_and_sample_size(kind, m, 100, 0.1)
        assert res == {"achieved_power": None, "needed_per_variant": None}


# --------------------------------------------------------------------------- Holm
@pytest.mark.parametrize("pvalues", [
    [0.01, 0.04, 0.03, 0.2],
    [0.02, None, 0.02, 0.5, None, 0.001],
    [0.6, 0.7],
    [None],
    [],
])
def test_holm_matches_statsmodels(pvalues):
    res = ab.holm(pvalues)
    present = [p for p in pvalues if p is not None]
    ref = iter(multipletests(present, method="holm")[1]) if present else iter(())
    assert len(res) == len(pvalues)
    for p, r in zip(pvalues, res):
        if p is None:
            assert r is None
        else:
            assert close(r, next(ref))


# --------------------------------------------------------------------------- compare
def _plain_types(row):
    for k, v in row.items():
        assert v is None or type(v) in (str, bool, int, float), (k, type(v))
        assert not (type(v) is float and not math.isfinite(v)), k


def test_compare_proportions_three_variants():
    groups = binary(4, [3_000, 3_100, 2_900], [0.20, 0.21, 0.23])
    moments = dict(zip(["control", "b", "c"], map(mom, groups)))
    rows = ab.compare("proportion", moments, "control", mde_rel=0.1)
    assert [r["variant"] for r in rows] == ["b", "c"]
    table = np.array([[g.sum() for g in groups], [len(g) - g.sum() for g in groups]])
    chi = sps.chi2_contingency(table, correction=False)
    for row, g in zip(rows, groups[1:]):
        assert tuple(row) == ab.RESULT_KEYS
        _plain_types(row)
        assert row["control"] == "control" and row["n_control"] == 3_000 and row["n_variant"] == len(g)
        assert close(row["chi2"], chi.statistic) and close(row["chi2_p"], chi.pvalue) and row["chi2_df"] == 2
        assert row["chi2_yates"] is None
        stat, p = proportions_ztest([g.sum(), groups[0].sum()], [len(g), 3_000])
        assert close(row["statistic"], stat) and close(row["p_value"], p)
        assert row["significant"] is bool(p < 0.05)
        assert row["achieved_power"] is not None and isinstance(row["needed_per_variant"], int)
        assert all(row[k] is None for k in ab.CUPED_KEYS)


def test_compare_means_with_cuped_and_without_power():
    data = revenue(14, [2_000, 2_100, 1_900], [0.0, 0.02, 0.08])
    moments = {name: mom(y, x) for name, (y, x) in zip(["ctl", "v1", "v2"], data)}
    rows = ab.compare("mean", moments, "ctl", with_cuped=True)
    (c, xc) = data[0]
    for row, (t, xt) in zip(rows, data[1:]):
        assert tuple(row) == ab.RESULT_KEYS
        _plain_types(row)
        ref = sps.ttest_ind(t, c, equal_var=False)
        assert close(row["p_value"], ref.pvalue) and row["significant"] is bool(ref.pvalue < 0.05)
        assert all(row[k] is None for k in ab.CHI2_KEYS + ab.POWER_KEYS)
        _, adj_c, adj_t = _cuped_reference(c, xc, t, xt)
        assert close(row["cuped_p_value"], sps.ttest_ind(adj_t, adj_c, equal_var=False).pvalue)


def test_compare_degenerate_rows_keep_every_key():
    moments = {"a": Moments(n=10, sum_y=0, sum_y2=0), "b": Moments(n=1, sum_y=0, sum_y2=0)}
    rows = ab.compare("proportion", moments, "a", mde_rel=0.1, with_cuped=True)
    assert len(rows) == 1 and tuple(rows[0]) == ab.RESULT_KEYS
    _plain_types(rows[0])
    assert rows[0]["p_value"] is None and rows[0]["significant"] is False and rows[0]["chi2"] is None
    with pytest.raises(ValueError):
        ab.compare("proportion", moments, "missing")
    with pytest.raises(ValueError):
        ab.compare("median", moments, "a")
