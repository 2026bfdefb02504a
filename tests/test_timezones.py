"""Time zones: naive source timestamps read in their configured zone, one calendar zone for every
day seglake derives, and a caller's (a notebook's) session time zone left as it was.

Expected instants and days come from Python's ``zoneinfo`` (the IANA database), not from Spark.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from pyspark.sql import functions as F

from conftest import make_cfg
from seglake.core import tables, timezones
from seglake.core.config import ConfigError
from seglake.core.context import JobContext
from seglake.core.runner import run_job, run_stage
from seglake.stages import clean
from test_clean import bronze_df, raw

SESSION_TZ = "spark.sql.session.timeZone"
NY, BERLIN, TOKYO = "America/New_York", "Europe/Berlin", "Asia/Tokyo"


def _micros(wall: str, zone: str) -> int:
    """Epoch microseconds of the naive wall-clock text ``wall`` in ``zone`` (fold=0: in a repeated
    hour the earlier instant; in a skipped hour the offset before the change, i.e. moved forward)."""
    local = datetime.fromisoformat(wall).replace(tzinfo=ZoneInfo(zone))
    return (local.astimezone(timezone.utc) - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(microseconds=1)


@pytest.fixture
def session_zone(spark):
    """Set the session time zone as a notebook user would; restored after the test."""
    before = spark.conf.get(SESSION_TZ)
    yield lambda zone: spark.conf.set(SESSION_TZ, zone)
    spark.conf.set(SESSION_TZ, before)


CASES = [
    ("2026-07-01 09:15:00", NY),            # summer (EDT, -4)
    ("2026-01-15 09:15:00", NY),            # winter (EST, -5)
    ("2026-03-08 02:30:00", NY),            # skipped hour (clocks forward): moved forward
    ("2026-11-01 01:30:00", NY),            # repeated hour (clocks back): the earlier instant
    ("2026-10-25 02:30:00", BERLIN),        # repeated hour in Europe
    ("2026-08-01T23:59:59.250", TOKYO),
    ("2026-08-01 12:00:00", "UTC"),
]


@pytest.mark.parametrize("notebook_zone", ["UTC", "Pacific/Chatham"])
def test_naive_timestamps_are_read_in_their_zone_whatever_the_session_zone(spark, session_zone, notebook_zone):
    session_zone(notebook_zone)
    df = spark.createDataFrame(CASES + [("2026-08-01T12:00:00+02:00", NY), ("1785585600000", TOKYO)],
                               "s STRING, zone STRING")
    got = [r["us"] for r in df.select(F.unix_micros(clean.parse_event_ts(F.col("s"), F.col("zone"))).alias("us"))
           .collect()]
    want = [_micros(wall, zone) for wall, zone in CASES]
    want += [_micros("2026-08-01T10:00:00", "UTC"), 1785585600000 * 1000]   # offsets and epochs: never shifted
    assert got == want


def test_standardize_reads_each_source_in_its_configured_zone(spark):
    from conftest import REPO

    std = clean.load_standards(REPO / "conf" / "standardize.yaml")
    cfg = make_cfg("/tmp/unused", time={"naive_zones": {"offline": BERLIN, "default": NY}})
    zones = timezones.naive_zones(cfg, std.sources.values())
    assert zones == {"offline": BERLIN, "default": NY}
    records = [raw(event_id="pos", source="store", event_ts="2026-07-01 09:00:00"),       # store -> offline
               raw(event_id="web", source="web", event_ts="2026-07-01 09:00:00"),         # default
               raw(event_id="utc", source="offline", event_ts="2026-07-01T09:00:00Z")]    # has an offset
    out = clean.standardize(bronze_df(spark, records), std, "k", datetime(2026, 11, 1, tzinfo=timezone.utc),
                            naive_zones=zones)
    got = {r["event_id"]: r["us"] for r in out.select("event_id", F.unix_micros("event_ts").alias("us")).collect()}
    assert got == {"pos": _micros("2026-07-01 09:00:00", BERLIN), "web": _micros("2026-07-01 09:00:00", NY),
                   "utc": _micros("2026-07-01 09:00:00", "UTC")}


def test_bad_zone_settings_are_clear_config_errors():
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        timezones.calendar_zone(make_cfg("/tmp/unused", time={"zone": "Mars/Olympus"}))
    with pytest.raises(ConfigError, match="unknown source 'kiosk'"):
        timezones.naive_zones(make_cfg("/tmp/unused", time={"naive_zones": {"kiosk": BERLIN}}), ["web", "offline"])
    with pytest.raises(ConfigError, match="time.naive_zones.offline"):
        timezones.naive_zones(make_cfg("/tmp/unused", time={"naive_zones": {"offline": "CEST+2"}}), ["offline"])


def test_a_job_runs_in_the_calendar_zone_and_gives_the_notebook_its_zone_back(spark, session_zone, lakehouse):
    session_zone("America/Los_Angeles")
    seen = []
    cfg = make_cfg(lakehouse, time={"zone": TOKYO})
    run_stage(JobContext(spark, cfg), "probe", lambda ctx: seen.append(ctx.spark.conf.get(SESSION_TZ)))
    assert seen == [TOKYO] and spark.conf.get(SESSION_TZ) == "America/Los_Angeles"

    def fails(ctx):
        raise RuntimeError("boom")
    with pytest.raises(Exception, match="boom"):
        run_stage(JobContext(spark, cfg), "probe", fails)
    assert spark.conf.get(SESSION_TZ) == "America/Los_Angeles"
    # a session that is already active keeps its zone when seglake asks for a session
    from seglake.core.spark import get_spark
    assert get_spark(cfg) is spark and spark.conf.get(SESSION_TZ) == "America/Los_Angeles"


def test_event_date_and_as_of_are_days_of_the_calendar_zone(spark, session_zone, lakehouse):
    """Clean under time.zone Asia/Tokyo, started from a notebook in another zone: event_date is the
    Tokyo date of each instant, and the default as-of is the Tokyo day after the last event."""
    session_zone("America/Los_Angeles")
    instants = ["2026-08-01T14:59:59Z", "2026-08-01T15:00:00Z", "2026-08-02T23:30:00-07:00"]
    cfg = make_cfg(lakehouse, time={"zone": TOKYO})
    tables.append(bronze_df(spark, [raw(event_id=f"e{i}", event_ts=t) for i, t in enumerate(instants)]),
                  cfg, "bronze.events_raw")
    run_job(JobContext(spark, cfg, args={"skip_docs": True}), "clean")
    got = {r["event_id"]: r["event_date"] for r in tables.read(spark, cfg, "silver.events").collect()}
    want = {f"e{i}": datetime.fromisoformat(t.replace("Z", "+00:00")).astimezone(ZoneInfo(TOKYO)).date()
            for i, t in enumerate(instants)}
    assert got == want == {"e0": date(2026, 8, 1), "e1": date(2026, 8, 2), "e2": date(2026, 8, 3)}
    ctx = JobContext(spark, cfg)
    with timezones.job_zone(spark, cfg):
        assert ctx.resolve_as_of() == date(2026, 8, 4)
    assert spark.conf.get(SESSION_TZ) == "America/Los_Angeles"
