"""`seglake report`: the static HTML report, its sections, and its rendering in headless Chromium."""
from __future__ import annotations

import re
import shutil
import subprocess
from datetime import date, datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from seglake.core import ops, tables
from seglake import report

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
D1, D2 = date(2026, 10, 1), date(2026, 11, 1)


class _Sections(HTMLParser):
    """section id -> (data-status, visible text); plus every <img src> and <script src>."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, list] = {}
        self.current: str | None = None
        self.images: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.current = a["id"]
            self.sections[self.current] = [a["data-status"], ""]
        if tag == "img":
            self.images.append(a.get("src", ""))
        for key in ("src", "href"):
            if a.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(a[key])

    def handle_endtag(self, tag):
        if tag == "section":
            self.current = None

    def handle_data(self, data):
        if self.current:
            self.sections[self.current][1] += data


def parse(path: str) -> _Sections:
    parser = _Sections()
    parser.feed(Path(path).read_text(encoding="utf-8"))
    return parser


def _write_small_lakehouse(spark, cfg) -> None:
    """Tiny gold/ops/silver tables with known numbers (the shapes the stages write)."""
    members = [(f"c{i}", "vip", D1, "{}") for i in range(3)] + [(f"c{i}", "casual", D1, "{}") for i in range(3, 8)] \
        + [(f"c{i}", "vip", D2, "{}") for i in range(4)] + [(f"c{i}", "casual", D2, "{}") for i in range(5, 8)]
    tables.overwrite(spark.createDataFrame(members, "customer_id string, segment string, as_of_date date, reason string"),
                     cfg, "gold.segment_membership")
    changes = [("c3", "vip", "entered", D2, D1, "{}"), ("c3", "casual", "exited", D2, D1, "{}"),
               ("c4", "casual", "exited", D2, D1, "{}")]
    tables.overwrite(spark.createDataFrame(changes, "customer_id string, segment string, change string, "
                                                    "as_of_date date, previous_as_of_date date, reason string"),
                     cfg, "gold.segment_changes")
    prof = [(D2, c, lab, size, size / 10, f, 1.0, 0.5, 1.0, rel)
            for c, lab, size in ((0, "power users", 6), (1, "lapsed", 4))
            for f, rel in (("recency_days", -0.8 if c == 0 else 1.2), ("sessions_30d", 1.5 if c == 0 else -1.1))]
    tables.overwrite(spark.createDataFrame(prof, "as_of_date date, cluster int, label string, size long, share double, "
                                                 "feature string, cluster_mean double, overall_mean double, "
                                                 "overall_stddev double, relative double"),
                     cfg, "gold.cluster_profiles")
    trans = [(1, "all", "all", "start", "browse", 10, 1.0, D2), (1, "all", "all", "browse", "cart", 4, 0.4, D2),
             (1, "all", "all", "browse", "exit", 6, 0.6, D2), (1, "all", "all", "cart", "conversion", 3, 0.75, D2),
             (1, "all", "all", "cart", "exit", 1, 0.25, D2), (2, "all", "all", "start>browse", "cart", 4, 0.4, D2)]
    tables.overwrite(spark.createDataFrame(trans, "order int, segment string, channel string, from_state string, "
                                                  "to_state string, count long, probability double, as_of_date date"),
                     cfg, "gold.transition_matrix")
    funnel = [("all", "all", "funnel_journeys", "step", "start", 200.0, 0, D2),
              ("all", "all", "funnel_journeys", "step", "product_view", 120.0, 1, D2),
              ("all", "all", "funnel_step_rate", "step", "product_view", 0.6, 1, D2),
              ("all", "all", "funnel_dropoff", "step", "product_view", 0.4, 1, D2),
              ("all", "all", "funnel_journeys", "step", "cart", 30.0, 2, D2),
              ("all", "all", "funnel_step_rate", "step", "cart", 0.25, 2, D2),
              ("all", "all", "funnel_dropoff", "step", "cart", 0.75, 2, D2),
              ("vip", "all", "funnel_journeys", "step", "cart", 999.0, 2, D2)]
    tables.overwrite(spark.createDataFrame(funnel, "segment string, channel string, metric string, subject_type string, "
                                                   "subject string, value double, rank int, as_of_date date"),
                     cfg, "gold.journey_metrics")
    log = ops.run_log_row(spark, "clean", "run-1", {"rows_in": 100, "quarantined": 7},
                          datetime(2026, 11, 1, 10, 0), "success")
    tables.overwrite(log.unionByName(ops.run_log_row(spark, "ingest", "run-1", {"files": 3},
                                                     datetime(2026, 11, 1, 9, 0), "failed")), cfg, "ops.run_log")
    quarantine = [("broken_json", "run-1")] * 4 + [("future_ts", "run-1")] * 3
    tables.overwrite(spark.createDataFrame(quarantine, "reason string, _run_id string"), cfg, "silver.events_quarantine")
    _write_ab_results(spark, cfg)


AB_COLUMNS = (
    "experiment status as_of_date window_start window_end assignment segment metric role kind variant control "
    "n_control n_variant mean_control mean_variant sd_control sd_variant abs_uplift abs_ci_low abs_ci_high "
    "rel_uplift rel_ci_low rel_ci_high test statistic df p_value chi2 chi2_df chi2_p chi2_yates chi2_yates_p "
    "achieved_power needed_per_variant cuped_theta cuped_abs_uplift cuped_ci_low cuped_ci_high cuped_p_value "
    "cuped_variance_reduction significant p_value_holm assigned srm_chi2 srm_df srm_p srm_flag tagged disagree "
    "conflicting outside computed_at run_id").split()


def _ab_schema() -> str:
    try:
        from seglake.stages.experiments.job import _schema
        return _schema()
    except ImportError:  # the stage's own schema when it imports; else the same columns by hand
        text = {"experiment", "status", "assignment", "segment", "metric", "role", "kind", "variant", "control",
                "test", "run_id"}
        other = {"as_of_date": "date", "window_start": "date", "window_end": "date", "significant": "boolean",
                 "srm_flag": "boolean", "computed_at": "timestamp"}
        longs = {"n_control", "n_variant", "chi2_df", "needed_per_variant", "assigned", "srm_df", "tagged",
                 "disagree", "conflicting", "outside"}
        return ", ".join(f"{c} {'string' if c in text else other.get(c, 'bigint' if c in longs else 'double')}"
                         for c in AB_COLUMNS)


def _ab_row(**values) -> dict:
    return {**dict.fromkeys(AB_COLUMNS), "as_of_date": D2, "window_start": D1, "computed_at": datetime(2026, 11, 1),
            "run_id": "run-ab", "control": "A", "variant": "B", **values}


def _write_ab_results(spark, cfg) -> None:
    """gold.ab_results of two experiments: exp_checkout_v2 (logged, SRM flagged, degenerate guardrail)
    and free_shipping_loyal (hash, running, two target segments)."""
    from seglake.core.contracts import AB_RESULTS

    checkout = dict(experiment="exp_checkout_v2", status="complete", window_end=date(2026, 10, 29),
                    assignment="logged", segment="(all)", assigned=2_000, srm_chi2=12.5, srm_df=1, srm_p=0.0004,
                    srm_flag=True, tagged=950, disagree=3, conflicting=1, outside=2)
    loyal = dict(experiment="free_shipping_loyal", status="running", window_end=D2, assignment="hash",
                 control="control", variant="treatment", srm_chi2=0.25, srm_df=1, srm_p=0.62, srm_flag=False,
                 metric="conversion_rate", role="primary", kind="proportion", test="two-proportion z")
    rows = [
        _ab_row(**checkout, metric="conversion_rate", role="primary", kind="proportion", n_control=1000,
                n_variant=1000, mean_control=0.1, mean_variant=0.125, abs_uplift=0.025, abs_ci_low=0.005,
                abs_ci_high=0.045, rel_uplift=0.25, rel_ci_low=0.05, rel_ci_high=0.45, test="two-proportion z",
                p_value=0.0123, p_value_holm=0.0123, achieved_power=0.81, needed_per_variant=1200, significant=True),
        # control mean 0: the relative uplift is undefined (null), the chart falls back to the absolute one
        _ab_row(**checkout, metric="revenue_per_customer", role="secondary", kind="mean", n_control=1000,
                n_variant=1000, mean_control=0.0, mean_variant=3.5, abs_uplift=3.5, abs_ci_low=-1.2, abs_ci_high=8.2,
                test="welch t", p_value=0.15, p_value_holm=0.3, cuped_abs_uplift=3.1, cuped_ci_low=-0.9,
                cuped_ci_high=7.1, cuped_variance_reduction=0.42, significant=False),
        # degenerate: nothing could be computed
        _ab_row(**checkout, metric="retention_14d", role="guardrail", kind="proportion", n_control=0, n_variant=0),
        _ab_row(**loyal, segment="(all)", assigned=3_000, tagged=0, disagree=0, conflicting=0, outside=0,
                n_control=1500, n_variant=1500, mean_control=0.2, mean_variant=0.2025, abs_uplift=0.0025,
                abs_ci_low=-0.0091, abs_ci_high=0.0141, rel_uplift=0.0123, rel_ci_low=-0.0456, rel_ci_high=0.0789,
                p_value=0.7, p_value_holm=0.7, achieved_power=0.35, needed_per_variant=5400, significant=False),
        _ab_row(**loyal, segment="repeat_buyers", assigned=1_800, n_control=900, n_variant=900, mean_control=0.15,
                mean_variant=0.147, abs_uplift=-0.003, abs_ci_low=-0.02, abs_ci_high=0.014, rel_uplift=-0.02,
                rel_ci_low=-0.13, rel_ci_high=0.09, p_value=0.45, p_value_holm=0.45, significant=False),
        _ab_row(**loyal, segment="vip", assigned=1_200, n_control=600, n_variant=600, mean_control=0.3,
                mean_variant=0.36, abs_uplift=0.06, abs_ci_low=0.03, abs_ci_high=0.09, rel_uplift=0.2,
                rel_ci_low=0.1, rel_ci_high=0.3, p_value=0.00004, p_value_holm=0.00004, significant=True),
    ]
    tables.overwrite(spark.createDataFrame(rows, _ab_schema()), cfg, AB_RESULTS)


def _log_cluster_sweep(cfg) -> dict[int, dict]:
    """A clustering sweep in the test's MLflow store, tagged like `seglake run cluster` does."""
    import mlflow

    from seglake.core import tracking

    tracking.setup(cfg)
    sweep = {3: {"wssse": 90.0, "silhouette": 0.41, "davies_bouldin": 0.9},
             4: {"wssse": 55.0, "silhouette": 0.52, "davies_bouldin": 0.7},
             5: {"wssse": 50.0, "silhouette": 0.47, "davies_bouldin": 0.8}}
    with mlflow.start_run(run_name="cluster 2026-11-01"):
        mlflow.set_tags({"seglake.stage": "cluster", "seglake.k_rule": "best silhouette"})
        mlflow.log_param("chosen_k", 4)
        for k, metrics in sweep.items():
            with mlflow.start_run(run_name=f"k={k}", nested=True):
                mlflow.set_tags({"seglake.stage": "cluster"})
                mlflow.log_params({"k": k})
                mlflow.log_metrics(metrics)
    return sweep


