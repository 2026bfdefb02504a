"""silver.enriched_events: built once, kept up to date incrementally, equal to a full rebuild.

The shared generated landing data is split by day into two deliveries. Delivery 1 runs
ingest -> clean -> identity -> sessions; delivery 2 lands, and the same four jobs run
again. The second sessions run must rewrite only the customers with new events or changed
identities, and both tables must then equal, row for row, what a from-scratch build of the
same silver events and identity map gives (sessionize itself is checked against a pandas
loop in test_sessions.py). A run killed between the delete and the append must converge.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from conftest import make_cfg
from seglake.core import tables
from seglake.core.context import JobContext
from seglake.core.contracts import ENRICHED_EVENTS, SESSIONS, customer_events
from seglake.core.runner import run_job
from seglake.stages import enriched
from seglake.stages import sessions as S

pytestmark = pytest.mark.slow


def _deliver(src: Path, dst: Path, days: set[str]) -> None:
    for fmt_dir in (src / "landing").iterdir():
        for day in fmt_dir.iterdir():
            if day.name in days:
                shutil.copytree(day, dst / fmt_dir.name / day.name)


def _comparable(df, cols):
    """``cols`` of ``df``, maps as JSON (set operations and sorting need no map values)."""
    types = dict(df.dtypes)
    return df.select(*[F.to_json(c).alias(c) if types[c].startswith("map") else F.col(c) for c in cols])


def _rows(df, cols):
    return sorted(tuple(r) for r in _comparable(df, cols).collect())


def _from_scratch(spark, cfg):
    """The tables a full build gives for the current silver events and identity map."""
    ev = enriched.build(customer_events(spark, cfg, columns=enriched.EVENT_COLUMNS), cfg)
    sess = S.session_table(ev, S.states_for(cfg), cfg["sessions"]["page_event_types"])
    return ev, sess


STEPS = ("ingest", "clean", "identity", "sessions")


def _run(spark, cfg, steps=STEPS) -> dict:
    # one run id per job run; no test here reads clean's Data Docs (the shared pipeline builds them)
    return {job: run_job(JobContext(spark, cfg, args={"skip_docs": True} if job == "clean" else {}), job).summary
            for job in steps}


@pytest.fixture(scope="module")
def two_deliveries(spark, pipeline_through, tmp_path_factory):
    pipeline_through.pipeline.generate()  # the shared generated landing files (no stage runs)
    gen_dir = pipeline_through.pipeline.gen_dir
    root = tmp_path_factory.mktemp("enriched")
    landing = root / "landing"
    landing.mkdir()
    days = sorted({d.name for f in (gen_dir / "landing").iterdir() for d in f.iterdir()})
    cfg = make_cfg(root / "lakehouse", paths={"landing": str(landing)})
    cut1, cut2 = len(days) * 2 // 3, len(days) * 5 // 6
    _deliver(gen_dir, landing, set(days[:cut1]))
    first = _run(spark, cfg)
    first_version = tables.version(spark, cfg, ENRICHED_EVENTS)
    _deliver(gen_dir, landing, set(days[cut1:cut2]))
    second = _run(spark, cfg)
    # the last days land later: the kill test ingests them
    return cfg, first, second, first_version, (gen_dir, landing, set(days[cut2:]))


def test_incremental_refresh_rewrites_only_affected_customers(spark, two_deliveries):
    cfg, first, second, first_version, _ = two_deliveries
    assert first["sessions"]["refresh"] == "full"
    assert second["sessions"]["refresh"] == "incremental"
    rewritten = second["sessions"]["customers_rewritten"]
    # customers whose rows differ between the first build and now: each must have been rewritten
    cols = list(enriched.COLUMNS)
    before = _comparable(tables.read(spark, cfg, ENRICHED_EVENTS, version=first_version), cols)
    after = _comparable(tables.read(spark, cfg, ENRICHED_EVENTS), cols)
    changed = (before.exceptAll(after).unionByName(after.exceptAll(before))
               .select("customer_id").distinct().count())
    assert 0 < changed <= rewritten
    # ... and customers with no new event and no identity change were left alone
    assert rewritten < second["sessions"]["customers"]


def test_incremental_tables_equal_a_full_rebuild(spark, two_deliveries):
    cfg = two_deliveries[0]
    want_ev, want_sess = _from_scratch(spark, cfg)
    got_ev = tables.read(spark, cfg, ENRICHED_EVENTS)
    assert _rows(got_ev, enriched.COLUMNS) == _rows(want_ev, enriched.COLUMNS)
    got_sess = tables.read(spark, cfg, SESSIONS)
    assert _rows(got_sess, S.SESSION_COLUMNS) == _rows(want_sess, S.SESSION_COLUMNS)
    assert enriched.is_fresh(spark, cfg)


def test_maintenance_of_silver_rewrites_nobody_then_noop(spark, two_deliveries):
    cfg = two_deliveries[0]
    silver_before = tables.version(spark, cfg, "silver.events")
    run_job(JobContext(spark, cfg, args={"table": ["silver.events"]}), "maintain")  # OPTIMIZE: a new version
    assert tables.version(spark, cfg, "silver.events") > silver_before
    assert not enriched.is_fresh(spark, cfg)
    again = _run(spark, cfg, ("sessions",))["sessions"]
    assert again["refresh"] == "incremental" and again["customers_rewritten"] == 0  # same rows
    assert enriched.is_fresh(spark, cfg)  # the empty append recorded the new state
    before = tables.version(spark, cfg, ENRICHED_EVENTS)
    assert _run(spark, cfg, ("sessions",))["sessions"]["refresh"] == "noop"
    assert tables.version(spark, cfg, ENRICHED_EVENTS) == before


def test_a_run_killed_between_delete_and_append_converges(spark, two_deliveries, monkeypatch):
    cfg, *_, (gen_dir, landing, last_days) = two_deliveries
    _deliver(gen_dir, landing, last_days)
    _run(spark, cfg, ("ingest", "clean", "identity"))
    state = enriched.recorded_state(spark, cfg)
    n_before = tables.read(spark, cfg, ENRICHED_EVENTS).count()
    real_write = enriched._write

    def killed(df, cfg_, table, *a, **k):
        if table == ENRICHED_EVENTS:
            raise RuntimeError("killed")
        return real_write(df, cfg_, table, *a, **k)

    monkeypatch.setattr(enriched, "_write", killed)
    with pytest.raises(RuntimeError, match="killed"):
        enriched.refresh(spark, cfg)
    assert tables.read(spark, cfg, ENRICHED_EVENTS).count() < n_before  # the delete committed
    assert enriched.recorded_state(spark, cfg) == state  # ... but the state did not move
    assert not enriched.is_fresh(spark, cfg)
    monkeypatch.setattr(enriched, "_write", real_write)
    done = enriched.refresh(spark, cfg)
    assert done["mode"] == "full" and "interrupted" in done["reason"]
    want_ev, want_sess = _from_scratch(spark, cfg)
    assert _rows(tables.read(spark, cfg, ENRICHED_EVENTS), enriched.COLUMNS) == _rows(want_ev, enriched.COLUMNS)
    assert _rows(tables.read(spark, cfg, SESSIONS), S.SESSION_COLUMNS) == _rows(want_sess, S.SESSION_COLUMNS)
    assert enriched.is_fresh(spark, cfg)


def test_an_erasure_in_silver_forces_a_full_rebuild(spark, two_deliveries):
    cfg = two_deliveries[0]
    from delta.tables import DeltaTable
    one = tables.read(spark, cfg, "silver.events").where("consent").select("event_key").first()[0]
    DeltaTable.forPath(spark, cfg.table_path("silver.events")).delete(F.col("event_key") == one)
    done = enriched.refresh(spark, cfg)
    assert done["mode"] == "full" and "DELETE" in done["reason"]
    assert tables.read(spark, cfg, ENRICHED_EVENTS).where(F.col("event_key") == one).count() == 0


def test_readers_refresh_a_stale_table(spark, two_deliveries):
    cfg = two_deliveries[0]
    assert enriched.is_fresh(spark, cfg)
    ev = enriched.read(spark, cfg, event_types=("purchase",), columns=("event_type",))
    assert ev.columns == ["customer_id", "event_type"]
    assert {r[0] for r in ev.select("event_type").distinct().collect()} == {"purchase"}


def test_silver_commits_missing_from_the_log_force_a_full_rebuild(spark, cfg, monkeypatch):
    """A silver.events commit no longer in the Delta log (log retention) may have deleted rows:
    the refresh cannot know, so it rebuilds."""
    ops = {1: "WRITE", 2: "MERGE", 4: "MERGE"}   # version 3 is gone

    def commits(spark_, cfg_, table, since=-1, until=None, newest_first=True):
        for v in sorted(ops, reverse=newest_first):
            if since < v <= until:
                yield {"version": v, "operation": ops[v], "operationParameters": {"mode": "Append"},
                       "operationMetrics": {"numTargetRowsInserted": "5"}, "userMetadata": None}
    monkeypatch.setattr(tables, "commits", commits)
    assert enriched._silver_lost_rows(spark, cfg, since=0, until=2) is None
    assert "3..3 are no longer in the Delta log" in enriched._silver_lost_rows(spark, cfg, since=0, until=4)


def test_two_readers_at_once_refresh_it_once(spark, chain_lakes, tmp_path):
    """Jobs of a chain side by side (runner.parallel_stages) both read through enriched.read: the
    stale table is brought up to date by one of them, the other finds it done; the table equals
    a build from scratch."""
    import threading

    lake = tmp_path / "lake"
    shutil.copytree(chain_lakes["identity"], lake)          # identity done, sessions never ran
    cfg = make_cfg(lake)
    start = threading.Barrier(2)
    modes: list[str] = []

    def reader() -> None:
        start.wait()
        modes.append(enriched.refresh(spark, cfg)["mode"])

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(modes) == ["full", "noop"]
    cols = enriched.build(customer_events(spark, cfg, columns=enriched.EVENT_COLUMNS), cfg).columns
    want, _ = _from_scratch(spark, cfg)
    got = tables.read(spark, cfg, ENRICHED_EVENTS)
    assert got.count() == want.count() > 0
    assert _rows(got, cols) == _rows(want, cols)
