"""seglake side by side with DuckDB: ``python bench/compare.py --events 1000000 [--threads 2]``.

For one generated dataset (seed 42, shared with the other benchmarks under
``<workdir>/_data-<events>``; generated, untimed, when missing) and in the same run:

1. **seglake**: the real jobs through the stage runner on a fresh lakehouse, as a user runs
   them with the default configuration (``ingest``, ``clean``, ``identity``, ``sessions``,
   ``features`` for one as-of, ``journeys``), each timed; the journeys job also reports the
   time of its transition-matrix part, compared on its own as ``journeys_matrices``.
2. **DuckDB** (``bench/duckdb_side.py``): the same logical work written in SQL on the same
   landing files — ingest + clean (parse the three formats, timestamps, canonical values,
   quarantine with reasons, dedupe, imputation), sessions (consented events joined to the
   identity map, 30-minute sessions), one as-of of the features, transition counts of orders
   1..3 overall and per channel. Identity resolution has no DuckDB counterpart: DuckDB reads
   the identity map seglake built (exported to Parquet, untimed).
3. **Checks**: both sides must give the same counts — records, duplicates, quarantined by
   reason, silver rows, events with a customer, sessions, feature rows and count-type feature
   sums, every first-order transition count and the totals of each order. The ratio
   seglake / DuckDB per stage is printed only when all checks hold; the exit code is 1 otherwise.

Results: ``bench/results/compare-<events>.json`` (times, counts of both sides, checks, load
average before and after each side, machine). Run it alone on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent

#: seglake job(s) <-> DuckDB step, in order
STAGES = (("ingest_clean", ("ingest", "clean")), ("identity", ("identity",)), ("sessions", ("sessions",)),
          ("features", ("features",)), ("journeys", ("journeys",)))
#: the journeys job's matrices part (its summary's ``seconds_matrices``), compared with DuckDB's journeys
MATRICES = "journeys_matrices"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _settle(below: float, max_wait: float, what: str) -> float:
    """Wait (at most ``max_wait`` s) until the 1-minute load average is under ``below``, so a timed
    side does not start in the wake of the untimed data generation or of the other side; returns
    the seconds waited (recorded with the result). ``below`` <= 0 disables the wait."""
    import time

    start = time.monotonic()
    while below > 0 and os.getloadavg()[0] >= below and time.monotonic() - start < max_wait:
        print(f"[{what}] waiting for the 1-minute load {os.getloadavg()[0]:.2f} to drop under {below} ...",
              flush=True)
        time.sleep(max(0.0, min(15.0, max_wait - (time.monotonic() - start))))
    return round(time.monotonic() - start, 1)


def run_seglake(spark, cfg) -> tuple[dict, dict, dict]:
    """Every stage once, timed; returns (seconds per stage, summaries per job, the as-of)."""
    from seglake.core.context import JobContext
    from seglake.core.runner import run_job

    ctx = JobContext(spark, cfg)
    seconds: dict[str, float] = {}
    summaries: dict[str, dict] = {}
    for stage, jobs in STAGES:
        t0 = time.perf_counter()
        for job in jobs:
            print(f"[seglake] {job} ...", flush=True)
            summaries[job] = run_job(ctx, job).summary
        seconds[stage] = round(time.perf_counter() - t0, 2)
        print(f"[seglake] {stage}: {seconds[stage]:.1f} s", flush=True)
    # the journeys job's own time for its transition matrices (read the window, states, journeys,
    # counts, matrices written): the same work as DuckDB's journeys step; the rest of the job
    # (chain metrics, attribution, paths, PageRank, motifs) has no DuckDB counterpart
    if "seconds_matrices" in summaries["journeys"]:
        seconds[MATRICES] = float(summaries["journeys"]["seconds_matrices"])
    return seconds, summaries, {"as_of": ctx.as_of}


def seglake_counts(spark, cfg, summaries: dict, as_of) -> dict:
    """The figures both sides must agree on, read from seglake's tables and summaries."""
    from pyspark.sql import functions as F

    from seglake.core import tables

    clean = summaries["clean"]
    sessions = summaries["sessions"]
    features = tables.read(spark, cfg, "gold.customer_features").where(F.col("as_of_date") == F.lit(as_of))
    matrix = tables.read(spark, cfg, "gold.transition_matrix").where(
        (F.col("as_of_date") == F.lit(as_of)) & (F.col("segment") == "all") & (F.col("channel") == "all"))
    # tiny: one row per (from_state, to_state) of the first order, one per order
    first = {f"{r['from_state']}->{r['to_state']}": int(r["count"])
             for r in matrix.where(F.col("order") == 1).collect()}
    by_order = {str(r["order"]): int(r["n"]) for r in matrix.groupBy("order").agg(F.sum("count").alias("n")).collect()}
    return {"records_in": clean["records_in"], "quarantined_by_reason": clean["quarantined_by_reason"],
            "valid": clean["valid"], "duplicates": clean["deduplicated"], "silver_rows": clean["inserted"],
            "events_with_customer": sessions["events"],
            "sessions": sessions["sessions"], "customers": sessions["customers"],
            "feature_rows": features.count(), "feature_sums": None,  # filled by compare()
            "first_order": first, "transitions_by_order": by_order}


