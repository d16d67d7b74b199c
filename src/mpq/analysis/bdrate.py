"""Machine BD-rate: the Bjøntegaard delta rate with a task score in place of PSNR.

For each codec, the task score is first made monotone in rate: a task score measured on a
finite split is noisy and can dip as bits rise, and a curve that turns back makes the
integral meaningless (one dip of 0.02 in accuracy swung a BD-rate from −5 % to −33 %). The
fit is isotonic regression of score on rate (pool adjacent violators: settings whose
scores fall as bits rise share their mean score); settings with one score are one point
at their mean log-rate. Log-rate is then interpolated over the score with a monotone
piecewise-cubic (pchip) interpolant. The BD-rate of a test codec against an anchor is
exp(mean difference of log-rate over the score range both curves cover) − 1: the average
change in bits the test codec needs for the same task score; −20 % means 20 % fewer bits.
That common range must be at least ``min_overlap`` (50 %) of the narrower curve's range
and hold at least ``MIN_POINTS`` of the two curves' points, else there is no value.

The convention is the field's (CompressAI's and MPEG's common test conditions): a curve is
a codec's sweep of settings only (rows coded at a requested rate, ``target_bpp`` or
``target_kbps``, are a different kind of condition and have their own section), and its
rate is the mean rate per pixel or per sample (``bpp`` for images, ``bps`` for audio), so
that a large image does not weigh more than a small one as it would in mean bits.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import polars as pl
from scipy.optimize import isotonic_regression

from mpq.analysis.correlation import N_RESAMPLES
from mpq.analysis.paired import cluster_resamples
from mpq.analysis.sums import resampled_scores
from mpq.analysis.tables import MIN_SAMPLES, conclusive_rows, load, rate_column, score_names, too_few
from mpq.means import task_aggregates
from mpq.results import BASELINE
from mpq.targets import TARGET_KEYS

MIN_SETTINGS = 4
MIN_OVERLAP = 0.5
MIN_POINTS = 4  # points of the two curves inside the common score range: the integral rests on data


def _log_rate_curve(rate, score) -> tuple[Pchip, int]:
    """Log-rate over the monotone fit of the score, and how many settings the fit moved."""
    rate, score = np.asarray(rate, dtype=float), np.asarray(score, dtype=float)
    keep = np.isfinite(rate) & np.isfinite(score) & (rate > 0)
    order = np.lexsort((score[keep], rate[keep]))  # by rate, equal rates by score
    rate, score = rate[keep][order], score[keep][order]
    fitted = isotonic_regression(score).x if len(score) else score
    moved = int((np.abs(fitted - score) > 1e-12).sum())  # both finite
    levels, inverse = np.unique(fitted, return_inverse=True)
    if len(levels) < 2:
        raise ValueError("fewer than two distinct task scores after the monotone fit: no curve to integrate")
    log_rate = np.bincount(inverse, weights=np.log(rate)) / np.bincount(inverse)
    return Pchip(levels, log_rate), moved


def _edge(h0, h1, m0, m1):
    """scipy's one-sided three-point end derivative, kept shape-preserving."""
    d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    if np.sign(d) != np.sign(m0):
        return 0.0
    if np.sign(m0) != np.sign(m1) and abs(d) > 3 * abs(m0):
        return 3 * m0
    return d


class Pchip:
    """``scipy.interpolate.PchipInterpolator`` of 1-d data, only its ``x`` and ``integrate``
    inside the data's range, as scipy computes them (its derivatives, Hermite cubics): the
    BD-rate bootstrap fits and integrates hundreds of thousands of curves, and scipy's
    object costs most of that in input checks (tests compare the two)."""

    def __init__(self, x, y):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        h, m = np.diff(x), np.diff(y) / np.diff(x)
        if len(x) == 2:
            d = np.array([m[0], m[0]])
        else:
            d = np.zeros_like(y)
            flat = (np.sign(m[1:]) != np.sign(m[:-1])) | (m[1:] == 0) | (m[:-1] == 0)
            w1, w2 = 2 * h[1:] + h[:-1], h[1:] + 2 * h[:-1]
            with np.errstate(divide="ignore", invalid="ignore"):
                d[1:-1] = np.where(flat, 0.0, (w1 + w2) / (w1 / m[:-1] + w2 / m[1:]))
            d[0], d[-1] = _edge(h[0], h[1], m[0], m[1]), _edge(h[-1], h[-2], m[-1], m[-2])
        self.x, self.y, self.d, self.h = x, y, d, h
        whole = h * (y[:-1] + y[1:]) / 2 + h**2 * (d[:-1] - d[1:]) / 12  # each segment's integral
        self._cumulative = np.concatenate([[0.0], np.cumsum(whole)])

    def _antiderivative(self, t: float) -> float:
        i = min(max(int(np.searchsorted(self.x, t, side="right")) - 1, 0), len(self.h) - 1)  # np.clip costs µs on a scalar
        h, s = self.h[i], (t - self.x[i]) / self.h[i]
        y0, y1, d0, d1 = self.y[i], self.y[i + 1], self.d[i], self.d[i + 1]
        part = (y0 * (s - s**3 + s**4 / 2) + h * d0 * (s**2 / 2 - 2 * s**3 / 3 + s**4 / 4)
                + y1 * (s**3 - s**4 / 2) + h * d1 * (s**4 / 4 - s**3 / 3))
        return self._cumulative[i] + h * part

    def integrate(self, a: float, b: float) -> float:
        return self._antiderivative(b) - self._antiderivative(a)


