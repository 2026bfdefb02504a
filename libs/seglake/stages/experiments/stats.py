"""A/B test statistics computed on the driver from per-variant sufficient statistics.

Spark reduces each variant to a :class:`Moments` (n, sum y, sum y^2 and, for CUPED, the sums
of a pre-period covariate x, x^2 and x*y); nothing here ever sees per-customer rows. Pure
Python + numpy/scipy; every returned value is a plain ``float``/``int``/``str``/``bool`` or
``None`` (never numpy scalars, never inf/nan: what cannot be computed is ``None``).

Formulas (c = control, t = treatment/variant; s^2 is the sample variance, ddof=1):

* Moments: mean = sum_y/n; s^2 = (sum_y2 - n*mean^2)/(n-1), clipped at 0 and set to 0 below a
  relative round-off floor (1e-12 * sum_y2), so a constant metric has variance exactly 0.
* SRM: Pearson goodness of fit, chi2 = sum (O-E)^2/E, E = N*w/sum(w), df = k-1.
* 2xk table (converted / not converted per variant): Pearson chi2 = sum (O-E)^2/E with
  E = row*col/N, df = k-1. For 2x2 also Yates as scipy's ``chi2_contingency`` does it: each
  |O-E| shrunk by min(0.5, |O-E|), i.e. chi2 = sum max(0, |O-E|-0.5)^2/E.
* Proportions: sd = sample sd of the 0/1 values (ddof=1) = sqrt(n p(1-p)/(n-1)), equal to
  numpy's ``std(ddof=1)``. Uplift CI: Wald unpooled, diff +- z*sqrt(p_t(1-p_t)/n_t +
  p_c(1-p_c)/n_c), z = Phi^-1(1-alpha/2). Relative uplift p_t/p_c - 1 with a delta-method
  CI: se = sqrt(v_t/p_c^2 + p_t^2 v_c/p_c^4), v = p(1-p)/n. Test: pooled two-proportion z,
  (p_t-p_c)/sqrt(p(1-p)(1/n_t+1/n_c)), two-sided p.
* Means: Welch t = (m_t-m_c)/sqrt(v_t+v_c), v = s^2/n, Welch-Satterthwaite df =
  (v_t+v_c)^2/(v_t^2/(n_t-1)+v_c^2/(n_c-1)); the CIs use the t quantile at that df; the
  relative CI is the same delta method as above with v = s^2/n.
* CUPED: theta = cov(x,y)/var(x) over both variants together (sample moments of the summed
  sums); y' = y - theta*(x - mean_x_pooled); per variant mean(y') = mean(y) -
  theta*(mean(x) - mean_x_pooled) and var(y') = var(y) - 2 theta cov(x,y) + theta^2 var(x)
  (within-variant sample moments); then Welch on y'. variance_reduction = 1 -
  (s'_t^2/n_t + s'_c^2/n_c)/(s_t^2/n_t + s_c^2/n_c).
* Power (two-sided), as statsmodels computes it: proportions use Cohen's h =
  2 asin(sqrt(p1)) - 2 asin(sqrt(p_c)), p1 = p_c(1+mde_rel) clipped into [0, 1-1e-12], and
  the normal approximation with n_eff = 1/(1/n_t+1/n_c) (``NormalIndPower``); means use
  d = mde_rel*|mean_c|/s_c (the CONTROL sd stands in for the pooled sd) and the noncentral t
  with df = n_t+n_c-2 (``TTestIndPower``). The sample size per variant (equal allocation)
  is the root of power(n) = target found with brentq, rounded up.
* Holm: sort the m p-values, adjusted_(i) = max_{j<=i} min(1, (m-j+1) p_(j)).

Inference (sd, CIs, tests) needs n >= 2 in both variants; otherwise those fields are None.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from scipy import optimize, special, stats

__all__ = [
    "Moments", "RESULT_KEYS", "srm", "chi_square_table", "proportion_comparison",
    "welch_comparison", "cuped_comparison", "power_and_sample_size", "holm", "compare",
]

KINDS = ("proportion", "mean")

#: relative round-off floor under which a sum of squared deviations is taken as exactly 0
_VAR_FLOOR = 1e-12
#: a proportion raised by mde_rel is clipped to at most this (Cohen's h needs p < 1)
_P_MAX = 1.0 - 1e-12
#: the sample-size search gives up (None) beyond this many customers per variant
_N_MAX = 1e12

COMPARISON_KEYS = ("mean_control", "mean_variant", "sd_control", "sd_variant", "abs_uplift", "abs_ci_low",
                   "abs_ci_high", "rel_uplift", "rel_ci_low", "rel_ci_high", "test", "statistic", "df", "p_value")
CHI2_KEYS = ("chi2", "chi2_df", "chi2_p", "chi2_yates", "chi2_yates_p")
POWER_KEYS = ("achieved_power", "needed_per_variant")
CUPED_KEYS = ("cuped_theta", "cuped_abs_uplift", "cuped_ci_low", "cuped_ci_high", "cuped_p_value",
              "cuped_variance_reduction")
#: the keys (in order) of every row :func:`compare` returns, whatever the branch
RESULT_KEYS: tuple[str, ...] = (
    ("variant", "control", "n_control", "n_variant")
    + COMPARISON_KEYS + CHI2_KEYS + POWER_KEYS + CUPED_KEYS + ("significant",)
)


# --------------------------------------------------------------------------- helpers
def _num(x: Any) -> float | None:
    """A plain finite float, or None (for None, nan, inf)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _plain(x: Any) -> Any:
    """numpy scalars -> Python scalars; non-finite floats -> None."""
    if hasattr(x, "item"):  # numpy scalar
        x = x.item()
    return x if x is None or isinstance(x, (bool, str, int)) else _num(x)


