"""Which quality metric predicts a task's per-sample outcome best.

Per dataset, task and per-sample score (``score``, the answer against the label, where the
dataset has labels; ``agreement``, the answer against the answer on the uncompressed input,
always), every quality metric is correlated with the score over the coded samples (Spearman
and Kendall tau-b, with cluster-bootstrap intervals over sample ids, as in
``correlations``), and ranked by |Spearman|: a metric predicts as well when it falls as the
score rises (LPIPS) as when it rises with it. Metrics are ranked only on at least
``MIN_SAMPLES`` sample ids.

Whether the best beats the second is a paired permutation test over sample ids
(``scipy.stats.permutation_test``): each metric is put on one scale (its ranks, reversed
where it falls as the score rises); under the null hypothesis that both predict equally well the
two are exchangeable within a sample, so each relabelling swaps them for all the points of
some samples and recomputes |rho_first| − |rho_second|. The interval of that difference is
the cluster bootstrap's. p-values are Holm-adjusted over the table.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import stats

from mpq.analysis.correlation import _CLUSTERS, N_RESAMPLES, _below, _Points, _Ties, cluster_weights, correlate
from mpq.analysis.paired import holm, percentile_interval, relabellings
from mpq.analysis.tables import MIN_SAMPLES, conclusive_rows, load, metric_columns, too_few
from mpq.results import BASELINE

SCORES = ("score", "agreement")  # the per-sample outcomes a metric may predict
_CHUNK = 2_000_000  # permuted points held in memory at once


def _finite(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    frame = frame.select("sample_id", *(pl.col(c).cast(pl.Float64) for c in columns)).drop_nulls(columns)
    return frame.filter(pl.all_horizontal(pl.col(c).is_finite() for c in columns))


def _rank_rows(values: np.ndarray) -> np.ndarray:
    return stats.rankdata(values, axis=-1)


def _spearman_rows(ranked_x: np.ndarray, ranked_y: np.ndarray) -> np.ndarray:
    """Row-wise Pearson of ranks (Spearman), x (B, n) against one y (n,)."""
    xc = ranked_x - ranked_x.mean(-1, keepdims=True)
    yc = ranked_y - ranked_y.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc * yc).sum(-1) / np.sqrt((xc**2).sum(-1) * (yc**2).sum())


def _half_steps(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (B, n) of values that are ranks of n points, as ``codes``: twice each rank (whole
    half steps 2..2n), ranked again from each row's count at each of the 2n + 1 half steps,
    no sort: (counts, the average rank at each half step, each value's flat index into both)."""
    rows, n = codes.shape
    flat = codes + (2 * n + 1) * np.arange(rows)[:, None]
    counts = np.bincount(flat.ravel(), minlength=rows * (2 * n + 1)).reshape(rows, -1).astype(float)
    return counts, np.cumsum(counts, 1) - (counts - 1) / 2, flat


def _spearman_of_ranks(codes: np.ndarray, ry: np.ndarray) -> np.ndarray:
    """Row-wise Spearman against ry (n,) of rows given as ``_half_steps`` codes; the sums of
    ranks and of their products are whole quarters, exact in float64."""
    counts, rank, flat = _half_steps(codes)
    n = codes.shape[1]
    shift = n * ((n + 1) / 2) ** 2  # n × the mean rank squared
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.take(rank, flat) @ ry - shift) / np.sqrt(((counts * rank * rank).sum(1) - shift) * (ry @ ry - shift))


def _swaps_by_ranks(first: np.ndarray, second: np.ndarray, ry: np.ndarray, member: np.ndarray):
    """|rho| of one relabelling minus the other's for rows s (B, k) of swapped samples: each
    relabelling's mix of the two rank vectors ranked again (``_half_steps``), per point."""
    first, second = (np.round(2 * r).astype(np.int64) for r in (first, second))  # ranks in half steps

    def diff(s):
        one = np.where(s[:, member], second, first)
        return np.abs(_spearman_of_ranks(one, ry)) - np.abs(_spearman_of_ranks(first + second - one, ry))

    return diff


