"""The sections of the report, one function per section (``spark, cfg -> HTML body``) and
``SECTIONS``, their order and titles: segment sizes and changes, cluster profiles, the
clustering sweep (elbow and silhouette), the transition matrix, the funnel and top paths, the
A/B tests, propensity calibration and scores, customer lifetime value (its own module,
``value``), and data quality. Only small aggregates are collected (segments x dates, clusters x
features, states x states, funnel steps, A/B result rows, deciles, reasons, the last run-log
rows); every collect says why it is small. A section raises
``Missing`` when its input is not built yet. The ``experiment_*`` functions are the helpers of
notebooks/experiments.py (DataFrames, not collected, and the uplift chart).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.config import Config
from seglake.core.contracts import (
    AB_RESULTS, CLUSTER_PROFILES, CLUSTER_SWEEP, JOURNEY_METRICS, JOURNEY_PATHS,
    PROPENSITY_SCORES, QUARANTINE, RUN_LOG, SEGMENT_CHANGES, SEGMENT_HEALTH, SEGMENT_MEMBERSHIP, TRANSITION_MATRIX,
)
from seglake.report.blocks import (
    Missing, _plt, esc, figure_html, finite, heatmap, html_table, interval_chart, not_built, pct, pvalue, signed_num,
    with_interval,
)
from seglake.report.data import _latest, _parent_and_children, _read, mlflow_runs
from seglake.report.value import section_value

RUN_LOG_ROWS = 30


def section_segments(spark: SparkSession, cfg: Config) -> str:
    members = _read(spark, cfg, SEGMENT_MEMBERSHIP, "segments")
    # segments x as-of dates: small
    sizes = [r.asDict() for r in members.groupBy("as_of_date", "segment").count().collect()]
    if not sizes:
        return "<p class='note'>gold.segment_membership is empty</p>"
    dates = sorted({r["as_of_date"] for r in sizes})
    latest = dates[-1]
    now = sorted((r for r in sizes if r["as_of_date"] == latest), key=lambda r: -r["count"])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * len(now) + 1)))
    ax.barh([r["segment"] for r in now][::-1], [r["count"] for r in now][::-1], color="#3b75af")
    for y, r in enumerate(now[::-1]):
        ax.text(r["count"], y, f" {r['count']:,}", va="center", fontsize=8)
    ax.set(xlabel="customers", title=f"Segment sizes at {latest}")
    parts = [f"<p>{len(now)} segments at as-of date <b>{esc(latest)}</b>; "
             f"{len(dates)} as-of date(s) in gold.segment_membership.</p>", figure_html(fig, "segment sizes")]
    if len(dates) > 1:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for seg in sorted({r["segment"] for r in sizes}):
            pts = sorted((r["as_of_date"], r["count"]) for r in sizes if r["segment"] == seg)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=seg)
        ax.set(ylabel="customers", title="Segment sizes over time")
        ax.legend(fontsize=7, ncol=2)
        fig.autofmt_xdate()
        parts.append(figure_html(fig, "segment sizes over time"))
    if tables.exists(spark, cfg, SEGMENT_CHANGES):
        changes = tables.read(spark, cfg, SEGMENT_CHANGES)
        # segments x dates x {entered, exited}: small
        rows = [r.asDict() for r in changes.groupBy("as_of_date", "segment")
                .pivot("change", ["entered", "exited"]).count().orderBy(F.desc("as_of_date"), "segment").collect()]
        for r in rows:
            r["entered"], r["exited"] = r.get("entered") or 0, r.get("exited") or 0
        parts.append("<h3>Changes (entered / exited vs the previous as-of date)</h3>")
        if rows:
            last = [r for r in rows if r["as_of_date"] == rows[0]["as_of_date"]]
            fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * len(last) + 1)))
            names = [r["segment"] for r in last]
            ax.barh(names, [r["entered"] for r in last], color="#4c9a2a", label="entered")
            ax.barh(names, [-r["exited"] for r in last], color="#c0392b", label="exited")
            ax.axvline(0, color="black", linewidth=0.6)
            ax.set(xlabel="customers (exited shown negative)", title=f"Segment changes at {rows[0]['as_of_date']}")
            ax.legend(fontsize=8)
            parts.append(figure_html(fig, "segment changes"))
        parts.append(html_table(rows, ["as_of_date", "segment", "entered", "exited"]))
    else:
        parts.append(not_built("segments", SEGMENT_CHANGES))
    if tables.exists(spark, cfg, SEGMENT_HEALTH):
        health = tables.read(spark, cfg, SEGMENT_HEALTH)
        last = _latest(health)
        cols = [c for c in ("segment", "size", "share", "revenue_share", "conversion_rate", "size_change",
                            "entered", "exited", "alert", "too_small") if c in health.columns]
        # one row per segment: small
        rows = [r.asDict() for r in health.where(F.col("as_of_date") == F.lit(last)).select(*cols)
                .orderBy(F.desc("size")).collect()]
        parts.append(f"<h3>Segment health at {esc(last)}</h3>" + html_table(rows, cols))
    return "\n".join(parts)


def section_cluster_profiles(spark: SparkSession, cfg: Config) -> str:
    prof = _read(spark, cfg, CLUSTER_PROFILES, "cluster")
    last = _latest(prof)
    # clusters x features: small
    rows = [r.asDict() for r in prof.where(F.col("as_of_date") == F.lit(last))
            .select("cluster", "label", "size", "share", "feature", "relative").collect()]
    if not rows:
        return "<p class='note'>gold.cluster_profiles is empty</p>"
    clusters = sorted({(r["cluster"], r["label"], r["size"], r["share"]) for r in rows})
    features = sorted({r["feature"] for r in rows})
    value = {(r["cluster"], r["feature"]): r["relative"] for r in rows}
    matrix = [[value.get((c[0], f)) for f in features] for c in clusters]
    names = [f"{c[0]}: {c[1]} ({c[2]:,})" for c in clusters]
    chart = heatmap(matrix, names, features, f"Cluster profiles at {last} (standardized difference from the mean)",
                    cmap="RdBu_r", center=0.0, fmt_cell="{:+.1f}", label="(cluster mean - mean) / stddev")
    table = html_table([{"cluster": c[0], "label": c[1], "size": c[2], "share": c[3]} for c in clusters])
    return f"<p>{len(clusters)} clusters at as-of date <b>{esc(last)}</b>.</p>{chart}{table}"


def section_cluster_sweep(spark: SparkSession, cfg: Config) -> str:
    rows: list[dict] = []
    source = ""
    if tables.exists(spark, cfg, CLUSTER_SWEEP):
        sweep = tables.read(spark, cfg, CLUSTER_SWEEP)
        last = _latest(sweep)
        # one row per k: small
        rows = [r.asDict() for r in sweep.where(F.col("as_of_date") == F.lit(last)).orderBy("k").collect()]
        chosen = next((r["k"] for r in rows if r.get("chosen")), None)
        source = f"gold.cluster_sweep, as-of {last}"
    if not rows:
        _, runs = mlflow_runs(cfg, "cluster")
        parent, children = _parent_and_children(runs)
        if parent is None:
            raise Missing("cluster", "a clustering sweep in the MLflow store")
        for child in children:
            m, p = child.data.metrics, child.data.params
            if "k" in p:
                rows.append({"k": int(p["k"]), **{k: m.get(k) for k in ("wssse", "silhouette", "davies_bouldin")}})
        rows.sort(key=lambda r: r["k"])
        chosen = int(parent.data.params["chosen_k"]) if "chosen_k" in parent.data.params else None
        source = (f"MLflow run {parent.info.run_id} ({parent.data.tags.get('mlflow.runName', '')}, "
                  f"rule: {parent.data.tags.get('seglake.k_rule', 'n/a')})")
    if not rows:
        raise Missing("cluster", "the per-k metrics of the clustering sweep")
    plt = _plt()
    ks = [r["k"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.plot(ks, [r.get("wssse") for r in rows], marker="o")
    a1.set(xlabel="k", ylabel="WSSSE", title="Elbow: within-cluster sum of squares")
    a2.plot(ks, [r.get("silhouette") for r in rows], marker="o", label="silhouette")
    if any(r.get("davies_bouldin") is not None for r in rows):
        a2.plot(ks, [r.get("davies_bouldin") for r in rows], marker="s", color="tab:red", label="Davies-Bouldin")
    a2.set(xlabel="k", title="Silhouette (higher better), Davies-Bouldin (lower better)")
    a2.legend(fontsize=8)
    for ax in (a1, a2):
        ax.set_xticks(ks)
        if chosen is not None:
            ax.axvline(chosen, color="grey", linestyle="--")
    fig.tight_layout()
    return (f"<p>Source: {esc(source)}. Chosen k = <b>{esc(chosen)}</b>.</p>"
            + figure_html(fig, "elbow and silhouette") + html_table(rows))


def _state_order(cfg: Config, states: set[str]) -> list[str]:
    try:
        from seglake.stages.journeys import load_states
        spec = load_states(cfg.conf_file(str(cfg.get("journeys.states_file"))))
        preferred = [spec.start, *dict.fromkeys(spec.event_states.values()), *spec.funnel,
                     spec.conversion, spec.exit]
    except Exception:  # noqa: BLE001 - ordering is cosmetic
        preferred = ["start", "browse", "search", "product_view", "cart", "checkout", "conversion", "exit"]
    ordered = [s for s in dict.fromkeys(preferred) if s in states]
    return ordered + sorted(states - set(ordered))


def section_transitions(spark: SparkSession, cfg: Config) -> str:
    matrix = _read(spark, cfg, TRANSITION_MATRIX, "journeys")
    last = _latest(matrix)
    sel = matrix.where(F.col("as_of_date") == F.lit(last)) if last is not None else matrix
    for col, val in (("order", 1), ("segment", "all"), ("channel", "all")):
        if col in sel.columns:
            sel = sel.where(F.col(col) == F.lit(val))
    # first order, overall: states x states rows
    rows = [r.asDict() for r in sel.select("from_state", "to_state", "count", "probability").collect()]
    if not rows:
        return "<p class='note'>no first-order overall transitions</p>"
    states = {r["from_state"] for r in rows} | {r["to_state"] for r in rows}
    order = _state_order(cfg, states)
    froms = [s for s in order if any(r["from_state"] == s for r in rows)]
    tos = [s for s in order if any(r["to_state"] == s for r in rows)]
    p = {(r["from_state"], r["to_state"]): r["probability"] for r in rows}
    chart = heatmap([[p.get((f, t)) for t in tos] for f in froms], froms, tos,
                    f"First-order transition probabilities (all customers, as-of {last})",
                    cmap="Blues", label="P(to | from)")
    total = sum(int(r["count"]) for r in rows)
    return f"<p>{total:,} transitions between {len(states)} states (rows sum to 1).</p>{chart}"


def section_funnel(spark: SparkSession, cfg: Config) -> str:
    metrics = _read(spark, cfg, JOURNEY_METRICS, "journeys")
    last = _latest(metrics)
    sel = metrics.where(F.col("as_of_date") == F.lit(last)) if last is not None else metrics
    sel = sel.where(F.col("metric").isin("funnel_journeys", "funnel_step_rate", "funnel_dropoff"))
    for col in ("segment", "channel"):
        if col in sel.columns:
            sel = sel.where(F.col(col) == F.lit("all"))
    # funnel steps x 3 metrics: small
    rows = [r.asDict() for r in sel.select("metric", "subject", "value", "rank").collect()]
    if not rows:
        raise Missing("journeys", "funnel rows in gold.journey_metrics")
    steps: dict[int, dict] = {}
    for r in rows:
        steps.setdefault(int(r["rank"]), {"step": r["subject"]})[r["metric"]] = r["value"]
    ordered = [steps[k] for k in sorted(steps)]
    table_rows = [{"rank": i, "step": s["step"], "journeys": int(s.get("funnel_journeys") or 0),
                   "step_rate": s.get("funnel_step_rate"), "dropoff": s.get("funnel_dropoff")}
                  for i, s in zip(sorted(steps), ordered)]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    xs = [r["step"] for r in table_rows]
    ys = [r["journeys"] for r in table_rows]
    ax.bar(xs, ys, color="#3b75af")
    for x, r in enumerate(table_rows):
        note = f"{r['journeys']:,}" + (f"\n-{r['dropoff']:.0%}" if r["dropoff"] is not None and x else "")
        ax.text(x, r["journeys"], note, ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="journeys reaching the step", title=f"Funnel and drop-off (as-of {last})")
    ax.margins(y=0.2)
    parts = [figure_html(fig, "funnel"), html_table(table_rows)]
    if tables.exists(spark, cfg, JOURNEY_PATHS):
        paths = tables.read(spark, cfg, JOURNEY_PATHS)
        plast = _latest(paths)
        psel = paths.where(F.col("as_of_date") == F.lit(plast)) if plast is not None else paths
        if "path_kind" in psel.columns:
            psel = psel.where(F.col("path_kind") == "full")
        # top paths only (the table holds the top N)
        top = [r.asDict() for r in psel.orderBy("rank").select("rank", "path", "journeys", "share").limit(10).collect()]
        parts.append("<h3>Top journey paths</h3>" + html_table(top))
    return "\n".join(parts)


AB_ALL = "(all)"  # gold.ab_results' segment of the whole population
_ROLES = {"primary": 0, "secondary": 1, "guardrail": 2}


def _ab_order(r: dict) -> tuple:
    """Primary metric first, then secondaries and guardrails; the whole population before segments."""
    return (_ROLES.get(r["role"], 3), str(r["metric"]), r["segment"] != AB_ALL, str(r["segment"]), str(r["variant"]))


def _count(value: Any) -> str:
    return "n/a" if value is None else f"{int(value):,}"


def _uplift_chart(name: str, rows: list[dict]) -> str:
    """Relative uplift (absolute where the relative one is undefined) with its interval, one line
    per metric (x segment, x variant when there are several)."""
    segments, variants = {r["segment"] for r in rows}, {r["variant"] for r in rows}
    points = []
    for r in sorted(rows, key=_ab_order):
        rel = finite(r["rel_uplift"]) is not None
        label = f"{r['metric']} ({r['role']})" + (f" | {r['segment']}" if len(segments) > 1 else "") \
            + (f" | {r['variant']}" if len(variants) > 1 else "")
        pre = "rel" if rel else "abs"
        points.append({"label": label, "value": r[f"{pre}_uplift"], "low": r[f"{pre}_ci_low"],
                       "high": r[f"{pre}_ci_high"], "relative": rel, "highlight": bool(r["significant"])})
    control = sorted({str(r["control"]) for r in rows})
    return interval_chart(points, f"{name}: uplift vs {', '.join(control)} (significant in colour)")


def _ab_table_row(r: dict, several_segments: bool, cuped: bool) -> dict:
    share = r["kind"] == "proportion"
    mean = (lambda v: pct(v, 2)) if share else (lambda v: "n/a" if finite(v) is None else f"{v:.4g}")  # noqa: E731
    diff = (lambda v: pct(v, 2, signed=True).replace("%", " pp")) if share else signed_num  # noqa: E731
    row = {"metric": f"{r['metric']} ({r['role']})", **({"segment": r["segment"]} if several_segments else {}),
           "variant vs control": f"{r['variant']} vs {r['control']}",
           "n variant / control": f"{_count(r['n_variant'])} / {_count(r['n_control'])}",
           "control": mean(r["mean_control"]), "variant": mean(r["mean_variant"]),
           "abs uplift [CI]": with_interval(r["abs_uplift"], r["abs_ci_low"], r["abs_ci_high"], diff),
           "rel uplift [CI]": with_interval(r["rel_uplift"], r["rel_ci_low"], r["rel_ci_high"],
                                            lambda v: pct(v, 1, signed=True)),
           "test": r["test"] or "n/a", "p": pvalue(r["p_value"]), "Holm p": pvalue(r["p_value_holm"])}
    if cuped:
        row["CUPED uplift [CI]"] = with_interval(r["cuped_abs_uplift"], r["cuped_ci_low"], r["cuped_ci_high"], diff)
        row["CUPED var. reduction"] = pct(r["cuped_variance_reduction"], 0)
    row.update({"power": pct(r["achieved_power"], 0), "needed per variant": _count(r["needed_per_variant"]),
                "significant": {True: "yes", False: "no"}.get(r["significant"], "n/a")})
    return row


def _experiment_html(name: str, rows: list[dict]) -> str:
    segments = sorted({r["segment"] for r in rows}, key=lambda s: (s != AB_ALL, s))
    first = {s: next(r for r in rows if r["segment"] == s) for s in segments}
    head = first[segments[0]]
    per_segment = "".join(f", {esc(s)} {_count(first[s]['assigned'])}" for s in segments if s != AB_ALL)
    parts = [f"<h3>{esc(name)}</h3><p>Status <b>{esc(head['status'])}</b> (as-of {esc(head['as_of_date'])}), "
             f"window {esc(head['window_start'])} to {esc(head['window_end'])} (end exclusive), "
             f"assignment <b>{esc(head['assignment'])}</b>, <b>{_count(head['assigned'])}</b> customers assigned"
             f"{' (' + per_segment[2:] + ')' if per_segment else ''}.</p>"]
    flagged = [s for s in segments if first[s]["srm_flag"]]
    for s in flagged:
        r = first[s]
        parts.append(f"<p class='error'><b>sample ratio mismatch: results not trustworthy</b>"
                     f"{'' if s == AB_ALL else ' (segment ' + esc(s) + ')'}: the assigned counts do not match the "
                     f"variant weights (chi-square {esc(signed_num(r['srm_chi2']).lstrip('+'))}, "
                     f"srm_p = {esc(pvalue(r['srm_p']))}).</p>")
    if not flagged:
        parts.append(f"<p>Sample ratio check: ok (srm_p = {esc(pvalue(head['srm_p']))}).</p>")
    tags = {k: head.get(k) for k in ("tagged", "disagree", "conflicting", "outside")}
    if any(tags.values()):
        parts.append(f"<p>Variant tags in the events: {_count(tags['tagged'])} assigned customers tagged, "
                     f"<b>{_count(tags['disagree'])}</b> tagged with another variant than assigned, "
                     f"<b>{_count(tags['conflicting'])}</b> with several variants, "
                     f"<b>{_count(tags['outside'])}</b> tagged but not assigned.</p>")
    parts.append(_uplift_chart(name, rows))
    cuped = any(finite(r["cuped_abs_uplift"]) is not None for r in rows)
    parts.append(html_table([_ab_table_row(r, len(segments) > 1, cuped) for r in sorted(rows, key=_ab_order)],
                            limit=1000))
    return "\n".join(parts)


def section_experiments(spark: SparkSession, cfg: Config) -> str:
    results = _read(spark, cfg, AB_RESULTS, "experiments")
    # experiments x segments x metrics x variants: small
    rows = [r.asDict() for r in results.collect()]
    if not rows:
        return "<p class='note'>gold.ab_results is empty: no experiment had started by its as-of date</p>"
    names = sorted({r["experiment"] for r in rows})
    intro = (f"<p>{len(names)} experiment(s). Intervals at 1 - alpha (95% unless the experiment sets alpha); "
             "p-values two-sided; Holm p corrects secondary metrics and guardrails within their family; abs "
             "uplift of a proportion in percentage points (pp); CUPED uses the pre-period as covariate.</p>")
    return intro + "\n".join(_experiment_html(n, [r for r in rows if r["experiment"] == n]) for n in names)


def _calibration_rows(client, run) -> list[dict]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run.info.run_id, "calibration.json", tmp)
        except Exception:  # noqa: BLE001 - run without the artifact
            return []
        data = json.loads(Path(path).read_text())
    cols, values = data.get("columns", []), data.get("data", [])
    return [dict(zip(cols, v)) for v in values]


def section_propensity(spark: SparkSession, cfg: Config) -> str:
    parts = []
    client, runs = mlflow_runs(cfg, "propensity")
    parent, children = _parent_and_children(runs)
    curves = []
    for child in children:
        rows = _calibration_rows(client, child)
        if rows:
            curves.append((child.data.tags.get("seglake.target", "?"), child.data.tags.get("seglake.model", "?"),
                           rows, child.data.metrics))
    if curves:
        plt = _plt()
        targets = sorted({c[0] for c in curves})
        fig, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4), squeeze=False)
        for ax, target in zip(axes[0], targets):
            ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="perfect")
            for t, model, rows, _ in curves:
                if t == target:
                    rows = sorted(rows, key=lambda r: r.get("mean_predicted") or 0)
                    ax.plot([r["mean_predicted"] for r in rows], [r["observed_rate"] for r in rows],
                            marker="o", label=model)
            ax.set(xlabel="mean predicted probability (decile)", ylabel="observed rate",
                   title=f"Calibration: {target}", xlim=(0, 1), ylim=(0, 1))
            ax.legend(fontsize=8)
        fig.tight_layout()
        parts.append(f"<p>Held-out calibration by decile, MLflow run {esc(parent.info.run_id)}.</p>"
                     + figure_html(fig, "propensity calibration"))
        parts.append(html_table([{"target": t, "model": m, **{k: v for k, v in metrics.items()
                                                              if k in ("auc_roc", "auc_pr", "log_loss", "brier")}}
                                 for t, m, _, metrics in curves]))
    else:
        if not tables.exists(spark, cfg, PROPENSITY_SCORES):
            raise Missing("propensity", "gold.propensity_scores and the calibration tables in the MLflow store")
        parts.append(not_built("propensity", "calibration tables in the MLflow store"))
    if tables.exists(spark, cfg, PROPENSITY_SCORES):
        scores = tables.read(spark, cfg, PROPENSITY_SCORES)
        last = _latest(scores)
        cols = [c for c in ("churn_probability", "purchase_probability") if c in scores.columns]
        sel = scores.where(F.col("as_of_date") == F.lit(last)) if last is not None else scores
        hist = {}
        for c in cols:
            # 10 buckets per score: small
            b = F.least(F.floor(F.col(c) * 10), F.lit(9)).cast("int")
            hist[c] = {r["b"]: r["n"] for r in sel.where(F.col(c).isNotNull())
                       .groupBy(b.alias("b")).agg(F.count(F.lit(1)).alias("n")).collect()}
        if hist:
            plt = _plt()
            fig, ax = plt.subplots(figsize=(7, 3.2))
            width = 0.09 / len(hist)
            for i, (c, h) in enumerate(hist.items()):
                ax.bar([b / 10 + 0.005 + (i + 0.5) * width for b in range(10)],
                       [h.get(b, 0) for b in range(10)], width=width, label=c)
            ax.set(xlabel="score", ylabel="customers", title=f"Score distribution at {last}")
            ax.legend(fontsize=8)
            parts.append(figure_html(fig, "score distribution"))
    else:
        parts.append(not_built("propensity", PROPENSITY_SCORES))
    return "\n".join(parts)


def section_quality(spark: SparkSession, cfg: Config) -> str:
    if not (tables.exists(spark, cfg, RUN_LOG) or tables.exists(spark, cfg, QUARANTINE)):
        raise Missing("clean", "ops.run_log and silver.events_quarantine")
    parts = []
    if tables.exists(spark, cfg, RUN_LOG):
        runs = tables.read(spark, cfg, RUN_LOG)
        # the last RUN_LOG_ROWS job runs: small
        rows = [r.asDict() for r in runs.orderBy(F.desc("started_at")).limit(RUN_LOG_ROWS)
                .select("started_at", "job", "status", "duration_s", "run_id", "metrics_json").collect()]
        for r in rows:
            text = r.pop("metrics_json") or "{}"
            try:
                metrics = json.loads(text)
                text = ", ".join(f"{k}={v}" for k, v in list(metrics.items())[:8]
                                 if not isinstance(v, (dict, list)))
            except ValueError:
                pass
            r["metrics"] = text[:240]
        failed = sum(1 for r in rows if r["status"] not in ("success", "noop"))
        parts.append(f"<h3>Last job runs (ops.run_log)</h3><p>{len(rows)} most recent runs, "
                     f"<b>{failed}</b> not successful.</p>"
                     + html_table(rows, ["started_at", "job", "status", "duration_s", "run_id", "metrics"]))
    else:
        parts.append(not_built("clean", RUN_LOG))
    if tables.exists(spark, cfg, QUARANTINE):
        q = tables.read(spark, cfg, QUARANTINE)
        # one row per reason code: small
        reasons = [r.asDict() for r in q.groupBy("reason").count().orderBy(F.desc("count")).collect()]
        total = sum(r["count"] for r in reasons)
        parts.append(f"<h3>Quarantine (silver.events_quarantine)</h3><p>{total:,} rejected records.</p>")
        if reasons:
            plt = _plt()
            fig, ax = plt.subplots(figsize=(7, max(2.2, 0.35 * len(reasons) + 1)))
            ax.barh([str(r["reason"]) for r in reasons][::-1], [r["count"] for r in reasons][::-1], color="#c0392b")
            ax.set(xlabel="records", title="Quarantined records by reason")
            parts.append(figure_html(fig, "quarantine reasons"))
            parts.append(html_table(reasons))
        if "_run_id" in q.columns:
            # one row per clean run: small
            per_run = [r.asDict() for r in q.groupBy("_run_id").count().orderBy(F.desc("_run_id")).limit(10).collect()]
            parts.append("<h4>Per clean run</h4>" + html_table(per_run))
    else:
        parts.append(not_built("clean", QUARANTINE))
    return "\n".join(parts)


SECTIONS: tuple[tuple[str, str, Callable[[SparkSession, Config], str]], ...] = (
    ("segments", "Segment sizes and changes over time", section_segments),
    ("cluster-profiles", "Cluster profiles", section_cluster_profiles),
    ("cluster-sweep", "Choosing k: elbow and silhouette", section_cluster_sweep),
    ("transitions", "Journey transition matrix", section_transitions),
    ("funnel", "Funnel drop-off and top paths", section_funnel),
    ("experiments", "Experiments: A/B tests", section_experiments),
    ("propensity", "Propensity calibration", section_propensity),
    ("clv", "Customer lifetime value", section_value),
    ("quality", "Data quality of the last runs", section_quality),
)
