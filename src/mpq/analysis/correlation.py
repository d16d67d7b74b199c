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

from mpq.analysis.tables import conditions, load, metric_columns, ok_rows, rate_columns
from mpq.results import BASELINE

METHODS = ("pearson", "spearman", "kendall")
N_RESAMPLES = 1000
_CHUNK = 2_000_000  # resampled points held in memory at once
# Kendall by the level-count grid costs ~ points + x levels × y levels per resample, scipy's
# kendalltau ~ a fixed call overhead + n log n: the grid wins while 8 n + cells stays under this.
_GRID = 30_000


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson r of (B, n) arrays."""
    xc, yc = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
    return (xc * yc).sum(-1) / np.sqrt((xc**2).sum(-1) * (yc**2).sum(-1))


def _level_counts(codes: np.ndarray, k: int) -> np.ndarray:
    """(B, k) counts of each value level in each row of a (B, n) array of level codes."""
    rows = codes.shape[0]
    flat = (codes + k * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * k).reshape(rows, k)


def _ranks(codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank) from level counts: O(n) per resample, no sort."""
    below = np.cumsum(counts, axis=1) - counts
    return np.take_along_axis(below + (counts + 1) / 2, codes, axis=1)


def _kendall_grid(gx: np.ndarray, gy: np.ndarray, kx: int, ky: int) -> np.ndarray:
    """Row-wise tau-b from the (x level, y level) count grid: each cell's points against
    the points strictly above it in x, concordant if also above in y, discordant if below."""
    rows, n = gx.shape
    m = np.bincount((np.arange(rows)[:, None] * (kx * ky) + gx * ky + gy).ravel(), minlength=rows * kx * ky)
    m = m.reshape(rows, kx, ky)
    at_or_left = m.cumsum(1)
    right = at_or_left[:, -1:] - at_or_left  # points with a greater x level, per y level
    right_below_or_at = right.cumsum(2)
    up = right_below_or_at[:, :, -1:] - right_below_or_at  # ... and a greater y level
    down = right_below_or_at - right  # ... and a smaller y level
    s = (m * (up - down)).sum((1, 2))
    pairs = n * (n - 1) / 2
    nx, ny = m.sum(2), m.sum(1)
    ties_x, ties_y = (nx * (nx - 1) / 2).sum(1), (ny * (ny - 1) / 2).sum(1)
    return s / np.sqrt((pairs - ties_x) * (pairs - ties_y))


class _Points:
    """Paired points, coded by value level once, so each resample's ranks and Kendall
    counts come from level counts (vectorised over resamples)."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = x, y
        self.ux, self.gx = np.unique(x, return_inverse=True)
        self.uy, self.gy = np.unique(y, return_inverse=True)

    def coefficients(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """Each method's coefficient for each resample (row of point indices); NaN where a
        side is constant."""
        kx, ky, n = len(self.ux), len(self.uy), idx.shape[1]
        gx, gy = self.gx[idx], self.gy[idx]
        cx, cy = _level_counts(gx, kx), _level_counts(gy, ky)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = {
                "pearson": _pearson(self.x[idx], self.y[idx]),
                "spearman": _pearson(_ranks(gx, cx), _ranks(gy, cy)),
            }
            if 8 * n + kx * ky <= _GRID:
                step = max(1, _CHUNK // (kx * ky))
                out["kendall"] = np.concatenate([_kendall_grid(gx[i : i + step], gy[i : i + step], kx, ky) for i in range(0, len(idx), step)])
            else:  # many distinct values on both sides: scipy's O(n log n), one resample at a time
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out["kendall"] = np.array([stats.kendalltau(self.x[i], self.y[i]).statistic for i in idx])
        constant = (cx.max(1) == n) | (cy.max(1) == n)
        for r in out.values():
            r[constant] = np.nan
        return out


def correlate(x, y, n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Pearson, Spearman and Kendall (tau-b) coefficients of paired points, each with a
    percentile bootstrap interval (``<method>_low``, ``<method>_high``; NaN with fewer than
    3 points, a constant side, or ``n_resamples=0``)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d and paired, got shapes {x.shape} and {y.shape}")
    n = len(x)
    out: dict[str, float] = {"n": n}
    enough = n >= 3
    points = _Points(x, y)
    point = points.coefficients(np.arange(n)[None]) if enough else {}
    boot: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    if enough and n_resamples > 0:
        rng = np.random.default_rng(seed)
        chunk = max(1, _CHUNK // n)
        for start in range(0, n_resamples, chunk):
            idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))
            for name, r in points.coefficients(idx).items():
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
