"""The report page: the HTML document around the rendered sections (inline CSS and the small
script that marks the page ready), its default location, and ``build_report``, which renders
every section (a missing input or a failing section is shown, never fatal), adds the table
inventory with Delta versions and writes one static HTML file.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from pyspark.sql import SparkSession

from seglake.core import tables
from seglake.core.config import Config
from seglake.core.contracts import KNOWN_TABLES
from seglake.report.blocks import READY_ATTR, Missing, Section, esc, html_table
from seglake.report.sections import SECTIONS

log = logging.getLogger(__name__)


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
