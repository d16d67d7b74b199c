"""Everything in one go: tables (Markdown + CSV), plots (PNG) and one self-contained HTML
report (figures embedded as base64), from a job's Parquet results."""

from __future__ import annotations

import base64
import html
import math
import re
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from mpq.analysis.answers import answers
from mpq.analysis.bdrate import MIN_OVERLAP, MIN_POINTS, MIN_SETTINGS, bd_rates
from mpq.analysis.correlation import METHODS, N_RESAMPLES, correlations
from mpq.analysis.equal_rate import equal_rate
from mpq.analysis.plots import metric_performance, png, rate_performance
from mpq.analysis.ranking import metric_ranking
from mpq.analysis.tables import (
    MIN_SAMPLES,
    conditions,
    flagged_summary,
    load,
    metric_columns,
    rate_column,
    rate_columns,
    summary_tables,
    to_markdown,
    too_few,
)


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts)).strip("-")


def _distinct(df: pl.DataFrame, column: str) -> str:
    return ", ".join(sorted(df[column].drop_nulls().unique())) if column in df.columns else ""


def correlation_display(corr: pl.DataFrame, digits: int = 3) -> pl.DataFrame:
    """Coefficients as ``r [low, high]`` strings, one column per method, after the counts
    (``n``, ``clusters``, ``nonfinite``); ``r (too few samples (n = k))`` where there are
    too few clusters for an interval."""
    if corr.is_empty():
        return corr

    def fmt(r, lo, hi, clusters):
        if r is None or math.isnan(r):
            return "—"
        if lo is None or math.isnan(lo):
            return f"{r:.{digits}f} ({too_few(clusters)})" if clusters < MIN_SAMPLES else f"{r:.{digits}f}"
        return f"{r:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

    shown = [
        pl.struct(m, f"{m}_low", f"{m}_high", "clusters")
        .map_elements(lambda s, m=m: fmt(s[m], s[f"{m}_low"], s[f"{m}_high"], s["clusters"]), return_dtype=pl.String)
        .alias(m)
        for m in METHODS
    ]
    counts = [c for c in ("n", "clusters", "nonfinite") if c in corr.columns]
    return corr.select("level", "dataset", "task", "metric", "score_name", *counts, *shown)


