"""The same input gives the same tables on any partitioning: bronze rewritten in a shuffled order
across seven files, then clean → journeys run with 5 shuffle partitions (no adaptive coalescing,
so 5 tasks really run) must give, row for row, the tables of the chain's run (2 shuffle
partitions, bronze as ingest wrote it). A tie-break missing from any ordering (a window's
``row_number``, a first/last, an approximate percentile) shows here as a changed row.

Values are compared exactly, but for floating-point numbers: a sum or mean of doubles depends on
the order of its terms, so 5 tasks can give a last digit other than 2 tasks do (seen here in
features, their scaling and segment health: 1e-16 relative). Those are compared to 1e-12
relative; every count, key, date, label and membership must be identical.
"""
from __future__ import annotations

import math
import shutil

import pytest
from pyspark.sql import functions as F

from conftest import CHAIN, CHAIN_ARGS, make_cfg
from killing import changed_tables, delta_tables, rows
from seglake.core import tables
from seglake.core.context import JobContext
from seglake.core.runner import run_job

pytestmark = pytest.mark.slow
#: per-run logs (run ids and clocks only)
SKIP_TABLES = {"ops.run_log", "ops.job_leases", "ops.identity_runs"}
SHUFFLED = {"spark.sql.shuffle.partitions": "5", "spark.sql.adaptive.coalescePartitions.enabled": "false"}


def _same(a: tuple, b: tuple) -> bool:
    def close(x: str, y: str) -> bool:
        if x == y:
            return True
        try:
            return math.isclose(float(x), float(y), rel_tol=1e-12, abs_tol=1e-15)
        except ValueError:
            return False
    return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))


def test_shuffled_input_and_other_shuffle_partitions_give_the_same_tables(spark, tmp_path, chain_lakes):
    before, reference = chain_lakes["ingest"], chain_lakes[CHAIN[-1]]
    lake = tmp_path / "lake"
    shutil.copytree(before, lake)
    cfg = make_cfg(lake, spark={"shuffle_partitions": 5})
    bronze = tables.read(spark, cfg, "bronze.events_raw")
    n = bronze.count()
    (bronze.repartition(7, F.rand(seed=3)).sortWithinPartitions(F.rand(seed=4))
     .write.format("delta").mode("overwrite").save(str(lake / "bronze" / "events_raw")))
    assert tables.read(spark, cfg, "bronze.events_raw").inputFiles().__len__() == 7
    previous = {k: spark.conf.get(k, None) for k in SHUFFLED}
    try:
        for stage in CHAIN[1:]:
            for k, v in SHUFFLED.items():
                spark.conf.set(k, v)
            run_job(JobContext(spark, cfg, args=CHAIN_ARGS.get(stage, {})), stage)
    finally:
        for k, v in previous.items():
            spark.conf.unset(k) if v is None else spark.conf.set(k, v)

    assert tables.read(spark, cfg, "bronze.events_raw").count() == n
    assert delta_tables(lake) == delta_tables(reference)
    compared = [t for t in changed_tables(before, lake, reference) if t not in SKIP_TABLES]
    assert len(compared) > 10
    differ = {}
    for t in compared:
        got, want = rows(spark, lake, t), rows(spark, reference, t)
        if len(got) != len(want) or not all(_same(g, w) for g, w in zip(got, want)):
            differ[t] = (len(got), len(want), sorted(set(got) - set(want))[:2], sorted(set(want) - set(got))[:2])
    assert not differ, f"tables that depend on the partitioning: {differ}"