def _swaps_by_forms(first: np.ndarray, second: np.ndarray, ry: np.ndarray, member: np.ndarray, k: int):
    """As ``_swaps_by_ranks``, per sample: units are each point's rank under the first metric
    (block c, its sample) and under the second (block k + c); a relabelling holds one unit of
    every point, z = [1 − s, s] of the blocks and the other z = [s, 1 − s]. Σ ry × rank over
    the held units (ranked again) is z M zᵀ + Σ ry / 2 (_below): a constant, a part linear in
    s and s Q sᵀ with Q the same for both; Σ (rank − mean)² is (n³ − Σ c³) / 12 with c the held
    units at each level (_Ties). The same whole quarters, exact in float64."""
    levels = np.unique(np.concatenate([first, second]), return_inverse=True)[1]
    block = np.concatenate([member, member + k])
    m = _below(levels, block, 2 * k, np.concatenate([ry, ry])).reshape(2, k, 2, k)
    ties = _Ties(levels, block, 2 * k)
    q = m[0, :, 0] - m[0, :, 1] - m[1, :, 0] + m[1, :, 1]
    kept = [m[a, :, a] for a in (0, 1)]  # the unswapped samples hold source a
    linear = [m[1 - a, :, a].sum(1) + m[a, :, 1 - a].sum(0) - kept[a].sum(1) - kept[a].sum(0) for a in (0, 1)]
    n = len(ry)
    mean_square = n * ((n + 1) / 2) ** 2  # n × the mean rank squared
    syy = ry @ ry - mean_square

    def diff(s):
        s = s.astype(float)
        quadratic = ((s @ q) * s).sum(1)
        rho = []
        for source, z in enumerate((np.hstack([1 - s, s]), np.hstack([s, 1 - s]))):
            sxy = kept[source].sum() + s @ linear[source] + quadratic + ry.sum() / 2 - mean_square
            with np.errstate(invalid="ignore", divide="ignore"):
                rho.append(np.abs(sxy) / np.sqrt((n**3 - ties.sums(z)[1]) / 12 * syy))
        return rho[0] - rho[1]

    return diff


