"""Benchmark: the whole pipeline, every stage of ``seglake run all`` in order, on generated data.

``python bench/run.py --events 10000000 --only pipeline`` (on demand: it is not in the default
run, it costs the sum of every other benchmark). Input: the generated landing files of
``<workdir>/../_data-<events>`` (seed 42; generated, untimed, when missing). A fresh lakehouse
under ``<workdir>/lake``; the jobs run with the project's defaults (propensity with its default
grid; ``runner.parallel_stages`` 2, so jobs that read nothing of each other overlap), exactly as
``seglake run all`` chains them. ``seconds`` is the wall clock of the chain (a stage's own time
includes what overlapped it, so the stage times can add up to more); ``measured.stages`` has each stage's seconds and ``measured.figures`` the scalar
figures of each stage's summary, so runs at different sizes can be compared stage by stage.
"""
from __future__ import annotations

import time
from pathlib import Path

from benchdata import ensure_data, lake_config

ON_DEMAND = ("pipeline",)



def bench_pipeline(spark, workdir: Path, events: int) -> dict:
    from seglake import registry
    from seglake.core.context import JobContext
    from seglake.core.runner import run_chain

    data, counts = ensure_data(spark, workdir, events)
    cfg = lake_config(workdir, data)
    ctx = JobContext(spark, cfg)
    t0 = time.perf_counter()
    results = run_chain(ctx, registry.PIPELINE,
                        echo=lambda line: print(f"[pipeline] {line}", flush=True))
    wall = time.perf_counter() - t0
    stages = {r.job: round(r.seconds, 1) for r in results if not r.skipped}
    # the scalar figures of each stage's summary (counts, AUCs, k ...), to compare sizes by
    figures = {r.job: {k: v for k, v in (r.summary or {}).items() if isinstance(v, (int, float, str))}
               for r in results}
    return {"events": counts["valid_events"], "seconds": round(wall, 2), "stages": stages,
            "stage_seconds_sum": round(sum(stages.values()), 1), "figures": figures,
            "raw_records": counts["raw_records"], "as_of": str(ctx.as_of)}


def benchmarks() -> dict:
    return {"pipeline": bench_pipeline}
