"""mpq.analysis statistics (issue 15): McNemar and Holm against statsmodels, the paired
bootstrap against scipy.stats.bootstrap and a numpy recomputation through a task's own
aggregate (mIoU), the metric ranking's test against scipy per resample, and codecs at
equal rate on hand-built rows."""

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests
from test_analysis import results_frame

from mpq import analysis

# --- McNemar, Holm, bootstrap p -----------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_mcnemar_matches_statsmodels_exact(seed):
    rng = np.random.default_rng(seed)
    n = [5, 20, 40, 80, 200, 13][seed]
    a = rng.random(n) < 0.7
    b = np.where(rng.random(n) < 0.2 + 0.1 * seed, ~a, a)  # flips some answers
    got = analysis.mcnemar(a, b)
    table = [[(a & b).sum(), (a & ~b).sum()], [(~a & b).sum(), (~a & ~b).sum()]]
    assert (got["a_only"], got["b_only"]) == (table[0][1], table[1][0])
    assert got["p"] == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-12)


def test_mcnemar_hand_worked_and_degenerate():
    # 0 against 6 discordant samples: p = 2 · 0.5^6.
    assert analysis.mcnemar([True] * 6 + [False] * 4, [False] * 6 + [False] * 4)["p"] == pytest.approx(2 / 64)
    assert analysis.mcnemar([True, False], [True, False])["p"] == 1.0  # no discordant sample
    with pytest.raises(ValueError, match="paired"):
        analysis.mcnemar([True], [True, False])


def test_holm_hand_worked_and_against_statsmodels():
    # Sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04 -> running max.
    assert analysis.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    p = np.random.default_rng(0).random(25) ** 3
    assert analysis.holm(p) == pytest.approx(multipletests(p, method="holm")[1], abs=1e-15)
    with_nan = analysis.holm([0.01, float("nan"), 0.04])  # NaN: not a test, not counted
    assert math.isnan(with_nan[1]) and with_nan[[0, 2]] == pytest.approx(multipletests([0.01, 0.04], method="holm")[1])


# --- paired comparisons on result rows -----------------------------------------------------

def ids_sorted(df):
    return sorted(df["sample_id"].unique())


def test_compare_classification_mcnemar_and_bootstrap_interval_match_references():
    df = results_frame(samples=30, codecs=(("a", ("1", "2")),))
    resamples = 400
    cmp = analysis.compare(df, n_resamples=resamples, seed=5)
    assert cmp["b"].to_list() == ["a 1", "a 2"] and set(cmp["a"]) == {"baseline"}
    assert set(cmp["test"]) == {"McNemar exact"}
    ids = ids_sorted(df)

    def correct(codec, setting):
        g = df.filter((pl.col("codec") == codec) & (pl.col("setting") == setting))
        by_id = dict(zip(g["sample_id"], g["correct"]))
        return np.array([by_id[i] for i in ids], dtype=bool)

    base = correct("none", "")
    for row in cmp.iter_rows(named=True):
        coded = correct("a", row["b"].split()[1])
        table = [[(base & coded).sum(), (base & ~coded).sum()], [(~base & coded).sum(), (~base & ~coded).sum()]]
        assert row["p"] == pytest.approx(sm_mcnemar(table, exact=True).pvalue)
        assert row["difference"] == pytest.approx(coded.mean() - base.mean())
        # The same resamples of sorted sample ids as scipy's paired percentile bootstrap.
        ref = stats.bootstrap((base.astype(float), coded.astype(float)), lambda x, y: y.mean() - x.mean(), paired=True,
                              vectorized=False, n_resamples=resamples, method="percentile", rng=np.random.default_rng(5))
        assert (row["difference_low"], row["difference_high"]) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    assert cmp["p_holm"].to_numpy() == pytest.approx(multipletests(cmp["p"].to_numpy(), method="holm")[1])


