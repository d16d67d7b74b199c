"""Per-condition means and split-level task scores, and the study's summary-table layout.

Everything is driven by the columns present: the quality metrics are the float columns
that registered metrics declare, the task scores are whatever each task's
``Task.aggregate`` returns. Error rows are left out of every mean and score.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from mpq import registry
from mpq.means import CONDITION, baseline_first, filled_numeric, finite_means, metric_columns, task_aggregates
from mpq.media import MEDIA
from mpq.reading import read_results
from mpq.results import BASELINE, ResultStore, check_location

RATES = tuple(m.rates[0] for m in MEDIA.values())  # each modality's own rate: bpp, bps


def load(results: str | Path | pl.DataFrame) -> pl.DataFrame:
    """Result rows from an output folder or URI (or a frame, returned as is)."""
    if isinstance(results, pl.DataFrame):
        df = results
    else:
        check_location(str(results))  # one line for an unreachable endpoint, missing bucket, bad credentials
        if not ResultStore(str(results)).exists():
            raise ValueError(f"no results folder at {results}/results: is {results} a job's output?")
        df = read_results(str(results))
    if df.is_empty():
        where = "" if isinstance(results, pl.DataFrame) else f" under {results}/results"
        raise ValueError(f"no result rows{where}")
    return df


def lower_better(column: str) -> bool:
    """Whether smaller values of a metric column mean better quality (LPIPS, CDPAM).

    ``Metric.lower_better`` describes the column named like the metric; its other columns
    (e.g. ``cdpam_db`` = −10·log10(cdpam)) may point the other way, so they are not marked."""
    return any(name == column and cls.lower_better for name, cls in registry.items("metric"))


def rate_columns(df: pl.DataFrame) -> list[str]:
    """The modalities' own rate columns these rows fill (bpp for images, bps for audio)."""
    return [c for c in RATES if filled_numeric(df, c)]


def rate_column(df: pl.DataFrame) -> str:
    """The rate unit of these rows: bpp for images, bps for audio, else raw bits."""
    return next(iter(rate_columns(df)), "bits")


def ok_rows(df: pl.DataFrame) -> pl.DataFrame:
    return df.filter(pl.col("error").is_null())


# Below this many samples (clusters of rows) no interval or test is reported, and nothing is
# called better or worse: an exact paired permutation test cannot reach p < 0.05 under 6
# samples at all, and a percentile bootstrap over fewer than about 10 clusters covers far less
# than its nominal 95 % (docs/analysis.md has the figures).
MIN_SAMPLES = 10


def too_few(n: int) -> str:
    """What a table says in place of an interval or a test on ``n`` samples."""
    return f"too few samples (n = {n})"


def flagged(df: pl.DataFrame) -> pl.Expr:
    """Rows a component marked as meaningless (random weights: ``pipeline_check``)."""
    return pl.col("pipeline_check").is_not_null() if "pipeline_check" in df.columns else pl.lit(False)


def conclusive_rows(df: pl.DataFrame, include_flagged: bool = False) -> pl.DataFrame:
    """The rows conclusions are drawn from: error-free, and unless ``include_flagged`` none a
    pipeline check marked (a random model's answers would rank, test and fit like real ones)."""
    rows = ok_rows(df)
    return rows if include_flagged else rows.filter(~flagged(rows))


def flagged_summary(df: pl.DataFrame) -> pl.DataFrame:
    """Error-free flagged rows per (dataset, task, codec, setting, pipeline_check): what
    ``conclusive_rows`` leaves out and why."""
    rows = ok_rows(df).filter(flagged(df))
    keys = ["dataset", "task", "codec", "setting", "pipeline_check"]
    if rows.is_empty():
        return pl.DataFrame(schema={**{k: pl.String for k in keys}, "rows": pl.UInt32})
    return baseline_first(rows.group_by(keys).agg(pl.len().alias("rows")), by=["dataset", "task"])


def modalities(df: pl.DataFrame) -> dict[str, str]:
    """Dataset → modality, as its rows record it; rows of an older mpq, which did not, get it from
    the registered codecs that coded them ("other" if unknown or mixed)."""
    out: dict[str, str] = {}
    if "modality" in df.columns:
        out.update(df.filter(pl.col("modality").is_not_null()).group_by("dataset").agg(pl.col("modality").first()).iter_rows())
    older = df.filter(~pl.col("dataset").is_in(list(out)))
    for dataset, codecs in older.filter(pl.col("codec") != BASELINE).group_by("dataset").agg(pl.col("codec").unique()).iter_rows():
        kinds = set()
        for name in codecs:
            try:
                kinds.add(registry.get("codec", name).modality)
            except KeyError:
                kinds.add("other")
        out[dataset] = kinds.pop() if len(kinds) == 1 else "other"
    for dataset in df["dataset"].unique():
        out.setdefault(dataset, "other")
    return out


def _by_modality(df: pl.DataFrame) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for dataset, modality in sorted(modalities(df).items()):
        out.setdefault(modality, []).append(dataset)
    return dict(sorted(out.items()))


