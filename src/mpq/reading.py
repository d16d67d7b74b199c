"""Reading an output's results back, as the run's summary, ``status`` and ``mpq.analysis``
read them: the rows, the last written of each key, and the error rows by kind."""

from __future__ import annotations

import polars as pl

from mpq.results import KEY, ResultStore, error_kind


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