def swap_test(x1, x2, y, groups, n_resamples: int = N_RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of the paired permutation test that x1 and x2 predict y equally
    well (|Spearman|), swapping the two (as ranks on one scale) for all points of a group (module
    docstring). NaN without resamples; 1 with one group. Up to ``_CLUSTERS`` / 2 groups a
    relabelling costs groups² (``_swaps_by_forms``), beyond it points (``_swaps_by_ranks``)."""
    x1, x2, y = (np.asarray(v, dtype=float) for v in (x1, x2, y))
    member = np.unique(np.asarray(groups), return_inverse=True)[1]
    k = int(member.max()) + 1 if len(member) else 0
    if n_resamples <= 0 or not k:
        return float("nan")
    if k == 1:  # the two relabellings give d and −d (scipy wants two groups)
        return 1.0
    ry = _rank_rows(y)

    def signed(x):  # ranks 1..n of x, reversed where x falls as y rises: both metrics on one scale
        sign = np.sign(_spearman_rows(_rank_rows(x)[None], ry)[0])
        return _rank_rows(x * (sign if sign else 1.0))

    first, second = signed(x1), signed(x2)
    diff = _swaps_by_forms(first, second, ry, member, k) if 2 * k <= _CLUSTERS else _swaps_by_ranks(first, second, ry, member)

    def statistic(a, b, axis=-1):  # a: group ids, values >= k where the group's metrics are swapped
        single = np.ndim(a) == 1
        d = diff(np.atleast_2d(a) >= k)
        return d[0] if single else d

    batch = max(1, _CHUNK // len(y))
    result = stats.permutation_test((np.arange(k), np.arange(k) + k), statistic, permutation_type="samples", vectorized=True,
                                    n_resamples=relabellings(k, n_resamples), batch=batch, rng=np.random.default_rng(seed))
    return float(result.pvalue)


def spearman_difference(x1, x2, y, groups, n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = 0.95,
                        min_samples: int = MIN_SAMPLES) -> dict[str, float | str]:
    """|Spearman(x1, y)| − |Spearman(x2, y)| on the same points. With at least
    ``min_samples`` groups: its cluster-bootstrap interval (both metrics on each resample of
    ``groups``), ``test`` "paired permutation" and its ``p`` (``swap_test``); with fewer,
    neither, and ``test`` says "too few samples (n = k)"."""
    x1, x2, y = (np.asarray(v, dtype=float) for v in (x1, x2, y))
    member = np.unique(np.asarray(groups), return_inverse=True)[1]
    k = int(member.max()) + 1 if len(member) else 0
    first, second = _Points(x1, y, member), _Points(x2, y, member)
    ones = np.ones((1, k))

    def rho(points, w):
        return np.abs(points.coefficients(w, ("spearman",))["spearman"])

    diff = float(rho(first, ones)[0] - rho(second, ones)[0])
    out = {"difference": diff, "difference_low": float("nan"), "difference_high": float("nan"), "test": too_few(k), "p": float("nan")}
    if k < min_samples:
        return out
    boot = [rho(first, w) - rho(second, w) for w in cluster_weights(member, n_resamples, seed)]
    out["difference_low"], out["difference_high"] = percentile_interval(np.concatenate(boot) if boot else [], level)
    return out | {"test": "paired permutation", "p": swap_test(x1, x2, y, groups, n_resamples, seed)}


def metric_ranking(
    results: str | pl.DataFrame,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    correlations: pl.DataFrame | None = None,
    min_samples: int = MIN_SAMPLES,
    include_flagged: bool = False,
) -> pl.DataFrame:
    """One row per (dataset, task, score_name, metric), best first within each: ``rank``
    (none where the correlation is undefined, a constant score or metric, and none for any
    metric on under ``min_samples`` sample ids: ``note`` says so), ``n`` points, ``clusters``
    (sample ids), ``spearman`` and ``kendall`` with ``_low``/``_high`` bootstrap intervals.
    ``score_name`` is ``score`` (against the label) or ``agreement`` (against the answer on
    the uncompressed input). The rank-1 row also holds the test against rank 2: ``vs_next``
    (|rho| difference) with ``vs_next_low``/``vs_next_high``, ``n_both`` (points where both
    metrics are finite), ``test``, ``p`` and ``p_holm``. Rows a pipeline check flagged are
    left out unless ``include_flagged``.

    ``correlations``: the frame ``correlations(results, n_resamples, seed)`` returned for the
    same arguments, whose sample-level coefficients are then taken as they are (the same
    computation) instead of computed again."""
    df = load(results)
    metrics = metric_columns(df)
    coded = conclusive_rows(df, include_flagged).filter(pl.col("codec") != BASELINE)
    rows = []
    for (dataset, task), group in coded.sort("dataset", "task").group_by(["dataset", "task"], maintain_order=True):
        for score in SCORES:
            if score not in group.columns or group[score].null_count() == group.height:
                continue
            known = {}
            if correlations is not None and correlations.height and "score_name" in correlations.columns:
                mine = correlations.filter((pl.col("level") == "samples") & (pl.col("dataset") == dataset) & (pl.col("task") == task)
                                           & (pl.col("score_name") == score))
                known = {r["metric"]: r for r in mine.iter_rows(named=True)}
            ranked = []
            for metric in metrics:
                pts = _finite(group, [metric, score])
                if pts.height < 3:
                    continue
                r = known.get(metric) or correlate(pts[metric].to_numpy(), pts[score].to_numpy(), n_resamples, seed, level,
                                                   groups=pts["sample_id"].to_numpy(), min_samples=min_samples)
                ranked.append({"dataset": dataset, "task": task, "score_name": score, "metric": metric, "n": r["n"], "clusters": r["clusters"],
                               **{k: r[k] for m in ("spearman", "kendall") for k in (m, f"{m}_low", f"{m}_high")}})
            ranked.sort(key=lambda row: -abs(row["spearman"]) if np.isfinite(row["spearman"]) else np.inf)
            for i, row in enumerate(ranked):
                enough = row["clusters"] >= min_samples
                row["rank"] = i + 1 if np.isfinite(row["spearman"]) and enough else None
                row["note"] = None if enough else too_few(row["clusters"])
            if len(ranked) > 1 and ranked[0]["rank"] and ranked[1]["rank"]:
                best, second = ranked[0]["metric"], ranked[1]["metric"]
                pts = _finite(group, [best, second, score])
                if pts.height >= 3:
                    test = spearman_difference(pts[best], pts[second], pts[score], pts["sample_id"], n_resamples, seed, level, min_samples)
                    ranked[0] |= {"n_both": pts.height, "vs_next": test["difference"], "vs_next_low": test["difference_low"],
                                  "vs_next_high": test["difference_high"], "test": test["test"], "p": test["p"]}
            rows.extend(ranked)
    schema = {"dataset": pl.String, "task": pl.String, "score_name": pl.String, "rank": pl.Int64, "metric": pl.String, "n": pl.Int64,
              "clusters": pl.Int64, **{k: pl.Float64 for m in ("spearman", "kendall") for k in (m, f"{m}_low", f"{m}_high")},
              "n_both": pl.Int64, "vs_next": pl.Float64, "vs_next_low": pl.Float64, "vs_next_high": pl.Float64, "test": pl.String,
              "p": pl.Float64, "note": pl.String}
    out = pl.DataFrame([{k: row.get(k) for k in schema} for row in rows], schema=schema)
    return out.with_columns(p_holm=pl.Series(holm(out["p"].to_numpy()), dtype=pl.Float64, nan_to_null=True))
