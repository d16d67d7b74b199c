"""Reading results back, once for the run's summary and for ``mpq.analysis``: the rows, the
condition keys, the rate and metric columns, finite means, the baseline-first order and each
dataset's modality; and the short table printed at the end of a run."""

from __future__ import annotations

import polars as pl

from mpq import registry
from mpq.media import MEDIA
from mpq.results import BASELINE, KEY, ResultStore, error_kind


def read_results(output: str) -> pl.DataFrame:
    """All result rows under ``output``, the last written of each key (a job extended with a
    metric rewrites its rows); files written by runs with other columns are aligned."""
    store = ResultStore(output)
    files = store.files()  # in the order they were written
    if not files:
        return pl.DataFrame()
    frames = []
    for path in files:  # through the store's filesystem: local, s3://, gs://
        with store.fs.open_input_file(path) as f:
            frames.append(pl.read_parquet(f))
    df = pl.concat(frames, how="diagonal_relaxed")
    return df.unique(subset=list(KEY), keep="last", maintain_order=True)


CONDITION = ["dataset", "task", "codec", "setting"]  # a condition: one codec setting, read by one task
RATES = tuple(m.rates[0] for m in MEDIA.values())  # each modality's own rate: bpp, bps
RATE_COLUMNS = tuple(r for m in MEDIA.values() for r in m.rates)  # and the others (kbps)


def filled_numeric(df: pl.DataFrame, col: str) -> bool:
    return col in df.columns and df.schema[col].is_numeric() and df[col].null_count() < df.height


def rate_columns(df: pl.DataFrame) -> list[str]:
    """The modalities' own rate columns these rows fill (bpp for images, bps for audio)."""
    return [c for c in RATES if filled_numeric(df, c)]


def baseline_first(df: pl.DataFrame, by: list[str] | tuple = ()) -> pl.DataFrame:
    """Conditions in the order tables show them: by ``by``, then the baseline, codecs by name,
    settings numerically where they are numbers (target rates after them)."""
    return (
        df.with_columns(pl.col("setting").cast(pl.Float64, strict=False).alias("_num"))
        .sort([*by, pl.col("codec") != BASELINE, "codec", "_num", "setting"], nulls_last=True)
        .drop("_num")
    )


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


def print_summary(df: pl.DataFrame) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    table = summarize(df)
    if table.is_empty():
        console.print("no results")
        return
    # Datasets of different modalities share few columns: one table per set of filled columns.
    groups: dict[tuple[str, ...], list[pl.DataFrame]] = {}
    for part in table.partition_by("dataset", maintain_order=True):
        part = part.select([c for c in part.columns if part[c].null_count() < part.height])
        groups.setdefault(tuple(part.columns), []).append(part)
    for columns, parts in groups.items():
        out = Table(title="summary (means per codec setting)")
        merged = pl.concat(parts)
        for col in columns:
            out.add_column(col, justify="left" if merged.schema[col] == pl.String else "right")
        for row in merged.iter_rows():
            out.add_row(*("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row))
        console.print(out)
    if "rate_note" in df.columns:  # effective bitrate > 10 % off the requested one
        notes = df.filter(pl.col("rate_note").is_not_null()).group_by("dataset", "codec", "setting").agg(
            pl.len().alias("n"), pl.col("kbps").mean().alias("kbps"), pl.col("requested_kbps").first()
        ).sort("dataset", "codec", "setting")
        for d, c, s, n, kbps, req in notes.iter_rows():
            console.print(f"[yellow]bitrate:[/] {d} {c} {s}: {n} row(s) off the requested {req:g} kbps by > 10 % (mean effective {kbps:.3g} kbps; see rate_note)")
    if "pipeline_check" in df.columns:
        for note in sorted(df["pipeline_check"].drop_nulls().unique().to_list()):
            console.print(f"[yellow]pipeline check:[/] {note}")
    kinds = error_kinds(df)
    for kind, n, sample, example in kinds.iter_rows():
        console.print(f"[red]errors:[/] {kind}: {n} row(s), e.g. {sample}: {example[:200]}", highlight=False)
    if not kinds.is_empty():
        console.print("(`mpq-ray run JOB --redo KIND` computes the rows of an error kind again, e.g. after fixing their inputs)")


def error_kinds(df: pl.DataFrame) -> pl.DataFrame:
    """The error rows by ``error_kind`` (most first): kind, rows, and one example (sample, error)."""
    errors = df.filter(pl.col("error").is_not_null()) if "error" in df.columns else df.clear()
    if errors.is_empty():
        return pl.DataFrame(schema={"kind": pl.String, "rows": pl.UInt32, "sample_id": pl.String, "error": pl.String})
    kinds = {e: error_kind(e) for e in errors["error"].unique()}  # each distinct message once
    return (
        errors.with_columns(pl.col("error").replace_strict(kinds).alias("kind"))
        .group_by("kind").agg(pl.len().alias("rows"), pl.col("sample_id").first(), pl.col("error").first())
        .sort(["rows", "kind"], descending=[True, False])
    )


