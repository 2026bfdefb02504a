"""CLV model (seglake.stages.clv.model): BG/NBD, Gamma-Gamma and discounted CLV. Pure Python: no Spark.

Independent references:
* ``lifetimes`` 0.11.3 (test-only, setup.py "dev"): its own log-likelihoods (autograd), fits
  (BFGS on time scaled to the oldest customer), predictions (textbook 2F1 form), CLV loop and
  standard errors (autograd's exact Hessian); compared at the SAME parameters to 1e-8 relative,
  the fitted parameters to 1e-4;
* closed forms of the model (P(no repeat purchase) = (alpha/(alpha+T))^r, E[X(T)], P(X(T) = n))
  for the simulators;
* mpmath (when installed): the expected purchases as the posterior mixture integral over the
  dropout probability, for the regions the closed form cannot take (a = 1, large a).

Simulated population: the CDNOW BG/NBD estimates of Fader, Hardie & Lee (2005): r = 0.243,
alpha = 4.414 WEEKS, a = 0.793, b = 2.426 -> alpha = 4.41 * 7 = 30.87 DAYS (lambda is a daily
rate: a typical buyer comes back every few months); customers acquired over the last year, age
T uniform on 30..365 whole days; t_x rounded to whole days as the Spark job does. Gamma-Gamma:
p = 6.25, q = 3.74, v = 15.44 (FHL 2005, "RFM and CLV"); m_bar rounded to cents.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from lifetimes import BetaGeoFitter, GammaGammaFitter

from seglake.stages.clv import model as m

TRUE_BG = (0.24, 4.41 * 7, 0.79, 2.43)
TRUE_GG = (6.25, 3.74, 15.44)
N_CUSTOMERS = 20_000
SEED = 20240601
BG_INDEX, GG_INDEX = list(m.BGNBD_NAMES), list(m.GG_NAMES)


def rel(a, b, rtol):
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=rtol, atol=0)


def compress(*columns):
    """Distinct rows of the columns and their counts (what the Spark job's groupBy gives)."""
    cells, counts = np.unique(np.column_stack(columns), axis=0, return_counts=True)
    return (*cells.T, counts)


def ref_bg(params) -> BetaGeoFitter:
    """A lifetimes BG/NBD model holding exactly these parameters."""
    fitter = BetaGeoFitter()
    fitter.params_ = pd.Series(params, index=BG_INDEX, dtype=float)
    fitter.predict = fitter.conditional_expected_number_of_purchases_up_to_time
    return fitter


def ref_gg(params) -> GammaGammaFitter:
    fitter = GammaGammaFitter()
    fitter.params_ = pd.Series(params, index=GG_INDEX, dtype=float)
    return fitter


@pytest.fixture(scope="module")
def pop():
    rng = np.random.default_rng(SEED)
    ages = rng.integers(30, 366, size=N_CUSTOMERS).astype(float)
    x, t_x, T = m.simulate_bgnbd(N_CUSTOMERS, TRUE_BG, ages, rng)
    t_x = np.round(t_x)
    m_bar = m.simulate_gamma_gamma(x, TRUE_GG, rng)
    m_bar = np.where(x > 0, np.round(m_bar, 2), np.nan)
    buyers = x > 0
    return {"x": x, "t_x": t_x, "T": T, "m_bar": m_bar, "buyers": buyers,
            "bg_cells": compress(x, t_x, T), "gg_cells": compress(x[buyers], m_bar[buyers])}


@pytest.fixture(scope="module")
def fits(pop):
    x, t_x, T, m_bar, buyers = (pop[k] for k in ("x", "t_x", "T", "m_bar", "buyers"))
    return {
        "bg_cells": m.fit_bgnbd(*pop["bg_cells"][:3], weights=pop["bg_cells"][3]),
        "bg_rows": m.fit_bgnbd(x, t_x, T),
        "gg_cells": m.fit_gamma_gamma(*pop["gg_cells"][:2], weights=pop["gg_cells"][2]),
        "gg_rows": m.fit_gamma_gamma(x[buyers], m_bar[buyers]),
        "lt_bg": BetaGeoFitter(penalizer_coef=0.0).fit(x, t_x, T),
        "lt_gg": GammaGammaFitter(penalizer_coef=0.0).fit(x[buyers], m_bar[buyers]),
    }


# --- 1. parameter recovery and compression ---------------------------------------------------
@pytest.mark.parametrize("kind, truth", [("bg_cells", TRUE_BG), ("gg_cells", TRUE_GG)])
def test_recovers_the_planted_parameters_within_3_standard_errors(pop, fits, kind, truth):
    fit = fits[kind]
    names = m.BGNBD_NAMES if kind.startswith("bg") else m.GG_NAMES
    assert fit.n_customers == (N_CUSTOMERS if kind.startswith("bg") else int(pop["buyers"].sum()))
    assert len(pop[kind][0]) < fit.n_customers                  # the fit saw cells, fewer than customers
    for name, true in zip(names, truth):
        se = fit.standard_errors[name]
        assert math.isfinite(se) and 0 < se < 0.5 * getattr(fit, name)
        assert abs(getattr(fit, name) - true) < 3 * se, (name, getattr(fit, name), true, se)


@pytest.mark.parametrize("model", ["bg", "gg"])
def test_compressed_fit_equals_uncompressed_fit(fits, model):
    cells, rows = fits[f"{model}_cells"], fits[f"{model}_rows"]
    assert cells.n_customers == rows.n_customers
    assert cells.log_likelihood == pytest.approx(rows.log_likelihood, rel=1e-9)
    rel(cells.as_tuple(), rows.as_tuple(), 1e-6)
    rel(list(cells.standard_errors.values()), list(rows.standard_errors.values()), 1e-5)


def test_cell_log_likelihood_is_the_weighted_sum_over_customers(pop):
    x, t_x, T, m_bar, buyers = (pop[k] for k in ("x", "t_x", "T", "m_bar", "buyers"))
    assert m.bgnbd_log_likelihood(TRUE_BG, *pop["bg_cells"][:3], weights=pop["bg_cells"][3]) \
        == pytest.approx(m.bgnbd_log_likelihood(TRUE_BG, x, t_x, T), rel=1e-12)
    assert m.gamma_gamma_log_likelihood(TRUE_GG, *pop["gg_cells"][:2], weights=pop["gg_cells"][2]) \
        == pytest.approx(m.gamma_gamma_log_likelihood(TRUE_GG, x[buyers], m_bar[buyers]), rel=1e-12)


# --- 2. against lifetimes ----------------------------------------------------------------------
@pytest.mark.parametrize("params", [TRUE_BG, (1.3, 5.0, 2.5, 0.7), (0.05, 300.0, 0.2, 9.0)])
def test_bgnbd_log_likelihood_equals_lifetimes(pop, params):
    x, t_x, T, n = pop["bg_cells"]
    nll = BetaGeoFitter._negative_log_likelihood(np.log(params), x, t_x, T, n, 0.0)  # mean NLL
    assert m.bgnbd_log_likelihood(params, x, t_x, T, weights=n) == pytest.approx(-nll * n.sum(), rel=1e-8)


@pytest.mark.parametrize("params", [TRUE_GG, (1.5, 2.2, 40.0)])
def test_gamma_gamma_log_likelihood_equals_lifetimes(pop, params):
    x, m_bar, n = pop["gg_cells"]
    nll = GammaGammaFitter._negative_log_likelihood(np.log(params), x, m_bar, n, 0.0)
    assert m.gamma_gamma_log_likelihood(params, x, m_bar, weights=n) == pytest.approx(-nll * n.sum(), rel=1e-8)


def test_fitted_parameters_and_standard_errors_equal_lifetimes(pop, fits):
    rel(fits["bg_rows"].as_tuple(), fits["lt_bg"].params_[BG_INDEX].values, 1e-4)
    rel(fits["gg_rows"].as_tuple(), fits["lt_gg"].params_[GG_INDEX].values, 1e-4)
    # our finite-difference Hessian against autograd's exact one
    rel([fits["bg_rows"].standard_errors[k] for k in BG_INDEX], fits["lt_bg"].standard_errors_[BG_INDEX], 1e-4)
    rel([fits["gg_rows"].standard_errors[k] for k in GG_INDEX], fits["lt_gg"].standard_errors_[GG_INDEX], 1e-4)
    # lifetimes fits in time scaled by c = 1/max(T): LL_scaled = LL_days - sum(x) ln(c)
    theirs = -fits["lt_bg"]._negative_log_likelihood_ * N_CUSTOMERS + pop["x"].sum() * math.log(1 / pop["T"].max())
    assert theirs == pytest.approx(fits["bg_rows"].log_likelihood, rel=1e-9)
    assert theirs <= fits["bg_rows"].log_likelihood + 1e-6       # their optimum is not better than ours


def test_penalized_fit_equals_lifetimes(pop):
    x, t_x, T, n = pop["bg_cells"]
    ours = m.fit_bgnbd(x, t_x, T, weights=n, penalizer=0.01)
    theirs = BetaGeoFitter(penalizer_coef=0.01).fit(x, t_x, T, weights=n)
    rel(ours.as_tuple(), theirs.params_[BG_INDEX].values, 1e-4)


@pytest.mark.parametrize("t", [1.0, 30.0, 90.0, 365.0, 1825.0])
def test_expected_purchases_and_p_alive_equal_lifetimes(pop, fits, t):
    x, t_x, T = pop["x"], pop["t_x"], pop["T"]
    params = fits["bg_cells"]
    reference = ref_bg(params.as_tuple())
    rel(m.bgnbd_expected_purchases(params, t, x, t_x, T),
        reference.conditional_expected_number_of_purchases_up_to_time(t, x, t_x, T), 1e-8)
    rel(m.bgnbd_p_alive(params, x, t_x, T), reference.conditional_probability_alive(x, t_x, T), 1e-8)


def test_expected_spend_and_clv_equal_lifetimes(pop, fits):
    x, t_x, T, m_bar = pop["x"], pop["t_x"], pop["T"], pop["m_bar"]
    bg, gg = fits["bg_cells"], fits["gg_cells"]
    lt_gg = ref_gg(gg.as_tuple())
    m_zero = np.nan_to_num(m_bar)                               # lifetimes' convention: 0 when x = 0
    rel(m.gamma_gamma_expected_spend(gg, x, m_bar), lt_gg.conditional_expected_average_profit(x, m_zero), 1e-8)
    annual = 0.10
    monthly = (1 + annual) ** (30 / 365) - 1                    # lifetimes takes the per-period rate
    ours = m.clv(bg, gg, x, t_x, T, m_bar, horizon_days=360, discount_rate_annual=annual, step_days=30)
    theirs = lt_gg.customer_lifetime_value(ref_bg(bg.as_tuple()), pd.Series(x), pd.Series(t_x), pd.Series(T),
                                           pd.Series(m_zero), time=12, discount_rate=monthly, freq="D")
    rel(ours, theirs.values, 1e-8)
    assert np.all(ours > 0)


# --- the guarded regions, against mpmath ------------------------------------------------------
def _mp_expected_purchases(params, t, x, t_x, T):
    """P(alive) * E_p[(1 - (1 + p t/(alpha+T))^-(r+x)) / p], p ~ Beta(a, b+x), by mp.quad."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 30
    r, alpha, a, b = (mp.mpf(v) for v in params)
    k = mp.mpf(t) / (alpha + T)
    odds = (a / (b + x - 1)) * ((alpha + T) / (alpha + t_x)) ** (r + x) if x > 0 else 0
    mean = a / (a + b + x)
    sd = mp.sqrt(mean * (1 - mean) / (a + b + x + 1))
    pts = sorted({mp.mpf(0), mp.mpf(1), *(mean + j * sd for j in range(-12, 13) if 0 < mean + j * sd < 1),
                  *(s / (k * (r + x)) for s in (mp.mpf("0.01"), 1, 10) if s / (k * (r + x)) < 1)})
    f = lambda p: -mp.expm1(-(r + x) * mp.log1p(p * k)) / p * p ** (a - 1) * (1 - p) ** (b + x - 1)
    return float(mp.quad(f, pts) / mp.beta(a, b + x) / (1 + odds))


@pytest.mark.parametrize("params, t, x, t_x, T", [
    ((0.24, 30.87, 1.0, 2.43), 365.0, 3, 100.0, 200.0),          # a = 1: the closed form is 0/0
    ((0.24, 30.87, 1.0 + 5e-5, 2.43), 90.0, 0, 0.0, 50.0),       # inside the interpolation band
    ((0.24, 30.87, 1.0 - 2e-4, 2.43), 730.0, 12, 300.0, 330.0),  # just outside it
    ((0.5, 10.0, 300.0, 20.0), 5000.0, 20, 90.0, 100.0),         # a large: 0 * inf, quadrature
    ((0.24, 30.87, 0.79, 2.43), 3650.0, 700, 720.0, 730.0),      # large x, z near 1
])
def test_expected_purchases_in_the_hard_regions_equal_mpmath(params, t, x, t_x, T):
    expected = _mp_expected_purchases(params, t, x, t_x, T)
    assert float(m.bgnbd_expected_purchases(params, t, x, t_x, T)) == pytest.approx(expected, rel=1e-9)


def test_large_a_takes_the_quadrature_path():
    assert not np.isfinite(m._alive_expectation(0.5, 10.0, 300.0, 20.0, 20.0, 100.0, 5000.0))


# --- the simulators against the model's closed forms -----------------------------------------
def test_bgnbd_simulator_matches_the_model():
    n, age = 200_000, 180.0
    x, t_x, T = m.simulate_bgnbd(n, TRUE_BG, age, np.random.default_rng(1))
    assert np.all(T == age) and np.all((t_x >= 0) & (t_x <= T)) and np.all(t_x[x == 0] == 0)
    reference = ref_bg(TRUE_BG)
    for k in range(6):                                           # P(X(T) = k), FHL eq. 8
        p = float(reference.probability_of_n_purchases_up_to_time(age, k))
        assert abs(np.mean(x == k) - p) < 4 * math.sqrt(p * (1 - p) / n), k
    r, alpha = TRUE_BG[:2]
    assert float(reference.probability_of_n_purchases_up_to_time(age, 0)) == pytest.approx((alpha / (alpha + age)) ** r)
    mean = float(reference.expected_number_of_purchases_up_to_time(age))   # E[X(T)], eq. 9
    assert abs(x.mean() - mean) < 4 * x.std() / math.sqrt(n)


def test_gamma_gamma_simulator_matches_the_model():
    x = np.random.default_rng(2).integers(0, 6, size=100_000)
    m_bar = m.simulate_gamma_gamma(x, TRUE_GG, np.random.default_rng(3))
    assert np.all(np.isnan(m_bar[x == 0])) and np.all(m_bar[x > 0] > 0)
    p, q, v = TRUE_GG
    spend = m_bar[x > 0]                                         # E[m_bar] = E[p/nu] = p v/(q-1)
    assert abs(spend.mean() - p * v / (q - 1)) < 4 * spend.std() / math.sqrt(spend.size)


# --- 3. edge cases -----------------------------------------------------------------------------
def test_all_customers_without_repeat_purchases():
    T = np.array([0.0, 10.0, 200.0])
    x = t_x = np.zeros(3)
    r, alpha, a, b = TRUE_BG
    closed = sum(r * math.log(alpha / (alpha + t)) for t in T)    # the x = 0 term alone
    assert m.bgnbd_log_likelihood(TRUE_BG, x, t_x, T) == pytest.approx(closed, rel=1e-12)
    assert np.all(m.bgnbd_p_alive(TRUE_BG, x, t_x, T) == 1.0)
    with pytest.raises(m.FitError, match="repeat purchase"):
        m.fit_bgnbd(x, t_x, T)
    with pytest.raises(m.FitError):
        m.fit_gamma_gamma([], [])


def test_a_single_cell():
    assert m.bgnbd_log_likelihood(TRUE_BG, 2, 100, 200, weights=500) \
        == pytest.approx(500 * m.bgnbd_log_likelihood(TRUE_BG, [2], [100], [200]), rel=1e-12)
    assert m.gamma_gamma_log_likelihood(TRUE_GG, 3, 20.0, weights=7) \
        == pytest.approx(7 * m.gamma_gamma_log_likelihood(TRUE_GG, 3, 20.0), rel=1e-12)
    scalar = m.bgnbd_expected_purchases(TRUE_BG, 30, 2, 100, 200)
    assert np.shape(scalar) == () and scalar > 0
    # every customer alike: the likelihood has no maximum (a point mass is approached)
    with pytest.raises(m.FitError):
        m.fit_bgnbd([2], [100], [200], weights=[500])
    with pytest.raises(m.FitError):
        m.fit_gamma_gamma([3], [20.0], weights=[100])


def test_zero_weight_cells_change_nothing(pop):
    x, t_x, T, n = pop["bg_cells"]
    junk = (np.r_[x, 5, -1, np.nan], np.r_[t_x, 400, 3, 1], np.r_[T, 10, 2, 2], np.r_[n, 0, 0, 0])
    assert m.bgnbd_log_likelihood(TRUE_BG, *junk[:3], weights=junk[3]) \
        == m.bgnbd_log_likelihood(TRUE_BG, x, t_x, T, weights=n)
    gx, gm, gn = pop["gg_cells"]
    assert m.gamma_gamma_log_likelihood(TRUE_GG, np.r_[gx, 0], np.r_[gm, -1], weights=np.r_[gn, 0]) \
        == m.gamma_gamma_log_likelihood(TRUE_GG, gx, gm, weights=gn)
    sub = slice(None, None, 10)                                   # a small fit, with and without zeros
    with_zeros = m.fit_bgnbd(np.r_[x[sub], 9], np.r_[t_x[sub], 1], np.r_[T[sub], 2], weights=np.r_[n[sub], 0])
    assert with_zeros == m.fit_bgnbd(x[sub], t_x[sub], T[sub], weights=n[sub])


def test_expected_purchases_start_at_zero_and_grow_with_t(pop):
    x, t_x, T = pop["x"][:500], pop["t_x"][:500], pop["T"][:500]
    assert np.all(m.bgnbd_expected_purchases(TRUE_BG, 0.0, x, t_x, T) == 0.0)
    grid = np.array([0.0, 1, 7, 30, 90, 365, 1000, 3650])
    values = m.bgnbd_expected_purchases(TRUE_BG, grid[:, None], x[None, :], t_x[None, :], T[None, :])
    assert values.shape == (grid.size, 500) and np.all(np.diff(values, axis=0) > 0)


def test_p_alive_behaves():
    p = m.bgnbd_p_alive(TRUE_BG, [0, 3, 3, 3], [0, 50, 50, 150], [200, 200, 300, 200])
    assert p[0] == 1.0 and 0 < p[1] < 1
    assert p[2] < p[1] < p[3]                # staler (older T, same t_x) -> less alive; later t_x -> more


def test_gamma_gamma_expected_spend_edges():
    p, q, v = TRUE_GG
    out = m.gamma_gamma_expected_spend(TRUE_GG, [0, 1, 1000], [np.nan, 50.0, 50.0])
    assert out[0] == pytest.approx(p * v / (q - 1)) and out[1] < out[2] < 50.0 + 1e-9
    with pytest.raises(ValueError, match="q"):
        m.gamma_gamma_expected_spend((6.0, 0.9, 15.0), [1], [20.0])


def test_clv_without_discount_telescopes_and_cuts_the_last_period():
    x, t_x, T, m_bar = np.array([0, 4]), np.array([0.0, 120.0]), np.array([100.0, 150.0]), np.array([np.nan, 30.0])
    spend = m.gamma_gamma_expected_spend(TRUE_GG, x, m_bar)
    undiscounted = m.clv(TRUE_BG, TRUE_GG, x, t_x, T, m_bar, horizon_days=100, discount_rate_annual=0.0)
    rel(undiscounted, m.bgnbd_expected_purchases(TRUE_BG, 100, x, t_x, T) * spend, 1e-12)
    d = (1 + 0.2) ** (30 / 365) - 1                             # periods end at 30, 60, 90, 100
    e = [m.bgnbd_expected_purchases(TRUE_BG, s, x, t_x, T) for s in (0, 30, 60, 90, 100)]
    by_hand = sum((e[k] - e[k - 1]) * spend / (1 + d) ** (end / 30) for k, end in zip(range(1, 5), (30, 60, 90, 100)))
    rel(m.clv(TRUE_BG, TRUE_GG, x, t_x, T, m_bar, horizon_days=100, discount_rate_annual=0.2), by_hand, 1e-12)
    with pytest.raises(ValueError):
        m.clv(TRUE_BG, TRUE_GG, x, t_x, T, m_bar, horizon_days=0, discount_rate_annual=0.1)


@pytest.mark.parametrize("bad", [
    dict(x=[1], t_x=[5], T=[4]), dict(x=[0], t_x=[3], T=[10]), dict(x=[1.5], t_x=[1], T=[2]),
    dict(x=[1], t_x=[1], T=[2], weights=[-1]),
])
def test_invalid_cells_are_refused(bad):
    with pytest.raises(ValueError):
        m.bgnbd_log_likelihood(TRUE_BG, **bad)
