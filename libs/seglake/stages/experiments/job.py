"""``seglake run experiments [--experiment NAME] [--as-of D]``: A/B tests on segments.

For each enabled experiment of conf/experiments.yaml whose window has begun by the as-of date:

1. **Population and variants** (``gold.experiment_assignments``, insert-only MERGE on
   experiment + customer_id, so an assignment never changes once written: stable across reruns
   and later segment changes). ``hash``: the members of the target segments as of the start
   date (the membership history, or computed for that date when the history has none), bucketed
   by sha256(salt:customer_id). ``logged``: the customers the site tagged with exactly one
   variant in the window (of the target segments when given). Tagged variants are compared with
   the assignment either way (disagreeing, conflicting, outside the population).
2. **Outcomes** per customer from silver.enriched_events over [start - pre_period, end)
   (consented customers, Spark aggregations), reduced to per (segment, variant) sufficient
   statistics: the only rows the driver receives.
3. **Statistics** (:mod:`.stats`) into ``gold.ab_results``: one row per experiment x segment x
   metric x variant vs control, replacing the experiment's rows in one commit.

A running experiment (as-of before its end) is analysed on the days so far (``status`` =
running); a retention metric whose day N is not reached yet is left out until it is.
"""
from __future__ import annotations

import logging
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.contracts import AB_RESULTS, EXPERIMENT_ASSIGNMENTS, SEGMENT_MEMBERSHIP
from seglake.stages import enriched
from seglake.stages.experiments import data as D
from seglake.stages.experiments import stats as S
from seglake.stages.experiments.settings import Experiment, ExperimentConfigError, load_experiments, metric_kind, retention_days

log = logging.getLogger(__name__)

#: gold.ab_results columns besides the statistics of :data:`stats.RESULT_KEYS`
HEAD = ("experiment", "status", "as_of_date", "window_start", "window_end", "assignment", "segment", "metric",
        "role", "kind")
TAIL = ("p_value_holm", "assigned", "srm_chi2", "srm_df", "srm_p", "srm_flag", "tagged", "disagree",
        "conflicting", "outside", "computed_at", "run_id")


def add_arguments(parser) -> None:
    parser.add_argument("--experiment", default=None, metavar="NAME",
                        help="only this experiment of conf/experiments.yaml (default: every enabled one)")


def experiments_file(cfg) -> Path:
    name = Path(str(cfg.get("experiments.config_file")))
    return name if name.is_absolute() else cfg.conf_file(str(name))


def _known_segments(cfg) -> set[str]:
    from seglake.stages.segments.job import segments_file
    from seglake.stages.segments.validation import load_segments
    return {s.name for s in load_segments(segments_file(cfg)) if s.enabled}


def members_at(ctx, day: date, names: tuple[str, ...]) -> tuple[DataFrame, str]:
    """(customer_id, segments: the target segments the customer belongs to on ``day``), and where
    the membership came from: ``history`` (gold.segment_membership rows of that as-of date) or
    ``computed`` (features and segments evaluated for that date, in memory: nothing is written
    to the segment tables, so no segment change of a past date reaches the outbox)."""
    spark, cfg = ctx.spark, ctx.cfg
    source = "history"
    members = None
    if tables.exists(spark, cfg, SEGMENT_MEMBERSHIP):
        hist = tables.read(spark, cfg, SEGMENT_MEMBERSHIP).where(F.col("as_of_date") == F.lit(day))
        if hist.limit(1).count():
            members = hist.select("customer_id", "segment")
    if members is None:
        from seglake.stages.features import FeatureParams, build, compute_features
        from seglake.stages.segments.job import _events_for_sequences, segments_file
        from seglake.stages.segments.membership import evaluate_segments, resolve_quantiles
        from seglake.stages.segments.rules import validate_rules
        from seglake.stages.segments.validation import load_segments
        source = "computed"
        log.info("gold.segment_membership has no rows for %s: evaluating the segments for that date "
                 "(in memory; the segment tables are not written)", day)
        params = FeatureParams.from_config(cfg)
        sev = enriched.read(spark, cfg, end=day, consent_at=day, columns=(
            "session_key", "event_type", "event_ts", "source", "device_type", "revenue_usd", "scroll_depth",
            "duration_s", "properties"))
        feats, _ = build(compute_features(sev, day, params), params.model_inputs)
        path = segments_file(cfg)
        segs = [s for s in load_segments(path) if s.enabled]
        from seglake.stages.segments.value import rule_schema, with_value
        validate_rules(spark, segs, rule_schema(feats.schema), str(path))
        feats, segs, _ = with_value(spark, cfg, feats, segs, day)
        events = _events_for_sequences(ctx, day, segs) if any(s.sequence for s in segs) else None
        members = evaluate_segments(feats, segs, day, events, resolve_quantiles(feats, segs)).select(
            "customer_id", "segment")
    grouped = (members.where(F.col("segment").isin(*names)).groupBy("customer_id")
               .agg(F.array_sort(F.collect_set("segment")).alias("segments")))
    return grouped, source