def _bd_rate(rate_anchor, score_anchor, rate_test, score_test, min_overlap: float, min_points: int = MIN_POINTS) -> tuple[float, dict[str, int]]:
    return _between(_log_rate_curve(rate_anchor, score_anchor), _log_rate_curve(rate_test, score_test), min_overlap, min_points)


def _between(anchor_curve, test_curve, min_overlap: float, min_points: int) -> tuple[float, dict[str, int]]:
    """``_bd_rate`` of two fitted curves (``_log_rate_curve``: each codec's is fitted once for all its pairs)."""
    (anchor, moved_anchor), (test, moved_test) = anchor_curve, test_curve
    low, high = max(anchor.x[0], test.x[0]), min(anchor.x[-1], test.x[-1])
    if not low < high:
        raise ValueError(f"the task-score ranges do not overlap ({anchor.x[0]:.4g}–{anchor.x[-1]:.4g} vs {test.x[0]:.4g}–{test.x[-1]:.4g})")
    narrower = min(anchor.x[-1] - anchor.x[0], test.x[-1] - test.x[0])
    if high - low < min_overlap * narrower:
        raise ValueError(
            f"the task-score ranges overlap over {low:.4g}–{high:.4g} only, under {100 * min_overlap:.0f} % "
            f"of the narrower range ({anchor.x[0]:.4g}–{anchor.x[-1]:.4g} vs {test.x[0]:.4g}–{test.x[-1]:.4g})"
        )
    inside = sum(int(np.searchsorted(c.x, high, side="right") - np.searchsorted(c.x, low)) for c in (anchor, test))  # x ascends
    if inside < min_points:
        raise ValueError(f"only {inside} of the two curves' points lie in their common score range {low:.4g}–{high:.4g} (at least {min_points} needed)")
    mean_diff = (test.integrate(low, high) - anchor.integrate(low, high)) / (high - low)
    return float(np.expm1(mean_diff) * 100), {"anchor": moved_anchor, "test": moved_test}


def bd_rate(rate_anchor, score_anchor, rate_test, score_test, min_overlap: float = MIN_OVERLAP, min_points: int = MIN_POINTS) -> float:
    """Bjøntegaard delta rate in percent of the test codec against the anchor, over the
    task-score range both cover, after the monotone fit of each curve (module docstring).
    Raises ValueError, saying why, when there is no value: under two distinct scores, a
    common score range under ``min_overlap`` of the narrower curve's range, or fewer than
    ``min_points`` points of the two curves inside it."""
    return _bd_rate(rate_anchor, score_anchor, rate_test, score_test, min_overlap, min_points)[0]


