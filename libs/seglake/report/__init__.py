"""``seglake report``: one static HTML page about a lakehouse (no server, no CDN, no network).

Sections (each renders what exists, else says which job builds it):

- segment sizes and their changes over time (gold.segment_membership, gold.segment_changes,
  gold.segment_health);
- cluster profiles as a heatmap (gold.cluster_profiles);
- elbow and silhouette curves of the last clustering sweep (MLflow child runs of the
  ``cluster`` stage);
- the first-order transition matrix as a heatmap (gold.transition_matrix);
- the funnel and its drop-off, and the top journey paths (gold.journey_metrics, gold.journey_paths);
- propensity calibration by decile (MLflow ``calibration.json`` of the ``propensity`` stage)
  and the score distribution (gold.propensity_scores);
- data quality of the last runs (ops.run_log, silver.events_quarantine).

Charts are matplotlib PNGs embedded as base64 ``data:`` URIs. Only small aggregates are
collected (segments x dates, clusters x features, states x states, funnel steps, deciles,
reasons, the last run-log rows); every collect says why it is small.
"""
from __future__ import annotations

import base64
import html
import io
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from seglake.core import tables
from seglake.core.contracts import KNOWN_TABLES
from seglake.core.config import Config

log = logging.getLogger(__name__)

#: marker the inline script sets on <html> once the page has run (tests look for it)
READY_ATTR = "data-seglake-report"
RUN_LOG_ROWS = 30


@dataclass
class Section:
    """One rendered section: ``status`` is ok | missing | error."""

    key: str
    title: str
    body: str
    status: str = "ok"


class Missing(FileNotFoundError):
    """A section's input is not built yet; the message names the job to run."""

    def __init__(self, job: str, what: str):
        super().__init__(f"not built yet: run `seglake run {job}` ({what} is absent)")
        self.job, self.what = job, what

    @property
    def html(self) -> str:
        return not_built(self.job, self.what)


# --------------------------------------------------------------------------- html helpers


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "NaN"
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value) if value is not None else ""