def _check_alpha(alpha: float, name: str = "alpha") -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {alpha!r}")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _ss(total_sq: float, n: int, mean: float) -> float:
    """Sum of squared deviations from the one-pass sums, clipped at 0 and round-off floored."""
    ss = total_sq - n * mean * mean
    return 0.0 if ss <= _VAR_FLOOR * abs(total_sq) else ss


def _two_sided_p(dist: Any, stat: float) -> float:
    """Two-sided p as scipy's tests compute it: 2*min(cdf, sf), clipped to [0, 1]."""
    return min(1.0, max(0.0, 2.0 * min(float(dist.cdf(stat)), float(dist.sf(stat)))))


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Moments:
    """Sufficient statistics of a per-customer metric y (and a pre-period covariate x) in one variant.

    For a proportion metric y is 0/1, so sum_y = successes = sum_y2. The x sums are only
    needed for CUPED (all 0 = no covariate: CUPED then falls back to the plain numbers).
    """

    n: int
    sum_y: float
    sum_y2: float
    sum_x: float = 0.0
    sum_x2: float = 0.0
    sum_xy: float = 0.0

    def __post_init__(self) -> None:
        # Spark/numpy may hand over Decimal, numpy or long values: normalise to int/float
        object.__setattr__(self, "n", int(self.n))
        for name in ("sum_y", "sum_y2", "sum_x", "sum_x2", "sum_xy"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {self.n}")

    @property
    def mean(self) -> float | None:
        return self.sum_y / self.n if self.n > 0 else None

    @property
    def var(self) -> float | None:
        """Sample variance of y (ddof=1); None when n < 2."""
        if self.n < 2:
            return None
        return _ss(self.sum_y2, self.n, self.sum_y / self.n) / (self.n - 1)

    @property
    def sd(self) -> float | None:
        v = self.var
        return math.sqrt(v) if v is not None else None

    @property
    def mean_x(self) -> float | None:
        return self.sum_x / self.n if self.n > 0 else None

    @property
    def var_x(self) -> float | None:
        if self.n < 2:
            return None
        return _ss(self.sum_x2, self.n, self.sum_x / self.n) / (self.n - 1)

    @property
    def cov_xy(self) -> float | None:
        """Sample covariance of x and y (ddof=1); None when n < 2."""
        if self.n < 2:
            return None
        return (self.sum_xy - self.sum_x * self.sum_y / self.n) / (self.n - 1)


# --------------------------------------------------------------------------- SRM / chi-square
def srm(observed: dict[str, int], weights: dict[str, float]) -> dict:
    """Sample-ratio mismatch: Pearson goodness of fit of the assignment counts to the weights.

    The variants are the keys of ``weights``; a variant missing from ``observed`` counts 0
    (which is itself a mismatch). Returns srm_chi2, srm_df, srm_p; None when no customer was
    observed, fewer than 2 variants, or a weight is <= 0.
    """
    extra = set(observed) - set(weights)
    if extra:
        raise ValueError(f"observed variants without a weight: {sorted(extra)}")
    out: dict[str, Any] = {"srm_chi2": None, "srm_df": None, "srm_p": None}
    names = list(weights)
    counts = [float(observed.get(k, 0)) for k in names]
    w = [float(weights[k]) for k in names]
    total, wsum = sum(counts), sum(w)
    if len(names) < 2 or total <= 0 or any(x <= 0 for x in w):
        return out
    chi2 = 0.0
    for o, wi in zip(counts, w):
        e = total * wi / wsum
        chi2 += (o - e) ** 2 / e
    df = len(names) - 1
    out.update(srm_chi2=_num(chi2), srm_df=df, srm_p=_num(stats.chi2.sf(chi2, df)))
    return out


def chi_square_table(successes: dict[str, int], totals: dict[str, int]) -> dict:
    """Pearson chi-square of the 2 x k table (converted / not converted per variant).

    chi2/chi2_df/chi2_p without continuity correction; for k == 2 also the Yates-corrected
    chi2_yates/chi2_yates_p (None for k > 2). All None when the table has an empty row or
    column (nobody / everybody converted, an empty variant) or fewer than 2 variants.
    """
    if set(successes) != set(totals):
        raise ValueError("successes and totals must have the same variants")
    out: dict[str, Any] = dict.fromkeys(CHI2_KEYS)
    names = list(totals)
    k = len(names)
    conv = [float(successes[v]) for v in names]
    tot = [float(totals[v]) for v in names]
    if k < 2 or any(s < 0 or s > n for s, n in zip(conv, tot)):
        return out
    grand = sum(tot)
    row_conv = sum(conv)
    rows = (row_conv, grand - row_conv)
    if grand <= 0 or min(rows) <= 0 or min(tot) <= 0:
        return out
    chi2 = 0.0
    yates = 0.0
    for s, n in zip(conv, tot):
        for obs, row in ((s, rows[0]), (n - s, rows[1])):
            e = row * n / grand
            d = abs(obs - e)
            chi2 += d * d / e
            dy = max(0.0, d - 0.5)  # scipy: |O-E| shrunk by min(0.5, |O-E|)
            yates += dy * dy / e
    df = k - 1
    out.update(chi2=_num(chi2), chi2_df=df, chi2_p=_num(stats.chi2.sf(chi2, df)))
    if k == 2:
        out.update(chi2_yates=_num(yates), chi2_yates_p=_num(stats.chi2.sf(yates, 1)))
    return out


# --------------------------------------------------------------------------- comparisons
def proportion_comparison(control: Moments, treatment: Moments, alpha: float = 0.05) -> dict:
    """Two-proportion comparison: rates, sample sds (ddof=1 of the 0/1 values), Wald and
    delta-method CIs, pooled two-proportion z test. None for whatever cannot be computed."""
    _check_alpha(alpha)
    out: dict[str, Any] = dict.fromkeys(COMPARISON_KEYS)
    out["test"] = "two-proportion z"
    n_c, n_t = control.n, treatment.n
    p_c = control.sum_y / n_c if n_c > 0 else None
    p_t = treatment.sum_y / n_t if n_t > 0 else None
    out["mean_control"], out["mean_variant"] = _num(p_c), _num(p_t)
    for key, p, n in (("sd_control", p_c, n_c), ("sd_variant", p_t, n_t)):
        if p is not None and n >= 2:
            out[key] = _num(math.sqrt(max(0.0, n * p * (1.0 - p) / (n - 1))))
    if p_c is None or p_t is None:
        return out
    out["abs_uplift"] = _num(p_t - p_c)
    if p_c > 0:
        out["rel_uplift"] = _num(p_t / p_c - 1.0)
    if n_c < 2 or n_t < 2:
        return out
    z = float(stats.norm.isf(alpha / 2.0))
    v_t = p_t * (1.0 - p_t) / n_t
    v_c = p_c * (1.0 - p_c) / n_c
    se = math.sqrt(max(0.0, v_t + v_c))
    if se > 0:
        out["abs_ci_low"] = _num(p_t - p_c - z * se)
        out["abs_ci_high"] = _num(p_t - p_c + z * se)
    if p_c > 0:
        se_rel = math.sqrt(max(0.0, v_t / p_c ** 2 + p_t ** 2 * v_c / p_c ** 4))
        if se_rel > 0:
            rel = p_t / p_c - 1.0
            out["rel_ci_low"] = _num(rel - z * se_rel)
            out["rel_ci_high"] = _num(rel + z * se_rel)
    pooled = (treatment.sum_y + control.sum_y) / (n_t + n_c)
    if 0.0 < pooled < 1.0:
        stat = (p_t - p_c) / math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_t + 1.0 / n_c))
        out["statistic"] = _num(stat)
        out["p_value"] = _num(2.0 * stats.norm.sf(abs(stat)))
    return out