def segment_frame(samples=24, classes=4, seed=0):
    """Segmentation rows (the columns Segment.predict writes) at the baseline and one codec
    setting that loses some intersection of every class."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(samples):
        union = rng.integers(0, 400, size=classes) * (rng.random(classes) < 0.7)
        inter = (union * rng.uniform(0.5, 1, size=classes)).astype(int)
        for codec, setting, keep in (("none", "", 1.0), ("jpeg", "10", 0.85)):
            got = (inter * rng.uniform(keep - 0.1, keep, size=classes)).astype(int) if keep < 1 else inter
            rows.append({"dataset": "ade", "sample_id": f"img{i:02d}", "task": "seg", "task_type": "segment", "error": None,
                         "codec": codec, "setting": setting, "intersection": got.tolist(), "union": union.tolist(),
                         "pixels_valid": 1000, "pixels_correct": int(900 * keep) - i, "correct": None,
                         "score": float(np.mean(got[union > 0] / union[union > 0])) if (union > 0).any() else None})
    return pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.col("error").cast(pl.String))


def test_paired_bootstrap_recomputes_the_split_level_miou_per_resample():
    df = segment_frame()
    resamples = 300
    row = analysis.compare(df, n_resamples=resamples, seed=2).filter(pl.col("score_name") == "mIoU").row(0, named=True)
    assert row["test"] == "paired permutation" and row["n"] == 24
    ids = ids_sorted(df)

    def counts(codec):
        g = df.filter(pl.col("codec") == codec)
        by_id = {r["sample_id"]: (r["intersection"], r["union"]) for r in g.iter_rows(named=True)}
        return np.array([by_id[i][0] for i in ids]), np.array([by_id[i][1] for i in ids])

    def miou(inter, union):  # counts summed over the split first, then the mean over present classes
        i, u = inter.sum(0), union.sum(0)
        return np.mean(i[u > 0] / u[u > 0])

    (bi, bu), (ci, cu) = counts("none"), counts("jpeg")
    assert row["difference"] == pytest.approx(miou(ci, cu) - miou(bi, bu))
    diffs = np.array([miou(ci[d], cu[d]) - miou(bi[d], bu[d]) for d in np.random.default_rng(2).integers(0, len(ids), size=(resamples, len(ids)))])
    assert (row["difference_low"], row["difference_high"]) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
    # The test: scipy's paired permutation test, independently, on the counts (which condition
    # each sample's counts count for is swapped at random), mIoU recomputed per relabelling.
    inter, union = np.concatenate([bi, ci]), np.concatenate([bu, cu])
    ref = stats.permutation_test((np.arange(24), np.arange(24) + 24), lambda x, y: miou(inter[y], union[y]) - miou(inter[x], union[x]),
                                 permutation_type="samples", vectorized=False, n_resamples=2000, rng=0)
    assert row["p"] == pytest.approx(ref.pvalue, abs=0.01)
    assert row["difference_high"] < 0 and row["p"] < 0.05  # every class lost intersection


def test_compare_uses_only_samples_both_conditions_coded_and_names_unknown_pairs():
    df = results_frame(samples=8, codecs=(("a", ("1",)),))
    broken = (pl.col("codec") == "a") & (pl.col("sample_id") == "s3")
    df = df.with_columns(pl.when(broken).then(pl.lit("codec: boom")).otherwise(pl.col("error")).alias("error"))
    assert analysis.compare(df, n_resamples=0)["n"].to_list() == [7]
    with pytest.raises(ValueError, match="a 7"):
        analysis.compare(df, pairs=[(("none", ""), ("a", "7"))], n_resamples=0)


# --- codecs at equal rate ------------------------------------------------------------------

def rate_frame(samples=30, seed=0):
    """Codecs a (settings at 0.1, 0.2, 0.4 bpp) and b (0.15, 0.3 bpp) with exactly the
    stated accuracy at each setting; b beats a at equal rate, on other samples than a's."""
    rng = np.random.default_rng(seed)
    rows = []
    levels = {"a": {"1": (0.1, 0.3), "2": (0.2, 0.5), "3": (0.4, 0.7)}, "b": {"1": (0.15, 0.6), "2": (0.3, 0.9)}}
    for i in range(samples):
        for codec, settings in levels.items():
            skill = ((i if codec == "a" else 7 * i % samples) + 0.5) / samples  # b: the same skills, permuted
            for setting, (bpp, acc) in settings.items():
                rows.append({"dataset": "d", "sample_id": f"s{i:02d}", "task": "t", "task_type": "classify", "error": None,
                             "codec": codec, "setting": setting, "bpp": bpp * (1 + 0.01 * rng.normal()), "bits": 1000,
                             "correct": bool(skill < acc)})
    return pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.col("error").cast(pl.String), pl.col("correct").cast(pl.Float64).alias("score"))


