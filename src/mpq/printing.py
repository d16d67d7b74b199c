"""What a run prints at its end: the means per condition (one table per set of filled
columns), bitrates off the requested one, pipeline checks and the error kinds."""

from __future__ import annotations

import polars as pl

from mpq.means import summarize
from mpq.reading import error_kinds


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
