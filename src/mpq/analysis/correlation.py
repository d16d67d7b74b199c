"""How well each quality metric predicts each task score.

Two levels, as the study's claims need both:

- ``conditions``: one point per codec setting: the metric's mean against the task's
  split-level score (``Task.aggregate``: accuracy, mIoU, ...);
- ``samples``: one point per coded sample: its metric against its per-sample outcome, the
  ``score`` (against the label) where the dataset has labels and the ``agreement`` (against
  the answer on the uncompressed input) always.

Each with Pearson, Spearman and Kendall (tau-b) coefficients and percentile-bootstrap
intervals (``seed`` makes them reproducible). Across conditions the bootstrap resamples
conditions; across samples it resamples sample ids (a cluster bootstrap over (dataset,
sample_id)): the rows of one sample at every codec setting go in or out together, as they
are not independent, and resampling rows would give intervals too narrow. The baseline is
left out: its metrics are not defined (PSNR is infinite); so are non-finite values (the
infinite PSNR of a lossless decode), counted in ``nonfinite``. Intervals need at least
``MIN_SAMPLES`` clusters; rows a pipeline check flagged are left out unless asked for.
"""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
from scipy import sparse, stats

from mpq.analysis.tables import MIN_SAMPLES, conclusive_rows, conditions, load, metric_columns, rate_columns
from mpq.results import BASELINE

METHODS = ("pearson", "spearman", "kendall")
N_RESAMPLES = 1000
_CHUNK = 2_000_000  # resampled points held in memory at once
# Kendall by the level-count grid costs ~ points + x levels × y levels per resample, scipy's
# kendalltau ~ a fixed call overhead + n log n: the grid wins while 8 n + cells stays under this.
_GRID = 30_000
# Kendall by cluster pair counts costs ~ clusters × points once and clusters² per resample:
# it is used up to this many clusters (beyond, scipy per resample). Spearman and Kendall as
# quadratic forms (_Forms) cost ~ levels × clusters² per resample, levels those of the side
# with fewer: used while levels × clusters stays under this too.
_CLUSTERS = 3_000


def _spread(t: np.ndarray, counts) -> np.ndarray:
    """(B, levels): each resample's count of points at each level, from t (B, clusters): how
    often each resample holds each cluster, and ``counts`` (clusters × levels, sparse): each
    cluster's points at each level."""
    return np.ascontiguousarray((counts.T @ t.T).T)  # rows contiguous: each is reshaped to a resample's grid


def _cluster_counts(codes: np.ndarray, size: int, member: np.ndarray, k: int):
    return sparse.csr_matrix((np.ones(len(codes)), (member, codes)), shape=(k, size))


def _level_ranks(counts: np.ndarray, axis: int = 1) -> np.ndarray:
    """The average rank of each level (ties share their mean rank) from level counts along ``axis``: no sort."""
    return np.cumsum(counts, axis=axis) - (counts - 1) / 2


def _kendall_grid(m: np.ndarray) -> np.ndarray:
    """Row-wise tau-b from (B, x levels, y levels) count grids: each cell's points against
    the points strictly above it in x, concordant if also above in y, discordant if below."""
    at_or_left = m.cumsum(1)
    right = at_or_left[:, -1:] - at_or_left  # points with a greater x level, per y level
    right_below_or_at = right.cumsum(2)
    up = right_below_or_at[:, :, -1:] - right_below_or_at  # ... and a greater y level
    down = right_below_or_at - right  # ... and a smaller y level
    s = (m * (up - down)).sum((1, 2))
    n = m.sum((1, 2))
    pairs = n * (n - 1) / 2
    nx, ny = m.sum(2), m.sum(1)
    ties_x, ties_y = (nx * (nx - 1) / 2).sum(1), (ny * (ny - 1) / 2).sum(1)
    return s / np.sqrt((pairs - ties_x) * (pairs - ties_y))