def _welch(n_c: int, m_c: float | None, var_c: float | None,
           n_t: int, m_t: float | None, var_t: float | None, alpha: float) -> dict:
    """Welch comparison from (n, mean, sample variance) per variant."""
    out: dict[str, Any] = dict.fromkeys(COMPARISON_KEYS)
    out["test"] = "welch t"
    out["mean_control"], out["mean_variant"] = _num(m_c), _num(m_t)
    out["sd_control"] = _num(math.sqrt(var_c)) if var_c is not None else None
    out["sd_variant"] = _num(math.sqrt(var_t)) if var_t is not None else None
    if m_c is None or m_t is None:
        return out
    diff = m_t - m_c
    out["abs_uplift"] = _num(diff)
    if m_c != 0:
        out["rel_uplift"] = _num(m_t / m_c - 1.0)
    if var_c is None or var_t is None:  # n < 2 somewhere
        return out
    vm_t, vm_c = var_t / n_t, var_c / n_c
    se2 = vm_t + vm_c
    if se2 <= 0:
        return out
    df = se2 * se2 / (vm_t * vm_t / (n_t - 1) + vm_c * vm_c / (n_c - 1))
    se = math.sqrt(se2)
    dist = stats.t(df)
    stat = diff / se
    q = float(stats.t.ppf(1.0 - alpha / 2.0, df))
    out.update(statistic=_num(stat), df=_num(df), p_value=_num(_two_sided_p(dist, stat)),
               abs_ci_low=_num(diff - q * se), abs_ci_high=_num(diff + q * se))
    if m_c != 0:
        se_rel = math.sqrt(vm_t / m_c ** 2 + m_t ** 2 * vm_c / m_c ** 4)
        rel = m_t / m_c - 1.0
        if se_rel > 0:
            out["rel_ci_low"] = _num(rel - q * se_rel)
            out["rel_ci_high"] = _num(rel + q * se_rel)
    return out


