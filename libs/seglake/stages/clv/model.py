"""BG/NBD and Gamma-Gamma: the statistical core of customer lifetime value (driver side, no Spark).

Models
------
* **BG/NBD** (Fader, Hardie & Lee 2005, "Counting your customers the easy way"): while alive a
  customer buys as a Poisson process of rate lambda ~ Gamma(r, rate alpha); after each REPEAT
  purchase they die with probability p ~ Beta(a, b) (never at the first purchase, so x = 0 means
  alive: P(alive) = 1). Per customer: x = repeat purchases (here repeat purchase DAYS: distinct
  purchase days minus the first), t_x = time of the last one (0 if x = 0), T = age, all since
  the first purchase, in DAYS (alpha is then in days too).
* **Gamma-Gamma** (Fader, Hardie & Lee 2005, "RFM and CLV: using iso-value curves"; Fader &
  Hardie 2013, "The Gamma-Gamma model of monetary value"): transaction values ~ Gamma(p, rate
  nu), nu ~ Gamma(q, rate v); m_bar = average value of the x repeat transactions (x >= 1),
  as in ``lifetimes``.

Compressed input
----------------
The fits never see customers, only cells with a customer count as weight: BG/NBD cells
``(x, t_x, T, count)`` and Gamma-Gamma cells ``(x, m_bar, count)``; the log-likelihood is the
weighted sum over cells. t_x and T are whole days (the Spark job rounds them), so the number of
distinct cells is at most max_x * days^2 in theory and about (distinct x) * days^2 / 2 in
practice (t_x <= T <= the observation window), independent of the number of customers; m_bar is
rounded to cents, which bounds the Gamma-Gamma cells the same way.

Log-likelihoods (per cell, FHL 2005 eq. 6 and the 2013 note eq. 1a)::

    BG/NBD  ll = lgG(r+x) - lgG(r) + r ln(alpha) + lnB(a, b+x) - lnB(a, b)
                 + logsumexp(-(r+x) ln(alpha+T),
                             [x>0] (ln a - ln(b+x-1) - (r+x) ln(alpha+t_x)))
    GG      ll = lgG(px+q) - lgG(px) - lgG(q) + q ln v + (px-1) ln m_bar + px ln x
                 - (px+q) ln(x m_bar + v)

Fitting: maximum likelihood over the log-parameters, L-BFGS-B with the analytic gradient
(digamma) on the mean negative log-likelihood, then Newton polish steps with a finite-difference
Hessian until the step is below 1e-9. Optional BG/NBD L2 penalizer as ``lifetimes``:
``penalizer * (r^2 + (alpha/T_max)^2 + a^2 + b^2)`` added to the MEAN negative log-likelihood
(alpha measured in units of the oldest customer's age, so the penalty does not depend on the
time unit). Standard errors: square roots of the diagonal of the inverse of the Hessian of the
TOTAL negative log-likelihood (penalty included, times the number of customers) at the
optimum, the Hessian computed on the original parameter scale by central differences of the
analytic gradient (relative step 1e-5, symmetrised); ``None`` when that Hessian is not positive
definite (a flat or degenerate optimum: do not trust those estimates). :class:`FitError` when
the data do not identify the model: no customer with a repeat purchase, an optimum at the edge
of the parameter space (a parameter to 0 or infinity) or a likelihood without a maximum (e.g.
every customer in one cell: a point mass is approached).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import linalg, optimize, special

__all__ = [
    "BGNBDParams", "GammaGammaParams", "FitError", "bgnbd_log_likelihood", "fit_bgnbd",
    "bgnbd_expected_purchases", "bgnbd_p_alive", "gamma_gamma_log_likelihood",
    "fit_gamma_gamma", "gamma_gamma_expected_spend", "clv", "discounted_purchases", "simulate_bgnbd",
    "simulate_gamma_gamma",
]

BGNBD_NAMES = ("r", "alpha", "a", "b")
GG_NAMES = ("p", "q", "v")
DAYS_PER_YEAR = 365.0           # of the discounting in clv()
_LOG_BOUND, _LOG_EDGE = 30.0, 25.0  # log-parameters searched in +-30; an optimum beyond 25 is an edge
_FD_STEP = 1e-5                 # relative finite-difference step of the Hessians
_A_ONE = 1e-4                   # |a - 1| below this: expected purchases interpolated in a (0/0 at a=1)
_QUAD_NODES = 64                # nodes of the Gauss rule of the guarded region


class FitError(RuntimeError):
    """The maximum likelihood fit failed or the data do not identify the model."""


@dataclass(frozen=True)
class BGNBDParams:
    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float
    n_customers: int
    standard_errors: dict[str, float] | None = None

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.r, self.alpha, self.a, self.b)


@dataclass(frozen=True)
class GammaGammaParams:
    p: float
    q: float
    v: float
    log_likelihood: float
    n_customers: int
    standard_errors: dict[str, float] | None = None

    def as_tuple(self) -> tuple[float, float, float]:
        return (self.p, self.q, self.v)


def _params(params, n: int) -> tuple[float, ...]:
    values = params.as_tuple() if hasattr(params, "as_tuple") else tuple(params)
    if len(values) != n or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"expected {n} positive finite parameters, got {values!r}")
    return tuple(float(v) for v in values)


def _weights(weights, shape) -> np.ndarray:
    if weights is None:
        return np.ones(shape)
    w = np.broadcast_to(np.asarray(weights, dtype=float), shape)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and >= 0")
    return w


def _bg_data(x, t_x, T, weights=None):
    """Validated 1-d float arrays (x, t_x, T, w) without the zero-weight cells."""
    x, t_x, T = (np.ravel(v) for v in np.broadcast_arrays(*(np.asarray(v, float) for v in (x, t_x, T))))
    w = np.ravel(_weights(weights, x.shape))
    keep = w > 0
    x, t_x, T, w = x[keep], t_x[keep], T[keep], w[keep]
    if not np.all(np.isfinite(x + t_x + T)):
        raise ValueError("x, t_x and T must be finite")
    if np.any(x < 0) or np.any(x != np.round(x)):
        raise ValueError("x (repeat purchases) must be integers >= 0")
    if np.any(t_x < 0) or np.any(t_x > T):
        raise ValueError("need 0 <= t_x <= T")
    if np.any(t_x[x == 0] != 0):
        raise ValueError("t_x must be 0 where x = 0")
    return x, t_x, T, w


def _gg_data(x, m_bar, weights=None):
    x, m = (np.ravel(v) for v in np.broadcast_arrays(np.asarray(x, float), np.asarray(m_bar, float)))
    w = np.ravel(_weights(weights, x.shape))
    keep = w > 0
    x, m, w = x[keep], m[keep], w[keep]
    if np.any(~np.isfinite(x)) or np.any(x < 1) or np.any(x != np.round(x)):
        raise ValueError("Gamma-Gamma needs integer x >= 1 (customers with repeat purchases)")
    if np.any(~np.isfinite(m)) or np.any(m <= 0):
        raise ValueError("m_bar must be finite and > 0")
    return x, m, w


# --- log-likelihoods and their gradients ---------------------------------------------------
def _wsum(w: np.ndarray, values: np.ndarray) -> float:
    """sum(w * values) by numpy's pairwise summation (not BLAS dot: its threads stall on a busy box)."""
    return float(np.sum(w * values))