def _cluster_pairs(gx: np.ndarray, gy: np.ndarray, kx: int, ky: int, member: np.ndarray, k: int) -> np.ndarray:
    """(k, k) matrix K: K[c, d] sums sign(x_i − x_j)·sign(y_i − y_j) over points i of cluster
    c and j of cluster d (gx, gy: the points' value levels, kx and ky of them). A resample
    holding cluster c t_c times has concordant minus discordant pairs tᵀKt / 2, as the
    copies of one point tie on both sides.

    Column d from one 2-d count of cluster d's points: each level is coded by its position
    among d's levels, odd where it is one of them, even where it falls between two; the
    points of d strictly before or after a point on each side are prefix sums of that count."""
    out = np.zeros((k, k))
    order = np.argsort(member, kind="stable")
    bounds = np.searchsorted(member[order], np.arange(k + 1))

    def code(levels, mine, size):  # every point's position code, and the size of the code grid
        own = np.zeros(size, dtype=np.int64)
        own[levels[mine]] = 1
        position = 2 * (np.cumsum(own) - own) + own
        return position[levels], 2 * int(own.sum()) + 1

    for d in range(k):
        mine = order[bounds[d] : bounds[d + 1]]
        (a, nx), (b, ny) = code(gx, mine, kx), code(gy, mine, ky)
        p = np.zeros((nx + 1, ny + 1))  # p[i, j]: d's points with x code < i and y code < j
        np.add.at(p, (a[mine] + 1, b[mine] + 1), 1)
        p = p.cumsum(0).cumsum(1)
        x_low_y_low, x_low = p[a, b], p[a, -1]
        x_low_y_high = x_low - p[a, b + 1]
        x_high_y_low = p[-1, b] - p[a + 1, b]
        x_high_y_high = p[-1, -1] - p[a + 1, -1] - p[-1, b + 1] + p[a + 1, b + 1]
        out[:, d] = np.bincount(member, weights=x_low_y_low + x_high_y_high - x_low_y_high - x_high_y_low, minlength=k)
    return out


