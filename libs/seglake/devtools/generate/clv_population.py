"""A planted BG/NBD + Gamma-Gamma purchase population with known parameters (tests, benchmarks).

:func:`plant_clv_population` draws each customer's whole purchase history from the generative
story of the models, transaction by transaction (not only the (x, t_x, T) summary), so the
Spark summary code is exercised on dated purchases as real data would reach it:

* the first purchase at a uniform time in ``[start, start + birth_days)`` (continuous);
* while alive, purchases as a Poisson process of rate lambda ~ Gamma(r, rate alpha) per day;
  after each repeat purchase the customer dies with probability p ~ Beta(a, b);
* every purchase's value ~ Gamma(shape p_gg, rate nu), nu ~ Gamma(q, rate v) per customer;
* observation ends at 00:00 of ``as_of``.

Purchases are dated by their UTC day; two purchases of one customer on the same day become one
purchase day (the standard summary counts days), which the model does not know about: with
daily rates of a few percent this is rare and the tests' tolerances (standard errors) absorb it.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np


@dataclass(frozen=True)
class PlantedPopulation:
    """Purchases (one row per purchase) and the parameters they were drawn with."""

    customer_id: list[str]
    event_date: list[date]
    revenue: np.ndarray
    bgnbd: tuple[float, float, float, float]
    gamma_gamma: tuple[float, float, float]
    as_of: date

    def rows(self) -> list[tuple[str, date, float]]:
        return list(zip(self.customer_id, self.event_date, self.revenue.tolist()))


#: CDNOW-like parameters (Fader, Hardie & Lee 2005 report r=0.243, alpha=4.414 weeks, a=0.793,
#: b=2.426; alpha here is in days) and a Gamma-Gamma spend of mean p*v/(q-1) ~ 36
DEFAULT_BGNBD = (0.243, 4.414 * 7, 0.793, 2.426)
DEFAULT_GAMMA_GAMMA = (6.25, 3.74, 15.44)


def plant_clv_population(n: int, seed: int = 5, start: date = date(2025, 1, 1), as_of: date = date(2026, 1, 1),
                         birth_days: int = 90, bgnbd=DEFAULT_BGNBD, gamma_gamma=DEFAULT_GAMMA_GAMMA,
                         id_prefix: str = "clv-") -> PlantedPopulation:
    """``n`` customers' purchases (module docstring); deterministic for a seed."""
    if n < 1 or birth_days < 1 or start + timedelta(days=birth_days) > as_of:
        raise ValueError("need n >= 1, birth_days >= 1 and start + birth_days <= as_of")
    r, alpha, a, b = bgnbd
    p_gg, q, v = gamma_gamma
    rng = np.random.default_rng(seed)
    horizon = float((as_of - start).days)
    birth = rng.uniform(0.0, float(birth_days), size=n)
    lam = rng.gamma(r, 1.0 / alpha, size=n)
    death_p = rng.beta(a, b, size=n)
    nu = rng.gamma(q, 1.0 / v, size=n)
    ids, days, values = [], [], []
    for i in range(n):
        span = horizon - birth[i]
        k = rng.poisson(lam[i] * span)
        times = np.sort(rng.uniform(0.0, span, size=k))
        dies_after = rng.geometric(death_p[i])      # repeat purchases made before dying (support 1, 2, ...)
        times = times[: min(k, dies_after)]
        t_all = birth[i] + np.concatenate([[0.0], times])
        cid = f"{id_prefix}{i:07d}"
        for t, z in zip(t_all, rng.gamma(p_gg, 1.0 / nu[i], size=t_all.size)):
            ids.append(cid)
            days.append(start + timedelta(days=int(np.floor(t))))
            values.append(round(float(z), 2))
    return PlantedPopulation(ids, days, np.asarray(values), tuple(map(float, bgnbd)),
                             tuple(map(float, gamma_gamma)), as_of)
