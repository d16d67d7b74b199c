"""Rate–performance curves (the study's Figure 2) and metric–performance plots, each mean
drawn with its bootstrap interval where ``conds`` carries one (``paired.condition_intervals``
joined to ``conditions``: ``score_low``/``score_high``, ``<column>_low``/``<column>_high``).

A codec's sweep of settings is one line; a point coded at a requested rate (a condition
whose rows carry ``target_bpp`` or ``target_kbps``: ``at_target``) is a condition of
another kind, drawn apart with its own marker and not joined to the sweep. Conditions a
pipeline check flagged (random weights) are drawn hollow and dotted, labelled so.

Figures are built with matplotlib's object API (``Figure``, rendered by Agg), so nothing
touches pyplot's global state or needs a display; in a notebook, a returned figure shows
itself. ``save`` writes PNG (for the HTML report) and the vector SVG and PDF a paper takes.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import numpy as np
import polars as pl
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from mpq.analysis.paired import condition_intervals
from mpq.analysis.tables import MIN_SAMPLES, conditions, flagged, load, lower_better, too_few
from mpq.means import CONDITION
from mpq.results import BASELINE
from mpq.targets import TARGET_KEYS

RATE_LABELS = {"bpp": "rate (bits per pixel, bpp)", "bps": "rate (bits per sample, bps)", "kbps": "rate (kbit/s)",
               "bits": "size (bits per sample)"}
FORMATS = ("png", "svg", "pdf")
_ANNOTATE_UP_TO = 40  # points: above this the settings are named in the legend only


def score_label(score_name: str) -> str:
    """The y-axis label of a split-level score, with its unit."""
    if score_name.startswith("sdr"):
        return f"{score_name} (dB)"
    return f"{score_name} (fraction, 0–1)"


def metric_label(metric: str) -> str:
    unit = " (dB)" if metric.startswith("psnr") or metric.endswith("_db") else ""
    return f"mean {metric}{unit}" + (" (lower is better)" if lower_better(metric) else "")


def _settings(values: list[str]) -> str:
    try:
        values = sorted(values, key=float)
    except ValueError:
        values = sorted(values)
    return f"{values[0]}–{values[-1]}" if len(values) > 3 else ", ".join(values)


def _err(g: pl.DataFrame, column: str, centre: str):
    """Error-bar lengths (2, n) from ``column``'s interval, or None where there is none."""
    low, high = f"{column}_low", f"{column}_high"
    if low not in g.columns or g[low].null_count() == g.height:
        return None
    c = g[centre].to_numpy().astype(float)
    lo, hi = g[low].fill_null(np.nan).to_numpy().astype(float), g[high].fill_null(np.nan).to_numpy().astype(float)
    return np.nan_to_num(np.vstack([c - lo, hi - c]).clip(0))


def _has_intervals(sel: pl.DataFrame) -> bool:
    return "score_low" in sel.columns and sel["score_low"].null_count() < sel.height


def _interval_note(fig: Figure, sel: pl.DataFrame) -> None:
    """Says what the bars are, or why there are none."""
    if _has_intervals(sel):
        text = "bars: bootstrap 95 % intervals over sample ids"
    elif sel["flagged"].all():
        text = "no intervals: every row is from a pipeline check (random weights)"
    elif "samples" in sel.columns and sel["samples"].max() is not None and sel["samples"].max() < MIN_SAMPLES:
        text = f"no intervals: {too_few(int(sel['samples'].max()))}"
    else:
        text = "no intervals (none computed)"
    fig.text(0.01, 0.01, text, fontsize=7, color="dimgray", ha="left", va="bottom")


def _baseline(ax, sel: pl.DataFrame) -> None:
    base = sel.filter(pl.col("codec") == BASELINE).drop_nulls("score")
    if base.height:
        y = base["score"][0]
        check = " (pipeline check: means nothing)" if base["flagged"][0] else ""
        ax.axhline(y, color="black", linestyle="--", linewidth=1, label=f"baseline (uncompressed){check}")
        if "score_low" in base.columns and base["score_low"][0] is not None:
            ax.axhspan(base["score_low"][0], base["score_high"][0], color="black", alpha=0.08, linewidth=0)


def _select(conds: pl.DataFrame, dataset: str, task: str, score_name: str) -> pl.DataFrame:
    sel = conds.filter((pl.col("dataset") == dataset) & (pl.col("task") == task) & (pl.col("score_name") == score_name))
    if sel.is_empty():
        raise ValueError(f"no conditions for dataset {dataset!r}, task {task!r}, score {score_name!r}")
    return sel.with_columns(*(pl.lit(False).alias(c) for c in ("at_target", "flagged") if c not in sel.columns))


def _codecs(sel: pl.DataFrame):
    coded = sel.filter(pl.col("codec") != BASELINE)
    return [(codec, g) for (codec,), g in coded.group_by(["codec"], maintain_order=True)]


def _figure(width: float = 7.5) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, 4.2))
    ax = fig.add_axes((0.1, 0.14, 0.56, 0.76))  # a fixed frame: the legend to the right, no layout pass
    return fig, ax


def _legend(ax) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)