@pytest.fixture
def small_report(spark, cfg, tmp_path):
    _write_small_lakehouse(spark, cfg)
    sweep = _log_cluster_sweep(cfg)
    path = report.build_report(spark, cfg, str(tmp_path / "out" / "report.html"))
    return path, sweep


def test_sections_render_the_numbers_of_their_tables(small_report):
    path, sweep = small_report
    page = parse(path)
    status = {k: v[0] for k, v in page.sections.items()}
    assert status == {"segments": "ok", "cluster-profiles": "ok", "cluster-sweep": "ok", "transitions": "ok",
                      "funnel": "ok", "experiments": "ok", "propensity": "missing", "clv": "missing", "quality": "ok",
                      "tables": "ok"}
    text = {k: re.sub(r"\s+", " ", v[1]) for k, v in page.sections.items()}
    # segments: 2 segments at the latest date, 2 dates; changes: vip +1, casual -2
    assert "2 segments at as-of date 2026-11-01" in text["segments"] and "2 as-of date(s)" in text["segments"]
    assert "2026-11-01vip10" in text["segments"].replace(" ", "") and "2026-11-01casual02" in text["segments"].replace(" ", "")
    assert "2 clusters at as-of date 2026-11-01" in text["cluster-profiles"]
    assert "power users" in text["cluster-profiles"] and "lapsed" in text["cluster-profiles"]
    # sweep from MLflow: chosen k and the per-k metrics
    assert "Chosen k = 4" in text["cluster-sweep"]
    for k, m in sweep.items():  # table row k, wssse, silhouette, davies_bouldin
        assert f"{k}{m['wssse']:g}{m['silhouette']:g}{m['davies_bouldin']:g}" in text["cluster-sweep"].replace(" ", "")
    # transitions: only the first-order overall rows (10+4+6+3+1 = 24), 5 states
    assert "24 transitions between 5 states" in text["transitions"]
    # funnel: overall rows only (the vip row's 999 is not shown)
    assert "200" in text["funnel"] and "120" in text["funnel"] and "999" not in text["funnel"]
    assert "0.75" in text["funnel"]
    # propensity: nothing built -> says which job to run
    assert "not built yet: run seglake run propensity" in text["propensity"]
    # quality: the failed ingest run and the 7 quarantined records by reason
    assert "2 most recent runs, 1 not successful" in text["quality"]
    assert "7 rejected records" in text["quality"] and "broken_json4" in text["quality"].replace(" ", "")
    # charts are inline PNGs, nothing is fetched from the network
    assert len(page.images) >= 7 and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert page.external == []


