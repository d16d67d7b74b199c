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

_CHUNK = 4_000_000  # resampled sums held in memory at once


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
    mean over the rows is resampled alongside (a condition's mean rate). The per-sample sums
    of every label (value of ``by``) are one array, so a few matrix products score every
    label on every resample."""
    ok = rows.filter(pl.col("error").is_null() & pl.col("task_type").is_not_null()) if "task_type" in rows.columns else rows.clear()
    cls = fast_task(ok) if ok.height else None
    parts = row_sums(cls, ok) if cls is not None else None
    if parts is None:
        return None
    for column in means:
        parts[f"_mean_{column}"], parts[f"_n_{column}"] = (np.nan_to_num(v) for v in _mean_parts(ok, column))
    ids = np.unique(rows["sample_id"].to_numpy())
    counts = resample_counts(len(ids), n_resamples, seed) if n_resamples > 0 and len(ids) else np.zeros((0, len(ids)))
    member = np.searchsorted(ids, ok["sample_id"].to_numpy())
    groups = ok.with_row_index("_i").group_by(by, maintain_order=True).agg("_i")
    labels = groups[by].to_list()
    slot = np.zeros(ok.height, dtype=np.int64)
    for i, rows_of in enumerate(groups["_i"].to_list()):
        slot[rows_of] = i
    per_sample = {}  # name: (labels, ids, *part shape)
    for name, values in parts.items():
        per_sample[name] = np.zeros((len(labels), len(ids), *values.shape[1:]))
        np.add.at(per_sample[name], (slot, member), values)
    width = sum(int(np.prod(v.shape[2:])) for v in per_sample.values())
    step = max(1, _CHUNK // max(1, len(counts) * width))
    point, boot = {}, {}
    for start in range(0, len(labels), step):
        mine = slice(start, start + step)
        total = {name: grid[mine].sum(1) for name, grid in per_sample.items()}
        drawn = {name: _drawn(counts, grid[mine]) for name, grid in per_sample.items()}
        at_point, at_draws = _scores(cls, total, means), _scores(cls, drawn, means)
        for j, label in enumerate(labels[mine]):
            point[label] = {name: float(v[j]) for name, v in at_point.items()}
            boot[label] = {name: v[:, j] for name, v in at_draws.items()}
    return point, boot


def _drawn(counts: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """(resamples, labels, *part shape): each resample's sums, from the per-sample sums grid
    (labels, ids, *part shape), one matrix product."""
    by_id = np.moveaxis(grid, 1, 0).reshape(grid.shape[1], -1)
    return (counts @ by_id).reshape(len(counts), grid.shape[0], *grid.shape[2:])


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
