"""Machine BD-rate: the Bjøntegaard delta rate with a task score in place of PSNR.

For each codec, log-rate is interpolated as a function of the task score through its
measured settings with a monotone piecewise-cubic (pchip) interpolant; the BD-rate of a
test codec against an anchor is exp(mean difference of log-rate over the score range both
curves cover) − 1: the average change in bits the test codec needs for the same task
score. −20 % means 20 % fewer bits.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import polars as pl
from scipy.interpolate import PchipInterpolator

from mpq.analysis.tables import conditions, load
from mpq.results import BASELINE

MIN_SETTINGS = 4


def _log_rate_curve(rate, score) -> PchipInterpolator:
    rate, score = np.asarray(rate, dtype=float), np.asarray(score, dtype=float)
    keep = np.isfinite(rate) & np.isfinite(score) & (rate > 0)
    rate, score = rate[keep], score[keep]
    # Settings that reach the same score are one point of the curve, at their mean log-rate.
    levels, inverse = np.unique(score, return_inverse=True)
    if len(levels) < 2:
        raise ValueError("fewer than two distinct task scores: no curve to integrate")
    log_rate = np.bincount(inverse, weights=np.log(rate)) / np.bincount(inverse)
    return PchipInterpolator(levels, log_rate)


def bd_rate(rate_anchor, score_anchor, rate_test, score_test) -> float:
    """Bjøntegaard delta rate in percent of the test codec against the anchor, over the
    task-score range both cover. Raises ValueError when the curves do not overlap."""
    anchor, test = _log_rate_curve(rate_anchor, score_anchor), _log_rate_curve(rate_test, score_test)
    low, high = max(anchor.x[0], test.x[0]), min(anchor.x[-1], test.x[-1])
    if not low < high:
        raise ValueError(f"the task-score ranges do not overlap ({anchor.x[0]:.4g}–{anchor.x[-1]:.4g} vs {test.x[0]:.4g}–{test.x[-1]:.4g})")
    mean_diff = (test.integrate(low, high) - anchor.integrate(low, high)) / (high - low)
    return float(np.expm1(mean_diff) * 100)


def bd_rates(results: str | pl.DataFrame, min_settings: int = MIN_SETTINGS) -> pl.DataFrame:
    """BD-rate on mean bits vs each split-level task score, for every pair of codecs with at
    least ``min_settings`` settings, per dataset and task. The anchor is the first codec of
    the pair by name; ``note`` says why a pair has no value."""
    conds = conditions(load(results)).filter((pl.col("codec") != BASELINE) & pl.col("score").is_not_null() & pl.col("bits").is_not_null())
    rows = []
    for (dataset, task, score_name), group in conds.group_by(["dataset", "task", "score_name"], maintain_order=True):
        curves = {codec: g for (codec,), g in group.group_by(["codec"]) if g.height >= min_settings}
        for anchor, test in combinations(sorted(curves), 2):
            a, t = curves[anchor], curves[test]
            row = {"dataset": dataset, "task": task, "score_name": score_name, "anchor": anchor, "test": test, "bd_rate": None, "note": None}
            try:
                row["bd_rate"] = bd_rate(a["bits"], a["score"], t["bits"], t["score"])
            except ValueError as exc:
                row["note"] = str(exc)
            rows.append(row)
    schema = {"dataset": pl.String, "task": pl.String, "score_name": pl.String, "anchor": pl.String, "test": pl.String, "bd_rate": pl.Float64, "note": pl.String}
    return pl.DataFrame(rows, schema=schema)
