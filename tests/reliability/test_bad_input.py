"""A corpus of bad input, through ingest and clean: every record ends in silver or in quarantine
with its reason, and a file that cannot be read is listed with its reason without stopping the run.

Each kind of defect is one record (or one file) marked by a unique ``event_id`` (``k<NN>``) or,
where the record cannot be parsed, by a marker in its raw text; the expected outcome of each is
written next to it. The run's own totals must add up: bronze records = silver rows +
quarantined rows, nothing lost, nothing twice.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from conftest import make_cfg
from seglake.core import tables
from seglake.core.context import JobContext
from seglake.core.contracts import RAW_FIELDS
from seglake.stages import clean, ingest

pytestmark = pytest.mark.slow

TS = "2026-09-01T10:00:00Z"
SILVER = "silver"


def _rec(kind: str, **fields) -> dict:
    rec = {"event_id": kind, "user_id": "u-" + kind, "event_type": "page_view", "event_ts": TS,
           "source": "web", "device_type": "desktop", "consent": "true", "duration_ms": "1000"}
    rec.update(fields)
    return {k: v for k, v in rec.items() if v is not None}


def _line(rec: dict) -> str:
    return json.dumps(rec, ensure_ascii=False)


#: JSON-lines kinds: (kind, the line(s) as text, expected outcome: "silver" or a reason code)
JSON_KINDS: list[tuple[str, str, str]] = [
    ("k01", _line(_rec("k01")), SILVER),                                                # baseline
    ("k02", _line(_rec("k02", page_url="/caf\u00e9/\u65e5\u672c/\U0001f600")), SILVER),  # non-ASCII text
    ("k03", _line(_rec("k03", properties={"a": {"b": [1, 2, {"c": None}]}})), SILVER),   # nested properties
    ("k04", _line(_rec("k04", event_type={"nested": "object"})), "unknown_event_type"),  # object in a scalar
    ("k05", _line(_rec("k05")).replace('"duration_ms": "1000"', '"duration_ms": NaN'), "invalid_number"),
    ("k06", _line(_rec("k06")).replace('"duration_ms": "1000"', '"duration_ms": Infinity'), "invalid_number"),
    ("k07", _line(_rec("k07", event_ts="0001-01-01T00:00:00Z")), SILVER),               # year 1 parses
    ("k08", _line(_rec("k08", event_ts="9999-12-31T23:59:59Z")), "future_ts"),
    ("k09", '{"event_id": "k09", "event_id": "k09", "user_id": "u-k09", "event_type": "search", '
            f'"event_ts": "{TS}", "consent": "true"}}', SILVER),                         # duplicate keys
    ("k10", _line(_rec("k10", event_ts=1788256800000)), SILVER),                         # ts as a JSON number
    ("k11", _line(_rec("k11", consent=True, price=12.5, quantity=2)), SILVER),           # typed JSON values
    ("k12", _line(_rec("k12", user_id=None)), "missing_identifiers"),
    ("k13", _line(_rec("k13", event_type="teleport")), "unknown_event_type"),
    ("k14", _line(_rec("k14", price="-3")), "negative_price"),
    ("k15", _line(_rec("k15", quantity="abc")), "invalid_number"),
    ("k16", _line(_rec("k16", scroll_depth="150")), "out_of_range"),
    ("k17", _line(_rec("k17", event_ts="yesterday")), "unparseable_ts"),
    ("k18", _line(_rec("k18", event_ts=None)), "unparseable_ts"),
    ("k19", _line(_rec("k19", page_url="a\u0000b\u0007c")), SILVER),                     # control characters
    ("k20", _line(_rec("k20", session_id="s" * 10_000)), SILVER),                        # a 10 kB field
    ("k21", '{"event_id": "k21", "user_id": "u-k21", ', "broken_json"),                  # truncated line
    ("k22", '["k22", 1, 2]', "broken_json"),                                             # an array
    ("k23", '"k23 just a string"', "broken_json"),                                       # a scalar
    ("k24", '{"event_id": "k24", "user_id": "u-k24",}', "broken_json"),                  # trailing comma
    # single quotes: Spark's JSON reader accepts them (allowSingleQuotes), so the record parses and
    # is turned away for what it lacks
    ("k25", "{'event_id': 'k25'}", "missing_identifiers"),
    ("k26", _line(_rec("k26", event_ts="2026-09-01 10:00:00")), SILVER),                 # naive = UTC
    ("k27", _line(_rec("k27", event_ts="2026-09-01T12:00:00.123+0200")), SILVER),
    ("k28", _line(_rec("k28", event_type=" PageView ")), SILVER),                        # alias, spaces
    ("k29", _line(_rec("k29", email="  MiXed@Example.COM ", user_id=None)), SILVER),     # only an email
]
#: a 10 MB line: one record whose properties hold 10 MB of text
BIG = ("k30", _line(_rec("k30", properties={"blob": "x" * 10_000_000})), SILVER)

#: CSV kinds: (kind, the data line(s), expected outcome per physical line)
CSV_HEADER = ",".join(RAW_FIELDS)


def _csv(kind: str, **fields) -> str:
    rec = _rec(kind, **fields)
    out = []
    for c in RAW_FIELDS:
        v = rec.get(c)
        v = "" if v is None else str(v)
        out.append('"' + v.replace('"', '""') + '"' if any(ch in v for ch in ',"\n') else v)
    return ",".join(out)


CSV_KINDS: list[tuple[str, str, list[str]]] = [
    ("k31", _csv("k31"), [SILVER]),
    ("k32", _csv("k32", page_url="/a,b,\"quoted\""), [SILVER]),                          # quotes and commas
    ("k33", ",".join(_csv("k33").split(",")[:10]), ["unparseable_record"]),              # too few fields
    ("k34", _csv("k34") + ",extra,fields", ["unparseable_record"]),                      # too many fields
    ("k35", _csv("k35").replace("k35", '"k35', 1), ["unparseable_record"]),              # unbalanced quote
    # a quoted field with a line break: CSV is read line by line, so both halves are quarantined
    # (the second half, without the id, is checked by its text below); none lost
    ("k36", _csv("k36", page_url="line one\nline two"), ["unparseable_record"]),
]


def _write_landing(root: Path) -> dict:
    """Write the corpus; return the expected outcome per kind (and per file for unreadable ones)."""
    land = root / "landing"
    (land / "json" / "2026-09-01").mkdir(parents=True)
    (land / "csv" / "2026-09-01").mkdir(parents=True)
    (land / "parquet" / "2026-09-01").mkdir(parents=True)
    j = land / "json" / "2026-09-01"
    (j / "corpus.jsonl").write_text("\n".join(line for _, line, _ in JSON_KINDS) + "\n", encoding="utf-8")
    (j / "bom.jsonl").write_bytes("\ufeff".encode() + _line(_rec("k37")).encode() + b"\n")          # BOM
    (j / "crlf.jsonl").write_bytes(_line(_rec("k38")).encode() + b"\r\n" + _line(_rec("k39")).encode() + b"\r\n")
    (j / "invalid-utf8.jsonl").write_bytes(_line(_rec("k40", page_url="PLACEHOLDER")).encode()
                                           .replace(b"PLACEHOLDER", b"bad\xff\xfebytes") + b"\n")
    (j / "blank-lines.jsonl").write_text("\n   \n\t\n" + _line(_rec("k41")) + "\n\n", encoding="utf-8")
    (j / "empty.jsonl").write_bytes(b"")                                                              # 0 bytes
    (j / "big.jsonl").write_text(BIG[1] + "\n", encoding="utf-8")
    # pretty-printed JSON: one record over several lines -> every line is a broken record
    (j / "pretty.jsonl").write_text(json.dumps(_rec("k42"), indent=1) + "\n", encoding="utf-8")
    (j / ".hidden.jsonl").write_text(_line(_rec("hidden")) + "\n", encoding="utf-8")                  # ignored
    (j / "notes.txt").write_text(_line(_rec("txt")) + "\n", encoding="utf-8")                         # ignored

    c = land / "csv" / "2026-09-01"
    (c / "corpus.csv").write_text(CSV_HEADER + "\n" + "\n".join(line for _, line, _ in CSV_KINDS) + "\n",
                                  encoding="utf-8")
    (c / "bom.csv").write_bytes("\ufeff".encode() + (CSV_HEADER + "\n" + _csv("k43") + "\n").encode())
    (c / "header-only.csv").write_text(CSV_HEADER + "\n", encoding="utf-8")

    p = land / "parquet" / "2026-09-01"
    pq.write_table(pa.table({"event_id": ["k44"], "user_id": ["u-k44"], "event_type": ["search"],
                             "event_ts": pa.array([1788256800000], pa.timestamp("ms", tz="UTC")),
                             "price": pa.array([9.5]), "quantity": pa.array([2], pa.int32()),
                             "consent": pa.array([True]), "extra_unknown": ["ignored"]}), p / "typed.parquet")
    pq.write_table(pa.table({"event_id": ["k45"], "user_id": ["u-k45"], "event_type": ["search"],
                             "event_ts": [TS], "price": pa.array([float("nan")])}), p / "nan.parquet")
    pq.write_table(pa.table({"event_id": ["k46"], "user_id": ["u-k46"], "event_type": ["search"]}),
                   p / "no-ts.parquet")
    pq.write_table(pa.table({"event_id": ["k47"], "user_id": ["u-k47"], "event_type": ["search"], "event_ts": [TS],
                             "properties": pa.array([{"a": 1, "b": "x"}])}), p / "struct-props.parquet")
    whole = (p / "typed.parquet").read_bytes()
    (p / "truncated.parquet").write_bytes(whole[: len(whole) // 2])
    (p / "zero.parquet").write_bytes(b"")
    (p / "not-parquet.parquet").write_text("hello\n")

    expected = {k: out for k, _, out in JSON_KINDS}
    expected.update({BIG[0]: BIG[2], "k37": SILVER, "k38": SILVER, "k39": SILVER, "k40": SILVER, "k41": SILVER,
                     "k43": SILVER, "k44": SILVER, "k45": "invalid_number", "k46": "unparseable_ts", "k47": SILVER})
    return {"records": expected, "csv": {k: outs for k, _, outs in CSV_KINDS},
            "unreadable": {"truncated.parquet", "not-parquet.parquet"},
            "pretty_lines": len(json.dumps(_rec("k42"), indent=1).splitlines())}


def test_every_bad_record_lands_in_silver_or_quarantine_with_its_reason(spark, tmp_path):
    expected = _write_landing(tmp_path)
    cfg = make_cfg(tmp_path / "lake", paths={"landing": str(tmp_path / "landing")},
                   clean={"max_reject_share": 1.0})
    got_ingest = ingest.run(JobContext(spark, cfg))
    # the run did not stop; the unreadable files are listed with a reason; ignored files are not read
    assert got_ingest["unreadable_files"] == 2          # zero-byte files hold nothing: not even listed
    listed = {Path(r["path"]).name: r["reason"] for r in tables.read(spark, cfg, "ops.unreadable_files").collect()}
    assert set(listed) == expected["unreadable"] and all(listed.values())
    bronze = tables.read(spark, cfg, "bronze.events_raw")
    assert bronze.where(F.col("event_id").isin("hidden", "txt")).count() == 0

    got = clean.run(JobContext(spark, cfg, args={"skip_docs": True}))
    silver = {r["event_id"] for r in tables.read(spark, cfg, "silver.events").select("event_id").collect()}
    quarantine = tables.read(spark, cfg, "silver.events_quarantine").select("event_id", "_raw", "reason").collect()
    # nothing lost, nothing twice: every bronze record is in exactly one of the two
    assert got["records_in"] == bronze.count() == len(silver) + len(quarantine)
    reasons_by_id = {}
    for r in quarantine:
        if r["event_id"]:
            reasons_by_id.setdefault(r["event_id"], []).append(r["reason"])

    outcome = {}
    for kind, want in expected["records"].items():
        # a line that does not parse has no event_id: it is found by its raw text
        by_raw = [reason for raw, reason in ((r["_raw"] or "", r["reason"]) for r in quarantine
                                             if not r["event_id"]) if f'"{kind}' in raw]
        outcome[kind] = SILVER if kind in silver else ",".join(reasons_by_id.get(kind, by_raw) or ["<missing>"])
    mismatched = {k: (expected["records"][k], v) for k, v in outcome.items() if v != expected["records"][k]}
    assert not mismatched, f"kind: (expected, got) {mismatched}"

    # records that cannot be parsed are found by their raw text
    raw_reasons = [(r["_raw"] or "", r["reason"]) for r in quarantine]
    for kind, outs in expected["csv"].items():
        if outs == [SILVER]:
            assert kind in silver, kind
        else:
            assert sorted(reason for raw, reason in raw_reasons if kind in raw) == sorted(outs), kind
    assert [reason for raw, reason in raw_reasons if raw.startswith('line two"')] == ["unparseable_record"]
    # a pretty-printed record: every one of its lines is a broken record
    pretty = [r["reason"] for r in tables.read(spark, cfg, "silver.events_quarantine")
              .where(F.col("_source_file").endswith("pretty.jsonl")).collect()]
    assert len(pretty) == expected["pretty_lines"] and set(pretty) == {"broken_json"}
    # + empty .jsonl, zero-byte .parquet, pretty-printed JSON, hidden file, .txt file, header-only CSV
    kinds_tried = len(expected["records"]) + len(expected["csv"]) + len(expected["unreadable"]) + 6
    print(f"bad-input kinds tried: {kinds_tried}")
    assert kinds_tried >= 40