def test_equal_rate_takes_each_codecs_highest_setting_under_the_target_and_tests_against_the_best():
    df = rate_frame()
    table = analysis.equal_rate(df, targets=[0.12, 0.25, 0.5], n_resamples=200, seed=0)
    chosen = {(r["target"], r["codec"]): r["setting"] for r in table.iter_rows(named=True)}
    # 0.12: only a reaches it (b's lowest is 0.15); 0.25: a 2 (0.2) and b 1 (0.15); 0.5: a 3, b 2.
    assert chosen == {(0.12, "a"): "1", (0.25, "a"): "2", (0.25, "b"): "1", (0.5, "a"): "3", (0.5, "b"): "2"}
    assert table["rate"].unique().to_list() == ["bpp"]
    at = table.filter(pl.col("target") == 0.25)
    best, other = at.filter(pl.col("best")).row(0, named=True), at.filter(~pl.col("best")).row(0, named=True)
    assert best["codec"] == "b" and best["score"] == pytest.approx(0.6) and other["score"] == pytest.approx(0.5)
    assert other["difference"] == pytest.approx(-0.1) and other["test"] == "McNemar exact"
    a = df.filter((pl.col("codec") == "a") & (pl.col("setting") == "2")).sort("sample_id")["correct"].to_numpy()
    b = df.filter((pl.col("codec") == "b") & (pl.col("setting") == "1")).sort("sample_id")["correct"].to_numpy()
    table_ab = [[(b & a).sum(), (b & ~a).sum()], [(~b & a).sum(), (~b & ~a).sum()]]
    assert (other["best_only"], other["codec_only"]) == (table_ab[0][1], table_ab[1][0])
    assert other["p"] == pytest.approx(sm_mcnemar(table_ab, exact=True).pvalue)
    assert other["achieved"] == pytest.approx(df.filter((pl.col("codec") == "a") & (pl.col("setting") == "2"))["bpp"].mean())
    tested = table.filter(pl.col("p").is_not_null())
    assert tested["p_holm"].to_numpy() == pytest.approx(multipletests(tested["p"].to_numpy(), method="holm")[1])
    # Each codec's interval: the percentile bootstrap of its accuracy over the same resamples.
    ids = np.random.default_rng(0).integers(0, 30, size=(200, 30))
    assert (best["score_low"], best["score_high"]) == pytest.approx(tuple(np.percentile([b[d].mean() for d in ids], [2.5, 97.5])))


def test_equal_rate_default_targets_span_the_rates_two_codecs_share():
    means = pl.DataFrame({"codec": ["a", "a", "a", "b", "b"], "bpp": [0.1, 0.2, 0.4, 0.15, 0.3]})
    # From 0.15 (b's lowest: two codecs reach it) to 0.3 (b's highest), log-spaced, rounded up.
    assert analysis.default_targets(means, "bpp") == pytest.approx([0.15, 0.22, 0.3])
    assert analysis.default_targets(means.filter(pl.col("codec") == "a"), "bpp") == []
    df = rate_frame()
    table = analysis.equal_rate(df, n_resamples=0)
    noisy = df.group_by("codec", "setting").agg(pl.col("bpp").mean())  # b's lowest about 0.15
    assert sorted(table["target"].unique()) == analysis.default_targets(noisy, "bpp") and table["target"].n_unique() == 3
    lowest = table.filter(pl.col("target") == table["target"].min())
    assert lowest.select("codec", "setting").rows() == [("a", "1"), ("b", "1")]


def test_equal_rate_uses_the_rows_own_targets_when_present():
    df = rate_frame()
    # Codec a asked for 0.25 and 0.45 bpp: its search chose setting 2 (0.2 bpp) and 3 (0.4 bpp) per sample;
    # codec b (no target rows) stands at its highest setting under each target: 1 (0.15) and 2 (0.3).
    searched = (df.filter((pl.col("codec") == "a") & pl.col("setting").is_in(["2", "3"]))
                .with_columns(target_bpp=pl.col("setting").replace_strict({"2": 0.25, "3": 0.45}, return_dtype=pl.Float64))
                .with_columns(target_setting=pl.col("setting"), setting=pl.format("bpp<={}", pl.col("target_bpp"))))
    df = pl.concat([df, searched], how="diagonal_relaxed")
    table = analysis.equal_rate(df, targets=[0.12], n_resamples=0)  # targets ignored: the rows carry theirs
    assert table.select("target", "codec", "setting").rows() == [(0.25, "a", "2"), (0.25, "b", "1"), (0.45, "a", "3"), (0.45, "b", "2")]
    at = table.filter(pl.col("target") == 0.25)
    assert at["score"].to_list() == pytest.approx([0.5, 0.6]) and at["best"].to_list() == [False, True]


