"""Rate–performance curves (the study's Figure 2) and metric–performance scatter plots.

Figures are built with matplotlib's object API (``Figure``, rendered by Agg), so nothing
touches pyplot's global state or needs a display; in a notebook, a returned figure shows
itself.
"""

from __future__ import annotations

import io

import polars as pl
from matplotlib.figure import Figure

from mpq.analysis.tables import lower_better
from mpq.results import BASELINE

RATE_LABELS = {"bpp": "bits per pixel", "bps": "bits per sample", "bits": "bits per sample (total)"}


def _codec_groups(conds: pl.DataFrame):
    coded = conds.filter(pl.col("codec") != BASELINE)
    return [(codec, g) for (codec,), g in coded.group_by(["codec"], maintain_order=True)]


def _baseline(ax, conds: pl.DataFrame) -> None:
    base = conds.filter(pl.col("codec") == BASELINE)["score"].drop_nulls()
    if base.len():
        ax.axhline(base[0], color="black", linestyle="--", linewidth=1, label="baseline")


def _select(conds: pl.DataFrame, dataset: str, task: str, score_name: str) -> pl.DataFrame:
    sel = conds.filter((pl.col("dataset") == dataset) & (pl.col("task") == task) & (pl.col("score_name") == score_name))
    if sel.is_empty():
        raise ValueError(f"no conditions for dataset {dataset!r}, task {task!r}, score {score_name!r}")
    return sel


def rate_performance(conds: pl.DataFrame, dataset: str, task: str, score_name: str, rate: str = "bpp") -> Figure:
    """Task score against rate (log axis), one line per codec over its settings, baseline dashed.
    ``conds`` is ``mpq.analysis.conditions(...)``."""
    sel = _select(conds, dataset, task, score_name)
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for codec, g in _codec_groups(sel):
        g = g.drop_nulls([rate, "score"]).sort(rate)
        ax.plot(g[rate].to_numpy(), g["score"].to_numpy(), marker="o", label=codec)
        for x, y, s in zip(g[rate], g["score"], g["setting"]):
            ax.annotate(s, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    _baseline(ax, sel)
    ax.set_xscale("log")
    ax.set_xlabel(RATE_LABELS.get(rate, rate))
    ax.set_ylabel(score_name)
    ax.set_title(f"{dataset} · {task}: {score_name} vs rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return fig


def metric_performance(conds: pl.DataFrame, dataset: str, task: str, score_name: str, metrics: list[str]) -> Figure:
    """Task score against each quality metric's mean, one panel per metric, one point per
    codec setting (coloured by codec), baseline dashed."""
    sel = _select(conds, dataset, task, score_name)
    metrics = [m for m in metrics if m in sel.columns and sel[m].null_count() < sel.height]
    if not metrics:
        raise ValueError(f"no metric values for dataset {dataset!r}")
    fig = Figure(figsize=(4 * len(metrics), 3.6), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for codec, g in _codec_groups(sel):
            g = g.drop_nulls([metric, "score"])
            ax.scatter(g[metric].to_numpy(), g["score"].to_numpy(), label=codec)
        _baseline(ax, sel)
        ax.set_xlabel(f"{metric} (lower is better)" if lower_better(metric) else metric)
        ax.set_ylabel(score_name)
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{dataset} · {task}: {score_name} vs quality metrics")
    return fig


def png(fig: Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
