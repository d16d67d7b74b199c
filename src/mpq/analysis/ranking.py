"""Which quality metric predicts a task's per-sample score best.

Per dataset and task, every quality metric is correlated with the per-sample ``score`` over
the coded samples (Spearman and Kendall tau-b, with cluster-bootstrap intervals over
sample ids, as in ``correlations``), and ranked by |Spearman|: a metric predicts as well
when it falls as the score rises (LPIPS) as when it rises with it. Whether the best beats
the second is a paired bootstrap of |rho_best| − |rho_second| over sample ids: one set of
resamples for both metrics, on the points where both are finite, with the two-sided
percentile-bootstrap p-value of ``paired.bootstrap_p``; p-values are Holm-adjusted over the
tasks of the table.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from mpq.analysis.correlation import N_RESAMPLES, _Points, cluster_weights, correlate
from mpq.analysis.paired import bootstrap_p, holm, percentile_interval
from mpq.analysis.tables import load, metric_columns, ok_rows
from mpq.results import BASELINE


def _finite(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    frame = frame.select("sample_id", *(pl.col(c).cast(pl.Float64) for c in columns)).drop_nulls(columns)
    return frame.filter(pl.all_horizontal(pl.col(c).is_finite() for c in columns))


def spearman_difference(x1, x2, y, groups, n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """|Spearman(x1, y)| − |Spearman(x2, y)| on the same points, with a cluster-bootstrap
    interval and p-value (both metrics on each resample of ``groups``)."""
    x1, x2, y = (np.asarray(v, dtype=float) for v in (x1, x2, y))
    member = np.unique(np.asarray(groups), return_inverse=True)[1]
    first, second = _Points(x1, y), _Points(x2, y)
    ones = np.ones((1, len(y)))
    diff = float(abs(first.coefficients(ones)["spearman"][0]) - abs(second.coefficients(ones)["spearman"][0]))
    boot = [np.abs(first.coefficients(w)["spearman"]) - np.abs(second.coefficients(w)["spearman"]) for w in cluster_weights(member, n_resamples, seed)]
    boot = np.concatenate(boot) if boot else np.array([])
    low, high = percentile_interval(boot, level)
    return {"difference": diff, "difference_low": low, "difference_high": high, "p": bootstrap_p(boot) if boot.size else float("nan")}


def metric_ranking(
    results: str | pl.DataFrame, n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = 0.95, correlations: pl.DataFrame | None = None
) -> pl.DataFrame:
    """One row per (dataset, task, metric), best first within each task: ``rank`` (none
    where the correlation is undefined: a constant score or metric, last), ``n``
    points, ``clusters`` (sample ids), ``spearman`` and ``kendall`` with ``_low``/``_high``
    bootstrap intervals. The rank-1 row also holds the test against rank 2: ``vs_next``
    (|rho| difference) with ``vs_next_low``/``vs_next_high``, ``n_both`` (points where both
    metrics are finite), ``p`` and ``p_holm``.

    ``correlations``: the frame ``correlations(results, n_resamples, seed)`` returned for the
    same arguments, whose sample-level coefficients are then taken as they are (the same
    computation) instead of computed again."""
    df = load(results)
    metrics = metric_columns(df)
    coded = ok_rows(df).filter((pl.col("codec") != BASELINE) & pl.col("score").is_not_null()) if "score" in df.columns else df.clear()
    rows = []
    for (dataset, task), group in coded.sort("dataset", "task").group_by(["dataset", "task"], maintain_order=True):
        ranked = []
        known = {}
        if correlations is not None and correlations.height:
            mine = correlations.filter((pl.col("level") == "samples") & (pl.col("dataset") == dataset) & (pl.col("task") == task))
            known = {r["metric"]: r for r in mine.iter_rows(named=True)}
        for metric in metrics:
            pts = _finite(group, [metric, "score"])
            if pts.height < 3:
                continue
            r = known.get(metric) or correlate(pts[metric].to_numpy(), pts["score"].to_numpy(), n_resamples, seed, level, groups=pts["sample_id"].to_numpy())
            ranked.append({"dataset": dataset, "task": task, "metric": metric, "n": r["n"], "clusters": r["clusters"],
                           **{k: r[k] for m in ("spearman", "kendall") for k in (m, f"{m}_low", f"{m}_high")}})
        ranked.sort(key=lambda row: -abs(row["spearman"]) if np.isfinite(row["spearman"]) else np.inf)
        for i, row in enumerate(ranked):
            row["rank"] = i + 1 if np.isfinite(row["spearman"]) else None
        if len(ranked) > 1 and ranked[1]["rank"]:
            best, second = ranked[0]["metric"], ranked[1]["metric"]
            pts = _finite(group, [best, second, "score"])
            if pts.height >= 3:
                test = spearman_difference(pts[best], pts[second], pts["score"], pts["sample_id"], n_resamples, seed, level)
                ranked[0] |= {"n_both": pts.height, "vs_next": test["difference"], "vs_next_low": test["difference_low"],
                              "vs_next_high": test["difference_high"], "p": test["p"]}
        rows.extend(ranked)
    schema = {"dataset": pl.String, "task": pl.String, "rank": pl.Int64, "metric": pl.String, "n": pl.Int64, "clusters": pl.Int64,
              **{k: pl.Float64 for m in ("spearman", "kendall") for k in (m, f"{m}_low", f"{m}_high")},
              "n_both": pl.Int64, "vs_next": pl.Float64, "vs_next_low": pl.Float64, "vs_next_high": pl.Float64, "p": pl.Float64}
    out = pl.DataFrame([{k: row.get(k) for k in schema} for row in rows], schema=schema)
    return out.with_columns(p_holm=pl.Series(holm(out["p"].to_numpy()), dtype=pl.Float64, nan_to_null=True))
