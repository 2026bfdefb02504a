"""Retention matrix: crafted cohorts by hand and a pandas cross-check."""
from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from seglake.stages import cohorts

DDL = "customer_id STRING, event_ts TIMESTAMP"
AS_OF = date(2026, 8, 27)
ROWS = [
    ("X", datetime(2026, 8, 3, 9)), ("X", datetime(2026, 8, 12, 9)), ("X", datetime(2026, 8, 26, 23)),
    ("Y", datetime(2026, 8, 5, 9)), ("Y", datetime(2026, 8, 6, 9)), ("Y", datetime(2026, 8, 28, 1)),  # after as_of
    ("Z", datetime(2026, 8, 11, 9)), ("Z", datetime(2026, 8, 18, 9)),
]


def _cells(df):
    return {(r["cohort"], r["period"]): (r["cohort_size"], r["active_customers"], r["active_share"], r["complete"])
            for r in df.collect()}


def test_weekly_retention_by_hand(spark):
    got = _cells(cohorts.retention_matrix(spark.createDataFrame(ROWS, DDL), AS_OF, "week", 13))
    w1, w2 = date(2026, 8, 3), date(2026, 8, 10)
    assert got == {
        (w1, 0): (2, 2, 1.0, True), (w1, 1): (2, 1, 0.5, True), (w1, 3): (2, 1, 0.5, False),
        (w2, 0): (1, 1, 1.0, True), (w2, 1): (1, 1, 1.0, True),
    }


def test_monthly_retention_and_bad_granularity(spark):
    df = spark.createDataFrame(ROWS, DDL)
    got = _cells(cohorts.retention_matrix(df, AS_OF, "month", 3))
    assert got == {(date(2026, 8, 1), 0): (3, 3, 1.0, False)}
    with pytest.raises(ValueError, match="retention_granularity"):
        cohorts.retention_matrix(df, AS_OF, "day", 3)


def test_retention_agrees_with_pandas(spark):
    rng = np.random.default_rng(2)
    rows = []
    for c in range(40):
        t0 = datetime(2026, 6, 1) + timedelta(days=int(rng.integers(0, 60)))
        for _ in range(int(rng.integers(1, 12))):
            rows.append((f"c{c}", t0 + timedelta(days=float(rng.exponential(20)))))
    as_of = date(2026, 9, 1)
    got = {k: v[2] for k, v in _cells(cohorts.retention_matrix(spark.createDataFrame(rows, DDL), as_of, "week", 8)).items()}
    pdf = pd.DataFrame(rows, columns=["customer_id", "event_ts"])
    pdf = pdf[pdf.event_ts < pd.Timestamp(as_of)]
    pdf["wk"] = (pdf.event_ts.dt.normalize() - pd.to_timedelta(pdf.event_ts.dt.weekday, unit="D")).dt.date
    first = pdf.groupby("customer_id").wk.min().rename("cohort")
    pdf = pdf.join(first, on="customer_id")
    pdf["period"] = pdf.apply(lambda r: (r.wk - r.cohort).days // 7, axis=1)
    size = first.value_counts()
    act = pdf[pdf.period <= 8].groupby(["cohort", "period"]).customer_id.nunique()
    expected = {(c, int(p)): n / size[c] for (c, p), n in act.items()}
    assert got.keys() == expected.keys() and len(expected) > 20
    for k, v in expected.items():
        assert got[k] == pytest.approx(v), k