def _below(levels: np.ndarray, block: np.ndarray, blocks: int, weight: np.ndarray) -> np.ndarray:
    """(blocks, blocks) matrix M: M[b, c] sums, over the units u of block b, weight_u × (the
    units of block c at a level below u's + half those at u's level). A unit's average rank
    among the units of the blocks a row t holds (t_c copies of block c) is (t @ M's summand)
    + 1/2, so sums of weight × rank are quadratic forms t M tᵀ (+ t·weights / 2), exact
    while the ranks are whole halves. ``levels``: each unit's level, 0..levels − 1 in order."""
    size = int(levels.max()) + 1 if len(levels) else 0
    counts = _cluster_counts(levels, size, block, blocks)
    held = sparse.csr_matrix((weight, (levels, block)), shape=(size, blocks))
    out = np.empty((blocks, blocks))
    step = max(1, _CHUNK // max(size, 1))
    for start in range(0, blocks, step):  # the prefix counts over the levels, a few blocks at a time
        part = counts[start : start + step].toarray()
        below = np.cumsum(part, 1)
        part *= 0.5
        below -= part
        out[:, start : start + step] = (below @ held).T
    return out


class _Ties:
    """Σ c² and Σ c³ over one side's levels, c a row's count of points at each level, from t
    (B, blocks): how often the row holds each block. A level only one block has counts
    t_b × that block's points there, so only the levels of several blocks are spread."""

    def __init__(self, levels: np.ndarray, block: np.ndarray, blocks: int):
        counts = _cluster_counts(levels, int(levels.max()) + 1 if len(levels) else 0, block, blocks).tocsc()
        owners = np.diff(counts.indptr)  # blocks at each level
        own = counts[:, owners == 1]
        self.own = np.stack([np.asarray(own.power(q).sum(1)).ravel() for q in (2, 3)], 1)
        self.shared = counts[:, owners > 1].T.tocsr()

    def sums(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c = self.shared @ np.ascontiguousarray(t.T)  # (shared levels, B): summed over levels, never transposed
        return (t * t) @ self.own[:, 0] + np.einsum("lb,lb->b", c, c), (t * t * t) @ self.own[:, 1] + np.einsum("lb,lb,lb->b", c, c, c)


class _Forms:
    """Spearman's and Kendall's sums of each resample as quadratic forms in its cluster counts
    t, for points whose side b has few levels (a score right or wrong): the points of b level
    l hold a ranks summing to t A_l tᵀ + (their count) / 2, and concordant minus discordant
    pairs are t K tᵀ / 2. Per resample this costs (b levels + 1) × clusters², not the points."""

    def __init__(self, ga: np.ndarray, gb: np.ndarray, kb: int, member: np.ndarray, k: int):
        # w[c, l, d, m]: over c's points of b level l, d's points of b level m with a lower a level (+ half those level)
        w = _below(ga, member * kb + gb, k * kb, np.ones(len(ga))).reshape(k, kb, k, kb)
        self.held = np.zeros((k, kb))  # each cluster's points at each b level
        np.add.at(self.held, (member, gb), 1)
        self.kb, self.ranks = kb, w.sum(3).reshape(k, kb * k)
        order = np.sign(np.subtract.outer(np.arange(kb), np.arange(kb)))  # sign(y_i − y_j) by b levels
        # sign(x_i − x_j) summed over d's points of level m: 2 × w − the points at (c, l) × those at (d, m)
        self.pairs = np.einsum("cldm,lm->cd", 2 * w - self.held[:, :, None, None] * self.held[None, None], order)
        self.ties = _Ties(ga, member, k)

    def sums(self, t: np.ndarray) -> tuple[np.ndarray, ...]:
        """(cb: points at each b level, Σ a ranks × b ranks, concordant − discordant pairs, Σ ca², Σ ca³)."""
        cb = t @ self.held
        at_level = ((t @ self.ranks).reshape(len(t), self.kb, -1) * t[:, None, :]).sum(2) + cb / 2
        return cb, (_level_ranks(cb) * at_level).sum(1), ((t @ self.pairs) * t).sum(1) / 2, *self.ties.sums(t)


class _Points:
    """Paired points, coded by value level once, so each resample's ranks and Kendall
    counts come from level counts (vectorised over resamples). A resample is a row of
    weights: how many times it holds each cluster, and so each of its points (``member``:
    each point's cluster index; by default each point is its own). What a
    resample needs is summed per cluster once (Pearson's moments, each cluster's points per
    value level), so most of its work is a product with the clusters' counts. Where one side
    has few levels and the clusters are few, Spearman and Kendall are quadratic forms in the
    clusters' counts (``_Forms``). All rank sums are whole quarters: every route gives the
    same float64 coefficients."""

    def __init__(self, x: np.ndarray, y: np.ndarray, member: np.ndarray | None = None):
        self.x, self.y = x, y
        self.ux, self.gx = np.unique(x, return_inverse=True)
        self.uy, self.gy = np.unique(y, return_inverse=True)
        self.member = np.arange(len(x)) if member is None else member
        self.k = int(self.member.max()) + 1 if len(x) else 0
        self.pairs = self.forms = None  # _cluster_pairs and _Forms, computed on first use
        # each level's points in each cluster (levels × clusters): a resample's level counts are one product
        self.cx = _cluster_counts(self.gx, len(self.ux), self.member, self.k).T.tocsr()
        self.cy = _cluster_counts(self.gy, len(self.uy), self.member, self.k).T.tocsr()
        # Pearson's sums per cluster, about the means of all points (no cancellation in a resample's)
        dx, dy = (x - x.mean(), y - y.mean()) if len(x) else (x, y)
        self.moments = np.stack([np.bincount(self.member, weights=v, minlength=self.k)
                                 for v in (np.ones(len(x)), dx, dy, dx * dx, dy * dy, dx * dy)], 1)

    def coefficients(self, t: np.ndarray, methods: tuple[str, ...] = METHODS) -> dict[str, np.ndarray]:
        """Each of ``methods``' coefficient for each resample (row of t: how often it holds each
        cluster); NaN where a side is constant."""
        out = {}
        with np.errstate(invalid="ignore", divide="ignore"):
            if "pearson" in methods:
                n, sx, sy, sxx, syy, sxy = (t @ self.moments).T
                out["pearson"] = (sxy - sx * sy / n) / np.sqrt((sxx - sx * sx / n) * (syy - sy * sy / n))
            few = min(len(self.ux), len(self.uy))
            if len(self.x) and few * self.k <= _CLUSTERS and ("spearman" in methods or "kendall" in methods):
                constant = self._by_forms(t, methods, out)
            else:
                constant = self._by_levels(t, methods, out)
        for r in out.values():
            r[constant] = np.nan
        return out

    def _by_forms(self, t, methods, out) -> np.ndarray:
        if self.forms is None:
            x_few = len(self.ux) < len(self.uy)
            (ga, gb, kb) = (self.gy, self.gx, len(self.ux)) if x_few else (self.gx, self.gy, len(self.uy))
            self.forms = _Forms(ga, gb, kb, self.member, self.k)
        cb, sab, s, squares, cubes = self.forms.sums(t)
        total = cb.sum(1)
        if "spearman" in methods:  # Σ (rank − mean)² is (n³ − Σ level count³) / 12 with ties
            shift = total * ((total + 1) / 2) ** 2
            out["spearman"] = (sab - shift) / np.sqrt((total**3 - cubes) / 12 * ((cb * _level_ranks(cb) ** 2).sum(1) - shift))
        if "kendall" in methods:
            pairs = total * (total - 1) / 2
            out["kendall"] = s / np.sqrt((pairs - (squares - total) / 2) * (pairs - (cb * (cb - 1) / 2).sum(1)))
        return (cubes == total**3) | (cb.max(1) == total)

    def _by_levels(self, t, methods, out) -> np.ndarray:
        # (levels, B): each column a resample, so the sparse products, row gathers and sums over levels need no transpose
        held = np.ascontiguousarray(t.T)
        cx, cy = self.cx @ held, self.cy @ held
        total = cx.sum(0)
        if "spearman" in methods:  # sums of ranks and their products: whole quarters, exact in float64
            rx, ry = _level_ranks(cx, 0), _level_ranks(cy, 0)
            sxy = np.einsum("ib,ib,ib->b", held[self.member], rx[self.gx], ry[self.gy])
            shift = total * ((total + 1) / 2) ** 2  # total × the mean rank squared
            out["spearman"] = (sxy - shift) / np.sqrt((np.einsum("lb,lb,lb->b", cx, rx, rx) - shift) * (np.einsum("lb,lb,lb->b", cy, ry, ry) - shift))
        if "kendall" in methods:
            out["kendall"] = self._kendall(t, cx, cy, total)
        return (cx.max(0) == total) | (cy.max(0) == total)

    def _kendall(self, t, cx, cy, total):
        """Tau-b of each resample by the cheapest exact route (t: cluster counts, cx, cy: (levels, B) level counts, total: points)."""
        kx, ky, n = len(self.ux), len(self.uy), len(self.x)
        # the level grid, unless the cluster pairs are fewer: a cell costs about ten pairs (numpy passes against one BLAS product)
        if 8 * n + kx * ky <= _GRID and 10 * kx * ky <= self.k**2:
            joint = _cluster_counts(self.gx * ky + self.gy, kx * ky, self.member, self.k)
            step = max(1, _CHUNK // (kx * ky))
            return np.concatenate([_kendall_grid(_spread(t[i : i + step], joint).reshape(-1, kx, ky)) for i in range(0, len(t), step)])
        if self.k <= _CLUSTERS:  # many distinct values on both sides: pair counts between clusters
            if self.pairs is None:
                self.pairs = _cluster_pairs(self.gx, self.gy, kx, ky, self.member, self.k)
            pairs = total * (total - 1) / 2
            ties_x, ties_y = ((np.einsum("lb,lb->b", c, c) - total) / 2 for c in (cx, cy))
            return ((t @ self.pairs) * t).sum(1) / 2 / np.sqrt((pairs - ties_x) * (pairs - ties_y))
        with warnings.catch_warnings():  # and too many clusters for their pair counts: scipy's O(n log n), one resample at a time
            warnings.simplefilter("ignore")
            return np.array([stats.kendalltau(np.repeat(self.x, w), np.repeat(self.y, w)).statistic for w in t[:, self.member].astype(np.int64)])


def cluster_weights(member: np.ndarray, n_resamples: int, seed: int):
    """Chunks of bootstrap weights (rows: resamples, columns: clusters): how often each
    cluster was drawn when each resample draws clusters with replacement; ``member`` (n,) is
    each point's cluster index 0..k-1 (a chunk holds about ``_CHUNK`` resampled points)."""
    n, clusters = len(member), int(member.max()) + 1 if len(member) else 0
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK // max(n, 1))
    for start in range(0, max(n_resamples, 0), chunk):
        draws = rng.integers(0, clusters, size=(min(chunk, n_resamples - start), clusters))
        times = np.bincount((draws + clusters * np.arange(len(draws))[:, None]).ravel(), minlength=draws.size)
        yield times.reshape(draws.shape).astype(float)


def correlate(x, y, n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = 0.95, groups=None,
              min_samples: int = MIN_SAMPLES) -> dict[str, float]:
    """Pearson, Spearman and Kendall (tau-b) coefficients of paired points, each with a
    percentile bootstrap interval (``<method>_low``, ``<method>_high``; NaN with fewer than
    3 points, a constant side, fewer than ``min_samples`` groups, or ``n_resamples=0``).

    ``groups`` (one label per point) makes it a cluster bootstrap: each resample draws
    groups with replacement and takes all their points, as points of one group (one sample
    at several codec settings) are not independent. Without it each point is its own group.
    ``clusters`` in the result is the number of groups."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d and paired, got shapes {x.shape} and {y.shape}")
    n = len(x)
    if groups is None:
        member = np.arange(n)
    else:
        groups = np.asarray(groups)
        if groups.shape != x.shape:
            raise ValueError(f"groups must give one label per point, got shape {groups.shape} for {n} points")
        member = np.unique(groups, return_inverse=True)[1]
    clusters = int(member.max()) + 1 if n else 0
    out: dict[str, float] = {"n": n, "clusters": clusters}
    enough = n >= 3
    points = _Points(x, y, member)
    point = points.coefficients(np.ones((1, clusters))) if enough else {}
    boot: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
    if enough and clusters >= min_samples:
        for weights in cluster_weights(member, n_resamples, seed):
            for name, r in points.coefficients(weights).items():
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


def _points(df: pl.DataFrame, x: str, y: str, cluster: str | None) -> tuple[pl.DataFrame, int]:
    """The finite (x, y) points (with their ``cluster`` column), and how many non-finite
    ones were left out."""
    pts = df.select(pl.col(x).cast(pl.Float64), pl.col(y).cast(pl.Float64), *([cluster] if cluster else [])).drop_nulls([x, y])
    finite = pts.filter(pl.col(x).is_finite() & pl.col(y).is_finite())
    return finite, pts.height - finite.height


def correlations(results: str | pl.DataFrame, n_resamples: int = N_RESAMPLES, seed: int = 0,
                 min_samples: int = MIN_SAMPLES, include_flagged: bool = False) -> pl.DataFrame:
    """Every (rate or quality metric) × task score, per dataset and task, at both levels.

    One row per (level, dataset, task, metric, score_name) with each coefficient and its
    interval (none under ``min_samples`` clusters), and: ``n`` the points, ``clusters`` the
    units the bootstrap resamples (conditions, or sample ids at the ``samples`` level),
    ``nonfinite`` the points left out for an infinite or NaN value. At the ``samples`` level
    ``score_name`` is the per-sample column: ``score`` and ``agreement``. Rows a pipeline
    check flagged are left out unless ``include_flagged``."""
    df = conclusive_rows(load(results), include_flagged)
    if df.is_empty():
        return pl.DataFrame(schema={"level": pl.String, "dataset": pl.String, "task": pl.String, "metric": pl.String, "score_name": pl.String})
    quality = [*(rate_columns(df) or ["bits"]), *metric_columns(df)]
    rows = []

    def add(level, keys, frame, metric, score_col, score_name, cluster=None):
        pts, nonfinite = _points(frame, metric, score_col, cluster)
        if pts.height:
            groups = pts[cluster].to_numpy() if cluster else None
            r = correlate(pts[metric].to_numpy(), pts[score_col].to_numpy(), n_resamples, seed, groups=groups, min_samples=min_samples)
            rows.append({"level": level, **keys, "metric": metric, "score_name": score_name, **r, "nonfinite": nonfinite})

    conds = conditions(df).filter((pl.col("codec") != BASELINE) & pl.col("score_name").is_not_null())
    for (dataset, task, score_name), group in conds.group_by(["dataset", "task", "score_name"], maintain_order=True):
        for metric in quality:
            add("conditions", {"dataset": dataset, "task": task}, group, metric, "score", score_name)
    coded = df.filter(pl.col("codec") != BASELINE).sort("dataset", "task")
    for (dataset, task), group in coded.group_by(["dataset", "task"], maintain_order=True):
        for score in ("score", "agreement"):
            if score in group.columns:
                for metric in quality:  # one dataset per group: sample ids are the clusters
                    add("samples", {"dataset": dataset, "task": task}, group, metric, score, score, cluster="sample_id")
    if not rows:
        return pl.DataFrame(schema={"level": pl.String, "dataset": pl.String, "task": pl.String, "metric": pl.String, "score_name": pl.String})
    return pl.DataFrame(rows, infer_schema_length=None)