def _moments(row, metric: str) -> S.Moments:
    g = lambda k: row[f"{metric}__{k}"] or 0  # noqa: E731
    return S.Moments(n=int(g("n")), sum_y=float(g("sy")), sum_y2=float(g("syy")), sum_x=float(g("sx")),
                     sum_x2=float(g("sxx")), sum_xy=float(g("sxy")))


def result_rows(exp: Experiment, stats_rows: list, *, as_of: date, end: date, status: str, srm_alpha: float,
                agree: dict, run_id: str) -> list[dict]:
    """gold.ab_results rows from the per (segment, variant) sufficient statistics (driver side)."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    by_segment: dict[str, dict[str, object]] = {}
    for r in stats_rows:
        by_segment.setdefault(r["segment"], {})[r["variant"]] = r
    out: list[dict] = []
    for segment in sorted(by_segment, key=lambda s: (s != D.ALL, s)):
        rows = by_segment[segment]
        assigned = {v: int(rows[v]["assigned"]) if v in rows else 0 for v in exp.weights}
        srm = S.srm(assigned, exp.weights)
        flag = srm["srm_p"] is not None and srm["srm_p"] < srm_alpha
        seg_rows: list[dict] = []
        for metric, role in exp.metrics():
            n = retention_days(metric)
            if n is not None and (end - exp.start).days <= n:
                continue  # day N of the retention metric is not reached yet (running experiment)
            moments = {v: _moments(rows[v], metric) if v in rows else S.Moments(0, 0.0, 0.0) for v in exp.weights}
            with_cuped = exp.pre_period_days > 0 and metric != "average_order_value" and not (
                n is not None and exp.pre_period_days <= n)
            for res in S.compare(metric_kind(metric), moments, exp.control, alpha=exp.alpha,
                                 mde_rel=exp.minimum_detectable_effect, power=exp.power, with_cuped=with_cuped):
                row = {"experiment": exp.name, "status": status, "as_of_date": as_of, "window_start": exp.start,
                       "window_end": end, "assignment": exp.assignment, "segment": segment, "metric": metric,
                       "role": role, "kind": metric_kind(metric), **res}
                row.update({"p_value_holm": None, "assigned": sum(assigned.values()), **srm, "srm_flag": flag,
                            **(agree if segment == D.ALL else {k: None for k in agree}),
                            "computed_at": now, "run_id": run_id})
                seg_rows.append(row)
        # Holm within each family (secondary metrics; guardrails) per variant; primary as is
        for r in seg_rows:
            if r["role"] == "primary":
                r["p_value_holm"] = r["p_value"]
        for role in ("secondary", "guardrail"):
            for variant in {r["variant"] for r in seg_rows}:
                fam = [r for r in seg_rows if r["role"] == role and r["variant"] == variant]
                for r, p in zip(fam, S.holm([r["p_value"] for r in fam])):
                    r["p_value_holm"] = p
        out.extend(seg_rows)
    return out


def _schema() -> str:
    types = {"experiment": "string", "status": "string", "as_of_date": "date", "window_start": "date",
             "window_end": "date", "assignment": "string", "segment": "string", "metric": "string",
             "role": "string", "kind": "string", "variant": "string", "control": "string", "test": "string",
             "n_control": "bigint", "n_variant": "bigint", "chi2_df": "bigint", "needed_per_variant": "bigint",
             "significant": "boolean", "srm_flag": "boolean", "assigned": "bigint", "srm_df": "bigint",
             "tagged": "bigint", "disagree": "bigint", "conflicting": "bigint", "outside": "bigint",
             "computed_at": "timestamp", "run_id": "string"}
    cols = list(HEAD) + [k for k in S.RESULT_KEYS] + list(TAIL)
    return ", ".join(f"{c} {types.get(c, 'double')}" for c in cols)


def analyse(ctx, exp: Experiment, as_of: date, srm_alpha: float) -> dict:
    spark, cfg = ctx.spark, ctx.cfg
    if as_of <= exp.start:
        log.info("experiment %s starts on %s, after the as-of date %s: nothing to analyse yet", exp.name,
                 exp.start, as_of)
        return {"status": "not started"}
    end = min(exp.end, as_of)
    status = "complete" if as_of >= exp.end else "running"
    pre_start = exp.start - timedelta(days=exp.pre_period_days)
    events = enriched.read(spark, cfg, start=pre_start, end=end, consent_at=as_of,
                           columns=("event_date", "event_type", "revenue_usd", "properties"))
    logged = D.logged_variants(exp, events, end).cache()
    source = "events"
    if exp.assignment == "hash" or exp.segments:
        members, source = members_at(ctx, exp.start, exp.segments)
    else:
        members = None
    fresh = (D.hash_assign(exp, members) if exp.assignment == "hash" else D.logged_assign(exp, logged, members))
    tables.merge(spark, D.assignment_rows(exp, fresh, ctx.run_id), cfg, EXPERIMENT_ASSIGNMENTS,
                 keys=["experiment", "customer_id"])
    assigned = (tables.read(spark, cfg, EXPERIMENT_ASSIGNMENTS).where(F.col("experiment") == F.lit(exp.name))
                .select("customer_id", "variant", "segments"))
    agree = D.agreement(assigned, logged)
    from seglake.stages.features import FeatureParams
    outcomes = D.customer_outcomes(exp, events, assigned, end, FeatureParams.from_config(cfg).purchase_event_types)
    stats_rows = D.sufficient_statistics(exp, outcomes).collect()   # (segments + 1) x variants rows
    logged.unpersist()
    rows = result_rows(exp, stats_rows, as_of=as_of, end=end, status=status, srm_alpha=srm_alpha, agree=agree,
                       run_id=ctx.run_id)
    if not rows:
        log.warning("experiment %s: nobody assigned (no member of %s on %s, or no tagged customer)", exp.name,
                    ", ".join(exp.segments) or "the site's tags", exp.start)
        return {"status": status, "assigned": 0}
    df = spark.createDataFrame(rows, _schema())
    tables.overwrite(df, cfg, AB_RESULTS, replace_where=f"experiment = '{exp.name}'")
    if agree["disagree"] or agree["conflicting"]:
        log.warning("experiment %s: %d assigned customers are tagged with another variant in the events and %d "
                    "with several variants", exp.name, agree["disagree"], agree["conflicting"])
    primary = [r for r in rows if r["segment"] == D.ALL and r["role"] == "primary"]
    if primary and primary[0]["srm_flag"]:
        log.warning("experiment %s: SAMPLE RATIO MISMATCH (chi-square p = %.2g < %g): the assigned counts do not "
                    "match the weights; its results are not trustworthy", exp.name, primary[0]["srm_p"], srm_alpha)

    def pct(x):
        return "n/a" if x is None else f"{100 * x:+.1f}%"
    summary = {"status": status, "membership": source, "assigned": primary[0]["assigned"] if primary else 0,
               "srm": "FLAGGED" if primary and primary[0]["srm_flag"] else "ok",
               "tagged_disagreeing": agree["disagree"], "tagged_conflicting": agree["conflicting"]}
    for r in primary:
        summary[f"{r['metric']} {r['variant']} vs {r['control']}"] = (
            f"{pct(r['rel_uplift'])} [{pct(r['rel_ci_low'])}, {pct(r['rel_ci_high'])}], "
            f"p={'n/a' if r['p_value'] is None else format(r['p_value'], '.3g')}")
    return summary


def run(ctx) -> dict:
    cfg = ctx.cfg
    path = experiments_file(cfg)
    exps = load_experiments(path, _known_segments(cfg))
    only = ctx.args.get("experiment")
    if only is not None:
        names = {e.name for e in exps}
        if only not in names:
            from seglake.stages.segments.validation import did_you_mean
            raise ExperimentConfigError(f"{path}: no experiment named '{only}'{did_you_mean(only, names)}; "
                                        f"defined: {', '.join(sorted(names)) or 'none'}")
        exps = [e for e in exps if e.name == only]
    else:
        exps = [e for e in exps if e.enabled]
    as_of = ctx.resolve_as_of()
    srm_alpha = float(cfg.get("experiments.srm_alpha"))
    out: dict = {"as_of": as_of.isoformat(), "experiments": len(exps)}
    for exp in exps:
        for key, value in analyse(ctx, exp, as_of, srm_alpha).items():
            out[f"{exp.name}: {key}"] = value
    return out