def welch_comparison(control: Moments, treatment: Moments, alpha: float = 0.05) -> dict:
    """Welch (unequal variances) t comparison of a continuous metric; sds with ddof=1."""
    _check_alpha(alpha)
    return _welch(control.n, control.mean, control.var, treatment.n, treatment.mean, treatment.var, alpha)


def cuped_comparison(control: Moments, treatment: Moments, kind: str, alpha: float = 0.05) -> dict:
    """CUPED: Welch on y' = y - theta*(x - mean_x_pooled), theta = cov(x,y)/var(x) over both
    variants together. For both kinds (the adjusted metric is continuous). Without pre-period
    variation (var(x) == 0) theta is 0 and the numbers are the plain Welch ones."""
    _check_kind(kind)
    _check_alpha(alpha)
    out: dict[str, Any] = dict.fromkeys(CUPED_KEYS)
    n_c, n_t = control.n, treatment.n
    if n_c < 2 or n_t < 2:
        return out
    n = n_c + n_t
    sx = control.sum_x + treatment.sum_x
    sy = control.sum_y + treatment.sum_y
    mx = sx / n
    ss_x = _ss(control.sum_x2 + treatment.sum_x2, n, mx)
    theta = 0.0
    if ss_x > 0:
        theta = (control.sum_xy + treatment.sum_xy - sx * sy / n) / ss_x  # the (n-1)s cancel

    def adjusted(m: Moments) -> tuple[float, float]:
        mean = m.sum_y / m.n - theta * (m.sum_x / m.n - mx)
        var_y, var_x, cov = m.var, m.var_x, m.cov_xy
        assert var_y is not None and var_x is not None and cov is not None
        if theta == 0.0:
            return mean, var_y
        var = var_y - 2.0 * theta * cov + theta * theta * var_x
        scale = var_y + theta * theta * var_x
        return mean, (var if var > _VAR_FLOOR * scale else 0.0)

    am_c, av_c = adjusted(control)
    am_t, av_t = adjusted(treatment)
    res = _welch(n_c, am_c, av_c, n_t, am_t, av_t, alpha)
    var_plain = control.var / n_c + treatment.var / n_t  # type: ignore[operator]
    reduction = None
    if theta == 0.0:
        reduction = 0.0
    elif var_plain > 0:
        reduction = 1.0 - (av_t / n_t + av_c / n_c) / var_plain
    out.update(cuped_theta=_num(theta), cuped_abs_uplift=res["abs_uplift"],
               cuped_ci_low=res["abs_ci_low"], cuped_ci_high=res["abs_ci_high"],
               cuped_p_value=res["p_value"], cuped_variance_reduction=_num(reduction))
    return out