def _draw(ax, conds: pl.DataFrame, x: str, annotate: bool) -> None:
    """One line per codec's sweep and a star per point coded at a target, with bars."""
    for i, (codec, g) in enumerate(_codecs(conds)):
        colour = f"C{i % 10}"
        order = next((c for c in ("bpp", "bps", "bits") if c in g.columns), x)  # joined in rate order
        for marked, sweep in g.filter(~pl.col("at_target")).drop_nulls([x, "score"]).sort(order).group_by("flagged", maintain_order=True):
            # A pipeline check's rows (random weights) mean nothing: hollow and dotted, and said.
            check = {"markerfacecolor": "none", "linestyle": ":"} if marked[0] else {}
            ax.errorbar(sweep[x].to_numpy(), sweep["score"].to_numpy(), yerr=_err(sweep, "score", "score"), xerr=_err(sweep, x, x),
                        marker="o", markersize=4, capsize=2, elinewidth=0.8, color=colour, **check,
                        label=f"{codec}, settings {_settings(sweep['setting'].to_list())}" + (" (pipeline check: means nothing)" if marked[0] else ""))
            if annotate:
                for px, py, s in zip(sweep[x], sweep["score"], sweep["setting"]):
                    ax.annotate(s, (px, py), textcoords="offset points", xytext=(3, 3), fontsize=6)
        for row in g.filter(pl.col("at_target")).drop_nulls([x, "score"]).iter_rows(named=True):
            one = pl.DataFrame([row])
            ax.errorbar([row[x]], [row["score"]], yerr=_err(one, "score", "score"), xerr=_err(one, x, x), marker="*", markersize=11,
                        linestyle="none", capsize=2, color=colour, markeredgecolor="black", label=f"{codec} at {row['setting']}")


def rate_performance(conds: pl.DataFrame, dataset: str, task: str, score_name: str, rate: str = "bpp") -> Figure:
    """Task score against mean rate (log axis), one line per codec over its settings,
    points coded at a target rate apart (stars), the baseline dashed, with intervals.
    ``conds`` is ``mpq.analysis.conditions(...)``, optionally with intervals joined."""
    sel = _select(conds, dataset, task, score_name)
    fig, ax = _figure()
    _draw(ax, sel, rate, annotate=sel.height <= _ANNOTATE_UP_TO)
    _baseline(ax, sel)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 0.3, not 3×10⁻¹
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))  # 0.2, 0.5: no crowding
    ax.set_xlabel(RATE_LABELS.get(rate, rate))
    ax.set_ylabel(score_label(score_name))
    ax.set_title(f"{dataset} · {task}: {score_name} vs rate", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    _legend(ax)
    _interval_note(fig, sel)
    return fig


def metric_performance(conds: pl.DataFrame, dataset: str, task: str, score_name: str, metric: str) -> Figure:
    """Task score against a quality metric's mean, one line per codec over its settings
    (points at a target rate apart), the baseline dashed, with intervals on both axes."""
    sel = _select(conds, dataset, task, score_name)
    if metric not in sel.columns or sel[metric].null_count() == sel.height:
        raise ValueError(f"no {metric} values for dataset {dataset!r}")
    fig, ax = _figure()
    _draw(ax, sel, metric, annotate=False)
    _baseline(ax, sel)
    ax.set_xlabel(metric_label(metric))
    ax.set_ylabel(score_label(score_name))
    ax.set_title(f"{dataset} · {task}: {score_name} vs {metric}", fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend(ax)
    _interval_note(fig, sel)
    return fig


def plot_conditions(results: str | pl.DataFrame, n_resamples: int = 1000, seed: int = 0, include_flagged: bool = False) -> pl.DataFrame:
    """What the plots draw: ``conditions`` with each mean's interval
    (``paired.condition_intervals``; ``samples``: the dataset and task's sample count),
    ``at_target`` (the condition's rows were coded at a requested rate) and ``flagged``
    (a pipeline check marked its rows: drawn hollow and dotted, without intervals, unless
    ``include_flagged``)."""
    df = load(results)
    conds = conditions(df).filter(pl.col("score_name").is_not_null())
    keys = ["dataset", "task", "codec", "setting", "score_name"]
    intervals = condition_intervals(df, n_resamples=n_resamples, seed=seed, include_flagged=include_flagged).rename({"n": "samples"})
    conds = conds.join(intervals, on=keys, how="left", nulls_equal=True)
    targeted = [pl.col(c).is_not_null() for c in TARGET_KEYS if c in df.columns]
    conds = conds.join(_marked(df, pl.any_horizontal(targeted) if targeted else pl.lit(False), "at_target"),
                       on=CONDITION, how="left", nulls_equal=True)
    flagged_rows = pl.lit(False) if include_flagged else flagged(df)
    conds = conds.join(_marked(df, flagged_rows, "flagged"), on=CONDITION, how="left", nulls_equal=True)
    return conds.with_columns(pl.col("at_target", "flagged").fill_null(False))


def _marked(df: pl.DataFrame, where: pl.Expr, name: str) -> pl.DataFrame:
    """The conditions with a row where ``where`` holds, marked True in column ``name``."""
    return df.filter(where).select(CONDITION).unique().with_columns(pl.lit(True).alias(name))


def png(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save(fig: Figure, stem: str | Path) -> bytes:
    """``stem``.png, .svg and .pdf; returns the PNG's bytes."""
    stem = Path(stem)
    data = png(fig)
    stem.with_suffix(".png").write_bytes(data)
    # Text stays text (SVG) and fonts embed as TrueType (PDF: venues reject Type 3 fonts),
    # which also halves the time to write them; no creation date: the same results give the same files.
    with matplotlib.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42}):
        for fmt in FORMATS[1:]:
            fig.savefig(stem.with_suffix(f".{fmt}"), format=fmt, metadata={"CreationDate": None} if fmt == "pdf" else {"Date": None})
    return data
