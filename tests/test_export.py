"""Activation (`seglake run export`) on planted gold tables: outbox keys, send times in a real time
zone, quiet hours, suppression, frequency caps, webhook delivery through faults and a kill, files.

Every expectation is computed here in plain Python (hashlib, zoneinfo, pandas) from the planted
rows, not by the export code."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from conftest import make_cfg
from pyspark.sql import functions as F

from seglake.core import faults, tables
from seglake.core.context import JobContext
from seglake.core.contracts import (CONSENT_LEDGER, CUSTOMER_FEATURES, DEAD_LETTER, IDENTITY_MAP, OUTBOX,
                                    SEGMENT_CHANGES, SEGMENT_MEMBERSHIP, SEGMENT_TRIGGERS)
from seglake.core.runner import run_job
from seglake.devtools.receiver import Receiver
from seglake.stages.export import settings as export_settings
from seglake.stages.export.base import DestinationConfigError

UTC = timezone.utc
ZONE = "America/New_York"
TZ = ZoneInfo(ZONE)
AS_OFS = [date(2026, 9, 10), date(2026, 9, 12), date(2026, 9, 15)]
SEGMENTS = ["cart_abandoners", "inactive", "lapsed_purchasers", "vip"]
TRIGGERS = ["abandoned_cart_email", "re_engaged", "repeat_buyer"]
CUSTOMERS = [f"c_{i:03d}" for i in range(60)]
WITHDRAWN = {"c_000", "c_001", "c_002"}
UNSUBSCRIBED = {"c_003", "c_004", "c_005", "c_006"}
EMAIL_SEGMENTS = ["cart_abandoners", "inactive", "lapsed_purchasers"]
EMAIL_TRIGGERS = ["abandoned_cart_email", "re_engaged"]
PRIORITY = ["abandoned_cart_email", "re_engaged", "cart_abandoners"]
SECRET = "test-webhook-secret"
#: what the receiver answers to the first requests of a delivery: 500, a dropped connection, 429,
#: a reply after the client's 1 s timeout (applied), a connection dropped after applying, 503 (the
#: two tasks' batches share them in any order: attempts_per_run 7 lets one batch meet all six)
FAULTS = ("500", "drop", "429:0.1", "timeout:2", "drop-after-apply", "503")


def _planted() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(5)
    changes, features, members, triggers = [], [], [], []
    for i, d in enumerate(AS_OFS):
        prev = AS_OFS[i - 1] if i else None
        for c in CUSTOMERS:
            features.append((c, d, None if rng.random() < 0.2 else int(rng.integers(0, 24))))
            for s in SEGMENTS:
                if rng.random() < 0.45:
                    changes.append((c, s, "entered" if rng.random() < 0.7 else "exited", d, prev, "planted"))
                if rng.random() < 0.5:
                    members.append((c, s, d, "planted"))
    for c in CUSTOMERS:
        for j in range(int(rng.integers(0, 5))):
            fired = datetime(2026, 9, 9, tzinfo=UTC) + timedelta(minutes=int(rng.integers(0, 7 * 1440)))
            triggers.append((TRIGGERS[int(rng.integers(0, 3))], c, fired - timedelta(minutes=15), f"e-{c}-{j}",
                             fired - timedelta(minutes=1), fired, "v1-abc", "b1"))
    return {
        "changes": pd.DataFrame(changes, columns=["customer_id", "segment", "change", "as_of_date",
                                                  "previous_as_of_date", "reason"]),
        "features": pd.DataFrame(features, columns=["customer_id", "as_of_date", "peak_hour"]),
        "members": pd.DataFrame(members, columns=["customer_id", "segment", "as_of_date", "reason"]),
        "triggers": pd.DataFrame(triggers, columns=["trigger", "customer_id", "event_ts", "event_key", "due_ts",
                                                    "fired_at", "rule_version", "batch_id"]),
    }


def _rows(df: pd.DataFrame) -> list[tuple]:
    return [tuple(v.to_pydatetime() if isinstance(v, pd.Timestamp) else v for v in r)
            for r in df.itertuples(index=False)]


def _write(spark, cfg, planted, root) -> None:
    ch = planted["changes"]
    tables.overwrite(spark.createDataFrame(
        [tuple(r) for r in ch.itertuples(index=False)],
        "customer_id STRING, segment STRING, change STRING, as_of_date DATE, previous_as_of_date DATE, reason STRING"),
        cfg, SEGMENT_CHANGES)
    tables.overwrite(spark.createDataFrame(
        [(c, d, None if pd.isna(h) else int(h)) for c, d, h in planted["features"].itertuples(index=False)],
        "customer_id STRING, as_of_date DATE, peak_hour INT"), cfg, CUSTOMER_FEATURES)
    tables.overwrite(spark.createDataFrame([tuple(r) for r in planted["members"].itertuples(index=False)],
                                           "customer_id STRING, segment STRING, as_of_date DATE, reason STRING"),
                     cfg, SEGMENT_MEMBERSHIP)
    tables.overwrite(spark.createDataFrame(
        _rows(planted["triggers"]),
        "trigger STRING, customer_id STRING, event_ts TIMESTAMP, event_key STRING, due_ts TIMESTAMP, "
        "fired_at TIMESTAMP, rule_version STRING, batch_id STRING"), cfg, SEGMENT_TRIGGERS)
    tables.overwrite(spark.createDataFrame([("user_id", f"u{c}", c) for c in CUSTOMERS],
                                           "identifier_type STRING, identifier STRING, customer_id STRING"),
                     cfg, IDENTITY_MAP)
    tables.overwrite(spark.createDataFrame(
        [("r1", "user_id", f"u{c}", c, "withdraw", datetime(2026, 9, 1, tzinfo=UTC), "cli",
          datetime(2026, 9, 1, tzinfo=UTC), "r1") for c in sorted(WITHDRAWN)],
        "request_id STRING, identifier_type STRING, identifier STRING, customer_id STRING, action STRING, "
        "effective_at TIMESTAMP, source STRING, recorded_at TIMESTAMP, run_id STRING"), cfg, CONSENT_LEDGER)
    pd.DataFrame({"customer_id": sorted(UNSUBSCRIBED)}).to_csv(root / "unsubscribed_email.csv", index=False)


def _destinations(root, url: str, extra_email: str = "") -> str:
    delete_url = url.rsplit("/", 1)[0] + "/delete"
    path = root / "destinations.yaml"
    path.write_text(f"""