# --------------------------------------------------------------------------- power
def _normal_power(h: float, n1: float, n2: float, alpha: float) -> float:
    """Two-sided z-test power as statsmodels' NormalIndPower.power (ddof 0)."""
    nobs = 1.0 / (1.0 / n1 + 1.0 / n2)
    shift = h * math.sqrt(nobs)
    return float(stats.norm.sf(stats.norm.isf(alpha / 2.0) - shift)
                 + stats.norm.cdf(stats.norm.ppf(alpha / 2.0) - shift))


def _t_power(d: float, n1: float, n2: float, alpha: float) -> float:
    """Two-sided two-sample t-test power as statsmodels' TTestIndPower.power (noncentral t,
    df = n1+n2-2; the same scipy.special.nctdtr calls statsmodels makes)."""
    df = n1 + n2 - 2.0
    nc = d * math.sqrt(1.0 / (1.0 / n1 + 1.0 / n2))
    upper = float(stats.t.isf(alpha / 2.0, df))
    lower = float(stats.t.ppf(alpha / 2.0, df))
    return float(1.0 - special.nctdtr(df, nc, upper) + special.nctdtr(df, nc, lower))


def _solve_n(power_at: Any, target: float, lo: float) -> float | None:
    """The smallest n in [lo, _N_MAX] with power_at(n) = target (power increases with n)."""
    if power_at(lo) >= target:
        return lo
    hi = lo * 2.0
    while power_at(hi) < target:
        if hi >= _N_MAX:
            return None
        hi *= 2.0
    return float(optimize.brentq(lambda n: power_at(n) - target, lo, hi, xtol=1e-10, rtol=1e-14, maxiter=500))


def _effect(kind: str, control: Moments, mde_rel: float) -> float | None:
    """|Cohen's h| (proportions) or |d| = |mde_rel*mean_c/sd_c| (means); None if undefined."""
    if kind == "proportion":
        if control.n < 1:
            return None
        p_c = control.sum_y / control.n
        if not 0.0 < p_c <= 1.0:
            return None
        p_1 = min(max(p_c * (1.0 + mde_rel), 0.0), _P_MAX)
        return abs(2.0 * math.asin(math.sqrt(p_1)) - 2.0 * math.asin(math.sqrt(p_c)))
    sd, mean = control.sd, control.mean
    if sd is None or mean is None or sd <= 0:
        return None
    return abs(mde_rel * abs(mean) / sd)


