"""Split-level scores of every bootstrap resample at once, from per-sample sums.

A cluster-bootstrap resample of sample ids is a count per id (how often it was drawn), so
where a task's ``aggregate`` is a function of sums over rows (accuracy: right answers over
answers; mIoU: per-class intersections and unions summed over the split; WRA: word errors
over words; the mean agreement), every resample's score follows from one matrix product:
counts (resamples × ids) times the per-sample sums (ids × parts), then ``Task.from_sums``.
This gives the same numbers as concatenating each resample's rows and calling
``Task.aggregate`` (``tests/test_statistics.py`` checks it), thousands of times faster on
large splits. Tasks whose aggregate is not a sum (the median SDR of separation) return
None from ``Task.sums`` and are resampled row by row.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from mpq import registry


def resample_counts(n_ids: int, n_resamples: int, seed: int) -> np.ndarray:
    """How often each of ``n_ids`` sorted sample ids is drawn in each resample: the one draw
    of shape (n_resamples, ids) that ``paired.cluster_resamples`` also makes."""
    draws = np.random.default_rng(seed).integers(0, n_ids, size=(n_resamples, n_ids))
    counts = np.zeros((n_resamples, n_ids))
    np.add.at(counts, (np.repeat(np.arange(n_resamples), n_ids), draws.ravel()), 1)
    return counts


def _owner(cls: type, name: str) -> type:
    return next(c for c in cls.__mro__ if name in vars(c))


def fast_task(rows: pl.DataFrame):
    """The task class of these rows if their aggregate is a function of sums (one task type,
    whose ``sums`` is defined beside its ``aggregate``), else None."""
    if "task_type" not in rows.columns or rows["task_type"].n_unique() != 1 or rows["task_type"][0] is None:
        return None
    cls = registry.get("task", rows["task_type"][0])
    return cls if _owner(cls, "sums") is _owner(cls, "aggregate") else None


def row_sums(cls, rows: pl.DataFrame) -> dict[str, np.ndarray] | None:
    """``cls.sums(rows)``, or None where a part is not finite (an infinite agreement: a
    weight of 0 times infinity is not 0)."""
    parts = cls.sums(rows)
    if parts is None or not all(np.isfinite(a).all() for a in parts.values()):
        return None
    return parts


def resampled_scores(rows: pl.DataFrame, by: str, n_resamples: int, seed: int, means: tuple[str, ...] = ()):
    """(point, boot) as ``paired.joint_bootstrap`` returns them, from per-sample sums, or
    None where the task's aggregate is not a function of sums. ``means``: columns whose
    mean over the rows is resampled alongside (a condition's mean rate)."""
    ok = rows.filter(pl.col("error").is_null() & pl.col("task_type").is_not_null()) if "task_type" in rows.columns else rows.clear()
    cls = fast_task(ok) if ok.height else None
    if cls is None:
        return None
    ids = np.unique(rows["sample_id"].to_numpy())
    counts = resample_counts(len(ids), n_resamples, seed) if n_resamples > 0 and len(ids) else np.zeros((0, len(ids)))
    ok_member = np.searchsorted(ids, ok["sample_id"].to_numpy())
    point, boot = {}, {}
    for (label,), part in ok.with_columns(_m=pl.Series(ok_member)).group_by([by], maintain_order=True):
        parts = row_sums(cls, part)
        if parts is None:
            return None
        for column in means:
            parts[f"_mean_{column}"], parts[f"_n_{column}"] = (np.nan_to_num(v) for v in _mean_parts(part, column))
        per_sample = {}
        for name, values in parts.items():
            grid = np.zeros((len(ids), *values.shape[1:]))
            np.add.at(grid, part["_m"].to_numpy(), values)
            per_sample[name] = grid
        total = {name: grid.sum(0) for name, grid in per_sample.items()}
        drawn = {name: np.tensordot(counts, grid, axes=1) for name, grid in per_sample.items()}
        point[label] = {name: float(v) for name, v in _scores(cls, total, means).items()}
        boot[label] = _scores(cls, drawn, means)
    return point, boot


def _mean_parts(rows: pl.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    values = rows[column].cast(pl.Float64).to_numpy()
    counted = ~np.isnan(values)
    return np.where(counted, values, 0.0), counted.astype(float)


def _scores(cls, sums: dict[str, np.ndarray], means: tuple[str, ...]) -> dict[str, np.ndarray]:
    scores = cls.from_sums(sums)
    with np.errstate(invalid="ignore", divide="ignore"):
        for column in means:
            n = sums[f"_n_{column}"]
            scores[column] = np.where(n > 0, sums[f"_mean_{column}"] / np.where(n > 0, n, 1), np.nan)
    return {name: np.asarray(v, dtype=float) for name, v in scores.items()}
