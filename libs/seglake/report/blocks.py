"""HTML building blocks of the report: escaping and number formatting (also percentages, p-values
and intervals), tables, the "not built yet" notice, matplotlib figures as inline base64 PNGs, the
annotated heatmap and the interval (forest) chart, plus the
``Section`` record, the ``Missing`` error a section raises when its input is absent, and the
``READY_ATTR`` marker the page script sets (a leaf module: no Spark, no other report module).
"""
from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

#: marker the inline script sets on <html> once the page has run (tests look for it)
READY_ATTR = "data-seglake-report"


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


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else None (None, nan, inf, non-numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def pct(value: Any, digits: int = 1, signed: bool = False) -> str:
    """A fraction as a percentage: ``12.3%`` (``+4.0%`` when signed); ``n/a`` when not a finite number."""
    v = finite(value)
    return "n/a" if v is None else f"{100 * v:{'+' if signed else ''}.{digits}f}%"


def signed_num(value: Any) -> str:
    """A signed number: ``+3.456``, ``-0.01234``, ``+12,345``; ``n/a`` when not a finite number."""
    v = finite(value)
    if v is None:
        return "n/a"
    return f"{v:+,.0f}" if abs(v) >= 1000 else f"{v:+.4g}"


def pvalue(value: Any) -> str:
    """A p-value: ``0.032``, ``<0.001``; ``n/a`` when not a finite number."""
    v = finite(value)
    if v is None:
        return "n/a"
    return "<0.001" if v < 0.001 else f"{v:.3f}"


def with_interval(value: Any, low: Any, high: Any, show: Callable[[Any], str] = signed_num) -> str:
    """``+4.0% [-1.0%, +9.0%]`` (the interval only when both ends are finite); ``n/a`` without a value."""
    if finite(value) is None:
        return "n/a"
    if finite(low) is None or finite(high) is None:
        return show(value)
    return f"{show(value)} [{show(low)}, {show(high)}]"


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


def interval_chart(rows: Sequence[dict], title: str) -> str:
    """Point estimates with their interval bars, one line per row from the top, and a vertical
    line at 0, as an <img> ("" when no row has a value).

    Each row: ``label``, ``value``, ``low``, ``high`` (None: no bar), ``relative`` (x axis in
    percent; rows with False go to a second panel in their own units) and ``highlight`` (drawn
    in colour, else grey).
    """
    from matplotlib.ticker import PercentFormatter

    panels = [(rel, [r for r in rows if r.get("relative") is rel and finite(r.get("value")) is not None])
              for rel in (True, False)]
    panels = [(rel, rs) for rel, rs in panels if rs]
    if not panels:
        return ""
    plt = _plt()
    sizes = [len(rs) for _, rs in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 0.42 * sum(sizes) + 1.3 * len(panels)), squeeze=False,
                             gridspec_kw={"height_ratios": sizes})
    for ax, (rel, rs) in zip(axes[:, 0], panels):
        for y, r in enumerate(rs):
            v, lo, hi = finite(r["value"]), finite(r.get("low")), finite(r.get("high"))
            color = "#c0392b" if r.get("highlight") and v < 0 else "#2e7d32" if r.get("highlight") else "#7f8c8d"
            err = [[v - lo], [hi - v]] if lo is not None and hi is not None else None
            ax.errorbar([v], [y], xerr=err, fmt="o", color=color, capsize=4, markersize=6)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(rs)), labels=[str(r["label"]) for r in rs])
        ax.set_ylim(len(rs) - 0.5, -0.5)
        ax.grid(axis="x", alpha=0.3)
        if rel:
            ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
            ax.set_xlabel("relative uplift vs control (interval bars)")
        else:
            ax.set_xlabel("absolute uplift vs control, metric units (relative uplift undefined)")
    axes[0, 0].set_title(title)
    fig.tight_layout()
    return figure_html(fig, title)
