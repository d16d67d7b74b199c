"""Paired comparisons between conditions on the same samples.

Two conditions of one dataset and task (a codec setting against the baseline, or two
codecs at one rate) saw the same samples, so their difference is judged sample by sample:

- classification (accuracy, the mean of the per-sample ``correct``): McNemar's exact test,
  the two-sided binomial test of the discordant samples (right under one condition only);
- any split-level score (mIoU from summed counts, WRA from summed word errors, median
  SDR, agreement): a paired permutation test over sample ids (``scipy.stats.permutation_test``):
  under the null hypothesis the two conditions' labels are exchangeable within a sample, so
  each relabelling swaps, for some samples, which rows count as which condition, and both
  scores are recomputed with the task's own ``Task.aggregate``. Exact (all 2^n relabellings)
  up to ``EXACT_SAMPLES`` samples or where the resamples asked for cover them, Monte Carlo
  otherwise. One sample gives
  p = 1; four samples all worse give 2/16 = 0.125.

The effect size is the score difference (second condition minus first) with its percentile
bootstrap interval over sample ids. Under ``MIN_SAMPLES`` shared samples there is neither an
interval nor a test (``test`` says "too few samples (n = 4)"). p-values over the comparisons
of one table are Holm-adjusted. Only samples with a row and no error under every condition
compared are used.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from scipy import stats

from mpq.analysis.correlation import N_RESAMPLES
from mpq.analysis.sums import fast_task, resample_counts, resampled_scores, row_sums
from mpq.analysis.tables import COLUMN_LABEL, MIN_SAMPLES, conclusive_rows, load, metric_columns, ok_rows, rate_columns, score_names, too_few
from mpq.means import task_aggregates
from mpq.results import BASELINE

# Split-level scores that are the mean of a per-sample boolean: McNemar applies.
BINARY = {"accuracy": "correct"}
EXACT_SAMPLES = 12  # up to 2^12 = 4096 relabellings: a permutation test enumerates them all
_CHUNK_ROWS = 200_000  # resampled rows held in memory at once


def mcnemar(a, b) -> dict[str, float]:
    """McNemar's exact test of paired booleans (each sample right or wrong under two
    conditions): ``a_only``/``b_only`` count the samples right under one only, ``p`` the
    two-sided binomial p-value of that split at 1/2 (1 when there is none)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a and b must be 1-d and paired, got shapes {a.shape} and {b.shape}")
    a_only, b_only = int((a & ~b).sum()), int((b & ~a).sum())
    p = stats.binomtest(min(a_only, b_only), a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"a_only": a_only, "b_only": b_only, "p": float(p)}


def holm(p) -> np.ndarray:
    """Holm's step-down adjustment of p-values (NaN stays NaN and does not count)."""
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    m = len(order)
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def relabellings(n: int, n_resamples: int) -> int:
    """Resamples for a paired permutation test of n samples: all 2^n (exact) when few."""
    return max(n_resamples, 2**n) if n <= EXACT_SAMPLES else n_resamples