def _bg_ll_grad(theta, x, t_x, T, w):
    """Total weighted BG/NBD log-likelihood and its gradient in (r, alpha, a, b)."""
    r, alpha, a, b = theta
    pos = x > 0
    xm1 = np.where(pos, b + x - 1, 1.0)
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * math.log(alpha)
    a2 = special.betaln(a, b + x) - special.betaln(a, b)
    a3 = -(r + x) * np.log(alpha + T)
    a4 = np.where(pos, math.log(a) - np.log(xm1) - (r + x) * np.log(alpha + t_x), -np.inf)
    top = np.maximum(a3, a4)
    lse = top + np.log(np.exp(a3 - top) + np.exp(a4 - top))
    ll = _wsum(w, a1 + a2 + lse)
    w3, w4 = np.exp(a3 - lse), np.exp(a4 - lse)      # posterior weights of the two terms
    psi = special.digamma
    d_r = psi(r + x) - psi(r) + math.log(alpha) - w3 * np.log(alpha + T) - w4 * np.log(alpha + t_x)
    d_alpha = r / alpha - (r + x) * (w3 / (alpha + T) + w4 / (alpha + t_x))
    d_a = psi(a + b) - psi(a + b + x) + w4 / a
    d_b = psi(a + b) + psi(b + x) - psi(b) - psi(a + b + x) - w4 / xm1
    grad = np.array([_wsum(w, d) for d in (d_r, d_alpha, d_a, d_b)])
    return ll, grad