def _curves(rows: pl.DataFrame, by: list[str], rate: str) -> dict[tuple, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per (*by, score_name): each codec's (mean ``rate``, split-level score) over its
    settings, from the rows of one dataset and task."""
    keys = [*by, "codec", "setting"]
    agg = task_aggregates(rows, keys)
    names = score_names(agg, keys)
    if not names:
        return {}
    means = rows.group_by(keys).agg(pl.col(rate).cast(pl.Float64).mean().alias("_rate"))
    long = (
        agg.with_columns(pl.col(names).cast(pl.Float64, strict=False))
        .unpivot(on=names, index=keys, variable_name="score_name", value_name="score")
        .drop_nulls("score")
        .join(means, on=keys)
    )
    out: dict[tuple, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for key, g in long.partition_by([*by, "score_name", "codec"], as_dict=True).items():
        out.setdefault(key[:-1], {})[key[-1]] = (g["_rate"].to_numpy(), g["score"].to_numpy())
    return out


def _resampled_values(rows: pl.DataFrame, rate: str, n_resamples: int, seed: int, codecs: dict[str, list[str]],
                      min_overlap: float, min_points: int) -> dict[tuple, np.ndarray]:
    """The BD-rate of every pair of ``codecs`` (per score name) on each cluster-bootstrap
    resample with a value, keyed (score_name, anchor, test): from per-sample sums
    (``resampled_scores``) with every resample's curves fitted and integrated at once where
    the task allows, else by recomputing ``Task.aggregate`` on each resample's rows."""
    out: dict[tuple, list] = {(name, *pair): [] for name in codecs for pair in combinations(codecs[name], 2)}
    if n_resamples <= 0 or not codecs:
        return {key: np.array(v) for key, v in out.items()}
    keyed = rows.with_columns(_k=pl.concat_str("codec", "setting", separator="\x1f"))
    fast = resampled_scores(keyed, "_k", n_resamples, seed, means=(rate,))
    if fast is None:
        for labels, frame in cluster_resamples(rows, n_resamples, seed):
            resampled = _curves(frame, ["_b"], rate)
            for b in labels:
                for name in codecs:
                    for pair, (value, _) in _pairs(resampled.get((b, name), {}), codecs[name], min_overlap, min_points).items():
                        if value is not None:
                            out[name, *pair].append(value)
        return {key: np.array(v) for key, v in out.items()}
    _, boot = fast
    conds = [label.split("\x1f", 1) for label in sorted(boot)]
    for name in codecs:
        curves = {}
        for codec in codecs[name]:
            mine = [label for label, (c, _) in zip(sorted(boot), conds) if c == codec and name in boot[label]]
            curves[codec] = (np.stack([boot[label][rate] for label in mine], 1), np.stack([boot[label][name] for label in mine], 1))
        for pair, values in _pairs_rows(curves, codecs[name], min_overlap, min_points).items():
            out[name, *pair] = values[np.isfinite(values)]
    return out


class _Rows:
    """``_log_rate_curve`` of one codec on every resample at once (row b: resample b's
    settings), each row's levels padded with +inf to the most settings. The arithmetic is
    ``Pchip``'s, element for element; rows whose scores are not strictly increasing in rate
    take scipy's isotonic regression one by one (its pooled means, to the last bit).
    ``regular``: rows with every rate positive and finite and every score finite (others
    are left to ``_pairs``); ``ok``: rows with a curve (at least two levels)."""

    def __init__(self, rate: np.ndarray, score: np.ndarray):
        self.regular = (np.isfinite(rate) & np.isfinite(score) & (rate > 0)).all(1)
        rate, score = np.where(self.regular[:, None], rate, 1.0), np.where(self.regular[:, None], score, 0.0)
        order = np.lexsort((score, rate), axis=-1)  # by rate, equal rates by score
        rate, fitted = np.take_along_axis(rate, order, 1), np.take_along_axis(score, order, 1)
        for b in np.flatnonzero((fitted[:, 1:] <= fitted[:, :-1]).any(1)):  # strictly increasing rows are their own fit
            fitted[b] = isotonic_regression(fitted[b]).x
        rows, size = fitted.shape
        level = np.concatenate([np.zeros((rows, 1), dtype=np.int64), np.cumsum(fitted[:, 1:] != fitted[:, :-1], 1)], 1)
        self.n = level[:, -1] + 1
        self.ok = self.regular & (self.n >= 2)
        flat = (level + size * np.arange(rows)[:, None]).ravel()
        total = np.bincount(flat, weights=np.log(rate).ravel(), minlength=rows * size).reshape(rows, size)
        count = np.bincount(flat, minlength=rows * size).reshape(rows, size)
        self.x = np.full((rows, size), np.inf)
        self.x[np.arange(rows)[:, None], level] = fitted
        self.y = np.where(count > 0, total / np.maximum(count, 1), 0.0)
        self.h, self.d = np.ones((rows, max(size - 1, 1))), np.zeros((rows, size))
        self.cumulative = np.zeros((rows, size))
        for n in np.unique(self.n[self.ok]):
            self._fit(np.flatnonzero(self.ok & (self.n == n)), int(n))
        self.first, self.last = self.x[:, 0], np.take_along_axis(self.x, (self.n - 1)[:, None], 1)[:, 0]

    def _fit(self, rows: np.ndarray, n: int) -> None:
        """``Pchip``'s derivatives and segment integrals of the rows with n levels."""
        x, y = self.x[rows, :n], self.y[rows, :n]
        h, m = np.diff(x), np.diff(y) / np.diff(x)
        if n == 2:
            d = np.concatenate([m, m], 1)
        else:
            d = np.zeros_like(y)
            flat = (np.sign(m[:, 1:]) != np.sign(m[:, :-1])) | (m[:, 1:] == 0) | (m[:, :-1] == 0)
            w1, w2 = 2 * h[:, 1:] + h[:, :-1], h[:, 1:] + 2 * h[:, :-1]
            with np.errstate(divide="ignore", invalid="ignore"):
                d[:, 1:-1] = np.where(flat, 0.0, (w1 + w2) / (w1 / m[:, :-1] + w2 / m[:, 1:]))
            d[:, 0], d[:, -1] = _edges(h[:, 0], h[:, 1], m[:, 0], m[:, 1]), _edges(h[:, -1], h[:, -2], m[:, -1], m[:, -2])
        whole = h * (y[:, :-1] + y[:, 1:]) / 2 + h**2 * (d[:, :-1] - d[:, 1:]) / 12
        self.h[rows, : n - 1], self.d[rows, :n] = h, d
        self.cumulative[rows, 1:n] = np.cumsum(whole, 1)

    def integrate(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._antiderivative(b) - self._antiderivative(a)

    def _antiderivative(self, t: np.ndarray) -> np.ndarray:
        i = np.clip((self.x <= t[:, None]).sum(1) - 1, 0, np.maximum(self.n - 2, 0))[:, None]

        def at(a, shift=0):
            return np.take_along_axis(a, i + shift, 1)[:, 0]

        h = at(self.h)
        s = (t - at(self.x)) / h
        y0, y1, d0, d1 = at(self.y), at(self.y, 1), at(self.d), at(self.d, 1)
        part = (y0 * (s - s**3 + s**4 / 2) + h * d0 * (s**2 / 2 - 2 * s**3 / 3 + s**4 / 4)
                + y1 * (s**3 - s**4 / 2) + h * d1 * (s**4 / 4 - s**3 / 3))
        return at(self.cumulative) + h * part


def _edges(h0, h1, m0, m1):
    """``_edge`` of arrays."""
    d = ((2 * h0 + h1) * m0 - h0 * m1) / (h0 + h1)
    capped = np.where((np.sign(m0) != np.sign(m1)) & (np.abs(d) > 3 * np.abs(m0)), 3 * m0, d)
    return np.where(np.sign(d) != np.sign(m0), 0.0, capped)


def _pairs_rows(curves: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str], min_overlap: float,
                min_points: int) -> dict[tuple, np.ndarray]:
    """``_pairs``' values on every resample at once: ``curves[codec]`` holds (rates, scores),
    each (resamples, settings); NaN where a resample has no value."""
    fitted = {name: _Rows(*curves[name]) for name in names}
    out = {}
    for anchor, test in combinations(names, 2):
        a, t = fitted[anchor], fitted[test]
        low, high = np.maximum(a.first, t.first), np.minimum(a.last, t.last)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            inside = sum((c.x <= high[:, None]).sum(1) - (c.x < low[:, None]).sum(1) for c in (a, t))
            good = a.ok & t.ok & (low < high) & ~(high - low < min_overlap * np.minimum(a.last - a.first, t.last - t.first))
            good &= inside >= min_points
            values = np.where(good, np.expm1((t.integrate(low, high) - a.integrate(low, high)) / (high - low)) * 100, np.nan)
        out[anchor, test] = values
    for b in np.flatnonzero(~np.logical_and.reduce([fitted[name].regular for name in names])):  # a non-finite score or rate
        one = _pairs({name: (rates[b], scores[b]) for name, (rates, scores) in curves.items()}, names, min_overlap, min_points)
        for pair, (value, _) in one.items():
            out[pair][b] = np.nan if value is None else value
    return out


def _pairs(curves: dict[str, tuple[np.ndarray, np.ndarray]], names: list[str], min_overlap: float, min_points: int) -> dict[tuple, tuple[float | None, str | None]]:
    """BD-rate of every pair of the named codecs, with a note: why there is no value, or
    which curve the monotone fit moved."""
    out = {}
    fitted: dict[str, tuple | str] = {}
    for name in names:
        if name in curves:
            try:
                fitted[name] = _log_rate_curve(*curves[name])
            except ValueError as exc:
                fitted[name] = str(exc)
    for anchor, test in combinations(names, 2):
        if anchor not in curves or test not in curves:  # a resample without one of them
            out[anchor, test] = None, None
            continue
        try:
            for codec in (anchor, test):
                if isinstance(fitted[codec], str):
                    raise ValueError(fitted[codec])
            value, moved = _between(fitted[anchor], fitted[test], min_overlap, min_points)
        except ValueError as exc:
            out[anchor, test] = None, str(exc)
            continue
        notes = [f"{role} {codec}: the monotone fit moved {moved[role]} setting(s) whose score falls as the rate rises"
                 for role, codec in (("anchor", anchor), ("test", test)) if moved[role]]
        out[anchor, test] = value, "; ".join(notes) or None
    return out


def sweep_rows(df: pl.DataFrame) -> pl.DataFrame:
    """Rows of codec settings: those coded at a requested rate (a ``target_*`` column) left out."""
    for column in TARGET_KEYS:
        if column in df.columns:
            df = df.filter(pl.col(column).is_null())
    return df


def bd_rates(
    results: str | pl.DataFrame,
    min_settings: int = MIN_SETTINGS,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    min_overlap: float = MIN_OVERLAP,
    min_points: int = MIN_POINTS,
    min_samples: int = MIN_SAMPLES,
    include_flagged: bool = False,
) -> pl.DataFrame:
    """BD-rate on the mean rate per pixel or sample (``rate``: bpp, bps; bits where neither)
    vs each split-level task score, for every pair of codecs with at least ``min_settings``
    settings in their sweeps, per dataset and task (module docstring). The anchor is the
    first codec of the pair by name. Rows a pipeline check flagged are left out unless
    ``include_flagged``.

    Columns: ``n`` (samples), ``bd_rate`` (percent; None where there is none),
    ``bd_rate_low`` and ``bd_rate_high``: with at least ``min_samples`` samples, the
    percentile bootstrap interval (``level``) over samples: each of ``n_resamples``
    resamples draws sample ids with replacement (a sample's rows at every setting of every
    codec go together), recomputes every condition's mean rate and task score
    (``Task.aggregate``) and the BD-rate; ``note`` says why a pair has no value or interval,
    or that the monotone fit moved settings, or how many resamples had no value (the
    interval is over the others)."""
    df = load(results)
    coded = sweep_rows(conclusive_rows(df, include_flagged)).filter(pl.col("codec") != BASELINE)
    rows = []
    tail = 100 * (1 - level) / 2
    for (dataset, task), group in coded.sort("dataset", "task").group_by(["dataset", "task"], maintain_order=True):
        rate = rate_column(group)
        group = group.filter(pl.col(rate).is_not_null())
        n = group["sample_id"].n_unique()
        point = _curves(group, [], rate)
        codecs = {key[0]: sorted(c for c, (rates, _) in curves.items() if len(rates) >= min_settings) for key, curves in point.items()}
        codecs = {name: codecs[name] for name in sorted(codecs) if len(codecs[name]) > 1}
        values = {name: _pairs(point[(name,)], codecs[name], min_overlap, min_points) for name in codecs}
        boot = _resampled_values(group, rate, n_resamples if n >= min_samples else 0, seed, codecs, min_overlap, min_points)
        for name in codecs:
            for (anchor, test), (value, note) in values[name].items():
                row = {"dataset": dataset, "task": task, "score_name": name, "rate": rate, "anchor": anchor, "test": test, "n": n,
                       "bd_rate": value, "bd_rate_low": None, "bd_rate_high": None, "note": note}
                got = boot[name, anchor, test]
                if value is not None and n < min_samples:
                    row["note"] = "; ".join(filter(None, [note, f"no interval: {too_few(n)}"]))
                elif value is not None and got.size:
                    row["bd_rate_low"], row["bd_rate_high"] = (float(v) for v in np.percentile(got, [tail, 100 - tail]))
                    if len(got) < n_resamples:
                        missing = f"{n_resamples - len(got)} of {n_resamples} resamples had no value; interval from the rest"
                        row["note"] = "; ".join(filter(None, [note, missing]))
                rows.append(row)
    schema = {"dataset": pl.String, "task": pl.String, "score_name": pl.String, "rate": pl.String, "anchor": pl.String, "test": pl.String,
              "n": pl.Int64, "bd_rate": pl.Float64, "bd_rate_low": pl.Float64, "bd_rate_high": pl.Float64, "note": pl.String}
    return pl.DataFrame(rows, schema=schema)
