"""The one Great Expectations adapter (GX 1.x). Nothing else in seglake imports GX.

Suites are GX 1.x ExpectationSuite JSON files in ``expectations/`` named after the table
they guard (``expectations/silver_events.json``). :func:`validate` runs one suite on a Spark
DataFrame inside the job with an ephemeral context (Spark datasource -> dataframe asset ->
whole-dataframe batch definition -> ValidationDefinition -> Checkpoint), writes the result
JSON per run and refreshes the Data Docs HTML under ``<lakehouse>/_quality/``.

Expectations with ``"severity": "critical"`` (the GX default) fail the table; ``warning``
and ``info`` ones are reported only: the log line and :meth:`QualityResult.headline` name
them as "only warned" (never "all passed"), by type and column, never with data values.
Row-level rules that route single records to quarantine live in the stage (as Spark
expressions); the suite is the table-level gate.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pyspark.sql import DataFrame

from seglake.core.config import Config, join

log = logging.getLogger(__name__)


class QualityError(ValueError):
    """A table-level data quality failure (the message names the failed expectations)."""


def expectation_name(item: Mapping[str, Any]) -> str:
    """How messages name an expectation: its type and column, e.g.
    ``expect_column_values_to_not_be_null(duration_s)``; an ``info`` one is marked ``[info]``.
    Never an observed value: those are data (the result JSON and the Data Docs keep them)."""
    column = item.get("column")
    name = f"{item['type']}({column})" if column else str(item["type"])
    return name + (f" [{item['severity']}]" if item.get("severity") not in (None, "critical", "warning") else "")


def _names(items: list[dict]) -> str:
    return ", ".join(sorted(expectation_name(i) for i in items))


@dataclass
class QualityResult:
    """Outcome of one suite run.

    ``success`` is False only when a critical (error-level) expectation failed; a failed
    ``warning``/``info`` one is listed in ``warnings`` and does not count as passed.
    """

    suite: str
    success: bool
    statistics: dict
    failed: list[dict] = field(default_factory=list)       # critical expectations that failed
    warnings: list[dict] = field(default_factory=list)     # non-critical expectations that failed
    results_path: str | None = None
    docs_path: str | None = None

    @property
    def evaluated(self) -> int:
        """Expectations evaluated (GX's statistic; else those passed + failed + warned)."""
        n = self.statistics.get("evaluated_expectations")
        if n is None:
            n = int(self.statistics.get("successful_expectations") or 0) + len(self.failed) + len(self.warnings)
        return int(n)

    @property
    def passed(self) -> int:
        """Expectations that held: neither failed at error level nor only warned."""
        return self.evaluated - len(self.failed) - len(self.warnings)

    def headline(self) -> str:
        """The outcome in one line, for a job summary: what passed, what failed at error level
        and what only warned, by name (never data values), e.g.
        ``23 of 24 expectations passed; 0 failed at error level; 1 only warned:
        expect_column_values_to_not_be_null(duration_s)``, or ``all 24 expectations passed``."""
        if not self.failed and not self.warnings:
            return f"all {self.evaluated} expectations passed"
        failed = f"{len(self.failed)} failed at error level" + (f": {_names(self.failed)}" if self.failed else "")
        warned = f"{len(self.warnings)} only warned" + (f": {_names(self.warnings)}" if self.warnings else "")
        return f"{self.passed} of {self.evaluated} expectations passed; {failed}; {warned}"

    def summary(self) -> str:
        """One sentence with the suite's name and :meth:`headline`'s facts (logged by
        :func:`validate`; the message of :class:`QualityError`)."""
        if not self.failed:
            return f"suite {self.suite}: {self.headline()}"
        warned = f"{len(self.warnings)} only warned" + (f": {_names(self.warnings)}" if self.warnings else "")
        return (f"suite {self.suite} failed {len(self.failed)} critical expectation(s): {_names(self.failed)}; "
                f"{self.passed} of {self.evaluated} passed; {warned}")


def expectations_dir(cfg: Config) -> Path:
    """``clean.expectations_dir`` when set, else ``expectations/`` next to the conf folder."""
    configured = cfg.get("clean.expectations_dir")
    return Path(configured) if configured else Path(cfg.conf_dir).resolve().parent / "expectations"


def quality_dir(cfg: Config) -> str:
    """Where results and Data Docs go: ``<lakehouse>/_quality``."""
    return join(cfg.lakehouse, "_quality")


def load_suite(name: str, directory: Path) -> dict:
    """Read ``<directory>/<name>.json``: a GX 1.x suite (``name`` + ``expectations``)."""
    path = Path(directory) / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"expectation suite {name!r} not found at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"expectation suite {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("expectations"), list):
        raise ValueError(f"expectation suite {path} must be an object with an 'expectations' list")
    return data


def _suite(gx: Any, data: Mapping) -> Any:
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration
    from great_expectations.expectations.metadata_types import FailureSeverity

    suite = gx.ExpectationSuite(name=data.get("name") or "suite", meta=data.get("meta") or {})
    for exp in data["expectations"]:
        conf = ExpectationConfiguration(type=exp["type"], kwargs=exp.get("kwargs", {}),
                                        meta=exp.get("meta") or {},
                                        severity=FailureSeverity(exp.get("severity", "critical")))
        suite.add_expectation_configuration(conf)
    return suite


def _local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def validate(df: DataFrame, suite_name: str, cfg: Config, run_id: str,
             parameters: Mapping[str, Any] | None = None, build_docs: bool = True) -> QualityResult:
    """Validate ``df`` against suite ``suite_name``; save the result JSON and Data Docs.

    Args:
        df: the Spark DataFrame to validate (not collected; GX computes metrics in Spark).
        suite_name: file stem in the expectations folder.
        cfg: configuration (expectations folder, lakehouse).
        run_id: the job's run id (names the result file).
        parameters: values for ``{"$PARAMETER": name}`` placeholders in the suite.
        build_docs: refresh the Data Docs HTML site.

    Returns:
        QualityResult; the caller decides whether to raise (see :func:`require`).
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    data = load_suite(suite_name, expectations_dir(cfg))
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    base = quality_dir(cfg)
    local = _local(base)
    docs_dir = join(base, "data_docs")
    if build_docs and local:
        context.add_data_docs_site(site_name="seglake", site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": docs_dir.removeprefix("file://")},
        })
    asset = context.data_sources.add_spark(name="seglake").add_dataframe_asset(name=suite_name)
    batch_def = asset.add_batch_definition_whole_dataframe("whole_dataframe")
    suite = context.suites.add(_suite(gx, data))
    vdef = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{suite_name}_validation", data=batch_def, suite=suite))
    actions = []
    if build_docs and local:
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["seglake"]))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=f"{suite_name}_checkpoint", validation_definitions=[vdef], actions=actions,
        result_format={"result_format": "SUMMARY", "partial_unexpected_count": 0}))
    run = checkpoint.run(batch_parameters={"dataframe": df},
                         expectation_parameters=dict(parameters or {}))
    vres = next(iter(run.run_results.values()))

    failed, warnings = [], []
    for res in vres.results:
        if res.success:
            continue
        conf = res.expectation_config
        item = {"type": conf.type, "column": conf.kwargs.get("column"),
                "observed": res.result.get("observed_value", res.result.get("unexpected_count")),
                "severity": str(getattr(conf, "severity", "critical")).split(".")[-1].lower()}
        (failed if item["severity"] == "critical" else warnings).append(item)

    result = QualityResult(suite=suite_name, success=not failed, statistics=dict(vres.statistics),
                           failed=failed, warnings=warnings)
    if local:
        out = Path(join(base, "results", suite_name, f"{run_id}.json").removeprefix("file://"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(vres.to_json_dict(), indent=1, default=str), encoding="utf-8")
        result.results_path = str(out)
        if build_docs:
            result.docs_path = str(Path(docs_dir.removeprefix("file://")) / "index.html")
    else:  # object storage: GX's filesystem backends do not reach it; the run log keeps the outcome
        log.warning("quality results for %s are not written: %s is not a local path", suite_name, base)
    # a warned or failed expectation is logged as a warning: "all passed" only when all did
    log.log(logging.WARNING if failed or warnings else logging.INFO, "%s", result.summary())
    return result


def require(result: QualityResult, table: str) -> None:
    """Raise :class:`QualityError` (naming the table and the failures) when ``result`` failed."""
    if not result.success:
        raise QualityError(f"{table} was not written: {result.summary()}.")
