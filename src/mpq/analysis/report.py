"""Everything in one go, from one job's Parquet results or several: tables (CSV, Markdown,
LaTeX), figures (PNG, SVG, PDF) and one self-contained HTML report (figures embedded as
base64, tables rendered by great_tables, the page by htmltools)."""

from __future__ import annotations

import base64
import math
import re
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
from htmltools import HTML, Tag, TagList, tags
from threadpoolctl import threadpool_limits

from mpq.analysis.answers import answers
from mpq.analysis.bdrate import MIN_OVERLAP, MIN_POINTS, MIN_SETTINGS, bd_rates
from mpq.analysis.correlation import METHODS, N_RESAMPLES, correlations
from mpq.analysis.equal_rate import equal_rate
from mpq.analysis.plots import metric_performance, plot_conditions, rate_performance, save
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
from mpq.targets import TARGET_KEYS


def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(parts)).strip("-")


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


FOLD_ROWS = 25  # a longer table is folded (<details>) in the HTML

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
nav{background:#f6f6f6;padding:.5em 1em;border-radius:4px}nav ul{margin:.2em 0}
.note{background:#fff6d5;border-left:4px solid #e0b000;padding:.4em .8em}img{max-width:100%}
details{margin:.5em 0 1.5em}summary{cursor:pointer;color:#225}
"""


def _label(results) -> str:
    return "(data frame)" if isinstance(results, pl.DataFrame) else str(results)


def load_runs(results) -> pl.DataFrame:
    """The rows of one output, or of several (a list) with an ``output`` column naming each
    (its folder's name, or its whole location where two share a name). A dataset name that
    occurs in more than one output is suffixed with the output's (``photos (out_a)``):
    different runs of a dataset are kept apart, never pooled."""
    if not isinstance(results, (list, tuple)):
        df = load(results)
        return df.with_columns(output=pl.lit(_label(results)))
    if not results:
        raise ValueError("no outputs to report on")
    names = [Path(_label(r).rstrip("/")).name or _label(r) for r in results]
    if len(set(names)) < len(names):
        names = [_label(r) for r in results]
    if len(set(names)) < len(names):
        raise ValueError(f"the same output is named twice: {', '.join(names)}")
    frames = [load(r).with_columns(output=pl.lit(name)) for r, name in zip(results, names)]
    df = pl.concat(frames, how="diagonal_relaxed")
    shared = df.group_by("dataset").agg(pl.col("output").n_unique().alias("_k")).filter(pl.col("_k") > 1)["dataset"]
    return df.with_columns(
        pl.when(pl.col("dataset").is_in(shared.to_list()))
        .then(pl.format("{} ({})", "dataset", "output")).otherwise("dataset").alias("dataset"))


def provenance(df: pl.DataFrame) -> pl.DataFrame:
    """One row per output: rows, error rows, datasets, runs, mpq versions, models and codec versions."""
    def distinct(column: str) -> pl.Expr:
        if column not in df.columns:
            return pl.lit("")
        return pl.col(column).drop_nulls().unique().sort().cast(pl.String).str.join(", ")

    return df.group_by("output", maintain_order=True).agg(
        pl.len().alias("rows"), pl.col("error").is_not_null().sum().alias("error rows"), distinct("dataset").alias("datasets"),
        (pl.col("run_id").n_unique() if "run_id" in df.columns else pl.lit(None)).alias("runs"),
        distinct("mpq_version").alias("mpq versions"), distinct("model").alias("models"), distinct("codec_version").alias("codec versions"))


def latex(df: pl.DataFrame, digits: int = 4) -> str:
    """A booktabs table (``\\toprule``/``\\midrule``/``\\bottomrule``; needs ``\\usepackage{booktabs}``)
    written by great_tables; floats to ``digits`` significant digits, missing cells empty."""
    return _styled(df, digits).as_latex()


def _styled(df: pl.DataFrame, digits: int):
    df = df.select(pl.col(c).cast(pl.String) if not (df.schema[c].is_numeric() or df.schema[c] == pl.String) else pl.col(c) for c in df.columns)
    floats = [c for c in df.columns if df.schema[c].is_float()]
    gt = df.style
    if floats:
        gt = gt.fmt_number(columns=floats, n_sigfig=digits)
    return gt.sub_missing(missing_text="")


def write_table(df: pl.DataFrame, out: Path, name: str, markdown: pl.DataFrame | None = None) -> Tag | TagList:
    """``name``.csv (``df`` as computed), .md and .tex (``markdown``, the table as shown:
    intervals as ``x [low, high]``; ``df`` itself by default); returns the HTML, folded
    in a <details> above ``FOLD_ROWS`` rows."""
    shown = df if markdown is None else markdown
    df.write_csv(out / f"{name}.csv")
    (out / f"{name}.md").write_text(to_markdown(shown))
    (out / f"{name}.tex").write_text(latex(shown) if shown.width else "")
    if not shown.height:
        return TagList()
    body = HTML(_styled(shown, 4).as_raw_html())
    if shown.height <= FOLD_ROWS:
        return body
    return tags.details(tags.summary(f"{shown.height} rows ({name}.csv)"), body)


def _id(text: str) -> str:
    return _slug("s", text).lower()


# One BLAS thread: the bootstraps' products are many and small, where threads cost more
# than they save (they spin for cores a shared machine has not got); the numbers are the same.
@threadpool_limits.wrap(limits=1)
def write_report(
    results: str | Path | pl.DataFrame | list,
    out_dir: str | Path,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    min_settings: int = MIN_SETTINGS,
    title: str | None = None,
    targets: list[float] | dict[str, list[float]] | None = None,
    include_flagged: bool = False,
) -> Path:
    """Write tables, figures and ``report.html`` under ``out_dir``; returns the HTML's path.
    ``results``: one output (folder, URI or frame) or a list of them, read as one report
    (``load_runs``: an ``output`` column, datasets of the same name kept apart).
    ``targets``: the rates of the equal-rate section (``equal_rate``). Rows a pipeline check
    flagged (random weights) stay out of the ranking, correlations, equal-rate and BD-rate
    tables and the figures unless ``include_flagged``; the report lists them.

    ``out_dir/`` gets ``metric_ranking``, ``equal_rate``, ``summary_<modality>``,
    ``correlations``, ``bd_rate``, ``left_out``, ``answers`` and ``runs`` each as
    ``.csv``, ``.md`` and ``.tex``, ``conditions.csv`` and ``plots/*.{png,svg,pdf}``."""
    df = load_runs(results)
    out = Path(out_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    conds = conditions(df)
    corr = correlations(df, n_resamples=n_resamples, seed=seed, include_flagged=include_flagged)
    bd = bd_rates(df, min_settings=min_settings, n_resamples=n_resamples, seed=seed, include_flagged=include_flagged)
    ranking = metric_ranking(df, n_resamples=n_resamples, seed=seed, correlations=corr, include_flagged=include_flagged)
    at_rate = equal_rate(df, targets=targets, n_resamples=n_resamples, seed=seed, include_flagged=include_flagged)
    said = answers(df, at_rate, ranking, bd, include_flagged=include_flagged)
    metrics = metric_columns(df)
    sections: list[tuple[str, int, Tag]] = []  # (heading, level, content) for the table of contents

    def section(heading: str, *body, level: int = 2) -> None:
        sections.append((heading, level, TagList(tags.h2(heading, id=_id(heading)) if level == 2 else tags.h3(heading, id=_id(heading)), *body)))

    def note(text: str) -> Tag:
        return tags.p(text, class_="note")

    said.write_csv(out / "answers.csv")
    (out / "answers.md").write_text("".join(f"- **{r['dataset']} / {r['task']}**: {r['answer']}\n" for r in said.iter_rows(named=True)))
    (out / "answers.tex").write_text(latex(said.select("dataset", "task", "answer")) if said.height else "")
    items = [TagList(tags.h3(f"{dataset} / {task}"), tags.ul(*(tags.li(a) for a in group["answer"])))
             for (dataset, task), group in said.group_by(["dataset", "task"], maintain_order=True)]
    section("Answers",
            tags.p(f"What the results say, each with its number, 95 % interval, n and test, or why it cannot be said "
                   f"(fewer than {MIN_SAMPLES} samples, one codec, rows from components with random weights). The tables below "
                   "hold the same numbers."), *items)

    left_out = flagged_summary(df)
    kept = "kept in the conclusions and figures as asked (--include-flagged)" if include_flagged else (
        "left out of the ranking, correlations, equal-rate and BD-rate tables (the summary tables show them; the figures draw them hollow)")
    html_left_out = write_table(left_out, out, "left_out")
    if left_out.height:
        section("Rows with a pipeline check",
                note(f"{left_out['rows'].sum()} rows come from a component whose output means nothing (random weights, for a "
                     f"pipeline check); they are {kept}."), html_left_out)

    shown = ranking_display(ranking)
    table = write_table(ranking, out, "metric_ranking", shown)
    section(
        "Which quality metric predicts the task best",
        tags.p(HTML(
            "Per dataset, task and per-sample outcome (<i>score</i>: the answer against the label, where the dataset has labels; "
            "<i>agreement</i>: the answer against the model's answer on the uncompressed input), each quality metric against that "
            "outcome over the coded samples, ranked by |Spearman| (a metric that falls as the score rises, like LPIPS, predicts as "
            f"well as one that rises). Brackets: {n_resamples}-resample percentile bootstrap 95 % interval over sample ids "
            "(<i>clusters</i>; a sample's rows at every codec setting go together). <i>|rho| over next</i>: how much the best "
            "metric's |Spearman| exceeds the second's, on the points where both are finite; <i>p</i>: two-sided paired "
            "permutation test over sample ids (the two metrics, as ranks on one scale, swapped within samples) that they predict "
            f"equally well, Holm-adjusted over the table. Under {MIN_SAMPLES} samples nothing is ranked or tested.")),
        table if shown.height else note("no task has per-sample scores and a quality metric"),
    )

    shown = equal_rate_display(at_rate)
    table = write_table(at_rate, out, "equal_rate", shown)
    section(
        "At equal rate",
        tags.p(HTML(
            "Codecs compared at target rates, on the samples every codec at the target coded. Where the rows carry a target "
            f"(a codec entry with {' or '.join(TARGET_KEYS)}: per sample, the highest setting whose bitstream fits) it is the "
            "condition and <i>setting</i> lists the settings chosen; otherwise each codec stands at its setting of highest mean rate not above "
            "the target (<i>achieved</i>), and a codec with none that low is absent. <i>value</i>: the split-level task score "
            f"(the task's aggregate) with its {n_resamples}-resample bootstrap 95 % interval over sample ids; <i>− best</i>: the "
            "difference from the highest-scoring codec at the target, paired on the same samples, with its interval. Test: McNemar "
            "exact for accuracy (the samples right under one codec only), else a paired permutation test over sample ids that "
            "recomputes both scores with the task's aggregate; p-values Holm-adjusted over the table; <i>worse</i> at Holm p &lt; "
            f"0.05. With fewer than {MIN_SAMPLES} samples there is no interval, no test and no verdict.")),
        table if shown.height else note("no dataset has two codecs with settings at a common target rate"),
    )

    runs = provenance(df)
    info = {
        "rows": df.height,
        "error rows (left out)": int(df["error"].is_not_null().sum()),
        "datasets": ", ".join(sorted(df["dataset"].unique())),
        "bootstrap resamples": n_resamples,
        "seed": seed,
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    checks = df["pipeline_check"].drop_nulls().str.split("; ").explode().unique().sort().to_list() if "pipeline_check" in df.columns else []
    section("Run", tags.p("Each output read, with what produced its rows:"), write_table(runs, out, "runs"),
            write_table(pl.DataFrame({"": list(info), "value": [str(v) for v in info.values()]}), out, "report_settings"),
            *(note(f"pipeline check: {c}") for c in checks))

    body = []
    for modality, summary in summary_tables(df).items():
        body += [tags.h3(modality, id=_id(f"summary {modality}")), write_table(summary, out, f"summary_{modality}")]
    # One value per coded sample: a metric's value repeats on the rows of each task.
    ok = df.filter(pl.col("error").is_null()).unique(["dataset", "sample_id", "codec", "setting"], maintain_order=True)
    nonfinite = [
        f"{c}: {n} non-finite values (infinite or NaN, e.g. the PSNR of a lossless decode) of {ok[c].count()} "
        "left out of the means and correlations (see the <metric>_nonfinite rows)"
        for c in [*metrics, *rate_columns(df)]
        if (n := ok.select(pl.col(c).cast(pl.Float64).is_finite().not_().sum()).item())
    ]
    section("Summary (means per codec setting; task scores from each task's aggregate)", *map(note, nonfinite), *body)

    conds.write_csv(out / "conditions.csv")
    shown = correlation_display(corr)
    parts = []
    for lvl in ("conditions", "samples"):
        part = shown.filter(pl.col("level") == lvl).drop("level") if shown.height else shown
        parts += [tags.h3(f"across {lvl}"), write_table(corr.filter(pl.col("level") == lvl) if corr.height else corr, out, f"correlations_{lvl}", part)]
    write_table(corr, out, "correlations", shown)
    section(
        "Correlation of quality metrics with task scores",
        tags.p(HTML(
            "Across conditions: one point per codec setting (metric mean vs split-level score); the bootstrap resamples conditions. "
            "Across samples: one point per coded sample (metric vs per-sample score); the bootstrap resamples sample ids "
            "(<i>clusters</i>), each with its rows at every codec setting, as those rows are not independent. "
            f"Brackets: {n_resamples}-resample percentile bootstrap 95 % interval. — : undefined (a constant side or under 3 points). "
            "<i>nonfinite</i>: points left out for an infinite or NaN value.")),
        *(parts if shown.height else []),
    )

    table = write_table(bd, out, "bd_rate")
    section(
        "Machine BD-rate (rate vs task score)",
        tags.p(HTML(
            "Average rate change of <i>test</i> against <i>anchor</i> at equal task score; negative: fewer bits. "
            "By the convention of CompressAI and MPEG's common test conditions: a curve is a codec's sweep of settings only "
            "(rows coded at a target rate are left out: they have their own section), and its rate is each setting's mean "
            "rate per pixel (<code>bpp</code>, images) or per sample (<code>bps</code>, audio) over the samples, from the "
            "whole file (images) or the codec packets (audio). "
            "Each codec's score is first fitted monotone in rate (isotonic regression: settings whose score falls as the rate rises "
            "share their mean score), then log-rate is interpolated over the score (pchip) and averaged over the score range both reach; "
            f"that range must be at least {100 * MIN_OVERLAP:.0f} % of the narrower codec's and hold at least {MIN_POINTS} of the two "
            "curves' points, else there is no value and the note says why. "
            f"Interval: {n_resamples}-resample percentile bootstrap 95 % over sample ids (scores and rates recomputed per resample), "
            f"with at least {MIN_SAMPLES} samples. Codecs with at least {min_settings} settings.")),
        table if bd.height else note(f"no dataset has two codecs with {min_settings} or more settings"),
    )

    plotted = plot_conditions(df, n_resamples=n_resamples, seed=seed, include_flagged=include_flagged)
    section("Figures", tags.p(
        "Per dataset: each task score against the mean rate (one line per codec over its settings; stars: rows coded at a "
        "requested rate, a condition of their own), then against each quality metric's mean. Bars: the tables' "
        f"{n_resamples}-resample bootstrap 95 % intervals over sample ids (none under {MIN_SAMPLES} samples: the figure says so). "
        "The dashed line and band: the uncompressed baseline. Conditions a pipeline check flagged (random weights) are "
        f"{'drawn as results, as asked (--include-flagged)' if include_flagged else 'drawn hollow and dotted, labelled so, without intervals'}. "
        "Each figure is also in plots/ as SVG and PDF."))
    for (dataset,), by_dataset in plotted.group_by(["dataset"], maintain_order=True):
        figures = []
        rate = rate_column(df.filter(pl.col("dataset") == dataset))
        for (task, score_name), group in by_dataset.group_by(["task", "score_name"], maintain_order=True):
            plots = [(_slug("rate", dataset, task, score_name), rate_performance(group, dataset, task, score_name, rate))]
            plots += [(_slug("metric", m, dataset, task, score_name), metric_performance(group, dataset, task, score_name, m))
                      for m in metrics if m in group.columns and group[m].null_count() < group.height]
            for stem, fig in plots:
                data = save(fig, out / "plots" / stem)
                figures.append(tags.img(alt=stem, loading="lazy", src=f"data:image/png;base64,{base64.b64encode(data).decode()}"))
        section(f"Figures: {dataset}", *figures, level=3)

    title = title or f"mpq report: {info['datasets']}"
    toc = tags.nav(tags.b("Contents"), tags.ul(*(
        tags.li(tags.a(heading, href=f"#{_id(heading)}"), style="margin-left:1.5em" if level == 3 else None) for heading, level, _ in sections)))
    page = tags.html(tags.head(tags.meta(charset="utf-8"), tags.title(title), tags.style(HTML(_CSS))),
                     tags.body(tags.h1(title), toc, *(content for _, _, content in sections)))
    path = out / "report.html"
    path.write_text("<!doctype html>\n" + str(page) + "\n")
    return path