def duckdb_memory(driver_memory: str, headroom_gib: float = 4.0) -> str:
    """DuckDB's ``memory_limit``: the machine's memory less the Spark driver's heap (its JVM stays up
    beside DuckDB in this run) and ``headroom_gib`` for both processes' other memory, at least 2 GB.
    DuckDB's own default (80% of the machine) got the 10M run killed by the kernel's OOM killer."""
    total_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    units = {"k": 2**-20, "m": 2**-10, "g": 1.0, "t": 2**10}
    text = driver_memory.strip().lower()
    heap_gib = float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text) / 2**30
    return f"{max(2, int(total_gib - heap_gib - headroom_gib))}GB"


def run_duckdb(cfg, data: Path, workdir: Path, as_of, threads: int, max_event_ts: datetime,
               memory_limit: str) -> tuple[dict, dict]:
    import duckdb_side as D

    con = D.connect(threads=threads, memory_limit=memory_limit)
    spill = workdir / "duckdb_spill"                         # what does not fit goes to disk, not the OOM killer
    spill.mkdir(exist_ok=True)
    con.execute(f"SET temp_directory = '{spill}'")
    print(f"[duckdb] memory_limit {memory_limit}, {threads} threads, spilling to {spill}", flush=True)
    seconds: dict[str, float] = {}
    out: dict[str, dict] = {}
    steps = (
        ("ingest_clean", lambda: D.ingest_clean(
            con, data / "landing", max_event_ts, cfg.conf_file(cfg.get("clean.standardize_file") or "standardize.yaml"),
            consent_default=bool(cfg.get("clean.consent_default", False)),
            impute_decimals=int(cfg.get("clean.impute_decimals")))),
        ("sessions", lambda: D.sessions(
            con, workdir / "identity_map.parquet", int(cfg.get("sessions.inactivity_minutes")),
            bool(cfg.get("sessions.split_on_session_id")), identity_excluded_parquet=workdir / "identity_excluded.parquet",
            states_yaml=cfg.conf_file(cfg.get("journeys.states_file")))),
        ("features", lambda: D.features(con, as_of)),
        ("journeys", lambda: D.transitions(con, as_of, int(cfg.get("journeys.window_days")),
                                           cfg.conf_file(cfg.get("journeys.states_file")),
                                           int(cfg.get("journeys.max_order")))),
    )
    for stage, step in steps:
        print(f"[duckdb] {stage} ...", flush=True)
        t0 = time.perf_counter()
        out[stage] = step()
        seconds[stage] = round(time.perf_counter() - t0, 2)
        print(f"[duckdb] {stage}: {seconds[stage]:.1f} s", flush=True)
    con.close()
    return seconds, out


def feature_sums(spark, cfg, as_of, names: list[str]) -> dict:
    from pyspark.sql import functions as F

    from seglake.core import tables

    cols = [n[len("sum_"):] for n in names]
    features = tables.read(spark, cfg, "gold.customer_features").where(F.col("as_of_date") == F.lit(as_of))
    row = features.agg(*[F.sum(c).alias(c) for c in cols]).first()  # one row
    return {f"sum_{c}": (round(float(row[c] or 0), 2) if c.startswith("revenue") else int(row[c] or 0)) for c in cols}


