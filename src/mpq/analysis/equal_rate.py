"""Codecs compared at equal rate: which hurts the task least at a given bit budget.

Codecs reach different rates at their settings (JPEG q5 ≈ 0.26 bpp against WebP q0 ≈
0.15 bpp), so their scores are compared at target rates. Where rows carry a target (a
``target_bpp`` or ``target_kbps`` column: the codec entry asked for rates, and the setting
was searched per sample) those targets are the ones compared, and such a codec stands at
a target with its rows coded at it. Any other codec (one without a quality knob to search,
HiFiC, the learned codecs) stands at a target with its setting of highest mean rate not
above the target; one with no setting that low is absent there. ``achieved`` says the
mean rate each reached. Task scores are higher-better (accuracy, mIoU, WRA, SDR).

At each target the codecs are compared on the samples they all coded without error: each
codec's split-level score (``Task.aggregate``) with a bootstrap interval over sample ids,
and its paired comparison (``paired``) against the best codec there (highest score),
p-values Holm-adjusted over the table. Under ``MIN_SAMPLES`` samples there are no intervals
and no tests. Rows a pipeline check flagged are left out unless asked for.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from mpq.analysis.correlation import N_RESAMPLES
from mpq.analysis.paired import common_samples, holm, joint_bootstrap, pair_difference, percentile_interval
from mpq.analysis.tables import MIN_SAMPLES, conclusive_rows, load
from mpq.means import filled_numeric
from mpq.results import BASELINE
from mpq.targets import TARGET_KEYS, TARGET_SETTING

UNITS = ("bpp", "kbps", "bps")  # the rate a target is given in, by preference
N_TARGETS = 3


def rate_unit(rows: pl.DataFrame) -> str:
    return next((u for u in UNITS if filled_numeric(rows, u)), "bits")


def target_column(rows: pl.DataFrame) -> str | None:
    """The column of rows coded at a requested rate, if any: ``target_bpp`` or ``target_kbps``."""
    return next((c for c in TARGET_KEYS if filled_numeric(rows, c)), None)


def _ceil2(x: float) -> float:
    """x rounded up to two significant digits."""
    scale = 10 ** (math.floor(math.log10(x)) - 1)
    return math.ceil(round(x / scale, 9)) * scale


def default_targets(means: pl.DataFrame, unit: str, n: int = N_TARGETS) -> list[float]:
    """``n`` log-spaced targets from the lowest rate two codecs reach to the highest rate
    every codec stays within (rounded up to two significant digits); ``means`` holds one
    row per (codec, setting) with its mean rate."""
    span = means.filter(pl.col(unit) > 0).group_by("codec").agg(pl.col(unit).min().alias("lo"), pl.col(unit).max().alias("hi"))
    if span.height < 2:
        return []
    lo = span["lo"].sort()[1]
    hi = max(lo, span["hi"].min())
    return sorted({_ceil2(float(t)) for t in np.geomspace(lo, hi, n)})


def _at_targets(group: pl.DataFrame, unit: str, targets: list[float] | None):
    """(target, rows of the codecs standing at it, labelled by codec in ``_c`` and by the
    setting used in ``_s``) per target. A codec coded at the target (a ``target_<unit>``
    column) stands with those rows; any other with its setting of highest mean rate not
    above the target."""
    column = target_column(group)
    at_target = group.filter(pl.col(column).is_not_null()) if column else group.clear()
    plain = group.filter(pl.col(column).is_null()) if column else group
    means = plain.group_by("codec", "setting").agg(pl.col(unit).cast(pl.Float64).mean()).drop_nulls(unit)
    if column:
        targets = sorted(at_target[column].unique())
    elif targets is None:
        targets = default_targets(means, unit)
    chosen_setting = pl.col(TARGET_SETTING) if TARGET_SETTING in group.columns else pl.col("setting")
    for target in targets:
        searched = at_target.filter(pl.col(column) == target).with_columns(_s=chosen_setting) if column else at_target
        others = means.filter(~pl.col("codec").is_in(searched["codec"].unique().to_list()) & (pl.col(unit) <= target))
        chosen = others.sort(unit).group_by("codec").last().select("codec", "setting")
        binned = plain.join(chosen, on=["codec", "setting"]).with_columns(_s=pl.col("setting"))
        yield target, pl.concat([searched, binned], how="diagonal_relaxed").with_columns(_c=pl.col("codec"))


def _settings(values: pl.Series) -> str:
    """The settings a codec used at a target: all of them if few, else their range."""
    values = values.cast(pl.String).unique().to_list()
    try:
        values.sort(key=float)
    except ValueError:
        return ", ".join(sorted(values))
    return f"{values[0]}–{values[-1]} ({len(values)} values)" if len(values) > 3 else ", ".join(values)


def equal_rate(
    results: str | pl.DataFrame,
    targets: list[float] | dict[str, list[float]] | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    level: float = 0.95,
    min_samples: int = MIN_SAMPLES,
    include_flagged: bool = False,
) -> pl.DataFrame:
    """Codec × target rate, per dataset, task and split-level score (module docstring).

    ``targets``: rates in the dataset's unit (``bpp`` for images, ``kbps`` for audio), one
    list for every dataset or a list per dataset name; by default three per dataset, from
    the lowest rate two codecs reach to the highest every codec stays within. Where rows
    carry their own targets, those are the targets.

    Columns: ``rate`` (the unit), ``target``, ``codec``, ``setting`` (the settings used:
    the searched ones per sample where rows carry targets; their range if more than 3),
    ``achieved`` (mean rate), ``n`` (samples every codec at the target coded), ``score``
    with ``score_low``/``score_high``, ``best`` (the highest score at the target; of tied
    codecs the first by name), and against the best: ``difference`` (score − best's) with its interval,
    ``test`` (or "too few samples (n = 4)" under ``min_samples``), ``best_only``/``codec_only`` (McNemar's discordant counts: samples right
    under one of the two only), ``p``, ``p_holm``."""
    df = load(results)
    coded = conclusive_rows(df, include_flagged).filter(pl.col("codec") != BASELINE)
    out = []
    for (dataset, task), group in coded.sort("dataset", "task").group_by(["dataset", "task"], maintain_order=True):
        unit = rate_unit(group)
        wanted = targets.get(dataset) if isinstance(targets, dict) else targets
        for target, at in _at_targets(group, unit, wanted):
            codecs = sorted(at["codec"].unique())
            rows = common_samples(at, codecs)
            if rows.is_empty():
                continue
            n = rows["sample_id"].n_unique()
            point, boot = joint_bootstrap(rows, n_resamples=n_resamples if n >= min_samples else 0, seed=seed)
            info = {c: {"setting": _settings(g["_s"]), "achieved": g[unit].cast(pl.Float64).mean()} for (c,), g in rows.group_by("_c")}
            for score_name in point[codecs[0]]:
                scored = [c for c in codecs if np.isfinite(point[c][score_name])]
                if not scored:
                    continue
                best = max(scored, key=lambda c: point[c][score_name])
                for codec in codecs:
                    low, high = percentile_interval(boot[codec][score_name], level)
                    row = {"dataset": dataset, "task": task, "score_name": score_name, "rate": unit, "target": float(target),
                           "codec": codec, "setting": info[codec]["setting"], "achieved": info[codec]["achieved"], "n": n,
                           "score": point[codec][score_name], "score_low": low, "score_high": high, "best": codec == best}
                    if codec != best:
                        test = pair_difference(rows, best, codec, score_name, point, boot, level=level, n_resamples=n_resamples,
                                               seed=seed, min_samples=min_samples)
                        row |= test | {"best_only": test["a_only"], "codec_only": test["b_only"]}
                    out.append(row)
    schema = {"dataset": pl.String, "task": pl.String, "score_name": pl.String, "rate": pl.String, "target": pl.Float64,
              "codec": pl.String, "setting": pl.String, "achieved": pl.Float64, "n": pl.Int64, "score": pl.Float64,
              "score_low": pl.Float64, "score_high": pl.Float64, "best": pl.Boolean, "difference": pl.Float64,
              "difference_low": pl.Float64, "difference_high": pl.Float64, "test": pl.String, "best_only": pl.Int64, "codec_only": pl.Int64, "p": pl.Float64}
    table = pl.DataFrame([{k: row.get(k) for k in schema} for row in out], schema=schema).with_columns(
        pl.col("p", "score_low", "score_high", "difference_low", "difference_high").fill_nan(None))
    return table.with_columns(p_holm=pl.Series(holm(table["p"].to_numpy()), dtype=pl.Float64, nan_to_null=True))