def _gg_ll_grad(theta, x, m, w):
    """Total weighted Gamma-Gamma log-likelihood and its gradient in (p, q, v)."""
    p, q, v = theta
    px = p * x
    lxm = np.log(x * m + v)
    ll = (special.gammaln(px + q) - special.gammaln(px) - special.gammaln(q) + q * math.log(v)
          + (px - 1) * np.log(m) + px * np.log(x) - (px + q) * lxm)
    psi = special.digamma(px + q)
    d_p = x * (psi - special.digamma(px) + np.log(m) + np.log(x) - lxm)
    d_q = psi - special.digamma(q) + math.log(v) - lxm
    d_v = q / v - (px + q) / (x * m + v)
    return _wsum(w, ll), np.array([_wsum(w, d) for d in (d_p, d_q, d_v)])


def bgnbd_log_likelihood(params, x, t_x, T, weights=None) -> float:
    """Total (weighted) BG/NBD log-likelihood of cells (x, t_x, T) at ``(r, alpha, a, b)``."""
    return _bg_ll_grad(_params(params, 4), *_bg_data(x, t_x, T, weights))[0]


def gamma_gamma_log_likelihood(params, x, m_bar, weights=None) -> float:
    """Total (weighted) Gamma-Gamma log-likelihood of cells (x >= 1, m_bar) at ``(p, q, v)``."""
    return _gg_ll_grad(_params(params, 3), *_gg_data(x, m_bar, weights))[0]


