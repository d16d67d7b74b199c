"""The report's answers, in words: for each dataset and task, which codec keeps the task
best at equal rate, which quality measure predicts it best, and how much rate one codec
needs against another for the same task score. Each sentence carries its number, interval,
n and test, or the reason it cannot be said (too few samples, one codec, flagged rows); it
is read off the tables (``equal_rate``, ``metric_ranking``, ``bd_rates``), never computed
apart from them, so the words and the tables cannot disagree.
"""

from __future__ import annotations

import math

import polars as pl

from mpq.analysis.tables import MIN_SAMPLES, flagged, ok_rows, too_few
from mpq.results import BASELINE

ALPHA = 0.05


def _num(x, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if abs(x) < 1000 else f"{x:,.0f}"


def _ci(value, low, high, digits: int = 3) -> str:
    if low is None or (isinstance(low, float) and math.isnan(low)):
        return _num(value, digits)
    return f"{_num(value, digits)} [{_num(low, digits)}, {_num(high, digits)}]"


def _p(p) -> str:
    return f"{p:.2g}"


def _scores(names: list[str]) -> list[str]:
    """The outcomes answered for: the task's first label score and the agreement."""
    labelled = [n for n in names if n != "agreement"][:1]
    return labelled + (["agreement"] if "agreement" in names else [])


def _equal_rate(rows: pl.DataFrame, codecs_run: int) -> list[str]:
    if rows.is_empty():
        why = "only one codec ran" if codecs_run < 2 else "no two codecs reach a common rate"
        return [f"Which codec keeps it best at equal rate cannot be said: {why}."]
    out = []
    for score in _scores(list(dict.fromkeys(rows["score_name"]))):
        for (target,), at in rows.filter(pl.col("score_name") == score).group_by(["target"], maintain_order=True):
            at = at.sort("score", descending=True, nulls_last=True)
            unit, n = at["rate"][0], at["n"][0]
            where = f"At {target:g} {unit}"
            if at.height < 2:
                out.append(f"{where} only {at['codec'][0]} was coded: no comparison.")
                continue
            values = ", ".join(f"{r['codec']} {_ci(r['score'], r['score_low'], r['score_high'])}" for r in at.iter_rows(named=True))
            if n < MIN_SAMPLES:
                out.append(f"{where}, {score}: {values}; {too_few(n)} to test a difference.")
                continue
            best = at.filter(pl.col("best")).row(0, named=True)
            verdicts = []
            for r in at.filter(~pl.col("best")).iter_rows(named=True):
                diff = _ci(r["difference"], r["difference_low"], r["difference_high"])
                if r["p_holm"] is None:
                    verdicts.append(f"{r['codec']} differs by {diff} (untested)")
                    continue
                word = "is worse" if r["p_holm"] < ALPHA else "is not shown worse"
                verdicts.append(f"{r['codec']} {word} (difference {diff}, {r['test']}, p (Holm) {_p(r['p_holm'])})")
            out.append(f"{where}, {best['codec']} keeps {score} highest ({values}); " + "; ".join(verdicts) + f"; n = {n} samples.")
    return out


def _ranking(rows: pl.DataFrame) -> list[str]:
    if rows.is_empty():
        return ["Which measure predicts it best cannot be said: no quality metric has per-sample values on its coded rows."]
    out = []
    for score in _scores(list(dict.fromkeys(rows["score_name"]))):
        mine = rows.filter(pl.col("score_name") == score)
        first = mine.row(0, named=True)
        what = "the label score" if score == "score" else score
        if first["rank"] is None:
            out.append(f"Which measure predicts {what} best cannot be said: {first['note'] or 'no measure correlates (a constant side)'}.")
            continue
        rho = _ci(first["spearman"], first["spearman_low"], first["spearman_high"])
        text = (f"{first['metric']} predicts {what} best of {mine.height} measures: Spearman {rho} over {first['n']} coded rows "
                f"of {first['clusters']} samples")
        ranked = mine.filter(pl.col("rank").is_not_null())
        if ranked.height > 1 and first["p_holm"] is not None:
            second = ranked["metric"][1]
            diff = _ci(first["vs_next"], first["vs_next_low"], first["vs_next_high"])
            word = "better than" if first["p_holm"] < ALPHA else "not shown better than"
            text += f"; {word} {second} (|rho| difference {diff}, {first['test']}, p (Holm) {_p(first['p_holm'])})"
        out.append(text + ".")
    return out


def _bd_rate(rows: pl.DataFrame) -> list[str]:
    if rows.is_empty():
        return ["How much rate one codec needs against another cannot be said: no two codecs have a sweep of 4 or more settings."]
    out = []
    for score in _scores(list(dict.fromkeys(rows["score_name"]))):
        for r in rows.filter(pl.col("score_name") == score).iter_rows(named=True):
            if r["bd_rate"] is None:
                out.append(f"{r['test']} against {r['anchor']} on {score}: no BD-rate ({r['note']}).")
                continue
            value = _ci(r["bd_rate"], r["bd_rate_low"], r["bd_rate_high"])
            text = (f"{r['test']} needs {value} % rate ({r['rate']}) against {r['anchor']} for the same {score} "
                    f"(BD-rate over the settings sweeps, {r['n']} samples")
            if r["bd_rate_low"] is None:
                text += f"; no interval: {too_few(r['n'])}" if r["n"] < MIN_SAMPLES else ""
            elif r["bd_rate_low"] <= 0 <= r["bd_rate_high"]:
                text += "; the interval includes 0: no difference shown"
            out.append(text + ").")
    return out


def answers(df: pl.DataFrame, at_rate: pl.DataFrame, ranking: pl.DataFrame, bd: pl.DataFrame,
            include_flagged: bool = False) -> pl.DataFrame:
    """One row per sentence: ``dataset``, ``task``, ``question`` (``equal rate``, ``measure``,
    ``rate``), ``answer``. A dataset and task whose every row a pipeline check flagged gets
    one sentence saying why it has none."""
    rows_out = []
    ok = ok_rows(df).filter(pl.col("task").is_not_null())
    for (dataset, task), group in ok.sort("dataset", "task").group_by(["dataset", "task"], maintain_order=True):
        def add(question, sentences):
            rows_out.extend({"dataset": dataset, "task": task, "question": question, "answer": s} for s in sentences)

        real = group if include_flagged else group.filter(~flagged(group))
        if real.is_empty():
            checks = "; ".join(sorted(set(group["pipeline_check"].drop_nulls().str.split("; ").explode())))
            add("all", [f"No conclusions: every row comes from a component whose output means nothing ({checks})."])
            continue
        mine = pl.col("dataset").eq(dataset) & pl.col("task").eq(task)
        codecs_run = real.filter(pl.col("codec") != BASELINE)["codec"].n_unique()
        add("equal rate", _equal_rate(at_rate.filter(mine), codecs_run))
        add("measure", _ranking(ranking.filter(mine)))
        add("rate", _bd_rate(bd.filter(mine)))
    return pl.DataFrame(rows_out, schema={"dataset": pl.String, "task": pl.String, "question": pl.String, "answer": pl.String})