def compare(ours: dict, theirs: dict) -> dict[str, bool]:
    """name -> equal? for every figure both sides report."""
    ic, se, fe, tr = theirs["ingest_clean"], theirs["sessions"], theirs["features"], theirs["journeys"]
    first = {f"{f}->{t}": n for (f, t), n in tr["first_order"].items()}
    checks = {
        "records_in": ours["records_in"] == ic["records_in"],
        "quarantined_by_reason": ours["quarantined_by_reason"] == dict(sorted(ic["quarantined_by_reason"].items())),
        "valid": ours["valid"] == ic["valid"],
        "duplicates": ours["duplicates"] == ic["duplicates"],
        "silver_rows": ours["silver_rows"] == ic["silver_rows"],
        "events_with_customer": ours["events_with_customer"] == se["events_with_customer"],
        "sessions": ours["sessions"] == se["sessions"],
        "customers": ours["customers"] == se["customers"],
        "feature_rows": ours["feature_rows"] == fe["rows"],
        "first_order_transition_counts": ours["first_order"] == first,
        "transitions_by_order": ours["transitions_by_order"] == {str(k): v for k, v in tr["transitions_by_order"].items()},
    }
    for name, value in (ours["feature_sums"] or {}).items():
        other = fe.get(name)
        checks[f"feature_{name}"] = (abs(value - other) <= 1e-6 * max(1.0, abs(other))
                                     if isinstance(value, float) else value == other)
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workdir", default=os.environ.get("SEGLAKE_BENCH_DIR", "/tmp/seglake-bench"))
    parser.add_argument("--results", default=str(BENCH_DIR / "results"))
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="6g")
    parser.add_argument("--threads", type=int, default=2, help="DuckDB threads (default 2 = Spark's local[2])")
    parser.add_argument("--label", default="", help="suffix of the result file, e.g. 'before'")
    parser.add_argument("--settle-load", type=float, default=1.5,
                        help="before each timed side, wait until the 1-minute load is under this (0 = no wait)")
    parser.add_argument("--settle-max", type=float, default=300, help="wait at most this many seconds")
    parser.add_argument("--duckdb-memory", default=None,
                        help="DuckDB memory_limit (default: the machine's memory less the driver heap less 4 GiB)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the seglake side of an earlier run of this size that ended before its "
                             "DuckDB side (its times, counts and lakehouse, kept in the workdir)")
    args = parser.parse_args(argv)

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    sys.path.insert(0, str(BENCH_DIR))
    import importlib.util
    import shutil

    if importlib.util.find_spec("duckdb") is None:
        raise SystemExit("bench/compare.py needs DuckDB: pip install -e '.[bench]'")

    from benchdata import config_for, ensure_data
    from run import machine_info

    from seglake.core.config import load_config
    from seglake.core.spark import get_spark

    workdir = Path(args.workdir).resolve() / f"compare-{args.events}"
    workdir.mkdir(parents=True, exist_ok=True)
    spark_cfg = load_config("local", REPO / "conf", overrides={
        "paths": {"lakehouse": str(workdir / "lake")},
        "spark": {"master": args.master, "driver_memory": args.driver_memory, "app_name": "seglake-compare"}})
    spark = get_spark(spark_cfg, app_name="seglake-compare")
    data, planted = ensure_data(spark, workdir, args.events)
    lake = workdir / "lake"
    cfg = config_for(lake, data)
    side_file = workdir / "seglake_side.json"        # the seglake side, kept until the whole run ends
    if args.resume:
        if not side_file.exists():
            raise SystemExit(f"--resume: no seglake side of an earlier run in {workdir}; run without --resume")
        side = json.loads(side_file.read_text(encoding="utf-8"))
        print(f"[seglake] resumed from {side_file} (run of {side['finished_at']})", flush=True)
    else:
        side_file.unlink(missing_ok=True)
        shutil.rmtree(lake, ignore_errors=True)
        side = {"waited": {"seglake": _settle(args.settle_load, args.settle_max, "seglake")}, "load_before": _load(),
                "started": datetime.now(timezone.utc).isoformat()}
        seglake_s, summaries, meta = run_seglake(spark, cfg)
        side.update(load_after=_load(), seconds=seglake_s, as_of=meta["as_of"].isoformat())
        side["counts"] = seglake_counts(spark, cfg, summaries, meta["as_of"])
        for table in ("silver.identity_map", "silver.identity_excluded"):   # DuckDB's input, untimed
            from seglake.core import tables
            target = workdir / f"{table.split('.')[1]}.parquet"
            tables.read(spark, cfg, table).write.mode("overwrite").parquet(str(target))
        side["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        side_file.write_text(json.dumps(side, indent=2, default=str) + "\n", encoding="utf-8")
    seglake_s, ours, waited = side["seconds"], side["counts"], side["waited"]
    load_seglake, load_seglake_after = side["load_before"], side["load_after"]
    as_of = date.fromisoformat(side["as_of"])
    started = datetime.fromisoformat(side["started"])

    max_ts = started + timedelta(minutes=float(cfg.get("clean.max_future_skew_minutes")))
    waited["duckdb"] = _settle(args.settle_load, args.settle_max, "duckdb")
    load_duckdb = _load()
    memory = args.duckdb_memory or duckdb_memory(args.driver_memory)
    duck_s, theirs = run_duckdb(cfg, data, workdir, as_of, args.threads, max_ts, memory)
    load_duckdb_after = _load()
    ours["feature_sums"] = feature_sums(spark, cfg, as_of, [k for k in theirs["features"] if k.startswith("sum_")])
    checks = compare(ours, theirs)
    equal = all(checks.values())
    ratios = {stage: round(seglake_s[stage] / duck_s[stage], 1) for stage in duck_s} if equal else {}
    if equal and MATRICES in seglake_s:
        ratios[MATRICES] = round(seglake_s[MATRICES] / duck_s["journeys"], 1)

    result = {
        "benchmark": "compare", "events_requested": args.events, "raw_records": planted.get("raw_records"),
        "valid_events": planted.get("valid_events"), "as_of": str(as_of),
        "seglake_seconds": seglake_s, "duckdb_seconds": duck_s, "ratio_seglake_over_duckdb": ratios,
        "checks": checks, "all_counts_equal": equal,
        "seglake_counts": {k: v for k, v in ours.items() if k != "first_order"},
        "duckdb_counts": {k: {kk: vv for kk, vv in v.items() if kk != "first_order"} for k, v in theirs.items()},
        "duckdb_threads": args.threads, "duckdb_memory_limit": memory,
        "seglake_side": {"resumed": bool(args.resume), "started": side["started"], "finished_at": side["finished_at"]},
        "load_average": {"seglake_before": load_seglake, "seglake_after": load_seglake_after,
                         "duckdb_before": load_duckdb, "duckdb_after": load_duckdb_after,
                         "settle_below": args.settle_load, "waited_s": waited},
        "machine": machine_info(spark),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"compare-{args.events}{'-' + args.label if args.label else ''}.json"
    out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    side_file.unlink(missing_ok=True)

    print(f"\n{'stage':<18}{'seglake s':>11}{'duckdb s':>10}{'ratio':>8}")
    for stage in [st for st, _ in STAGES] + ([MATRICES] if MATRICES in seglake_s else []):
        d = duck_s.get("journeys" if stage == MATRICES else stage)
        print(f"{stage:<18}{seglake_s[stage]:>11.1f}{(f'{d:.1f}' if d is not None else 'n/a'):>10}"
              f"{(str(ratios.get(stage)) + 'x') if stage in ratios else '':>8}")
    failed = [k for k, ok in checks.items() if not ok]
    print(f"counts equal on both sides: {equal}" + (f" (differ: {', '.join(failed)})" if failed else ""))
    print(f"load average: seglake {load_seglake} -> {load_seglake_after}, duckdb {load_duckdb} -> {load_duckdb_after}")
    print(f"result: {out}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
