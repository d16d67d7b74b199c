"""How well each quality metric predicts each task score.

Two levels, as the study's claims need both:

- ``conditions``: one point per codec setting: the metric's mean against the task's
  split-level score (``Task.aggregate``: accuracy, mIoU, ...);
- ``samples``: one point per coded sample: its metric against its per-sample ``score``.

Each with Pearson, Spearman and Kendall (tau-b) coefficients and percentile-bootstrap
intervals (points resampled with replacement, ``seed`` makes them reproducible). The
baseline is left out: its metrics are not defined (PSNR is infinite).
"""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
from scipy import stats

from mpq.analysis.tables import ok_rows, conditions, load, metric_columns, rate_columns
from mpq.results import BASELINE

METHODS = ("pearson", "spearman", "kendall")
N_RESAMPLES = 1000
_CHUNK = 2_000_000  # resampled points held in memory at once


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson r of (B, n) arrays."""
    xc, yc = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    return (xc * yc).sum(-1) / np.sqrt((xc**2).sum(-1) * (yc**2).sum(-1))


def _spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _pearson(stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1))


def _kendall(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise tau-b: pairwise signs for few points (vectorised), scipy's O(n log n) beyond."""
    if x.shape[-1] <= 64:
        sx = np.sign(x[:, :, None] - x[:, None, :])
        sy = np.sign(y[:, :, None] - y[:, None, :])
        return (sx * sy).sum((1, 2)) / np.sqrt((sx * sx).sum((1, 2)) * (sy * sy).sum((1, 2)))
    return np.array([stats.kendalltau(a, b).statistic for a, b in zip(x, y)])


_FUNCTIONS = {"pearson": _pearson, "spearman": _spearman, "kendall": _kendall}


def _coefficients(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Each method's coefficient per row of (B, n) arrays; NaN where either side is constant."""
    constant = (x.min(-1) == x.max(-1)) | (y.min(-1) == y.max(-1))
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name in METHODS:
            r = _FUNCTIONS[name](x, y).astype(float)
            r[constant] = np.nan
            out[name] = r
    return out


def correlate(x, y, n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Pearson, Spearman and Kendall coefficients of paired points, each with a percentile
    bootstrap interval (``<method>_low``, ``<method>_high``; NaN with fewer than 3 points,
    a constant side, or ``n_resamples=0``)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d and paired, got shapes {x.shape} and {y.shape}")
    n = len(x)
    out: dict[str, float] = {"n": n}
    enough = n >= 3
    point = _coefficients(x[None], y[None]) if enough else {}
    boot: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    if enough and n_resamples > 0:
        rng = np.random.default_rng(seed)
        chunk = max(1, _CHUNK // n)
        for start in range(0, n_resamples, chunk):
            idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
            for name, r in _coefficients(x[idx], y[idx]).items():
                boot[name].append(r)
    tail = 100 * (1 - level) / 2
    for name in METHODS:
        out[name] = float(point[name][0]) if enough else float("nan")
        low = high = float("nan")
        values = np.concatenate(boot[name]) if boot[name] else np.array([])
        values = values[np.isfinite(values)]
        if values.size:
            low, high = (float(v) for v in np.percentile(values, [tail, 100 - tail]))
        out[f"{name}_low"], out[f"{name}_high"] = low, high
    return out


def _finite(df: pl.DataFrame, x: str, y: str) -> pl.DataFrame:
    pts = df.select(pl.col(x).cast(pl.Float64), pl.col(y).cast(pl.Float64)).drop_nulls()
    return pts.filter(pl.col(x).is_finite() & pl.col(y).is_finite())


def correlations(results: str | pl.DataFrame, n_resamples: int = N_RESAMPLES, seed: int = 0) -> pl.DataFrame:
    """Every (rate or quality metric) × task score, per dataset and task, at both levels.

    One row per (level, dataset, task, metric, score_name) with n, each coefficient and its
    interval. At the ``samples`` level the score is the per-sample ``score`` column."""
    df = load(results)
    quality = [*(rate_columns(df) or ["bits"]), *metric_columns(df)]
    rows = []

    def add(level, keys, frame, metric, score_col, score_name):
        pts = _finite(frame, metric, score_col)
        if pts.height:
            r = correlate(pts[metric].to_numpy(), pts[score_col].to_numpy(), n_resamples, seed)
            rows.append({"level": level, **keys, "metric": metric, "score_name": score_name, **r})

    conds = conditions(df).filter((pl.col("codec") != BASELINE) & pl.col("score_name").is_not_null())
    for (dataset, task, score_name), group in conds.group_by(["dataset", "task", "score_name"], maintain_order=True):
        for metric in quality:
            add("conditions", {"dataset": dataset, "task": task}, group, metric, "score", score_name)
    coded = ok_rows(df).filter(pl.col("codec") != BASELINE).sort("dataset", "task")
    for (dataset, task), group in coded.group_by(["dataset", "task"], maintain_order=True):
        for metric in quality:
            add("samples", {"dataset": dataset, "task": task}, group, metric, "score", "score")
    if not rows:
        return pl.DataFrame(schema={"level": pl.String, "dataset": pl.String, "task": pl.String, "metric": pl.String, "score_name": pl.String})
    return pl.DataFrame(rows, infer_schema_length=None)