def _interval(value, low, high, digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return ""
    ci = "" if low is None or math.isnan(low) else f" [{low:.{digits}f}, {high:.{digits}f}]"
    return f"{value:.{digits}f}{ci}"


def _p(p) -> str:
    return "" if p is None or math.isnan(p) else f"{p:.2g}"


def ranking_display(ranking: pl.DataFrame) -> pl.DataFrame:
    """``metric_ranking(...)`` with each coefficient and difference as ``r [low, high]``;
    ``test`` names the best-vs-next test or says why there is none."""
    rows = [{"dataset": r["dataset"], "task": r["task"], "score": r["score_name"], "rank": r["rank"], "metric": r["metric"],
             "n": r["n"], "clusters": r["clusters"],
             "spearman": _interval(r["spearman"], r["spearman_low"], r["spearman_high"]) or "— (a constant side)",
             "kendall": _interval(r["kendall"], r["kendall_low"], r["kendall_high"]),
             "|rho| over next": _interval(r["vs_next"], r["vs_next_low"], r["vs_next_high"]),
             "test": r["test"] or r["note"] or "", "p": _p(r["p"]), "p (Holm)": _p(r["p_holm"])}
            for r in ranking.iter_rows(named=True)]
    names = ("dataset", "task", "score", "rank", "metric", "n", "clusters", "spearman", "kendall", "|rho| over next", "test", "p", "p (Holm)")
    return pl.DataFrame(rows, schema={k: pl.Int64 if k in ("rank", "n", "clusters") else pl.String for k in names})


def equal_rate_display(table: pl.DataFrame, alpha: float = 0.05) -> pl.DataFrame:
    """``equal_rate(...)`` with each score and difference as ``x [low, high]``; ``vs best``
    reads "highest", or "worse" / "not shown worse" at Holm-adjusted ``alpha``, or "too few
    samples (n = 4)" on every row of a target with too few samples to test."""
    def verdict(r):
        if r["n"] < MIN_SAMPLES:
            return too_few(r["n"])
        if r["best"]:
            return "highest"
        if r["p_holm"] is None or math.isnan(r["p_holm"]):
            return ""
        return "worse" if r["p_holm"] < alpha else "not shown worse"

    rows = [{"dataset": r["dataset"], "task": r["task"], "score": r["score_name"], "target": f"{r['target']:g} {r['rate']}",
             "codec": r["codec"], "setting": r["setting"], "achieved": r["achieved"], "n": r["n"],
             "value": _interval(r["score"], r["score_low"], r["score_high"]),
             "− best": _interval(r["difference"], r["difference_low"], r["difference_high"]), "test": r["test"] or "",
             "p": _p(r["p"]), "p (Holm)": _p(r["p_holm"]), "vs best": verdict(r)}
            for r in table.iter_rows(named=True)]
    schema = {"dataset": pl.String, "task": pl.String, "score": pl.String, "target": pl.String, "codec": pl.String, "setting": pl.String,
              "achieved": pl.Float64, "n": pl.Int64, "value": pl.String, "− best": pl.String, "test": pl.String, "p": pl.String,
              "p (Holm)": pl.String, "vs best": pl.String}
    return pl.DataFrame(rows, schema=schema)


def _html_table(df: pl.DataFrame, digits: int = 4) -> str:
    def cell(v):
        if v is None:
            return ""
        return html.escape(f"{v:.{digits}g}" if isinstance(v, float) else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    numeric = [df.schema[c].is_numeric() for c in df.columns]
    body = "".join(
        "<tr>" + "".join(f"<td class={'num' if n else 'txt'}>{cell(v)}</td>" for v, n in zip(row, numeric)) + "</tr>"
        for row in df.iter_rows()
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em}th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{background:#fff6d5;border-left:4px solid #e0b000;padding:.4em .8em}img{max-width:100%}
"""


def write_report(
    results: str | Path | pl.DataFrame,
    out_dir: str | Path,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    min_settings: int = MIN_SETTINGS,
    title: str | None = None,
    targets: list[float] | dict[str, list[float]] | None = None,
    include_flagged: bool = False,
) -> Path:
    """Write tables, plots and ``report.html`` under ``out_dir``; returns the HTML's path.
    ``targets``: the rates of the equal-rate section (``equal_rate``). Rows a pipeline check
    flagged (random weights) stay out of the ranking, correlations, equal-rate and BD-rate
    tables unless ``include_flagged``; the report lists them.

    ``out_dir/`` gets ``metric_ranking.{md,csv}``, ``equal_rate.{md,csv}``,
    ``summary_<modality>.{md,csv}``, ``conditions.csv``, ``correlations.{md,csv}``,
    ``bd_rate.{md,csv}``, ``left_out.{md,csv}``, ``answers.{md,csv}`` and ``plots/*.png``."""
    df = load(results)
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    conds = conditions(df)
    corr = correlations(df, n_resamples=n_resamples, seed=seed, include_flagged=include_flagged)
    bd = bd_rates(df, min_settings=min_settings, n_resamples=n_resamples, seed=seed, include_flagged=include_flagged)
    ranking = metric_ranking(df, n_resamples=n_resamples, seed=seed, correlations=corr, include_flagged=include_flagged)
    at_rate = equal_rate(df, targets=targets, n_resamples=n_resamples, seed=seed, include_flagged=include_flagged)
    said = answers(df, at_rate, ranking, bd, include_flagged=include_flagged)
    metrics = metric_columns(df)
    parts: list[str] = []

    def section(heading: str, *body: str) -> None:
        parts.append(f"<h2>{html.escape(heading)}</h2>" + "".join(body))

    def note(text: str) -> str:
        return f"<p class=note>{html.escape(text)}</p>"

    said.write_csv(out / "answers.csv")
    (out / "answers.md").write_text("".join(f"- **{r['dataset']} / {r['task']}**: {r['answer']}\n" for r in said.iter_rows(named=True)))
    items = []
    for (dataset, task), group in said.group_by(["dataset", "task"], maintain_order=True):
        items.append(f"<h3>{html.escape(dataset)} / {html.escape(task)}</h3><ul>"
                     + "".join(f"<li>{html.escape(a)}</li>" for a in group["answer"]) + "</ul>")
    section("Answers",
            f"<p>What the results say, each with its number, 95 % interval, n and test, or why it cannot be said "
            f"(fewer than {MIN_SAMPLES} samples, one codec, rows from components with random weights). The tables below "
            "hold the same numbers.</p>", *items)

    left_out = flagged_summary(df)
    left_out.write_csv(out / "left_out.csv")
    (out / "left_out.md").write_text(to_markdown(left_out))
    if left_out.height:
        kept = "kept in the conclusions as asked (--include-flagged)" if include_flagged else (
            "left out of the ranking, correlations, equal-rate and BD-rate tables (the summary tables still show them)")
        section("Rows with a pipeline check",
                note(f"{left_out['rows'].sum()} rows come from a component whose output means nothing (random weights, for a "
                     f"pipeline check); they are {kept}."),
                _html_table(left_out))

    ranking.write_csv(out / "metric_ranking.csv")
    shown = ranking_display(ranking)
    (out / "metric_ranking.md").write_text(to_markdown(shown))
    section(
        "Which quality metric predicts the task best",
        "<p>Per dataset, task and per-sample outcome (<i>score</i>: the answer against the label, where the dataset has labels; "
        "<i>agreement</i>: the answer against the model's answer on the uncompressed input), each quality metric against that "
        "outcome over the coded samples, ranked by |Spearman| (a metric that falls as the score rises, like LPIPS, predicts as "
        f"well as one that rises). Brackets: {n_resamples}-resample percentile bootstrap 95 % interval over sample ids "
        "(<i>clusters</i>; a sample's rows at every codec setting go together). <i>|rho| over next</i>: how much the best "
        "metric's |Spearman| exceeds the second's, on the points where both are finite; <i>p</i>: two-sided paired "
        "permutation test over sample ids (the two metrics, as signed ranks, swapped within samples) that they predict "
        f"equally well, Holm-adjusted over the table. Under {MIN_SAMPLES} samples nothing is ranked or tested.</p>",
        _html_table(shown) if shown.height else note("no task has per-sample scores and a quality metric"),
    )

    at_rate.write_csv(out / "equal_rate.csv")
    shown = equal_rate_display(at_rate)
    (out / "equal_rate.md").write_text(to_markdown(shown))
    section(
        "At equal rate",
        "<p>Codecs compared at target rates, on the samples every codec at the target coded. Where the rows carry a target "
        "(a codec entry with target_bpp or target_kbps: per sample, the highest setting whose bitstream fits) it is the "
        "condition and <i>setting</i> lists the settings chosen; otherwise each codec stands at its setting of highest mean rate not above "
        "the target (<i>achieved</i>), and a codec with none that low is absent. <i>value</i>: the split-level task score "
        f"(the task's aggregate) with its {n_resamples}-resample bootstrap 95 % interval over sample ids; <i>− best</i>: the "
        "difference from the highest-scoring codec at the target, paired on the same samples, with its interval. Test: McNemar "
        "exact for accuracy (the samples right under one codec only), else a paired permutation test over sample ids that "
        "recomputes both scores with the task's aggregate; p-values Holm-adjusted over the table; <i>worse</i> at Holm p &lt; "
        f"0.05. With fewer than {MIN_SAMPLES} samples there is no interval, no test and no verdict.</p>",
        _html_table(shown) if shown.height else note("no dataset has two codecs with settings at a common target rate"),
    )

    errors = df["error"].is_not_null().sum()
    info = {
        "results": "(data frame)" if isinstance(results, pl.DataFrame) else str(results),
        "rows": df.height,
        "error rows (left out)": int(errors),
        "datasets": ", ".join(sorted(df["dataset"].unique())),
        "mpq versions": _distinct(df, "mpq_version"),
        "runs": df["run_id"].n_unique() if "run_id" in df.columns else "",
        "models": _distinct(df, "model"),
        "codecs": _distinct(df, "codec_version"),
        "bootstrap resamples": n_resamples,
        "seed": seed,
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    checks = df["pipeline_check"].drop_nulls().str.split("; ").explode().unique().sort().to_list() if "pipeline_check" in df.columns else []
    section("Run", _html_table(pl.DataFrame({"": list(info), "value": [str(v) for v in info.values()]})),
            *(note(f"pipeline check: {c}") for c in checks))

    body = []
    for modality, table in summary_tables(df).items():
        table.write_csv(out / f"summary_{modality}.csv")
        (out / f"summary_{modality}.md").write_text(to_markdown(table))
        body.append(f"<h3>{html.escape(modality)}</h3>" + _html_table(table))
    # One value per coded sample: a metric's value repeats on the rows of each task.
    ok = df.filter(pl.col("error").is_null()).unique(["dataset", "sample_id", "codec", "setting"], maintain_order=True)
    left_out = [
        f"{c}: {n} non-finite values (infinite or NaN, e.g. the PSNR of a lossless decode) of {ok[c].count()} "
        "left out of the means and correlations (see the <metric>_nonfinite rows)"
        for c in [*metrics, *rate_columns(df)]
        if (n := ok.select(pl.col(c).cast(pl.Float64).is_finite().not_().sum()).item())
    ]
    section("Summary (means per codec setting; task scores from each task's aggregate)", *map(note, left_out), *body)

    conds.write_csv(out / "conditions.csv")
    corr.write_csv(out / "correlations.csv")
    shown = correlation_display(corr)
    (out / "correlations.md").write_text(to_markdown(shown))
    section(
        "Correlation of quality metrics with task scores",
        "<p>Across conditions: one point per codec setting (metric mean vs split-level score); the bootstrap resamples conditions. "
        "Across samples: one point per coded sample (metric vs per-sample score); the bootstrap resamples sample ids "
        "(<i>clusters</i>), each with its rows at every codec setting, as those rows are not independent. "
        f"Brackets: {n_resamples}-resample percentile bootstrap 95 % interval. — : undefined (a constant side or under 3 points). "
        "<i>nonfinite</i>: points left out for an infinite or NaN value.</p>",
        *(f"<h3>across {lvl}</h3>" + _html_table(shown.filter(pl.col("level") == lvl).drop("level")) for lvl in ("conditions", "samples") if shown.height),
    )

    bd.write_csv(out / "bd_rate.csv")
    (out / "bd_rate.md").write_text(to_markdown(bd))
    section(
        "Machine BD-rate (rate vs task score)",
        f"<p>Average rate change of <i>test</i> against <i>anchor</i> at equal task score; negative: fewer bits. "
        "By the convention of CompressAI and MPEG's common test conditions: a curve is a codec's sweep of settings only "
        "(rows coded at a target rate are left out: they have their own section), and its rate is each setting's mean "
        "rate per pixel (<code>bpp</code>, images) or per sample (<code>bps</code>, audio) over the samples, from the "
        "whole file (images) or the codec packets (audio). "
        "Each codec's score is first fitted monotone in rate (isotonic regression: settings whose score falls as the rate rises "
        "share their mean score), then log-rate is interpolated over the score (pchip) and averaged over the score range both reach; "
        f"that range must be at least {100 * MIN_OVERLAP:.0f} % of the narrower codec's and hold at least {MIN_POINTS} of the two "
        "curves' points, else there is no value and the note says why. "
        f"Interval: {n_resamples}-resample percentile bootstrap 95 % over sample ids (scores and rates recomputed per resample), "
        f"with at least {MIN_SAMPLES} samples. Codecs with at least {min_settings} settings.</p>",
        _html_table(bd) if bd.height else note(f"no dataset has two codecs with {min_settings} or more settings"),
    )

    figures = []
    scored = conds.filter(pl.col("score_name").is_not_null())
    for (dataset, task, score_name), group in scored.group_by(["dataset", "task", "score_name"], maintain_order=True):
        rate = rate_column(df.filter(pl.col("dataset") == dataset))
        plots = [("rate", rate_performance(group, dataset, task, score_name, rate))]
        if any(group[m].null_count() < group.height for m in metrics):
            plots.append(("metrics", metric_performance(group, dataset, task, score_name, metrics)))
        for kind, fig in plots:
            data = png(fig)
            (out / "plots" / f"{_slug(kind, dataset, task, score_name)}.png").write_bytes(data)
            figures.append(f'<img alt="{html.escape(f"{kind}: {dataset} {task} {score_name}")}" src="data:image/png;base64,{base64.b64encode(data).decode()}">')
    section("Rate–performance and metric–performance", *figures)

    title = title or f"mpq report: {info['datasets']}"
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>\n"
    )
    path = out / "report.html"
    path.write_text(page)
    return path
