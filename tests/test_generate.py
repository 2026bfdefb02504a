"""Generator: determinism, and planted counts checked against the files by plain Python.

The landing files are read back here with ``json``/``csv``/``pyarrow`` (not with the code
that wrote them) and every planted count of counts.json is recomputed independently.
"""
from __future__ import annotations

import csv
import json
import re
from collections import Counter, defaultdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from seglake.devtools import generate as gen

SEED = 11
EVENTS = 3000
CUSTOMERS = 60
START, END = date(2026, 9, 1), date(2026, 9, 28)      # a short window keeps the file count small
DAYS = (END - START).days + 1
START_MS = int(datetime(2026, 9, 1, tzinfo=timezone.utc).timestamp() * 1000)
CANONICAL = set(gen.EVENT_TYPES)
ALIASES = {v: k for k, v in gen.EVENT_ALIASES.items()}
IDS = ("user_id", "anonymous_id", "device_id", "email", "phone")


# ------------------------------------------------------------------ independent readers
def read_landing(landing: Path) -> list[dict]:
    """Every raw record as {'fmt', 'broken', 'rec'} read with plain Python."""
    out = []
    for path in sorted(landing.rglob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                out.append({"fmt": "json", "broken": False, "rec": rec, "raw": line})
            except json.JSONDecodeError:
                out.append({"fmt": "json", "broken": True, "rec": None, "raw": line})
    for path in sorted(landing.rglob("*.csv")):
        with path.open(newline="", encoding="utf-8") as fh:
            for rec in csv.DictReader(fh):
                out.append({"fmt": "csv", "broken": False,
                            "rec": {k: (v if v != "" else None) for k, v in rec.items()}, "raw": rec})
    for path in sorted(landing.rglob("*.parquet")):
        for rec in pq.read_table(path).to_pylist():
            out.append({"fmt": "parquet", "broken": False, "rec": rec, "raw": rec})
    return out


_TS = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(\.\d{3})?(Z|[+-]\d{2}:?\d{2})?$")


def parse_ts(value) -> int | None:
    """Epoch millis of a raw event_ts, None when unparseable."""
    if value is None:
        return None
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    m = _TS.match(value)
    if not m:
        return None
    y, mo, d, h, mi, s = (int(x) for x in m.groups()[:6])
    try:
        dt = datetime(y, mo, d, h, mi, s, tzinfo=timezone.utc)
    except ValueError:
        return None
    ms = int(m.group(7)[1:]) if m.group(7) else 0
    off = m.group(8)
    if off and off != "Z":
        sign = -1 if off[0] == "-" else 1
        digits = off[1:].replace(":", "")
        dt -= sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
    return int(dt.timestamp() * 1000) + ms


def canonical_type(raw: str | None) -> str | None:
    if raw is None:
        return None
    low = raw.lower()
    return ALIASES.get(low, low if low in CANONICAL else None)


def defects(rec: dict) -> list[str]:
    out = []
    ts = parse_ts(rec.get("event_ts"))
    if ts is None:
        out.append("unparseable_ts")
    elif ts > int(datetime(2030, 1, 1, tzinfo=timezone.utc).timestamp() * 1000):
        out.append("future_ts")
    if canonical_type(rec.get("event_type")) is None:
        out.append("unknown_event_type")
    price = rec.get("price")
    if price is not None and float(price) < 0:
        out.append("negative_price")
    if all(rec.get(k) is None for k in IDS):
        out.append("missing_identifiers")
    return out


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def generated(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    counts = gen.generate(spark, out, EVENTS, CUSTOMERS, SEED, start_date=START, end_date=END)
    return out, counts, read_landing(out / "landing")


def test_counts_json_matches_return_and_adds_up(generated):
    out, counts, _ = generated
    assert json.loads((out / "ground_truth" / "counts.json").read_text()) == counts
    assert counts["raw_records"] == counts["valid_events"] + counts["duplicates_injected"] + counts["malformed_injected"]
    assert counts["duplicates_injected"] == sum(counts["duplicates_by_kind"].values())
    assert counts["malformed_injected"] == sum(counts["malformed_by_kind"].values())
    assert 0.7 * EVENTS < counts["valid_events"] < 1.4 * EVENTS
    assert all(v > 0 for v in counts["duplicates_by_kind"].values()), counts["duplicates_by_kind"]
    assert all(v > 0 for v in counts["malformed_by_kind"].values()), counts["malformed_by_kind"]
    assert counts["persons"] == CUSTOMERS


def test_files_split_by_format_and_day(generated):
    out, counts, records = generated
    landing = out / "landing"
    for fmt, ext in (("json", "jsonl"), ("csv", "csv"), ("parquet", "parquet")):
        files = list((landing / fmt).rglob(f"*.{ext}"))
        days = {f.parent.name for f in files}
        assert len(files) == counts["files_by_format"][fmt]
        assert len(days) >= DAYS - 2 and all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", d) for d in days)
        assert sum(r["fmt"] == fmt for r in records) == counts["records_by_format"][fmt]
    assert len(records) == counts["raw_records"]


def test_planted_counts_recomputed_from_files(generated):
    _, counts, records = generated
    broken = [r for r in records if r["broken"]]
    assert len(broken) == counts["malformed_by_kind"]["broken_json"]
    found = Counter()
    good = []
    for r in records:
        if r["broken"]:
            continue
        d = defects(r["rec"])
        assert len(d) <= 1, (d, r["rec"])          # a malformed record has exactly one defect
        if d:
            found[d[0]] += 1
        else:
            good.append(r["rec"])
    for kind in ("unparseable_ts", "future_ts", "unknown_event_type", "negative_price", "missing_identifiers"):
        assert found[kind] == counts["malformed_by_kind"][kind], kind
    # dedupe: event_id, else identifiers + instant + canonical type
    keys = Counter()
    for rec in good:
        if rec.get("event_id"):
            keys[("id", rec["event_id"])] += 1
        else:
            keys[("derived", *(rec.get(k) for k in IDS), parse_ts(rec["event_ts"]),
                  canonical_type(rec["event_type"]))] += 1
    assert len(keys) == counts["valid_events"]
    assert len(good) - len(keys) == counts["duplicates_injected"]
    no_id_dups = sum(n - 1 for k, n in keys.items() if k[0] == "derived")
    assert no_id_dups >= counts["duplicates_by_kind"]["no_event_id_duplicate"] > 0
    # consent=false among distinct valid events
    first = {}
    for rec in good:
        key = rec.get("event_id") or (tuple(rec.get(k) for k in IDS), parse_ts(rec["event_ts"]))
        first.setdefault(key, rec)
    consent_false = sum(str(r["consent"]).lower() == "false" for r in first.values())
    assert consent_false == counts["consent_false_events"]
    assert sum(r.get("duration_ms") is None for r in first.values()) == counts["missing_duration_events"]


def test_raw_variants_present(generated):
    _, _, records = generated
    recs = [r["rec"] for r in records if not r["broken"]]
    types = {r["event_type"] for r in recs}
    assert {"pageview", "addtocart", "checkout", "order"} & types
    assert any(t and t.isupper() for t in types) and any(t and t[:1].isupper() and not t.isupper() for t in types)
    devices = {r.get("device_type") for r in recs}
    assert {"iOS", "iphone", "Android", "ANDROID", "PC", "mac", "ipad"} & devices and None in devices
    ts = [r["event_ts"] for r in recs]
    assert any(isinstance(t, int) for t in ts)                           # JSON number
    assert any(isinstance(t, str) and t.endswith("Z") for t in ts)
    assert any(isinstance(t, str) and t.endswith("+05:30") for t in ts)
    assert any(isinstance(t, str) and t.endswith("-05:00") for t in ts)
    assert any(isinstance(t, str) and t.endswith("+0530") for t in ts)
    assert any(isinstance(t, str) and re.fullmatch(r"\S+ \S+", t) for t in ts)
    assert {"USD", "usd", " usd "} & {r.get("currency") for r in recs}


def test_identity_recoverable_and_persons_separate(generated):
    """Union-find over identifiers co-occurring in records == ground-truth persons."""
    out, counts, records = generated
    ident = pq.read_table(out / "ground_truth" / "identifiers.parquet").to_pylist()
    shared = {(r["identifier_type"], r["identifier"]) for r in ident if r["person_id"] is None}
    assert len(shared) == counts["shared_identifiers"] >= 1
    owner = {(r["identifier_type"], r["identifier"]): r["person_id"] for r in ident if r["person_id"]}
    parent: dict = {}

    def find(x):
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for r in records:
        if r["broken"]:
            continue
        nodes = [(k, r["rec"].get(k)) for k in IDS if r["rec"].get(k) is not None]
        nodes = [n for n in nodes if n not in shared]
        for n in nodes:
            assert n in owner, n                  # every identifier written is in the truth
            find(n)
        for a, b in zip(nodes, nodes[1:]):
            parent[find(a)] = find(b)
    components = defaultdict(set)
    for node, person in owner.items():
        components[find(node)].add(person)
    assert all(len(p) == 1 for p in components.values())          # no two persons merged
    per_person = defaultdict(set)
    for node, person in owner.items():
        per_person[person].add(find(node))
    assert all(len(c) == 1 for c in per_person.values())           # each person fully linked
    assert len(per_person) == CUSTOMERS


def test_archetype_facts_and_sessions(generated):
    import pandas as pd

    out, _, _ = generated
    ev = pd.read_parquet(out / "ground_truth" / "events.parquet")
    persons = pd.read_parquet(out / "ground_truth" / "persons.parquet").set_index("person_id")
    assert len(persons) == CUSTOMERS and set(persons.archetype) <= set(gen.ARCH_NAMES)
    assert persons.archetype.nunique() >= 6
    by = ev.groupby("person_id")
    n = lambda t: by.apply(lambda g: int((g.event_type == t).sum()), include_groups=False)  # noqa: E731
    purchases, carts = n("purchase"), n("add_to_cart")
    arch = persons.archetype
    for pid, a in arch.items():
        if a == "casual_browser":
            assert carts[pid] == 0 and purchases[pid] == 0
        if a in ("cart_abandoner", "high_intent_abandoner"):
            assert carts[pid] >= 1 and purchases[pid] == 0
        if a == "repeat_buyer":
            assert purchases[pid] >= 3
        if a == "vip":
            assert purchases[pid] >= 5
        if a == "churner":   # nothing after the planted churn; the decline starts 3-7 weeks before it
            churn, onset = pd.Timestamp(persons.loc[pid, "churn_date"]), pd.Timestamp(persons.loc[pid, "decline_start"])
            assert onset <= churn and churn - onset <= pd.Timedelta(days=50)
            assert persons.loc[pid, "last_seen"] < churn + pd.Timedelta(days=1)
        else:
            assert pd.isna(persons.loc[pid, "churn_date"]) and pd.isna(persons.loc[pid, "decline_start"])
        if a == "new_user":
            assert persons.loc[pid, "first_seen"] >= pd.Timestamp(END - timedelta(days=6))
        if a == "power_user":
            assert persons.loc[pid, "distinct_features"] >= 3
        if a == "email_responder":
            g = ev[(ev.person_id == pid) & (ev.event_type == "purchase")]
            assert (g.channel == "email").any()
    # the decline is observable: searches fail far more often in it than anywhere else, and
    # support contacts (call_center) are denser in it (per day) than in anyone's ordinary time
    onset = ev.person_id.map(persons.decline_start).astype("datetime64[ns]")
    declining = onset.notna() & (ev.event_ts >= onset)
    search = ev.event_type == "search"
    assert (ev.results[~search] == -1).all() and (ev.results[search] >= 0).all()
    fail_in, fail_out = (ev.results[search & declining] == 0).mean(), (ev.results[search & ~declining] == 0).mean()
    assert fail_in > 5 * fail_out, (fail_in, fail_out)
    assert persons.failed_searches.sum() == int((ev.results[search] == 0).sum())
    assert persons.support_contacts.sum() == int((ev.event_type == "call_center").sum())
    # sessions: 5 s .. 5 min inside, > 45 min between; all instants distinct per person
    ev = ev.sort_values(["person_id", "ts_ms"])
    gap = ev.groupby("person_id").ts_ms.diff().dropna()
    same = ev.session_no.eq(ev.session_no.shift()) & ev.person_id.eq(ev.person_id.shift())
    inside = gap[same.loc[gap.index]]
    between = gap[~same.loc[gap.index]]
    assert inside.min() >= 4_000 and inside.max() <= 301_000
    assert between.min() > 45 * 60_000
    assert not ev.duplicated(["person_id", "ts_ms"]).any()
    assert ev.ts_ms.min() >= START_MS
    assert ev.ts_ms.max() < START_MS + DAYS * 86_400_000


def test_transitions_are_distributions(generated):
    out, _, _ = generated
    rows = pq.read_table(out / "ground_truth" / "transitions.parquet").to_pylist()
    sums = defaultdict(float)
    for r in rows:
        sums[(r["archetype"], r["from_state"])] += r["probability"]
        assert r["to_state"] in gen.STATES and r["from_state"] in gen.STATES
    assert set(a for a, _ in sums) == set(gen.ARCH_NAMES)
    assert all(abs(s - 1) < 1e-9 for s in sums.values())


def _content(folder: Path) -> tuple:
    recs = read_landing(folder / "landing")
    return tuple(sorted(json.dumps([r["fmt"], r["raw"]], sort_keys=True, default=str) for r in recs))


def test_deterministic_per_seed(spark, tmp_path):
    window = {"start_date": date(2026, 9, 1), "end_date": date(2026, 9, 14)}
    a = gen.generate(spark, tmp_path / "a", 400, 8, seed=5, **window)
    b = gen.generate(spark, tmp_path / "b", 400, 8, seed=5, **window)
    c = gen.generate(spark, tmp_path / "c", 400, 8, seed=6, **window)
    drop = lambda d: {k: v for k, v in d.items() if k != "seconds"}  # noqa: E731
    assert drop(a) == drop(b)
    assert _content(tmp_path / "a") == _content(tmp_path / "b")
    assert _content(tmp_path / "a") != _content(tmp_path / "c")


def test_bad_arguments(spark, tmp_path):
    with pytest.raises(ValueError, match="events"):
        gen.generate(spark, tmp_path, 0)
    with pytest.raises(ValueError, match="end_date"):
        gen.generate(spark, tmp_path, 10, 1, start_date=date(2026, 9, 1), end_date=date(2026, 8, 1))


def test_demo_does_not_reuse_input_of_an_older_generator(spark, tmp_path):
    """An input folder with the same size and seed but made by an earlier generator version (its
    counts.json has no generator_version: version 1) is not silently reused: the demo stops and
    names what differs."""
    from seglake.cli import main

    gt = tmp_path / "lake" / "_input" / "ground_truth"
    gt.mkdir(parents=True)
    (gt / "counts.json").write_text(json.dumps({"events_requested": 1000, "persons": 20, "seed": 7}))
    with pytest.raises(SystemExit) as stop:
        main(["demo", "--events", "1000", "--lakehouse", str(tmp_path / "lake")])
    assert f"generator_version 1 there, {gen.GENERATOR_VERSION} wanted" in str(stop.value), stop.value
    assert "make clean-lakehouse" in str(stop.value)