def _section_html(path: str, key: str) -> str:
    page = Path(path).read_text(encoding="utf-8")
    return re.search(rf"<section id='{key}'.*?</section>", page, re.S).group(0)


def test_experiments_section_shows_each_experiment_its_srm_flag_and_uplifts(small_report):
    path, _ = small_report
    status, raw = parse(path).sections["experiments"]
    assert status == "ok"
    text = re.sub(r"\s+", " ", raw)
    assert "2 experiment(s)" in text
    assert re.search(r"\bNone\b|\bnan\b|\bNaN\b|\binf\b", text) is None, text
    checkout, loyal = text.split("free_shipping_loyal", 1)
    assert "exp_checkout_v2" in checkout
    # the header line: status, window (end exclusive), assignment, assigned customers (per segment)
    assert ("Status complete (as-of 2026-11-01), window 2026-10-01 to 2026-10-29 (end exclusive), "
            "assignment logged, 2,000 customers assigned.") in checkout
    assert ("Status running (as-of 2026-11-01), window 2026-10-01 to 2026-11-01 (end exclusive), assignment hash, "
            "3,000 customers assigned (repeat_buyers 1,800, vip 1,200).") in loyal
    # SRM: the warning on the flagged experiment only
    assert "sample ratio mismatch: results not trustworthy: the assigned counts do not match the variant weights " \
           "(chi-square 12.5, srm_p = <0.001)" in checkout
    assert "sample ratio mismatch" not in loyal.lower() and "Sample ratio check: ok (srm_p = 0.620)" in loyal
    # tag agreement only where some customer was tagged
    assert ("950 assigned customers tagged, 3 tagged with another variant than assigned, 1 with several variants, "
            "2 tagged but not assigned") in checkout
    assert "Variant tags" not in loyal
    # uplifts as printed: proportions in % and pp, means as numbers, p-values, power, sample size
    cells = lambda block: re.findall(r"<td[^>]*>([^<]*)</td>", block)  # noqa: E731
    html = _section_html(path, "experiments")
    raw_checkout, raw_loyal = html.split("free_shipping_loyal</h3>", 1)
    conversion = cells(raw_checkout)[:16]
    assert conversion == ["conversion_rate (primary)", "B vs A", "1,000 / 1,000", "10.00%", "12.50%",
                          "+2.50 pp [+0.50 pp, +4.50 pp]", "+25.0% [+5.0%, +45.0%]", "two-proportion z", "0.012",
                          "0.012", "n/a", "n/a", "81%", "1,200", "yes", "revenue_per_customer (secondary)"], conversion
    revenue = cells(raw_checkout)[15:30]
    assert revenue == ["revenue_per_customer (secondary)", "B vs A", "1,000 / 1,000", "0", "3.5", "+3.5 [-1.2, +8.2]",
                       "n/a", "welch t", "0.150", "0.300", "+3.1 [-0.9, +7.1]", "42%", "n/a", "n/a", "no"], revenue
    assert cells(raw_checkout)[30:] == ["retention_14d (guardrail)", "B vs A", "0 / 0", "n/a", "n/a", "n/a", "n/a",
                                        "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a", "n/a"]
    # two segments: one row per segment, the whole population first; no CUPED columns without CUPED
    loyal_cells = cells(raw_loyal)
    assert [c for c in loyal_cells if c in ("(all)", "repeat_buyers", "vip")] == ["(all)", "repeat_buyers", "vip"]
    assert "CUPED" not in raw_loyal and "CUPED uplift [CI]" in raw_checkout
    assert "+1.2% [-4.6%, +7.9%]" in loyal_cells and "-2.0% [-13.0%, +9.0%]" in loyal_cells
    assert "+20.0% [+10.0%, +30.0%]" in loyal_cells and "&lt;0.001" in loyal_cells
    # one uplift chart per experiment, inline
    charts = re.findall(r"<img class='chart' alt='([^']*)' src='data:image/png;base64,", html)
    assert [c.split(":")[0] for c in charts] == ["exp_checkout_v2", "free_shipping_loyal"]