def score_names(agg: pl.DataFrame, keys) -> list[str]:
    """The split-level scores of a ``task_aggregates`` frame: not its keys, nor the counts of
    values left out (``agreement_nonfinite``)."""
    return [c for c in agg.columns if c not in keys and not c.endswith("_nonfinite")]


def scores(df: pl.DataFrame) -> pl.DataFrame:
    """Split-level task scores per condition, long: one row per (condition, score_name)."""
    agg = task_aggregates(df, CONDITION)
    values = score_names(agg, CONDITION)
    if not values:
        return pl.DataFrame(schema={**{k: pl.String for k in CONDITION}, "score_name": pl.String, "score": pl.Float64})
    agg = agg.with_columns(pl.col(values).cast(pl.Float64, strict=False))
    return agg.unpivot(on=values, index=CONDITION, variable_name="score_name", value_name="score").drop_nulls("score")


def conditions(results: str | pl.DataFrame) -> pl.DataFrame:
    """One row per (dataset, task, codec, setting, score_name): sample count ``n``,
    ``errors``, mean bits, mean rate and metrics, and the task's split-level ``score``
    (``Task.aggregate``). Means are over finite values of error-free rows;
    ``<column>_nonfinite`` (only for columns that have any) counts the infinite or NaN
    values left out (PSNR of a lossless decode)."""
    df = load(results)
    quality = ["bits", *rate_columns(df), *metric_columns(df)]
    per_condition = (
        df.lazy()
        .group_by(CONDITION)
        .agg(
            pl.len().alias("n"),
            pl.col("error").is_not_null().sum().alias("errors"),
            *finite_means(df, quality, pl.col("error").is_null()),
        )
        .collect()
    )
    mod = modalities(df)
    out = per_condition.join(scores(df), on=CONDITION, how="left", nulls_equal=True)
    out = out.with_columns(pl.col("dataset").replace_strict(mod, return_dtype=pl.String).alias("modality"))
    return baseline_first(out.sort("dataset", "task", "score_name"))


COLUMN_LABEL = pl.when(pl.col("codec") == BASELINE).then(pl.lit("baseline")).otherwise(pl.concat_str("codec", "setting", separator=" ").str.strip_chars())


def summary_tables(results: str | pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The study's Tables 3 and 4: per modality, one row per (measure, dataset) and one
    column per codec setting, the baseline first. Measures: each quality metric, the rate
    (means over the samples of a dataset, error rows left out), then each task score.
    Means are over finite values; a metric with infinite or NaN values (PSNR of a lossless
    decode) gets a ``<metric>_nonfinite`` row after its own: how many were left out."""
    df = load(results)
    ok = ok_rows(df)
    # Metric values do not depend on the task: count each (sample, condition) once.
    ok = ok.unique(["dataset", "sample_id", "codec", "setting"])
    means = ok.group_by(["dataset", "codec", "setting"]).agg(finite_means(ok, [*metric_columns(df), *rate_columns(df)]))
    quality = [c for c in means.columns if c not in ("dataset", "codec", "setting")]
    long = [
        means.select("dataset", pl.col("dataset").alias("label"), "codec", "setting", pl.lit(m).alias("measure"), pl.col(m).cast(pl.Float64).alias("value"))
        for m in quality
    ]
    task_scores = scores(df)
    if task_scores.height:
        # A dataset read by several tasks gets one score row per task.
        several = pl.col("task").n_unique().over("dataset") > 1
        label = pl.when(several).then(pl.col("dataset") + " / " + pl.col("task")).otherwise(pl.col("dataset"))
        long.append(task_scores.select("dataset", label.alias("label"), "codec", "setting", pl.col("score_name").alias("measure"), pl.col("score").alias("value")))
    measure_order = {m: i for i, m in enumerate(dict.fromkeys(quality + task_scores["score_name"].to_list()))}
    cells = pl.concat(long).drop_nulls("value").with_columns(COLUMN_LABEL.alias("column"))
    out = {}
    for modality, datasets in _by_modality(df).items():
        part = cells.filter(pl.col("dataset").is_in(datasets))
        if part.is_empty():
            continue
        columns = baseline_first(part.select("codec", "setting", "column").unique())["column"].to_list()
        table = (
            part.pivot(on="column", index=["measure", "label"], values="value", aggregate_function="first")
            .with_columns(pl.col("measure").replace_strict(measure_order, return_dtype=pl.Int64).alias("_m"))
            .sort("_m", "label")
            .drop("_m")
            .rename({"label": "dataset"})
        )
        out[modality] = table.select("measure", "dataset", *[c for c in columns if c in table.columns])
    return out


def _cell(value, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def to_markdown(df: pl.DataFrame, digits: int = 4) -> str:
    """A GitHub-flavoured Markdown table; floats to ``digits`` significant digits."""
    header = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "|".join("---:" if df.schema[c].is_numeric() else "---" for c in df.columns) + "|"
    rows = ["| " + " | ".join(_cell(v, digits) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join([header, rule, *rows]) + "\n"
