"""Means per condition (dataset, task, codec, setting), as the run's summary prints them and
``mpq.analysis`` builds on them: the rate and metric columns, means over finite values, each
task's split-level scores, and the baseline-first order tables show. It stands outside
``mpq.analysis`` so that a run's summary does not import the analysis' scipy and matplotlib."""

from __future__ import annotations

import polars as pl

from mpq import registry
from mpq.media import MEDIA
from mpq.results import BASELINE

CONDITION = ["dataset", "task", "codec", "setting"]  # a condition: one codec setting, read by one task
RATE_COLUMNS = tuple(r for m in MEDIA.values() for r in m.rates)  # every modality's rates: bpp, bps, kbps


def filled_numeric(df: pl.DataFrame, col: str) -> bool:
    return col in df.columns and df.schema[col].is_numeric() and df[col].null_count() < df.height


def baseline_first(df: pl.DataFrame, by: list[str] | tuple = ()) -> pl.DataFrame:
    """Conditions in the order tables show them: by ``by``, then the baseline, codecs by name,
    settings numerically where they are numbers (target rates after them)."""
    return (
        df.with_columns(pl.col("setting").cast(pl.Float64, strict=False).alias("_num"))
        .sort([*by, pl.col("codec") != BASELINE, "codec", "_num", "setting"], nulls_last=True)
        .drop("_num")
    )


def metric_columns(df: pl.DataFrame) -> list[str]:
    """Quality-metric columns present in ``df`` (declared by registered metrics), in ``df``'s order."""
    declared = {col for _, cls in registry.items("metric") for col in cls.columns}
    return [c for c in df.columns if c in declared and filled_numeric(df, c)]


def finite_means(df: pl.DataFrame, columns: list[str], where: pl.Expr = pl.lit(True)) -> list[pl.Expr]:
    """Aggregations: each column's mean over its finite values where ``where`` holds (an
    infinite PSNR, from a lossless decode, would swamp a mean), then, for the columns of
    ``df`` that have any, ``<column>_nonfinite``: how many infinite or NaN values were left out."""
    out = []
    for c in columns:
        x = pl.col(c).cast(pl.Float64)
        out.append(x.filter(where & x.is_finite()).mean().alias(c))
        left_out = where & x.is_finite().not_()
        if df.select(left_out.any()).item():
            out.append(left_out.sum().alias(f"{c}_nonfinite"))
    return out


def task_aggregates(df: pl.DataFrame, keys: list[str] = CONDITION) -> pl.DataFrame:
    """Each task's split-level scores (``Task.aggregate``) per group of ``keys``."""
    out = []
    ok = df.filter(pl.col("error").is_null() & pl.col("task_type").is_not_null()) if "task_type" in df.columns else df.clear()
    for group in ok.partition_by([*keys, "task_type"], maintain_order=True):
        task_cls = registry.get("task", group["task_type"][0])
        out.append({**{k: group[k][0] for k in keys}, **task_cls.aggregate(group)})
    if not out:
        return df.select(keys).clear()
    return pl.DataFrame(out, infer_schema_length=None)


def summarize(df: pl.DataFrame) -> pl.DataFrame:
    """Mean rate and fidelity, and each task's split-level score, per (dataset, task, codec, setting).

    Means are over finite values; ``<column>_nonfinite`` (only for columns that have any)
    counts the infinite or NaN values left out."""
    if df.is_empty():
        return df
    columns = [c for c in RATE_COLUMNS if c in df.columns] + metric_columns(df)
    aggs = [pl.len().alias("n"), pl.col("error").is_not_null().sum().alias("errors"), *finite_means(df, columns)]
    summary = df.group_by(CONDITION).agg(aggs).join(task_aggregates(df), on=CONDITION, how="left", nulls_equal=True)
    return baseline_first(summary, by=["dataset", "task"])