def test_empty_lakehouse_says_which_job_builds_each_section(spark, cfg, tmp_path):
    path = report.build_report(spark, cfg, str(tmp_path / "r.html"))
    page = parse(path)
    expected = {"segments": "segments", "cluster-profiles": "cluster", "cluster-sweep": "cluster",
                "transitions": "journeys", "funnel": "journeys", "experiments": "experiments",
                "propensity": "propensity", "clv": "clv", "quality": "clean"}
    for key, job in expected.items():
        status, text = page.sections[key]
        assert status == "missing", (key, text)
        assert f"not built yet: run seglake run {job}" in re.sub(r"\s+", " ", text)
    # reading the report created no MLflow store
    assert not Path(cfg.lakehouse, "_mlflow", "mlflow.db").exists()


def test_default_location_is_under_the_lakehouse(cfg):
    assert report.default_out(cfg) == Path(cfg.lakehouse) / "report" / "index.html"
    remote = cfg.with_overrides({"paths": {"lakehouse": "s3a://bucket/lake"}})
    with pytest.raises(ValueError, match="--out"):
        report.default_out(remote)


# --------------------------------------------------------------------------- browser


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("Chromium is needed to render the report: apt-get install -y chromium")


def render_in_browser(html_path: str, screenshot: Path, tmp_path: Path) -> tuple[str, str]:
    """(dumped DOM, browser log) of the page in headless Chromium; saves a screenshot."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--hide-scrollbars", "--enable-logging=stderr", "--v=0"]
    url = Path(html_path).resolve().as_uri()
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    shot = subprocess.run([chromium(), *flags, f"--user-data-dir={tmp_path / 'chrome-shot'}",
                           "--window-size=1280,4400", f"--screenshot={screenshot}", url],
                          capture_output=True, text=True, timeout=180)
    dom = subprocess.run([chromium(), *flags, f"--user-data-dir={tmp_path / 'chrome-dom'}",
                          "--virtual-time-budget=5000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout, shot.stderr + dom.stderr


def check_browser_render(html_path: str, name: str, tmp_path: Path) -> str:
    screenshot = ARTIFACTS / name
    dom, browser_log = render_in_browser(html_path, screenshot, tmp_path)
    errors = [l for l in browser_log.splitlines() if "Uncaught" in l or "SyntaxError" in l]
    assert errors == [], f"script errors in the report: {errors}"
    # the inline script ran to its end
    assert f'{report.READY_ATTR}="ready"' in dom
    status = re.search(r'id="report-status">([^<]*)<', dom).group(1)
    assert re.fullmatch(r"\d+ sections: \d+ rendered, \d+ not built yet, 0 failed", status), status
    assert screenshot.exists() and screenshot.stat().st_size > 20_000
    return status


def test_report_renders_in_headless_chromium(small_report, tmp_path):
    path, _ = small_report
    status = check_browser_render(path, "report-small.png", tmp_path)
    assert status == "10 sections: 8 rendered, 2 not built yet, 0 failed"


@pytest.mark.slow
def test_report_of_the_pipeline_lakehouse(spark, pipeline_through, monkeypatch, tmp_path):
    cfg, _ = pipeline_through("journeys")
    store = Path(cfg.lakehouse) / "_mlflow" / "mlflow.db"
    if store.exists():  # the pipeline's own MLflow store, not this test's temp one
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = report.build_report(spark, cfg, str(tmp_path / "pipeline" / "index.html"))
    page = parse(path)
    inputs = {"segments": "gold.segment_membership", "cluster-profiles": "gold.cluster_profiles",
              "transitions": "gold.transition_matrix", "funnel": "gold.journey_metrics",
              "experiments": "gold.ab_results", "clv": "gold.customer_value", "quality": "ops.run_log"}
    for key, table in inputs.items():
        status, text = page.sections[key]
        built = tables.exists(spark, cfg, table)
        assert status == ("ok" if built else "missing"), (key, status, text[:300])
    assert all(s[0] != "error" for s in page.sections.values()), \
        {k: v[1][:200] for k, v in page.sections.items() if v[0] == "error"}
    check_browser_render(path, "report-pipeline.png", tmp_path)