# --- maximum likelihood --------------------------------------------------------------------
def _fd_hessian(grad, point: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Central differences of an analytic gradient with the given steps, symmetrised."""
    k = point.size
    hess = np.empty((k, k))
    for j in range(k):
        up, down = point.copy(), point.copy()
        up[j] += steps[j]
        down[j] -= steps[j]
        hess[:, j] = (grad(up) - grad(down)) / (2 * steps[j])
    return (hess + hess.T) / 2


def _maximize(ll_grad, start, names, n_total, pen_scale, penalizer):
    """Minimise -LL/N + penalizer * sum((theta*pen_scale)^2) over log(theta)."""
    pen_scale = np.asarray(pen_scale, dtype=float)

    def objective(log_theta):
        theta = np.exp(log_theta)
        ll, g = ll_grad(theta)
        value = -ll / n_total + penalizer * np.sum((theta * pen_scale) ** 2)
        grad = -g / n_total + 2 * penalizer * theta * pen_scale ** 2
        return value, grad * theta

    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        res = optimize.minimize(objective, np.log(start), jac=True, method="L-BFGS-B",
                                bounds=[(-_LOG_BOUND, _LOG_BOUND)] * len(names),
                                options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-10})
    log_theta, (value, grad) = res.x, objective(res.x)
    if not (np.isfinite(value) and np.all(np.isfinite(grad))):
        raise FitError(f"the optimizer left the region where the likelihood is finite: {res.message}")
    for _ in range(25):                                 # Newton polish on the log scale
        if np.any(np.abs(log_theta) > _LOG_EDGE):
            break
        hess = _fd_hessian(lambda z: objective(z)[1], log_theta, np.full(log_theta.size, _FD_STEP))
        try:
            step = -linalg.cho_solve(linalg.cho_factor(hess), grad)
        except linalg.LinAlgError:
            break
        scale = 1.0
        while scale > 1e-6:
            trial = objective(log_theta + scale * step)
            if np.isfinite(trial[0]) and trial[0] <= value:
                break
            scale /= 2
        else:
            break
        log_theta, (value, grad) = log_theta + scale * step, trial
        if np.max(np.abs(scale * step)) < 1e-9:
            break
    if np.any(np.abs(log_theta) > _LOG_EDGE):
        edge = [n for n, z in zip(names, log_theta) if abs(z) > _LOG_EDGE]
        raise FitError(f"parameter(s) {', '.join(edge)} ran to 0 or infinity: the data do not "
                       "identify the model (use more data or a penalizer)")
    if np.max(np.abs(grad)) > 1e-5:
        raise FitError(f"no convergence (gradient {grad}, {res.message}): the likelihood may have no "
                       "maximum, parameters drifting to 0 or infinity (e.g. every customer alike)")
    theta = np.exp(log_theta)

    with np.errstate(all="ignore"):                      # Hessian of the TOTAL penalised NLL
        hess = _fd_hessian(lambda t: -ll_grad(t)[1] + 2 * n_total * penalizer * t * pen_scale ** 2,
                           theta, _FD_STEP * theta)
    try:
        cov = linalg.cho_solve(linalg.cho_factor(hess), np.eye(len(names)))
        return theta, {n: float(math.sqrt(c)) for n, c in zip(names, np.diag(cov))}
    except (linalg.LinAlgError, ValueError):             # not positive definite / not finite
        return theta, None


def fit_bgnbd(x, t_x, T, weights=None, penalizer: float = 0.0) -> BGNBDParams:
    """Maximum likelihood BG/NBD on cells (x, t_x, T) weighted by their customer counts."""
    x, t_x, T, w = _bg_data(x, t_x, T, weights)
    if penalizer < 0:
        raise ValueError("penalizer must be >= 0")
    if not np.any(x > 0):
        raise FitError("no customer has a repeat purchase: the BG/NBD is not identified")
    n_total = float(w.sum())
    start = (1.0, _wsum(w, T) / n_total + 1.0, 1.0, 1.0)
    theta, ses = _maximize(lambda th: _bg_ll_grad(th, x, t_x, T, w), start, BGNBD_NAMES, n_total,
                           (1.0, 1.0 / max(float(T.max()), 1e-12), 1.0, 1.0), penalizer)
    return BGNBDParams(*map(float, theta), log_likelihood=_bg_ll_grad(theta, x, t_x, T, w)[0],
                       n_customers=int(round(n_total)), standard_errors=ses)


def fit_gamma_gamma(x, m_bar, weights=None) -> GammaGammaParams:
    """Maximum likelihood Gamma-Gamma on cells (x >= 1, m_bar) weighted by customer counts."""
    x, m, w = _gg_data(x, m_bar, weights)
    if m.size == 0:
        raise FitError("no customer with a repeat purchase: nothing to fit")
    n_total = float(w.sum())
    start = (1.0, 2.0, _wsum(w, m) / n_total)   # population mean p v/(q-1) = mean m_bar
    theta, ses = _maximize(lambda th: _gg_ll_grad(th, x, m, w), start, GG_NAMES, n_total,
                           (0.0, 0.0, 0.0), 0.0)
    return GammaGammaParams(*map(float, theta), log_likelihood=_gg_ll_grad(theta, x, m, w)[0],
                            n_customers=int(round(n_total)), standard_errors=ses)


# --- predictions ---------------------------------------------------------------------------
def bgnbd_p_alive(params, x, t_x, T) -> np.ndarray:
    """P(alive | x, t_x, T) (Fader, Hardie & Lee, note 021): 1 / (1 + [x>0] a/(b+x-1)
    ((alpha+T)/(alpha+t_x))^(r+x)), evaluated as expit(-log of the odds); 1 for x = 0."""
    r, alpha, a, b = _params(params, 4)
    x, t_x, T = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (x, t_x, T)))
    pos = x > 0                                          # the x = 0 odds are 0: P(alive) = 1
    log_odds = ((r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
                + math.log(a) - np.log(np.where(pos, b + x - 1, 1.0)))
    return np.where(pos, special.expit(-log_odds), 1.0)


def _gauss_beta(a1: float, b1: float, n: int = _QUAD_NODES):
    """Nodes in [0, 1] and weights (summing to 1) of the n-point Gauss rule of Beta(a1, b1):
    Golub-Welsch on the Jacobi recurrence, weight (1-u)^(b1-1) (1+u)^(a1-1), p = (1+u)/2."""
    al, be = b1 - 1.0, a1 - 1.0
    kk = np.arange(1, n, dtype=float)
    sk = 2 * kk + al + be
    diag = np.r_[(be - al) / (al + be + 2), (be ** 2 - al ** 2) / (sk * (sk + 2))]
    with np.errstate(invalid="ignore", divide="ignore"):     # k = 1 is replaced just below
        off = 2 / sk * np.sqrt(kk * (kk + al) * (kk + be) * (kk + al + be) / ((sk - 1) * (sk + 1)))
    off[0] = 2 / sk[0] * math.sqrt((1 + al) * (1 + be) / (sk[0] + 1))   # (k+al+be)/(s-1) = 1 at k=1
    u, vec = linalg.eigh_tridiagonal(diag, off)
    return np.clip((1 + u) / 2, 0.0, 1.0), vec[0] ** 2


def _alive_expectation_quad(r, alpha, a, b, x, T, t) -> float:
    """E[purchases in (T, T+t] | alive] as the posterior mixture: lambda | alive ~ Gamma(r+x,
    rate alpha+T) integrated out analytically, p | alive ~ Beta(a, b+x) by Gauss quadrature:
    E = E_p[(1 - (1 + p t/(alpha+T))^-(r+x)) / p]."""
    nodes, weights = _gauss_beta(a, b + x)
    k = t / (alpha + T)
    safe = np.maximum(nodes, 1e-300)                     # h -> (r+x) k as p -> 0
    return _wsum(weights, -np.expm1(-(r + x) * np.log1p(safe * k)) / safe)


def _alive_expectation(r, alpha, a, b, x, T, t) -> np.ndarray:
    """(a+b+x-1)/(a-1) (1 - G), G by Euler's transformation (see bgnbd_expected_purchases)."""
    z = t / (alpha + T + t)
    c = a + b + x - 1
    with np.errstate(all="ignore"):
        g = np.exp((a - 1) * np.log1p(-z)) * special.hyp2f1(a + b - 1 - r, a - 1, c, z)
        return c / (a - 1) * (1 - g)


def bgnbd_expected_purchases(params, t, x, t_x, T) -> np.ndarray:
    """E[number of purchases in (T, T+t] | x, t_x, T] (FHL 2005 eq. 10), broadcast over the inputs.

    E = P(alive) * (a+b+x-1)/(a-1) * [1 - G], G = ((alpha+T)/(alpha+T+t))^(r+x)
    2F1(r+x, b+x; a+b+x-1; z), z = t/(alpha+T+t). G is evaluated through Euler's transformation,
    G = (1-z)^(a-1) 2F1(a+b-1-r, a-1; a+b+x-1; z), whose upper parameters do not grow with x:
    the textbook form's 2F1 overflows for large x and z near 1 (``lifetimes`` then switches to
    this form); this one agrees with mpmath (50 digits) to ~1e-12 relative (~1e-9 only for
    sub-day horizons of very low-rate customers: the 1 - G cancellation). Guarded regions: at |a - 1| < 1e-4 the
    closed form is 0/0 (removable): it is interpolated in a (Lagrange, through a = 1 +
    (-2, -1, 1, 2) * 1e-4); where the value is not finite (a in the hundreds: (1-z)^(a-1)
    underflows while 2F1 overflows) the alive-customer expectation is computed as the posterior
    mixture over p ~ Beta(a, b+x) by a 64-node Gauss rule (accurate there: p is concentrated).
    """
    r, alpha, a, b = _params(params, 4)
    t, x, t_x, T = np.broadcast_arrays(*(np.asarray(v, dtype=float) for v in (t, x, t_x, T)))
    if np.any(t < 0):
        raise ValueError("t must be >= 0")
    if abs(a - 1) >= _A_ONE:
        alive_e = _alive_expectation(r, alpha, a, b, x, T, t)
    else:                                                # Lagrange through a = 1 + o * _A_ONE
        offsets, u, alive_e = np.array([-2.0, -1.0, 1.0, 2.0]), (a - 1) / _A_ONE, 0.0
        for j, o in enumerate(offsets):
            others = np.delete(offsets, j)
            weight = float(np.prod((u - others) / (o - others)))
            alive_e = alive_e + weight * _alive_expectation(r, alpha, 1 + o * _A_ONE, b, x, T, t)
    alive_e = np.array(np.where(t == 0, 0.0, alive_e), dtype=float)
    flat, redo = alive_e.reshape(-1), np.flatnonzero(~np.isfinite(alive_e))
    for i in redo:                                       # the guarded region, element by element
        flat[i] = _alive_expectation_quad(r, alpha, a, b, x.flat[i], T.flat[i], t.flat[i])
    return bgnbd_p_alive((r, alpha, a, b), x, t_x, T) * alive_e


def gamma_gamma_expected_spend(params, x, m_bar) -> np.ndarray:
    """E[average transaction value | x, m_bar] (2013 note eq. 5): the weighted average
    (1 - w) p v/(q-1) + w m_bar, w = p x/(p x + q - 1); for x = 0 the population mean
    p v/(q-1) (m_bar is ignored there and may be nan). Needs q > 1 (finite population mean)."""
    p, q, v = _params(params, 3)
    if q <= 1:                                           # lifetimes would return negative spend
        raise ValueError(f"q = {q} <= 1: the Gamma-Gamma population mean spend is infinite")
    x, m = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(m_bar, dtype=float))
    population = p * v / (q - 1)
    weight = p * x / (p * x + q - 1)
    return np.where(x > 0, (1 - weight) * population + weight * np.where(x > 0, m, 0.0), population)