destinations:
  email:
    type: webhook
    channel: email
    segments: {json.dumps(EMAIL_SEGMENTS)}
    triggers: {json.dumps(EMAIL_TRIGGERS)}
    send_time: peak_hour
    url: {url}
    secret_env: TEST_WEBHOOK_SECRET
    batch_size: 20
    timeout_seconds: 1
    attempts_per_run: 7
    max_attempts: 8
    backoff_base_seconds: 0.01
    backoff_max_seconds: 0.5
    delete_url: {delete_url}{extra_email}
  audiences:
    type: files
    segments: all
    triggers: []
    keep_as_of: 2
policies:
  frequency_caps: {{email: {{max_messages: 3, window_days: 7}}}}
  priority: {json.dumps(PRIORITY)}
  quiet_hours: {{start: "21:00", end: "08:00", channels: [email]}}
  default_send_hour: 10
  unsubscribed: {{email: {root / 'unsubscribed_email.csv'}}}
""")
    return str(path)


# ----------------------------------------------------------------- the independent expectation
def _sha(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def _quiet(t: datetime) -> datetime:
    loc = t.astimezone(TZ)
    if loc.hour >= 21:
        return datetime.combine(loc.date() + timedelta(days=1), time(8), TZ).astimezone(UTC)
    if loc.hour < 8:
        return datetime.combine(loc.date(), time(8), TZ).astimezone(UTC)
    return t


def expected_email(planted) -> pd.DataFrame:
    """key, customer_id, kind, name, change, scheduled_at, suppressed reason of every email message."""
    peaks = {(c, d): h for c, d, h in planted["features"].itertuples(index=False)}
    rows = []
    for c, s, change, d, _, _ in planted["changes"].itertuples(index=False):
        if s not in EMAIL_SEGMENTS:
            continue
        base = datetime.combine(d, time(0), TZ).astimezone(UTC)
        h = peaks.get((c, d))
        if h is None or pd.isna(h):
            at = datetime.combine(d, time(10), TZ).astimezone(UTC)
        else:
            at = datetime.combine(base.date(), time(int(h)), UTC)
            at = at if at >= base else at + timedelta(days=1)
        rows.append((_sha("email", c, "segment", s, change, d.isoformat()), c, "segment", s, change, d, _quiet(at)))
    for t, c, _, key, _, fired, _, _ in planted["triggers"].itertuples(index=False):
        if t in EMAIL_TRIGGERS:
            fired = fired.to_pydatetime() if hasattr(fired, "to_pydatetime") else fired
            rows.append((_sha("email", c, "trigger", t, "fired", key), c, "trigger", t, "fired", None, _quiet(fired)))
    out = pd.DataFrame(rows, columns=["key", "customer_id", "kind", "name", "change", "as_of", "scheduled_at"])
    out["suppressed"] = np.where(out.customer_id.isin(WITHDRAWN), "consent_withdrawn",
                                 np.where(out.customer_id.isin(UNSUBSCRIBED), "unsubscribed", None))
    return out


def _outbox(spark, cfg) -> pd.DataFrame:
    rows = tables.read(spark, cfg, OUTBOX).collect()   # a few hundred planted rows
    df = pd.DataFrame([r.asDict() for r in rows])
    df["scheduled_at"] = [t.replace(tzinfo=None) for t in df.scheduled_at]
    return df


@pytest.fixture(scope="module")
def planted():
    return _planted()


@pytest.fixture
def export_lake(spark, tmp_path, planted, monkeypatch):
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    receiver = Receiver(secret=SECRET)
    receiver.start()
    lake = tmp_path / "lake"
    cfg = make_cfg(lake, time={"zone": ZONE},
                   export={"destinations_file": _destinations(tmp_path, receiver.url)})
    _write(spark, cfg, planted, tmp_path)
    yield spark, cfg, receiver, tmp_path
    receiver.stop()


def _export(spark, cfg, as_of=None, **args):
    ctx = JobContext(spark, cfg, as_of=as_of, args=args)
    return run_job(ctx, "export").summary


def _utc_naive(t: datetime) -> datetime:
    """The session-zone-free wall clock Spark gives back for a UTC instant, as the tests compare it."""
    return t.astimezone(UTC).replace(tzinfo=None)


@pytest.mark.slow
def test_outbox_keys_send_times_suppression_and_caps_match_an_independent_computation(export_lake, planted):
    spark, cfg, receiver, _ = export_lake
    spark.conf.set("spark.sql.session.timeZone", "UTC")   # collect() renders instants in UTC
    # run 1: the changes of the first two as-of dates (and firings before the end of 2026-09-12,
    # New York time); nothing is due on 2026-09-01
    first = _export(spark, cfg, as_of=date(2026, 9, 12), now="2026-09-01T00:00:00Z")
    assert first["email due"] == 0 and receiver.received_keys() == set()
    # run 2: everything, due on 2026-09-30, through a receiver scripted to fail the first requests
    receiver.queue(*FAULTS)
    second = _export(spark, cfg, now="2026-09-30T00:00:00Z")
    exp = expected_email(planted)
    box = _outbox(spark, cfg)
    email = box[box.destination == "email"].set_index("idempotency_key")
    assert set(email.index) == set(exp.key)
    assert first["messages_added"] + second["messages_added"] == len(box)

    # send times: peak hour (UTC) at or after the as-of day's New York midnight, 10:00 local
    # without one, triggers at once; then out of 21:00-08:00 New York time
    want = exp.set_index("key")
    got_at = email.scheduled_at.to_dict()
    wrong = [k for k, t in want.scheduled_at.items() if got_at[k] != _utc_naive(t)]
    assert not wrong, [(k[:8], got_at[k], want.scheduled_at[k]) for k in wrong[:5]]
    assert all(not (21 <= t.astimezone(TZ).hour or t.astimezone(TZ).hour < 8) for t in want.scheduled_at)

    # suppression: withdrawn consent and the email unsubscribe list, with their reasons
    sup = email[email.state == "suppressed"].reason.to_dict()
    assert sup == {k: r for k, r in want.suppressed.items() if r is not None}

    # caps: in any rolling 7 days at most 3 entered/fired messages per customer are not capped
    live = email[(email.state.isin(["pending", "delivered", "retrying"])) & email.change.isin(["entered", "fired"])]
    for cust, msgs in live.groupby("customer_id"):
        times = sorted(msgs.scheduled_at)
        for t in times:
            in_window = sum(1 for u in times if t - timedelta(days=7) < u <= t)
            assert in_window <= 3, (cust, t, in_window)
    capped = email[email.state == "capped"]
    assert len(capped) > 20            # the planted data makes the cap bind often
    assert (email[email.change == "exited"].state != "capped").all()
    # when the cap binds, the higher priorities went first within the run
    rank = {n: i for i, n in enumerate(PRIORITY)}

    def prio(row):
        return rank.get(row["name"], len(PRIORITY) + (0 if row["kind"] == "trigger" else 1))

    for _, m in capped.iterrows():
        same = email[(email.customer_id == m.customer_id) & (email.created_run_id == m.created_run_id)
                     & email.change.isin(["entered", "fired"]) & (email.state != "capped")
                     & (email.state != "suppressed")]
        for _, a in same.iterrows():
            assert (prio(a), a.scheduled_at, a.name) < (prio(m), m.scheduled_at, m.name), (a.name[:8], m.name[:8])

    # delivery: every due, allowed message reached the receiver exactly once by key, through faults
    sendable = set(email[email.state.isin(["delivered", "pending", "retrying", "dead"])].index)
    assert (email.loc[list(sendable)].state == "delivered").all()
    assert receiver.received_keys() == sendable
    assert second["email delivered"] == len(sendable)
    # the faults forced retries: a timed-out and an applied-then-dropped batch (<= 20 each) came twice
    assert 0 < receiver.duplicates <= 2 * 20
    dups = receiver.duplicates
    # consent withdrawn: removed from each destination once (the webhook got its deletion call)
    assert receiver.deletions == [sorted(WITHDRAWN)]
    removals = tables.read(spark, cfg, "ops.export_removals").select("destination", "customer_id").collect()
    assert sorted(tuple(r) for r in removals) == sorted((d, c) for d in ("email", "audiences") for c in WITHDRAWN)
    # a rerun adds nothing and sends nothing
    again = _export(spark, cfg, now="2026-09-30T00:00:00Z")
    assert again["messages_added"] == 0 and again["email due"] == 0
    assert receiver.received_keys() == sendable and receiver.duplicates == dups


@pytest.mark.slow
def test_audience_extracts_match_membership_minus_withdrawn_with_checksums(export_lake, planted):
    spark, cfg, _, _ = export_lake
    _export(spark, cfg, destination="audiences", now="2026-09-30T00:00:00Z")
    root = os.path.join(cfg.lakehouse, "_exports", "audiences")
    kept = sorted(os.listdir(root))
    assert kept == [f"as_of={d}" for d in AS_OFS[-2:]]          # keep_as_of: 2
    members = planted["members"]
    for d in AS_OFS[-2:]:
        folder = os.path.join(root, f"as_of={d}")
        manifest = json.loads(open(os.path.join(folder, "manifest.json")).read())
        want = members[(members.as_of_date == d) & ~members.customer_id.isin(WITHDRAWN)]
        assert manifest["as_of"] == str(d)
        assert set(manifest["segments"]) == set(want.segment)
        for seg, info in manifest["segments"].items():
            expect = sorted(want[want.segment == seg].customer_id)
            csv = pd.read_csv(os.path.join(folder, info["files"]["csv"]["file"]))
            par = pd.read_parquet(os.path.join(folder, info["files"]["parquet"]["file"]))
            assert list(csv.customer_id) == expect and list(par.customer_id) == expect
            assert info["rows"] == len(expect)
            for fmt in ("csv", "parquet"):
                data = open(os.path.join(folder, info["files"][fmt]["file"]), "rb").read()
                assert hashlib.sha256(data).hexdigest() == info["files"][fmt]["sha256"]
                assert len(data) == info["files"][fmt]["bytes"]
    # a customer erased later leaves every kept extract
    from seglake.stages.export import erase_customers
    gone = sorted(set(members.customer_id) - WITHDRAWN)[0]
    erase_customers(spark, cfg, [gone], "erase-test")
    for d in AS_OFS[-2:]:
        folder = os.path.join(root, f"as_of={d}")
        manifest = json.loads(open(os.path.join(folder, "manifest.json")).read())
        for info in manifest["segments"].values():
            assert gone not in set(pd.read_csv(os.path.join(folder, info["files"]["csv"]["file"])).customer_id)


@pytest.mark.slow
def test_a_killed_export_resends_only_unrecorded_chunks_and_every_key_arrives_once(export_lake, planted):
    spark, cfg, receiver, _ = export_lake
    cfg = cfg.with_overrides({"export": {"chunk_size": 80}})     # 3 chunks: the kill comes after the 2nd
    receiver.queue(*FAULTS)
    with faults.abort_at("export.after_deliver@2"):
        with pytest.raises(faults.Aborted):
            _export(spark, cfg, destination="email", now="2026-09-30T00:00:00Z")
    _export(spark, cfg, destination="email", now="2026-09-30T00:00:00Z")
    box = _outbox(spark, cfg)
    email = box[box.destination == "email"]
    sendable = set(email[email.state.isin(["delivered", "pending", "retrying", "dead"])].idempotency_key)
    assert (email[email.idempotency_key.isin(sendable)].state == "delivered").all()
    assert receiver.received_keys() == sendable
    assert receiver.duplicates > 0           # the chunk sent before the kill went again, absorbed by key
    assert not tables.exists(spark, cfg, DEAD_LETTER)


def test_a_4xx_goes_to_the_dead_letter_table_with_its_error(spark, tmp_path, planted, monkeypatch, capsys):
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", "not-the-receivers-secret")
    with Receiver(secret=SECRET) as receiver:       # every signature is wrong: 401, not retried
        cfg = make_cfg(tmp_path / "lake", time={"zone": ZONE},
                       export={"destinations_file": _destinations(tmp_path, receiver.url)})
        _write(spark, cfg, planted, tmp_path)
        summary = _export(spark, cfg, destination="email", now="2026-09-30T00:00:00Z")
        assert receiver.received_keys() == set() and receiver.bad_signatures > 0
    dead = tables.read(spark, cfg, DEAD_LETTER)
    assert dead.count() == summary["email dead"] > 0
    # the refused deletion call did not stop the run, and is not recorded as done: the next run retries
    assert summary["removed_withdrawn"]["email"] == "failed for 3, retried next run"
    # `seglake outbox status` shows them per destination
    from seglake.cli import main
    capsys.readouterr()
    assert main(["outbox", "status", "--lakehouse", cfg.lakehouse]) == 0
    header, row = capsys.readouterr().out.strip().splitlines()[:2]
    assert header.split()[0] == "destination" and "dead-lettered" in header.split()
    assert row.split()[0] == "email" and int(row.split()[header.split().index("dead-lettered")]) == summary["email dead"]
    assert not tables.exists(spark, cfg, "ops.export_removals") or \
        tables.read(spark, cfg, "ops.export_removals").where("destination = 'email'").count() == 0
    assert dead.where(~F.col("error").contains("401")).count() == 0


def test_dry_run_writes_and_sends_nothing(export_lake):
    spark, cfg, receiver, _ = export_lake
    summary = _export(spark, cfg, dry_run=True, now="2026-09-30T00:00:00Z")
    assert summary["dry_run"] and not tables.exists(spark, cfg, OUTBOX)
    added = {(r["destination"], r["state"]) for r in summary["would_add"]}
    assert ("email", "suppressed") in added and ("email", "capped") in added and ("audiences", "pending") in added
    assert receiver.received_keys() == set()


def test_destination_file_mistakes_are_one_sentence_naming_the_key(tmp_path):
    cfg = make_cfg(tmp_path / "lake")
    bad = tmp_path / "d.yaml"
    cases = {
        "destinations: {x: {type: webhok}}": "type must be one of webhook, postgres, files",
        "destinations: {x: {type: files, send_time: soon}}": "send_time must be one of",
        "policies: {frequency_cap: {}}": "unknown key 'frequency_cap' (did you mean 'frequency_caps'?)",
        "policies: {quiet_hours: {start: '25:00', end: '08:00'}}": "quiet_hours.start must be a time",
        "destinations: {x: {type: files, pth: /tmp}}": "unknown key 'pth' (did you mean 'path'?)",
    }
    from seglake.stages.export.job import build
    for text, message in cases.items():
        bad.write_text(text)
        with pytest.raises(DestinationConfigError, match=re.escape(message)):
            exp = export_settings.load(cfg, bad)
            for spec in exp.enabled():
                build(spec, cfg, exp)
    bad.write_text("destinations: {x: {type: files}}")
    with pytest.raises(DestinationConfigError, match="no destination named 'y'"):
        export_settings.load(cfg, bad).enabled("y")


@pytest.mark.slow
def test_export_of_the_shared_pipeline_sends_every_change_once(spark, pipeline_through, tmp_path, monkeypatch):
    """On real segment output (the shared e2e lakehouse, copied): one outbox row per segment change
    and destination, the extracts equal gold.segment_membership of the as-of, and the webhook
    receiver gets every due entered/exited change of its segments exactly once."""
    cfg0, _ = pipeline_through("segments")
    lake = tmp_path / "lake"
    shutil.copytree(cfg0.lakehouse, lake, ignore=shutil.ignore_patterns("_input", "_mlflow"))
    monkeypatch.setenv("TEST_WEBHOOK_SECRET", SECRET)
    changes = tables.read(spark, cfg0, SEGMENT_CHANGES).toPandas()       # a few thousand rows
    members = tables.read(spark, cfg0, SEGMENT_MEMBERSHIP).toPandas()
    as_of = max(changes.as_of_date)
    with Receiver(secret=SECRET) as receiver:
        path = tmp_path / "destinations.yaml"
        path.write_text(f"""