# --- metric ranking ------------------------------------------------------------------------

def ranking_frame(samples=40, settings=4, seed=0):
    """Per-sample scores that PSNR tracks closely and LPIPS (lower is better) loosely."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(samples):
        effect = rng.normal()
        for k in range(settings):
            score = effect + 0.3 * k + 0.3 * rng.normal()
            rows.append({"dataset": "d", "sample_id": f"s{i:02d}", "task": "t", "task_type": "classify", "error": None,
                         "codec": "a", "setting": str(k), "bits": 1000 * (k + 1), "bpp": (k + 1) / 3, "correct": True,
                         "psnr": 30 + 2 * score + 0.3 * rng.normal(), "lpips": 0.5 - 0.05 * score + 0.1 * rng.normal(), "score": score})
    return pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.col("error").cast(pl.String))


def test_metric_ranking_orders_by_abs_spearman_and_tests_best_against_second():
    df = ranking_frame()
    resamples = 200
    rank = analysis.metric_ranking(df, n_resamples=resamples, seed=4)
    assert rank["metric"].to_list() == ["psnr", "lpips"] and rank["rank"].to_list() == [1, 2]
    x = {m: df[m].to_numpy() for m in ("psnr", "lpips")}
    y = df["score"].to_numpy()
    for row in rank.iter_rows(named=True):
        assert row["spearman"] == pytest.approx(stats.spearmanr(x[row["metric"]], y).statistic)
        assert row["kendall"] == pytest.approx(stats.kendalltau(x[row["metric"]], y).statistic)
        assert row["clusters"] == 40 and row["n"] == 160
    assert rank["spearman"][1] < 0  # LPIPS falls as the score rises: ranked by |rho|
    # Independent recomputation: draw sample ids, stack their rows, scipy on each metric.
    by_id = {sid: g for (sid,), g in df.group_by(["sample_id"])}
    ids = sorted(by_id)
    diffs = []
    for draw in np.random.default_rng(4).integers(0, len(ids), size=(resamples, len(ids))):
        g = pl.concat([by_id[ids[j]] for j in draw])
        diffs.append(abs(stats.spearmanr(g["psnr"], g["score"]).statistic) - abs(stats.spearmanr(g["lpips"], g["score"]).statistic))
    best = rank.row(0, named=True)
    assert best["vs_next"] == pytest.approx(abs(rank["spearman"][0]) - abs(rank["spearman"][1]))
    assert (best["vs_next_low"], best["vs_next_high"]) == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])))
    assert best["test"] == "paired permutation" and best["p"] < 0.05  # the test itself: test_conclusions' brute force
    assert best["p_holm"] == pytest.approx(best["p"])  # one test in the table
    # The report hands over the sample-level correlations it computed: the same table.
    corr = analysis.correlations(df, n_resamples=resamples, seed=4)
    assert analysis.metric_ranking(df, n_resamples=resamples, seed=4, correlations=corr).equals(rank)
    marked = corr.with_columns(kendall=pl.when(pl.col("level") == "samples").then(0.123).otherwise(pl.col("kendall")))
    assert analysis.metric_ranking(df, n_resamples=resamples, seed=4, correlations=marked)["kendall"].to_list() == [0.123, 0.123]  # taken, not recomputed


# --- report ---------------------------------------------------------------------------------

def test_report_leads_with_the_ranking_then_equal_rate(tmp_path):
    df = pl.concat([rate_frame().with_columns(psnr=pl.col("bpp") * 100, lpips=1 - pl.col("bpp")), ranking_frame().with_columns(dataset=pl.lit("e"))],
                   how="diagonal_relaxed")
    page = analysis.write_report(df, tmp_path, n_resamples=50).read_text()
    page = page[page.index("</nav>"):]  # after the table of contents
    heads = [page.index(h) for h in ("Which quality metric predicts the task best", "At equal rate", ">Run</h2>", "Machine BD-rate")]
    assert heads == sorted(heads)
    ranking = pl.read_csv(tmp_path / "metric_ranking.csv")
    assert ranking.filter(pl.col("dataset") == "e")["metric"].to_list() == ["psnr", "lpips"]
    eq = pl.read_csv(tmp_path / "equal_rate.csv")
    assert set(eq["dataset"]) == {"d"} and (tmp_path / "equal_rate.md").is_file()
    assert "McNemar exact" in page and "Holm" in page


# --- the fast path: every resample's score from per-sample sums ----------------------------

def asr_frame(samples=15, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(samples):
        for codec, setting in (("none", ""), ("opus", "6"), ("opus", "12")):
            words = int(rng.integers(3, 30))
            errors = int(rng.integers(0, words + 1)) if codec != "none" else 0
            rows.append({"dataset": "speech", "sample_id": f"u{i}", "task": "asr", "task_type": "asr", "error": None, "codec": codec,
                         "setting": setting, "word_errors": errors, "ref_words": words, "word_errors_norm": max(0, errors - 1),
                         "ref_words_norm": words, "agreement": None if codec == "none" else float(rng.random()), "bps": float(rng.random())})
    return pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.col("error").cast(pl.String))


def _slow_bootstrap(rows, n_resamples, seed):
    """The definition: each resample's rows concatenated, scored by Task.aggregate."""
    from mpq.analysis.paired import cluster_resamples
    from mpq.means import task_aggregates

    agg = task_aggregates(rows, ["_c"])
    names = [c for c in agg.columns if c != "_c"]
    boot = {label: {n: np.full(n_resamples, np.nan) for n in names} for label in agg["_c"]}
    for _, frame in cluster_resamples(rows, n_resamples, seed):
        for r in task_aggregates(frame, ["_b", "_c"]).iter_rows(named=True):
            for n in names:
                boot[r["_c"]][n][r["_b"]] = np.nan if r[n] is None else r[n]
    return {r["_c"]: {n: (np.nan if r[n] is None else r[n]) for n in names} for r in agg.iter_rows(named=True)}, boot


