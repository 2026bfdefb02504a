"""Exact quantiles (seglake.core.quantiles): numpy's inverted_cdf on the same values, and the same
answer whatever the partitioning (percentile_approx merges per-partition sketches)."""
from __future__ import annotations

import numpy as np
import pytest
from pyspark.sql import functions as F

from seglake.core.quantiles import exact_quantiles


def test_exact_quantiles_equal_numpy_on_any_partitioning(spark):
    rng = np.random.default_rng(17)
    n = 5003
    revenue = np.round(rng.lognormal(4, 1.2, n), 2)
    revenue[rng.random(n) < 0.4] = 0.0                          # many ties at zero
    sessions = rng.poisson(3, n).astype(float)
    rows = [(float(r), float(s) if i % 11 else None) for i, (r, s) in enumerate(zip(revenue, sessions))]
    df = spark.createDataFrame(rows, "revenue double, sessions double")
    requests = {"r95": ("revenue", 0.95), "r50": ("revenue", 0.5), "r0": ("revenue", 0.0), "r1": ("revenue", 1.0),
                "s90": ("sessions", 0.9), "s37": ("sessions", 0.37)}
    kept = np.array([s for i, s in enumerate(sessions) if i % 11])
    want = {k: float(np.quantile(revenue if c == "revenue" else kept, q, method="inverted_cdf"))
            for k, (c, q) in requests.items()}
    layouts = [df.coalesce(1), df.repartition(7), df.repartition(13, F.rand(seed=3)),
               df.orderBy(F.rand(seed=5)).repartition(4)]
    for layout in layouts:
        assert exact_quantiles(layout, requests) == pytest.approx(want, rel=0, abs=0)
    assert exact_quantiles(df.where("revenue < 0"), {"none": ("revenue", 0.5)}) == {"none": None}
    with pytest.raises(ValueError, match="within"):
        exact_quantiles(df, {"bad": ("revenue", 1.5)})