def html_table(rows: Sequence[dict], columns: Sequence[str] | None = None, limit: int = 50) -> str:
    """A plain HTML table of dict rows (escaped)."""
    rows = list(rows)[:limit]
    if not rows:
        return "<p class='note'>no rows</p>"
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(
        f"<td class='{'num' if isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) else ''}'>"
        f"{esc(fmt(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def not_built(job: str, what: str) -> str:
    return (f"<p class='missing'>not built yet: run <code>seglake run {esc(job)}</code> "
            f"({esc(what)} is absent)</p>")


def figure_html(fig, alt: str) -> str:
    """A matplotlib figure as an inline base64 PNG (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"<img class='chart' alt='{esc(alt)}' src='data:image/png;base64,{data}'>"


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def heatmap(matrix: Sequence[Sequence[float | None]], rows: Sequence[str], cols: Sequence[str], title: str,
            cmap: str = "viridis", center: float | None = None, fmt_cell: str = "{:.2f}",
            label: str = "") -> str:
    """An annotated heatmap (cells None are blank) as an <img>."""
    import numpy as np

    plt = _plt()
    data = np.array([[np.nan if v is None else float(v) for v in r] for r in matrix], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.75 * len(cols) + 2.5), max(2.5, 0.5 * len(rows) + 1.5)))
    kwargs = {}
    if center is not None:
        span = float(np.nanmax(np.abs(data - center))) if np.isfinite(data).any() else 1.0
        kwargs = {"vmin": center - (span or 1.0), "vmax": center + (span or 1.0)}
    img = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, aspect="auto", **kwargs)
    ax.set_xticks(range(len(cols)), labels=cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), labels=rows)
    if len(rows) * len(cols) <= 400:
        for i in range(len(rows)):
            for j in range(len(cols)):
                if np.isfinite(data[i, j]):
                    r, g, b, _ = img.cmap(img.norm(data[i, j]))
                    ax.text(j, i, fmt_cell.format(data[i, j]), ha="center", va="center", fontsize=7,
                            color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white")
    fig.colorbar(img, ax=ax, label=label)
    ax.set_title(title)
    return figure_html(fig, title)


# --------------------------------------------------------------------------- data access


def _read(spark: SparkSession, cfg: Config, table: str, job: str) -> DataFrame:
    if not tables.exists(spark, cfg, table):
        raise Missing(job, table)
    return tables.read(spark, cfg, table)


def _latest(df: DataFrame, column: str = "as_of_date"):
    return df.agg(F.max(column)).first()[0] if column in df.columns else None


def mlflow_runs(cfg: Config, stage: str) -> tuple[Any, list]:
    """(client, runs) of ``stage`` in the configured MLflow store, newest first; (None, []) if none.

    A local SQLite store that does not exist yet is not created.
    """
    from seglake.core import tracking

    uri = tracking.tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        return None, []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(str(cfg.get("mlflow.experiment") or "seglake"))
    if exp is None:
        return client, []
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`seglake.stage` = '{stage}'",
                              order_by=["attributes.start_time DESC"], max_results=500)
    return client, list(runs)


def _parent_and_children(runs: list) -> tuple[Any, list]:
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    if not parents:
        return None, []
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


# --------------------------------------------------------------------------- sections


def section_segments(spark: SparkSession, cfg: Config) -> str:
    members = _read(spark, cfg, "gold.segment_membership", "segments")
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
    if tables.exists(spark, cfg, "gold.segment_changes"):
        changes = tables.read(spark, cfg, "gold.segment_changes")
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
        parts.append(not_built("segments", "gold.segment_changes"))
    if tables.exists(spark, cfg, "gold.segment_health"):
        health = tables.read(spark, cfg, "gold.segment_health")
        last = _latest(health)
        cols = [c for c in ("segment", "size", "share", "revenue_share", "conversion_rate", "size_change",
                            "entered", "exited", "alert", "too_small") if c in health.columns]
        # one row per segment: small
        rows = [r.asDict() for r in health.where(F.col("as_of_date") == F.lit(last)).select(*cols)
                .orderBy(F.desc("size")).collect()]
        parts.append(f"<h3>Segment health at {esc(last)}</h3>" + html_table(rows, cols))
    return "\n".join(parts)


def section_cluster_profiles(spark: SparkSession, cfg: Config) -> str:
    prof = _read(spark, cfg, "gold.cluster_profiles", "cluster")
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
    if tables.exists(spark, cfg, "gold.cluster_sweep"):
        sweep = tables.read(spark, cfg, "gold.cluster_sweep")
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
    matrix = _read(spark, cfg, "gold.transition_matrix", "journeys")
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
    metrics = _read(spark, cfg, "gold.journey_metrics", "journeys")
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
    if tables.exists(spark, cfg, "gold.journey_paths"):
        paths = tables.read(spark, cfg, "gold.journey_paths")
        plast = _latest(paths)
        psel = paths.where(F.col("as_of_date") == F.lit(plast)) if plast is not None else paths
        if "path_kind" in psel.columns:
            psel = psel.where(F.col("path_kind") == "full")
        # top paths only (the table holds the top N)
        top = [r.asDict() for r in psel.orderBy("rank").select("rank", "path", "journeys", "share").limit(10).collect()]
        parts.append("<h3>Top journey paths</h3>" + html_table(top))
    return "\n".join(parts)


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
        if not tables.exists(spark, cfg, "gold.propensity_scores"):
            raise Missing("propensity", "gold.propensity_scores and the calibration tables in the MLflow store")
        parts.append(not_built("propensity", "calibration tables in the MLflow store"))
    if tables.exists(spark, cfg, "gold.propensity_scores"):
        scores = tables.read(spark, cfg, "gold.propensity_scores")
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
        parts.append(not_built("propensity", "gold.propensity_scores"))
    return "\n".join(parts)


def section_quality(spark: SparkSession, cfg: Config) -> str:
    if not (tables.exists(spark, cfg, "ops.run_log") or tables.exists(spark, cfg, "silver.events_quarantine")):
        raise Missing("clean", "ops.run_log and silver.events_quarantine")
    parts = []
    if tables.exists(spark, cfg, "ops.run_log"):
        runs = tables.read(spark, cfg, "ops.run_log")
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
        parts.append(not_built("clean", "ops.run_log"))
    if tables.exists(spark, cfg, "silver.events_quarantine"):
        q = tables.read(spark, cfg, "silver.events_quarantine")
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
        parts.append(not_built("clean", "silver.events_quarantine"))
    return "\n".join(parts)


SECTIONS: tuple[tuple[str, str, Callable[[SparkSession, Config], str]], ...] = (
    ("segments", "Segment sizes and changes over time", section_segments),
    ("cluster-profiles", "Cluster profiles", section_cluster_profiles),
    ("cluster-sweep", "Choosing k: elbow and silhouette", section_cluster_sweep),
    ("transitions", "Journey transition matrix", section_transitions),
    ("funnel", "Funnel drop-off and top paths", section_funnel),
    ("propensity", "Propensity calibration", section_propensity),
    ("quality", "Data quality of the last runs", section_quality),
)



# --------------------------------------------------------------------------- page


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2733;background:#f5f7fa}
header{background:#1d3557;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;opacity:.85;font-size:13px}nav{padding:8px 28px;background:#e8edf3;font-size:13px}
nav a{margin-right:14px;color:#1d3557}main{padding:8px 28px 40px}
section{background:#fff;border-radius:6px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:14px 20px;margin:16px 0}
section h2{margin:0 0 8px;font-size:18px}.status{font-size:11px;padding:2px 6px;border-radius:3px;margin-left:8px}
.ok{background:#d4edda}.missing-badge{background:#fff3cd}.error-badge{background:#f8d7da}
p.missing{background:#fff3cd;padding:8px 12px;border-radius:4px}p.error{background:#f8d7da;padding:8px 12px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}th,td{border:1px solid #d5dce4;padding:3px 8px;text-align:left}
th{background:#eef2f6}td.num{text-align:right;font-variant-numeric:tabular-nums}img.chart{max-width:100%;display:block;margin:8px 0}
code{background:#eef2f6;padding:1px 4px;border-radius:3px}
"""

SCRIPT = """
(function(){
  var sections = document.querySelectorAll('section[data-status]');
  var counts = {ok:0, missing:0, error:0};
  sections.forEach(function(s){ counts[s.getAttribute('data-status')] += 1; });
  var el = document.getElementById('report-status');
  el.textContent = sections.length + ' sections: ' + counts.ok + ' rendered, ' + counts.missing +
    ' not built yet, ' + counts.error + ' failed';
  document.documentElement.setAttribute('%s', 'ready');
})();
""" % READY_ATTR


def render_page(sections: Sequence[Section], lakehouse: str, generated: str, inventory: Sequence[dict]) -> str:
    """The whole HTML document (pure: no Spark, no I/O)."""
    nav = "".join(f"<a href='#{s.key}'>{esc(s.title)}</a>" for s in sections)
    badge = {"ok": ("ok", "rendered"), "missing": ("missing-badge", "not built yet"),
             "error": ("error-badge", "failed")}
    body = "".join(
        f"<section id='{s.key}' data-status='{s.status}'><h2>{esc(s.title)}"
        f"<span class='status {badge[s.status][0]}'>{badge[s.status][1]}</span></h2>{s.body}</section>"
        for s in sections)
    inv = html_table(inventory, ["table", "delta_version"], limit=100)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>seglake report</title><style>{CSS}</style></head>
<body><header><h1>seglake report</h1><p>lakehouse {esc(lakehouse)} &middot; generated {esc(generated)}
&middot; <span id="report-status">(script did not run)</span></p></header>
<nav>{nav}<a href='#tables'>Tables</a></nav><main>{body}
<section id='tables' data-status='ok'><h2>Tables</h2>{inv}</section></main>
<script>{SCRIPT}</script></body></html>
"""


def default_out(cfg: Config) -> Path:
    lake = cfg.lakehouse
    if "://" in lake or lake.startswith("dbfs:"):
        raise ValueError(f"the lakehouse {lake} is remote: pass --out FILE for the report")
    return Path(lake) / "report" / "index.html"


def build_report(spark: SparkSession, cfg: Config, out: str | None = None) -> str:
    """Render every section of the lakehouse ``cfg`` into one HTML file; return its path.

    Args:
        spark: the session.
        cfg: configuration (the lakehouse to report on; the MLflow store).
        out: the HTML file (default ``<lakehouse>/report/index.html``).
    """
    target = Path(out).expanduser().resolve() if out else default_out(cfg)
    sections = []
    for key, title, render in SECTIONS:
        try:
            sections.append(Section(key, title, render(spark, cfg)))
        except Missing as missing:
            sections.append(Section(key, title, missing.html, "missing"))
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            log.warning("report section %s failed: %s", key, exc, exc_info=log.isEnabledFor(logging.DEBUG))
            sections.append(Section(key, title, f"<p class='error'>could not render: {esc(type(exc).__name__)}: "
                                                f"{esc(str(exc).splitlines()[0] if str(exc) else '')}</p>", "error"))
    inventory = [{"table": t, "delta_version": v if v is not None else "not built"}
                 for t in KNOWN_TABLES for v in [tables.version(spark, cfg, t)]]
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = render_page(sections, cfg.lakehouse, generated, inventory)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    log.info("report: %s (%s)", target, ", ".join(f"{s.key}={s.status}" for s in sections))
    return str(target)


# --------------------------------------------------------------------------- notebook views
# Small aggregated DataFrames (not collected) for the notebooks in notebooks/, plus the two
# bits of glue a notebook needs outside Databricks (widgets and display).


def notebook_params(dbutils: Any = None, **defaults: str) -> dict[str, str]:
    """Notebook parameters: Databricks widgets when ``dbutils`` is given, else the environment.

    Each name ``x`` gets a text widget ``x`` (default from ``defaults``); outside Databricks the
    value is ``$SEGLAKE_<X>`` when set, else the default. Empty strings mean "not given".
    """
    import os

    values = {}
    for name, default in defaults.items():
        if dbutils is not None:
            dbutils.widgets.text(name, str(default), name)
            values[name] = dbutils.widgets.get(name)
        else:
            values[name] = os.environ.get(f"SEGLAKE_{name.upper()}", str(default))
    return values


def notebook_context(dbutils: Any = None, app_name: str = "seglake-notebook") -> tuple[SparkSession, Config, Any]:
    """(spark, cfg, as_of or None) from the widgets ``env``, ``lakehouse`` and ``as_of``.

    On Databricks the notebook's session is reused (``get_spark`` returns the active one).
    """
    from datetime import date as _date

    from seglake.core.config import load_config
    from seglake.core.spark import get_spark

    p = notebook_params(dbutils, env="local", lakehouse="", as_of="")
    cfg = load_config(p["env"] or "local", overrides={"paths": {"lakehouse": p["lakehouse"]}} if p["lakehouse"] else None)
    as_of = _date.fromisoformat(p["as_of"]) if p["as_of"] else None
    return get_spark(cfg, app_name), cfg, as_of


def show(df: DataFrame, display: Callable | None = None, rows: int = 50) -> None:
    """``display(df)`` on Databricks, else ``df.show()`` (the notebook passes its ``display``)."""
    if display is not None:
        display(df)
    else:
        df.show(rows, truncate=False)


def _at(df: DataFrame, as_of: Any) -> DataFrame:
    """Rows of ``as_of`` (default: the latest as-of date in ``df``)."""
    if "as_of_date" not in df.columns:
        return df
    day = as_of if as_of is not None else _latest(df)
    return df.where(F.col("as_of_date") == F.lit(day))


def segment_sizes(spark: SparkSession, cfg: Config) -> DataFrame:
    """``as_of_date, segment, customers`` from gold.segment_membership (every as-of date)."""
    members = _read(spark, cfg, "gold.segment_membership", "segments")
    return (members.groupBy("as_of_date", "segment").agg(F.count(F.lit(1)).alias("customers"))
            .orderBy(F.desc("as_of_date"), F.desc("customers")))


def segment_change_counts(spark: SparkSession, cfg: Config) -> DataFrame:
    """``as_of_date, segment, entered, exited`` from gold.segment_changes."""
    changes = _read(spark, cfg, "gold.segment_changes", "segments")
    return (changes.groupBy("as_of_date", "segment").pivot("change", ["entered", "exited"]).count()
            .na.fill(0, ["entered", "exited"]).orderBy(F.desc("as_of_date"), "segment"))


def segment_health(spark: SparkSession, cfg: Config, as_of: Any = None) -> DataFrame:
    """gold.segment_health at ``as_of`` (default latest), largest segment first."""
    return _at(_read(spark, cfg, "gold.segment_health", "segments"), as_of).orderBy(F.desc("size"))


def cluster_profile_matrix(spark: SparkSession, cfg: Config, as_of: Any = None) -> DataFrame:
    """One row per cluster: ``cluster, label, size, share`` + one column per feature holding the
    standardized difference of the cluster mean from the overall mean (gold.cluster_profiles)."""
    prof = _at(_read(spark, cfg, "gold.cluster_profiles", "cluster"), as_of)
    return (prof.groupBy("cluster", "label", "size", "share").pivot("feature").agg(F.first("relative"))
            .orderBy("cluster"))


def cluster_sizes(spark: SparkSession, cfg: Config, as_of: Any = None) -> DataFrame:
    """``as_of_date, cluster, label, customers`` from gold.clusters."""
    clusters = _at(_read(spark, cfg, "gold.clusters", "cluster"), as_of)
    return (clusters.groupBy("as_of_date", "cluster", "label").agg(F.count(F.lit(1)).alias("customers"))
            .orderBy("cluster"))


def transition_matrix_wide(spark: SparkSession, cfg: Config, as_of: Any = None, segment: str = "all",
                           channel: str = "all") -> DataFrame:
    """First-order transition probabilities as ``from_state`` x one column per ``to_state``."""
    matrix = _at(_read(spark, cfg, "gold.transition_matrix", "journeys"), as_of)
    sel = matrix.where((F.col("order") == 1) & (F.col("segment") == segment) & (F.col("channel") == channel))
    return sel.groupBy("from_state").pivot("to_state").agg(F.first("probability")).orderBy("from_state")


def funnel(spark: SparkSession, cfg: Config, as_of: Any = None, segment: str = "all") -> DataFrame:
    """``rank, step, journeys, step_rate, dropoff`` from gold.journey_metrics."""
    metrics = _at(_read(spark, cfg, "gold.journey_metrics", "journeys"), as_of)
    sel = metrics.where(F.col("metric").startswith("funnel_") & (F.col("segment") == segment)
                        & (F.col("channel") == "all"))
    wide = sel.groupBy("rank", F.col("subject").alias("step")).pivot(
        "metric", ["funnel_journeys", "funnel_step_rate", "funnel_dropoff"]).agg(F.first("value"))
    return wide.select("rank", "step", F.col("funnel_journeys").cast("long").alias("journeys"),
                       F.col("funnel_step_rate").alias("step_rate"), F.col("funnel_dropoff").alias("dropoff")
                       ).orderBy("rank")


def journey_metric(spark: SparkSession, cfg: Config, metric: str, as_of: Any = None,
                   segment: str = "all") -> DataFrame:
    """One metric of gold.journey_metrics (e.g. ``removal_effect``, ``conversion_probability``)."""
    metrics = _at(_read(spark, cfg, "gold.journey_metrics", "journeys"), as_of)
    return (metrics.where((F.col("metric") == metric) & (F.col("segment") == segment))
            .select("channel", "subject_type", "subject", "value", "rank").orderBy("channel", "rank", "subject"))


def top_journey_paths(spark: SparkSession, cfg: Config, as_of: Any = None, limit: int = 20) -> DataFrame:
    """The most frequent full journey paths (gold.journey_paths)."""
    paths = _at(_read(spark, cfg, "gold.journey_paths", "journeys"), as_of)
    if "path_kind" in paths.columns:
        paths = paths.where(F.col("path_kind") == "full")
    return paths.select("rank", "path", "journeys", "share").orderBy("rank").limit(limit)