@pytest.mark.parametrize("frame", ["classify", "segment", "asr"])
def test_bootstrap_from_per_sample_sums_equals_aggregating_each_resample(frame):
    from mpq.analysis.paired import joint_bootstrap
    from mpq.analysis.sums import resampled_scores
    from mpq.analysis.tables import COLUMN_LABEL

    df = {"classify": lambda: results_frame(samples=12), "segment": segment_frame, "asr": asr_frame}[frame]()
    rows = df.with_columns(COLUMN_LABEL.alias("_c"))
    assert resampled_scores(rows, "_c", 50, 3) is not None  # the fast path applies to this task
    point, boot = joint_bootstrap(rows, n_resamples=50, seed=3)
    ref_point, ref_boot = _slow_bootstrap(rows, 50, 3)
    assert point.keys() == ref_point.keys()
    for label in ref_point:
        assert point[label].keys() == ref_point[label].keys()
        for name in ref_point[label]:
            np.testing.assert_allclose(point[label][name], ref_point[label][name], rtol=1e-12)
            np.testing.assert_allclose(boot[label][name], ref_boot[label][name], rtol=1e-12)


def test_permutation_test_and_bd_rate_from_sums_equal_the_aggregate_path(monkeypatch):
    from mpq.analysis import bdrate, paired
    from mpq.analysis.tables import COLUMN_LABEL

    seg = segment_frame().with_columns(COLUMN_LABEL.alias("_c"))
    bd_frame = results_frame(samples=40, seed=2)
    fast_p = paired.permutation_p(seg, "baseline", "jpeg 10", "mIoU", n_resamples=300, seed=1)
    fast_bd = analysis.bd_rates(bd_frame, n_resamples=60, seed=4)
    monkeypatch.setattr(paired, "row_sums", lambda cls, rows: None)  # the fallback: Task.aggregate per relabelling
    monkeypatch.setattr(bdrate, "resampled_scores", lambda *a, **k: None)  # and per resample
    assert paired.permutation_p(seg, "baseline", "jpeg 10", "mIoU", n_resamples=300, seed=1) == fast_p
    slow_bd = analysis.bd_rates(bd_frame, n_resamples=60, seed=4)
    assert slow_bd["bd_rate_low"].null_count() < slow_bd.height and fast_bd.drop("bd_rate_low", "bd_rate_high").equals(slow_bd.drop("bd_rate_low", "bd_rate_high"))
    np.testing.assert_allclose(fast_bd["bd_rate_low"].to_numpy().astype(float), slow_bd["bd_rate_low"].to_numpy().astype(float), rtol=1e-9)
    np.testing.assert_allclose(fast_bd["bd_rate_high"].to_numpy().astype(float), slow_bd["bd_rate_high"].to_numpy().astype(float), rtol=1e-9)
