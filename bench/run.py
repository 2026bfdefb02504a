"""Benchmark runner: ``python bench/run.py [--events 1000000 10000000] [--only NAME ...]``.

Discovers ``bench/bench_*.py`` modules; each exposes ``benchmarks() -> dict[str, callable]``
where a callable ``(spark, workdir: pathlib.Path, events: int) -> dict`` runs one measured
piece of work and returns what it measured (at least ``events``: how many events it
processed; optionally ``seconds`` when it timed a narrower span than the whole call).
Each result is written to ``bench/results/<name>-<events>.json`` with machine information,
and a table is printed at the end.

The session comes from ``seglake.core.spark.get_spark`` with a bench config: ``local[2]``,
6g driver memory (``--master`` / ``--driver-memory`` change it).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def discover(only: list[str] | None = None) -> dict:
    """name -> callable from every bench/bench_*.py (in file order)."""
    found: dict = {}
    for path in sorted(BENCH_DIR.glob("bench_*.py")):
        spec = importlib.util.spec_from_file_location(f"seglake_bench_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        on_demand = set(getattr(module, "ON_DEMAND", ()))
        for name, fn in module.benchmarks().items():
            if name in on_demand and name not in (only or ()):
                continue                            # runs only when named with --only
            if name in found:
                raise ValueError(f"benchmark name {name!r} is defined twice (second time in {path.name})")
            found[name] = fn
    if only:
        unknown = [n for n in only if n not in found]
        if unknown:
            raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(found)}")
        found = {n: found[n] for n in only}
    return found


def machine_info(spark) -> dict:
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "host": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpus": os.cpu_count(), "memory_gib": mem_gib, "spark": spark.version,
        "master": spark.sparkContext.master,
        "driver_memory": spark.sparkContext.getConf().get("spark.driver.memory", None),
        "shuffle_partitions": spark.conf.get("spark.sql.shuffle.partitions"), "git_commit": commit,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000], help="sizes to run (events)")
    parser.add_argument("--only", nargs="+", help="benchmark names to run (default: all)")
    parser.add_argument("--workdir", default=os.environ.get("SEGLAKE_BENCH_DIR", "/tmp/seglake-bench"),
                        help="scratch folder for generated data and lakehouses")
    parser.add_argument("--results", default=str(BENCH_DIR / "results"))
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="6g")
    parser.add_argument("--shuffle-partitions", type=int, default=8)
    args = parser.parse_args(argv)

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)       # workers need pandas/pyarrow
    sys.path.insert(0, str(REPO / "libs"))
    sys.path.insert(0, str(BENCH_DIR))                              # bench/benchdata.py
    from seglake.core.config import load_config
    from seglake.core.spark import get_spark

    benches = discover(args.only)
    workdir = Path(args.workdir).resolve()
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    cfg = load_config("local", REPO / "conf", overrides={
        "paths": {"lakehouse": str(workdir / "lakehouse")},
        "spark": {"master": args.master, "driver_memory": args.driver_memory,
                  "shuffle_partitions": args.shuffle_partitions, "app_name": "seglake-bench"}})
    spark = get_spark(cfg, app_name="seglake-bench")
    info = machine_info(spark)
    rows = []
    for events in args.events:
        for name, fn in benches.items():
            wd = workdir / f"{name}-{events}"
            wd.mkdir(parents=True, exist_ok=True)
            load_before = os.getloadavg()
            print(f"[bench] {name} at {events:,} events ...", flush=True)
            t0 = time.perf_counter()
            measured = dict(fn(spark, wd, events) or {})
            wall = time.perf_counter() - t0
            seconds = float(measured.pop("seconds", wall))
            processed = int(measured.get("events", events))
            result = {
                "benchmark": name, "events_requested": events, "events": processed,
                "seconds": round(seconds, 2), "wall_seconds": round(wall, 2),
                "events_per_s": round(processed / seconds, 1) if seconds > 0 else None,
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
                "measured": measured, "machine": info,
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            out = results_dir / f"{name}-{events}.json"
            out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
            rows.append(result)
            print(f"[bench] {name} at {events:,}: {seconds:.1f}s, {result['events_per_s']:,} events/s -> {out}",
                  flush=True)
    print()
    print(f"{'benchmark':<20} {'events':>12} {'seconds':>9} {'events/s':>12}  load(1m) before/after")
    for r in rows:
        print(f"{r['benchmark']:<20} {r['events']:>12,} {r['seconds']:>9.1f} {r['events_per_s']:>12,.0f}  "
              f"{r['load_average_before'][0]:.1f}/{r['load_average_after'][0]:.1f}")
    print(f"machine: {info['cpus']} cpus, {info['memory_gib']} GiB, Spark {info['spark']} {info['master']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