def discounted_purchases(bg, x, t_x, T, horizon_days: int, discount_rate_annual: float,
                         step_days: int = 30) -> np.ndarray:
    """Expected purchases over ``horizon_days``, each period's discounted as :func:`clv` does:
    sum over periods k of (E(e_k) - E(e_{k-1})) / (1 + d_period)^(e_k/step_days). CLV is this
    times the Gamma-Gamma expected spend (which does not depend on time), so the Spark job
    computes it once per (x, t_x, T) cell and multiplies per customer."""
    if not (int(horizon_days) == horizon_days > 0 and int(step_days) == step_days > 0
            and discount_rate_annual > -1):
        raise ValueError("need integer horizon_days, step_days > 0 and discount_rate_annual > -1")
    d_period = (1 + discount_rate_annual) ** (step_days / DAYS_PER_YEAR) - 1
    ends = np.minimum(np.arange(1, -(-int(horizon_days) // int(step_days)) + 1) * step_days, horizon_days)
    total, previous = 0.0, 0.0
    for end in ends:
        cumulative = bgnbd_expected_purchases(bg, float(end), x, t_x, T)
        total = total + (cumulative - previous) / (1 + d_period) ** (end / step_days)
        previous = cumulative
    return np.asarray(total, dtype=float)


def clv(bg, gg, x, t_x, T, m_bar, horizon_days: int, discount_rate_annual: float,
        step_days: int = 30) -> np.ndarray:
    """Discounted customer lifetime value over ``horizon_days``, as ``lifetimes``'
    ``customer_lifetime_value`` (utils._customer_lifetime_value) computes it: periods of
    ``step_days`` ending at e_k = k*step_days (the last one cut at the horizon); per period the
    expected purchases E(e_k) - E(e_{k-1}) (differences of :func:`bgnbd_expected_purchases`)
    times the Gamma-Gamma expected spend, divided by (1 + d_period)^(e_k/step_days), i.e.
    discounted at the END of each period, with d_period = (1 + discount_rate_annual)^(
    step_days/365) - 1 (lifetimes takes d_period, its "monthly" rate, directly; with
    step_days = 30 and a horizon of 30*n days this equals lifetimes with time=n, freq="D",
    discount_rate=d_period)."""
    purchases = discounted_purchases(bg, x, t_x, T, horizon_days, discount_rate_annual, step_days)
    return np.asarray(purchases * gamma_gamma_expected_spend(gg, x, m_bar), dtype=float)


# --- simulators of the generative processes ------------------------------------------------
def simulate_bgnbd(n: int, params, T_days, rng: np.random.Generator):
    """(x, t_x, T) of n customers drawn from the BG/NBD with ``(r, alpha, a, b)`` (alpha in
    days); ``T_days`` is the age of each customer (scalar or length-n array, days).

    Exact and vectorised: lambda ~ Gamma(r, rate alpha), p ~ Beta(a, b); the repeat purchases
    a customer would make while alive in (0, T] are N ~ Poisson(lambda T) at uniform times; the
    death comes after repeat purchase D ~ Geometric(p) (support 1, 2, ...), so x = min(N, D)
    and t_x, the x-th smallest of N uniforms on (0, T], is T * Beta(x, N - x + 1) (0 if x = 0).
    t_x is continuous (the Spark job's rounding to days is the caller's)."""
    r, alpha, a, b = _params(params, 4)
    T = np.broadcast_to(np.asarray(T_days, dtype=float), (n,)).copy()
    lam = rng.gamma(r, 1.0 / alpha, size=n)
    p = rng.beta(a, b, size=n)
    n_poisson = rng.poisson(lam * T).astype(float)
    u = rng.random(n)
    with np.errstate(divide="ignore"):
        death = np.floor(np.log1p(-u) / np.log1p(-np.clip(p, 1e-300, 1.0))) + 1.0   # Geometric(p)
    x = np.minimum(n_poisson, np.where(np.isfinite(death), death, np.inf))
    pos = x > 0
    t_x = np.zeros(n)
    t_x[pos] = T[pos] * rng.beta(x[pos], n_poisson[pos] - x[pos] + 1.0)
    return x.astype(np.int64), t_x, T


def simulate_gamma_gamma(x, params, rng: np.random.Generator) -> np.ndarray:
    """m_bar per customer from the Gamma-Gamma with ``(p, q, v)``: nu ~ Gamma(q, rate v), each
    of the x transaction values ~ Gamma(p, rate nu), so their sum ~ Gamma(p x, rate nu);
    m_bar = sum / x, nan where x = 0."""
    p, q, v = _params(params, 3)
    x = np.asarray(x, dtype=float)
    nu = rng.gamma(q, 1.0 / v, size=x.shape)
    pos = x > 0
    total = np.zeros(x.shape)
    total[pos] = rng.gamma(p * x[pos], 1.0 / nu[pos])
    return np.where(pos, total / np.where(pos, x, 1.0), np.nan)