def _needed_float(kind: str, control: Moments, mde_rel: float, alpha: float, power: float) -> float | None:
    """The unrounded sample size per variant (equal allocation) reaching ``power``."""
    eff = _effect(kind, control, mde_rel)
    if eff is None or eff == 0.0:
        return None
    if kind == "proportion":
        return _solve_n(lambda n: _normal_power(eff, n, n, alpha), power, 1.0)
    return _solve_n(lambda n: _t_power(eff, n, n, alpha), power, 2.0)


def power_and_sample_size(kind: str, control: Moments, n_treatment: int, mde_rel: float,
                          alpha: float = 0.05, power: float = 0.8) -> dict:
    """Achieved power to detect a relative change ``mde_rel`` of the control mean with the
    sizes at hand (two-sided), and the per-variant size (equal split, rounded up) reaching
    ``power``. Proportions: Cohen's h + normal approximation; means: d from the control sd +
    noncentral t. None where undefined (p_c == 0, sd == 0, too few customers)."""
    _check_kind(kind)
    _check_alpha(alpha)
    _check_alpha(power, "power")
    out: dict[str, Any] = dict.fromkeys(POWER_KEYS)
    eff = _effect(kind, control, mde_rel)
    if eff is None:
        return out
    n_c, n_t = control.n, int(n_treatment)
    if kind == "proportion" and n_c >= 1 and n_t >= 1:
        out["achieved_power"] = _num(_normal_power(eff, n_t, n_c, alpha))
    elif kind == "mean" and n_c >= 1 and n_t >= 1 and n_c + n_t > 2:
        out["achieved_power"] = _num(_t_power(eff, n_t, n_c, alpha))
    needed = _needed_float(kind, control, mde_rel, alpha, power)
    if needed is not None:
        out["needed_per_variant"] = int(math.ceil(needed))
    return out


# --------------------------------------------------------------------------- multiplicity
def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm step-down adjusted p-values; None (and nan) entries stay None and are not counted."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(float(p))]
    out: list[float | None] = [None] * len(pvalues)
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: float(pvalues[j]))):  # type: ignore[arg-type]
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


# --------------------------------------------------------------------------- entry point
def compare(kind: str, moments: dict[str, Moments], control: str, alpha: float = 0.05,
            mde_rel: float | None = None, power: float = 0.8, with_cuped: bool = False) -> list[dict]:
    """One row per non-control variant (in ``moments`` order), keys exactly ``RESULT_KEYS``.

    The comparison is :func:`proportion_comparison` (kind "proportion") or
    :func:`welch_comparison` (kind "mean"); proportions also carry the chi-square of the
    whole 2 x k table (the same on every row). Power keys are None without ``mde_rel``, CUPED
    keys None without ``with_cuped``. "significant" is p_value < alpha (False when p is
    None), unadjusted for multiplicity (see :func:`holm`).
    """
    _check_kind(kind)
    _check_alpha(alpha)
    if control not in moments:
        raise ValueError(f"control variant {control!r} not among {sorted(moments)}")
    ctrl = moments[control]
    chi = dict.fromkeys(CHI2_KEYS)
    if kind == "proportion":
        chi = chi_square_table({v: int(round(m.sum_y)) for v, m in moments.items()},
                               {v: m.n for v, m in moments.items()})
    rows = []
    for name, mom in moments.items():
        if name == control:
            continue
        row: dict[str, Any] = dict.fromkeys(RESULT_KEYS)
        row.update(variant=str(name), control=str(control), n_control=ctrl.n, n_variant=mom.n)
        if kind == "proportion":
            row.update(proportion_comparison(ctrl, mom, alpha))
        else:
            row.update(welch_comparison(ctrl, mom, alpha))
        row.update(chi)
        if mde_rel is not None:
            row.update(power_and_sample_size(kind, ctrl, mom.n, mde_rel, alpha, power))
        if with_cuped:
            row.update(cuped_comparison(ctrl, mom, kind, alpha))
        p = row["p_value"]
        row["significant"] = bool(p is not None and p < alpha)
        rows.append({key: _plain(row[key]) for key in RESULT_KEYS})
    return rows