destinations:
  hook: {{type: webhook, channel: crm, segments: all, triggers: [], url: {receiver.url},
          secret_env: TEST_WEBHOOK_SECRET, batch_size: 200}}
  audiences: {{type: files, segments: all, triggers: []}}
""")
        cfg = make_cfg(lake, export={"destinations_file": str(path)})
        summary = _export(spark, cfg, now="2100-01-01T00:00:00Z")
        want = {_sha("hook", r.customer_id, "segment", r.segment, r.change, str(r.as_of_date))
                for r in changes.itertuples()}
        assert receiver.received_keys() == want and receiver.duplicates == 0
    assert summary["messages_added"] == 2 * len(changes) and summary["hook delivered"] == len(changes)
    folder = lake / "_exports" / "audiences" / f"as_of={as_of}"
    manifest = json.loads((folder / "manifest.json").read_text())
    now_members = members[members.as_of_date == as_of]
    assert {s: i["rows"] for s, i in manifest["segments"].items()} == now_members.segment.value_counts().to_dict()
    for seg, info in manifest["segments"].items():
        got = pd.read_parquet(folder / info["files"]["parquet"]["file"]).customer_id.tolist()
        assert got == sorted(now_members[now_members.segment == seg].customer_id)


def test_caps_per_channel_then_across_channels_and_exits_take_no_place(spark):
    from seglake.stages.export.outbox import apply_caps
    from seglake.stages.export.settings import Cap, Policies

    t0 = datetime(2026, 9, 10, 12, tzinfo=UTC)
    day = timedelta(days=1)
    rows = [  # key, customer, channel, change, priority, time
        ("e1", "A", "email", "entered", 0, t0 + day), ("e2", "A", "email", "entered", 1, t0 + day),
        ("e3", "A", "email", "exited", 0, t0 + day / 2), ("e4", "A", "email", "fired", 2, t0 + 2 * day),
        ("e5", "A", "email", "entered", 3, t0 + 3 * day),
        ("p1", "A", "push", "fired", 0, t0 + day), ("p2", "A", "push", "fired", 1, t0 + 2 * day),
        ("p3", "A", "push", "entered", 2, t0 + 4 * day),
        ("c1", "A", "crm", "entered", 0, t0 + day),            # no cap on crm: never counted, never capped
        ("b1", "B", "email", "entered", 1, t0 + day), ("b2", "B", "email", "entered", 0, t0 + 2 * day),
    ]
    new = spark.createDataFrame(
        [(k, c, ch, chg, p, t, "pending", None) for k, c, ch, chg, p, t in rows],
        "idempotency_key STRING, customer_id STRING, channel STRING, change STRING, priority INT, "
        "scheduled_at TIMESTAMP, state STRING, reason STRING")
    existing = spark.createDataFrame(
        [("B", "email", "entered", "delivered", t0 - 2 * day), ("B", "email", "fired", "pending", t0),
         ("B", "email", "entered", "delivered", t0 - 10 * day),     # outside every 7-day window
         ("B", "email", "exited", "delivered", t0), ("B", "email", "entered", "dead", t0)],   # not counted
        "customer_id STRING, channel STRING, change STRING, state STRING, scheduled_at TIMESTAMP")
    policies = Policies(caps={"email": Cap(3, 7), "push": Cap(3, 7), "all": Cap(4, 7)})
    got = {r["idempotency_key"]: (r["state"], r["reason"]) for r in apply_caps(new, existing, policies).collect()}
    capped = {k for k, (s, _) in got.items() if s == "capped"}
    # A: email keeps e1 e2 e4 (the exit takes no place), e5 over; then all channels (4 of e1 e2 e4
    # p1 p2 p3 by priority): e1 p1 e2 p2 stay. B: 2 counted old ones leave 1 place: b2 (priority 0)
    assert capped == {"e5", "e4", "p3", "b1"}
    assert got["e5"][1] == "frequency cap: 3 per 7 days on email"
    assert got["e4"][1] == "frequency cap: 4 per 7 days on all channels"
    assert got["c1"] == ("pending", None) and got["e3"] == ("pending", None)