def permutation_p(rows: pl.DataFrame, a: str, b: str, score_name: str, by: str = "_c", n_resamples: int = N_RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of the paired permutation test that conditions ``a`` and ``b``
    (values of column ``by``; one row per sample under each) have the same split-level
    ``score_name`` (module docstring). NaN without resamples."""
    rows = rows.with_row_index("_i")
    wide = rows.pivot(on=by, index="sample_id", values="_i", aggregate_function="first").sort("sample_id")
    first, second = wide[a].to_numpy().astype(np.int64), wide[b].to_numpy().astype(np.int64)
    n = len(first)
    if n_resamples <= 0 or not n:
        return float("nan")
    if n == 1:  # the two relabellings give d and −d (scipy wants two samples)
        return 1.0

    cls = fast_task(rows)
    parts = row_sums(cls, rows) if cls is not None else None

    if parts is not None:  # each side's sums: all of its own rows, plus the swapped samples' change, one product
        totals = {k: (v[first].sum(0), v[second].sum(0)) for k, v in parts.items()}
        change = {k: (v[second] - v[first]).reshape(n, -1) for k, v in parts.items()}

    def summed(x, y, axis=-1):  # the same statistic from the rows' sums (``sums``)
        single = np.ndim(x) == 1
        swapped = (np.atleast_2d(x) != first).astype(float)
        moved = {k: (swapped @ d).reshape(len(swapped), *parts[k].shape[1:]) for k, d in change.items()}
        a = cls.from_sums({k: totals[k][0] + moved[k] for k in parts}).get(score_name)
        b = cls.from_sums({k: totals[k][1] - moved[k] for k in parts}).get(score_name)
        diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float) if a is not None else np.full(len(swapped), np.nan)
        return diff[0] if single else diff

    def statistic(x, y, axis=-1):  # x, y: row positions, (n,) or (batch, n)
        single = np.ndim(x) == 1
        x, y = np.atleast_2d(x).astype(np.int64), np.atleast_2d(y).astype(np.int64)
        k = len(x)
        frame = rows[np.concatenate([x.ravel(), y.ravel()])].with_columns(
            _b=pl.Series(np.tile(np.repeat(np.arange(k), n), 2)), _slot=pl.Series(np.repeat([0, 1], k * n)))
        agg = task_aggregates(frame, ["_b", "_slot"])
        score = np.full((2, k), np.nan)
        if score_name in agg.columns:
            values = agg[score_name].cast(pl.Float64, strict=False).fill_null(float("nan")).to_numpy()
            score[agg["_slot"].to_numpy(), agg["_b"].to_numpy()] = values
        diff = score[1] - score[0]
        return diff[0] if single else diff

    if parts is None:
        batch = max(1, _CHUNK_ROWS // (2 * n))
    else:  # the relabellings do not depend on the batch (scipy draws each in turn)
        batch = max(1, 10 * _CHUNK_ROWS // (n + sum(int(np.prod(v.shape[1:])) for v in parts.values())))
    result = stats.permutation_test((first, second), statistic if parts is None else summed, permutation_type="samples", vectorized=True,
                                    n_resamples=relabellings(n, n_resamples), batch=batch, rng=np.random.default_rng(seed))
    return float(result.pvalue)


def percentile_interval(values, level: float = 0.95) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not v.size:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(v, [tail, 100 - tail])
    return float(low), float(high)


def common_samples(rows: pl.DataFrame, labels: list[str], by: str = "_c") -> pl.DataFrame:
    """The error-free rows of the conditions ``labels`` (values of column ``by``) for the
    sample ids that have one under every one of them."""
    rows = ok_rows(rows).filter(pl.col(by).is_in(labels))
    shared = rows.group_by("sample_id").agg(pl.col(by).n_unique().alias("_k")).filter(pl.col("_k") == len(labels))
    return rows.join(shared.select("sample_id"), on="sample_id", how="semi")


def cluster_resamples(rows: pl.DataFrame, n_resamples: int, seed: int):
    """Resamples of sample ids with replacement (a drawn sample's rows go together; ids
    sorted, one draw of shape (n_resamples, ids)), a chunk at a time: (labels, frame), the
    rows of resamples ``labels`` as one frame, each row's resample in its column ``_b``."""
    ids, member = np.unique(rows["sample_id"].to_numpy(), return_inverse=True)
    if n_resamples <= 0 or not len(ids):
        return
    counts = resample_counts(len(ids), n_resamples, seed).astype(np.int64)
    step = max(1, _CHUNK_ROWS // rows.height)
    for start in range(0, n_resamples, step):
        times = [c[member] for c in counts[start : start + step]]
        take = np.concatenate([np.repeat(np.arange(rows.height), t) for t in times])
        labels = range(start, start + len(times))
        yield labels, rows[take].with_columns(_b=pl.Series(np.repeat(labels, [t.sum() for t in times])))


def joint_bootstrap(rows: pl.DataFrame, by: str = "_c", n_resamples: int = N_RESAMPLES, seed: int = 0):
    """Every split-level score of every condition (values of column ``by``) of one dataset
    and task, on all the rows and on each of ``n_resamples`` resamples of sample ids (the
    rows of a drawn sample under every condition go together; ids sorted, one draw of shape
    (n_resamples, ids)). Returns (point, boot): ``point[label][score_name]`` a float (NaN
    where the task gives none), ``boot[label][score_name]`` an array of n_resamples."""
    fast = resampled_scores(rows, by, n_resamples, seed)
    if fast is not None:
        return fast

    def scores(agg: pl.DataFrame, keys: list[str]) -> tuple[pl.DataFrame, list[str]]:
        names = score_names(agg, keys)
        return agg.with_columns(pl.col(names).cast(pl.Float64, strict=False).fill_null(float("nan"))), names

    agg, names = scores(task_aggregates(rows, [by]), [by])
    point = {row[by]: {n: row[n] for n in names} for row in agg.iter_rows(named=True)}
    boot = {label: {n: np.full(n_resamples, np.nan) for n in names} for label in point}
    for _, resampled in cluster_resamples(rows, n_resamples, seed):
        agg, got = scores(task_aggregates(resampled, ["_b", by]), ["_b", by])
        for row in agg.iter_rows(named=True):
            for n in got:
                if n in boot[row[by]]:
                    boot[row[by]][n][row["_b"]] = row[n]
    return point, boot


def pair_difference(rows: pl.DataFrame, a: str, b: str, score_name: str, point, boot, by: str = "_c", level: float = 0.95,
                    n_resamples: int = N_RESAMPLES, seed: int = 0, min_samples: int = MIN_SAMPLES) -> dict:
    """Score of ``b`` minus ``a`` with its bootstrap interval (from a joint bootstrap), the
    test and its p-value: McNemar's exact test where the score is the mean of a per-sample
    boolean, else the paired permutation test; under ``min_samples`` shared samples neither
    interval nor test (``test`` says so)."""
    n = rows.filter(pl.col(by).is_in([a, b]))["sample_id"].n_unique()
    diff = point[b][score_name] - point[a][score_name]
    out = {"difference": diff, "difference_low": float("nan"), "difference_high": float("nan"), "test": too_few(n),
           "a_only": None, "b_only": None, "p": float("nan")}
    column = BINARY.get(score_name)
    exact = None
    if column and column in rows.columns:
        pair = rows.filter(pl.col(by).is_in([a, b]) & pl.col(column).is_not_null())
        wide = pair.pivot(on=by, index="sample_id", values=column, aggregate_function="first").drop_nulls()
        if a in wide.columns and b in wide.columns:
            exact = mcnemar(wide[a].cast(pl.Boolean).to_numpy(), wide[b].cast(pl.Boolean).to_numpy())
            out |= {"a_only": exact["a_only"], "b_only": exact["b_only"]}
    if n < min_samples or np.isnan(diff):
        return out
    out["difference_low"], out["difference_high"] = percentile_interval(boot[b][score_name] - boot[a][score_name], level)
    if exact is not None:
        return out | {"test": "McNemar exact", "p": exact["p"]}
    return out | {"test": "paired permutation", "p": permutation_p(rows.filter(pl.col(by).is_in([a, b])), a, b, score_name, by, n_resamples, seed)}


def _label(codec: str, setting: str) -> str:
    return "baseline" if codec == BASELINE else f"{codec} {setting}".strip()


def _defined(value) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def compare(
    results: str | pl.DataFrame,
    pairs: list[tuple[tuple[str, str], tuple[str, str]]] | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    min_samples: int = MIN_SAMPLES,
    include_flagged: bool = False,
) -> pl.DataFrame:
    """Paired comparisons of conditions on the samples they share, per dataset, task and
    split-level score (module docstring). ``pairs`` lists ((codec, setting), (codec,
    setting)); by default every codec setting against the baseline (``("none", "")``).
    Rows a pipeline check flagged are left out unless ``include_flagged``.

    One row per (dataset, task, score_name, pair): ``n`` the shared samples, ``score_a``,
    ``score_b``, ``difference`` = b − a with ``difference_low``/``difference_high`` (the
    percentile bootstrap interval at ``level``), ``test`` (the test, or "too few samples (n =
    4)" under ``min_samples``), ``a_only``/``b_only`` (McNemar's discordant counts), ``p`` and
    ``p_holm`` (Holm over every row of the table)."""
    df = load(results)
    df = df.with_columns(COLUMN_LABEL.alias("_c"))
    rows_out, found = [], set()
    for (dataset, task), group in conclusive_rows(df, include_flagged).sort("dataset", "task").group_by(["dataset", "task"], maintain_order=True):
        conds = group.select("codec", "setting").unique().sort("codec", "setting").rows()
        wanted = pairs if pairs is not None else [((BASELINE, ""), c) for c in conds if c[0] != BASELINE]
        for (ca, sa), (cb, sb) in wanted:
            a, b = _label(ca, str(sa)), _label(cb, str(sb))
            rows = common_samples(group, [a, b])
            if rows.is_empty():
                continue
            found.add(((ca, sa), (cb, sb)))
            n = rows["sample_id"].n_unique()
            point, boot = joint_bootstrap(rows, n_resamples=n_resamples if n >= min_samples else 0, seed=seed)
            for score_name in point[a]:
                if not (_defined(point[a][score_name]) and _defined(point[b][score_name])):
                    continue  # a score one side lacks (agreement: none on the baseline, its reference)
                rows_out.append({"dataset": dataset, "task": task, "score_name": score_name, "a": a, "b": b, "n": n,
                                 "score_a": point[a][score_name], "score_b": point[b][score_name],
                                 **pair_difference(rows, a, b, score_name, point, boot, level=level, n_resamples=n_resamples,
                                                   seed=seed, min_samples=min_samples)})
    missing = [f"{_label(ca, str(sa))} vs {_label(cb, str(sb))}" for (ca, sa), (cb, sb) in pairs or [] if ((ca, sa), (cb, sb)) not in found]
    if missing:
        raise ValueError(f"no samples coded without error under both conditions of: {'; '.join(missing)} (is each a (codec, setting) of the results?)")
    schema = {"dataset": pl.String, "task": pl.String, "score_name": pl.String, "a": pl.String, "b": pl.String, "n": pl.Int64,
              "score_a": pl.Float64, "score_b": pl.Float64, "difference": pl.Float64, "difference_low": pl.Float64,
              "difference_high": pl.Float64, "test": pl.String, "a_only": pl.Int64, "b_only": pl.Int64, "p": pl.Float64}
    out = pl.DataFrame(rows_out, schema=schema).with_columns(pl.col("p", "difference_low", "difference_high").fill_nan(None))
    return out.with_columns(p_holm=pl.Series(holm(out["p"].to_numpy()), dtype=pl.Float64, nan_to_null=True))


def condition_intervals(results: str | pl.DataFrame, n_resamples: int = N_RESAMPLES, seed: int = 0, level: float = 0.95,
                        min_samples: int = MIN_SAMPLES, include_flagged: bool = False) -> pl.DataFrame:
    """Percentile bootstrap intervals of what a plot draws per condition: each split-level
    score (``score_low``/``score_high``) and each mean rate and metric (``<column>_low``/
    ``<column>_high``), per (dataset, task, codec, setting, score_name), from the tables'
    cluster bootstrap over sample ids (one draw for all conditions of a dataset and task;
    means over finite values). ``n``: the samples of the dataset and task; under
    ``min_samples`` no interval. Rows a pipeline check flagged are left out unless asked for."""
    df = conclusive_rows(load(results), include_flagged).with_columns(COLUMN_LABEL.alias("_c"))
    means = [c for c in [*rate_columns(df), *metric_columns(df)] if c in df.columns]
    out = []
    for (dataset, task), rows in df.sort("dataset", "task").group_by(["dataset", "task"], maintain_order=True):
        ids, member = np.unique(rows["sample_id"].to_numpy(), return_inverse=True)
        n = len(ids)
        drawn = n_resamples if n >= min_samples else 0
        point, boot = joint_bootstrap(rows, n_resamples=drawn, seed=seed)
        counts = resample_counts(n, drawn, seed)
        labels = rows["_c"].to_numpy()
        for (codec, setting, label), _ in rows.group_by(["codec", "setting", "_c"], maintain_order=True):
            here = labels == label
            bounds = {}
            for column in means:
                values = rows[column].cast(pl.Float64).to_numpy()
                keep = here & np.isfinite(values)
                total, count = np.zeros(n), np.zeros(n)
                np.add.at(total, member[keep], values[keep])
                np.add.at(count, member[keep], 1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    bounds[f"{column}_low"], bounds[f"{column}_high"] = percentile_interval(counts @ total / (counts @ count), level) if drawn else (None, None)
            for score_name, values in boot.get(label, {}).items():
                low, high = percentile_interval(values, level) if drawn else (None, None)
                out.append({"dataset": dataset, "task": task, "codec": codec, "setting": setting, "score_name": score_name, "n": n,
                            "score_low": low, "score_high": high, **bounds})
    schema = {"dataset": pl.String, "task": pl.String, "codec": pl.String, "setting": pl.String, "score_name": pl.String, "n": pl.Int64,
              "score_low": pl.Float64, "score_high": pl.Float64, **{f"{c}_{s}": pl.Float64 for c in means for s in ("low", "high")}}
    return pl.DataFrame(out, schema=schema).with_columns(pl.col(pl.Float64).fill_nan(None))
