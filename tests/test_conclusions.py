"""Honest conclusions: tests valid at every n, a minimum of samples for any interval, test or
verdict, flagged rows out of conclusions, BD-rate by the field's convention and label-free
datasets analysed. Each measured case of the audit on the default job is a test here."""

import itertools
import math

import numpy as np
import polars as pl
import pytest
from scipy import stats
from test_analysis import results_frame

from mpq import analysis
from mpq.analysis.ranking import swap_test
from mpq.analysis.tables import MIN_SAMPLES


def paired_frame(diffs, task_type="classify", base=0.9):
    """One dataset and task, conditions a and b on the same samples; b's per-sample
    agreement is a's plus ``diffs`` (classify's aggregate: the mean agreement)."""
    rows = []
    for i, d in enumerate(diffs):
        for codec, agreement in (("a", base), ("b", base + d)):
            rows.append({"dataset": "d", "sample_id": f"s{i:03d}", "task": "t", "task_type": task_type, "error": None,
                         "codec": codec, "setting": "1", "_c": codec, "agreement": agreement, "correct": None})
    return pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.col("error").cast(pl.String), pl.col("correct").cast(pl.Boolean))


# --- tests valid at every n ---------------------------------------------------------------

def test_permutation_test_one_sample_gives_one_and_four_all_worse_give_the_exact_0125():
    # The audit: the bootstrap p read 2/(B+1) = 0.002 for both, whatever the samples said.
    assert analysis.permutation_p(paired_frame([-0.1]), "a", "b", "agreement") == 1.0
    assert analysis.permutation_p(paired_frame([-0.1] * 4), "a", "b", "agreement") == pytest.approx(0.125)


def test_permutation_test_is_exact_sign_flip_enumeration_when_samples_are_few():
    d = np.array([-0.3, -0.1, 0.05, -0.2, -0.25, 0.1, -0.15, -0.05])
    got = analysis.permutation_p(paired_frame(d), "a", "b", "agreement", n_resamples=1000)
    # Independent: every one of the 2^8 sign flips of the per-sample differences, by hand.
    null = np.array([np.mean(d * np.array(signs)) for signs in itertools.product([1, -1], repeat=len(d))])
    observed = d.mean()
    by_hand = min(1.0, 2 * min(np.mean(null <= observed + 1e-12), np.mean(null >= observed - 1e-12)))
    assert got == pytest.approx(by_hand)


def test_permutation_test_monte_carlo_matches_scipy_on_per_sample_differences():
    d = np.random.default_rng(0).normal(-0.03, 0.1, 40)
    got = analysis.permutation_p(paired_frame(d), "a", "b", "agreement", n_resamples=2000, seed=1)
    ref = stats.permutation_test((d,), lambda x, axis=-1: x.mean(axis=axis), permutation_type="samples", n_resamples=20000, rng=0).pvalue
    assert got == pytest.approx(ref, abs=0.03)


def test_compare_refuses_intervals_and_tests_below_the_minimum_of_samples():
    few = analysis.compare(paired_frame([-0.1] * 4), pairs=[(("a", "1"), ("b", "1"))]).row(0, named=True)
    assert few["test"] == "too few samples (n = 4)" and few["p"] is None and few["difference_low"] is None
    assert few["difference"] == pytest.approx(-0.1)
    enough = analysis.compare(paired_frame([-0.1] * MIN_SAMPLES), pairs=[(("a", "1"), ("b", "1"))], n_resamples=200).row(0, named=True)
    assert enough["test"] == "paired permutation" and enough["p"] == pytest.approx(2 / 2**MIN_SAMPLES)


def test_spearman_difference_on_one_cluster_has_neither_interval_nor_p():
    # The audit: p 0.001998 and interval [0.5, 0.5] from five points of one cluster.
    got = analysis.spearman_difference([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], [1, 3, 2, 5, 4], ["t"] * 5)
    assert got["difference"] == pytest.approx(0.5) and got["test"] == "too few samples (n = 1)"
    assert math.isnan(got["p"]) and math.isnan(got["difference_low"])
    assert swap_test([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], [1, 3, 2, 5, 4], ["t"] * 5) == 1.0


def test_swap_test_matches_a_brute_force_enumeration():
    rng = np.random.default_rng(2)
    groups = np.repeat(np.arange(7), 3)
    y = rng.normal(size=21)
    x1 = y + rng.normal(scale=0.5, size=21)  # the better predictor
    x2 = -(y + rng.normal(scale=1.5, size=21))  # falls as y rises: compared by |rho|
    got = swap_test(x1, x2, y, groups, n_resamples=1000)

    def signed_ranks(x):  # ranks on one scale: reversed for the metric that falls as y rises
        return stats.rankdata(x * np.sign(stats.spearmanr(x, y).statistic))

    r1, r2 = signed_ranks(x1), signed_ranks(x2)
    null = []
    for flips in itertools.product([False, True], repeat=7):
        swap = np.array(flips)[groups]
        one, two = np.where(swap, r2, r1), np.where(swap, r1, r2)
        null.append(abs(stats.spearmanr(one, y).statistic) - abs(stats.spearmanr(two, y).statistic))
    null = np.array(null)
    observed = abs(stats.spearmanr(x1, y).statistic) - abs(stats.spearmanr(x2, y).statistic)
    by_hand = min(1.0, 2 * min(np.mean(null <= observed + 1e-12), np.mean(null >= observed - 1e-12)))
    assert got == pytest.approx(by_hand)


@pytest.mark.parametrize("binary", [False, True])
def test_swap_statistic_per_sample_forms_equals_per_point_ranks_and_scipy(binary):
    from mpq.analysis.ranking import _swaps_by_forms, _swaps_by_ranks

    rng = np.random.default_rng(9)
    groups = np.repeat(np.arange(30), 20)
    x1 = np.round(rng.normal(size=600), 1)  # ties within and across samples
    x2 = np.round(x1 + 0.3 * rng.normal(size=600), 1)
    y = (rng.random(600) < 0.5 + 0.3 * (x1 > 0)).astype(float) if binary else x1 + rng.normal(size=600)
    first, second, ry = stats.rankdata(x1), stats.rankdata(x2), stats.rankdata(y)
    swapped = rng.random((50, 30)) < 0.5  # 50 relabellings of the 30 samples
    forms = _swaps_by_forms(first, second, ry, groups, 30)(swapped)
    assert np.array_equal(forms, _swaps_by_ranks(first, second, ry, groups)(swapped))  # the same float64 numbers
    for s, got in zip(swapped[:5], forms, strict=False):
        one = np.where(s[groups], second, first)
        two = np.where(s[groups], first, second)
        assert got == pytest.approx(abs(stats.spearmanr(one, y).statistic) - abs(stats.spearmanr(two, y).statistic), abs=1e-12)


def test_rank_sums_and_ties_as_quadratic_forms_equal_rankdata_on_the_repeated_units():
    from mpq.analysis.correlation import _below, _Ties

    rng = np.random.default_rng(5)
    values = np.concatenate([np.round(rng.normal(size=1500), 1), rng.normal(size=1500)])  # many ties, and none
    block = rng.integers(0, 40, size=values.size)
    weight = stats.rankdata(rng.normal(size=values.size))  # like the ranks of y
    levels = np.unique(values, return_inverse=True)[1]
    forms, ties = _below(levels, block, 40, weight), _Ties(levels, block, 40)
    t = rng.integers(0, 4, size=(20, 40)).astype(float)  # how often each row holds each block (0/1 in the swap test)
    squares, cubes = ties.sums(t)
    for row, got, two, three in zip(t, ((t @ forms) * t).sum(1) + t @ np.bincount(block, weight, 40) / 2, squares, cubes, strict=True):
        times = row[block].astype(int)
        held = np.repeat(values, times)
        assert got == np.sum(np.repeat(weight, times) * stats.rankdata(held))  # exact: whole quarters
        counts = np.unique(held, return_counts=True)[1]
        assert two == np.sum(counts**2) and three == np.sum(counts**3)


def test_correlation_intervals_need_the_minimum_of_clusters():
    x = np.arange(12.0)
    y = x + np.random.default_rng(0).normal(size=12)
    one_cluster = analysis.correlate(x, y, n_resamples=200, groups=["t"] * 12)  # was a zero-width interval
    assert one_cluster["clusters"] == 1 and math.isnan(one_cluster["spearman_low"])
    assert analysis.correlate(x, y, n_resamples=200)["spearman_low"] < one_cluster["spearman"]
    shown = analysis.correlation_display(pl.DataFrame([{"level": "samples", "dataset": "d", "task": "t", "metric": "m", "score_name": "score",
                                                        **one_cluster, "nonfinite": 0}]))
    assert "too few samples (n = 1)" in shown["spearman"][0]


def test_equal_rate_with_one_sample_says_too_few_never_worse():
    # The audit: Opus "worse" than EnCodec at 6.3 kbps, p (Holm) 0.022, on the one music track.
    rows = []
    for codec, setting, kbps, agreement in (("opus", "6", 6.1, 0.2), ("encodec", "6", 6.0, 0.9)):
        rows.append({"dataset": "music", "sample_id": "track0", "task": "sep", "task_type": "classify", "error": None,
                     "codec": codec, "setting": setting, "kbps": kbps, "bits": 1000, "agreement": agreement, "correct": None})
    table = analysis.equal_rate(pl.DataFrame(rows).with_columns(pl.col("error").cast(pl.String)), targets=[6.3])
    assert table["test"].drop_nulls().to_list() == ["too few samples (n = 1)"] and table["p"].null_count() == table.height
    shown = analysis.equal_rate_display(table)
    assert set(shown["vs best"]) == {"too few samples (n = 1)"}


# --- flagged rows stay out of conclusions ---------------------------------------------------

def flagged_frame():
    """Codec a and a random-weight codec r (its rows flagged) on 12 samples; r's metric
    tracks the score perfectly, a's loosely: with r in, r would rank and win."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        for codec, check in (("a", None), ("r", "r with random weights: its output means nothing")):
            for k in range(4):
                score = rng.random()
                metric = score if codec == "r" else score + rng.normal(scale=0.5)
                rows.append({"dataset": "d", "sample_id": f"s{i:02d}", "task": "t", "task_type": "classify", "error": None,
                             "codec": codec, "setting": str(k), "bits": 1000 * 2**k, "bpp": 0.1 * 2**k, "psnr": 20 + 10 * metric,
                             "agreement": score, "correct": None, "pipeline_check": check})
    return pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.col("error").cast(pl.String), pl.col("correct").cast(pl.Boolean))


def test_flagged_rows_are_left_out_of_every_conclusion_unless_asked(tmp_path):
    df = flagged_frame()
    real = df.filter(pl.col("codec") == "a")
    assert analysis.metric_ranking(df, n_resamples=50).equals(analysis.metric_ranking(real, n_resamples=50))
    assert analysis.correlations(df, n_resamples=50).equals(analysis.correlations(real, n_resamples=50))
    assert set(analysis.equal_rate(df, targets=[0.5], n_resamples=0)["codec"]) == {"a"}
    assert analysis.bd_rates(df, n_resamples=0).is_empty()  # one real codec: no pair
    with pytest.raises(ValueError, match="a 0 vs r 0"):
        analysis.compare(df, pairs=[(("a", "0"), ("r", "0"))], n_resamples=0)
    assert analysis.compare(df, pairs=[(("a", "0"), ("r", "0"))], n_resamples=0, include_flagged=True).height == 1
    kept = analysis.equal_rate(df, targets=[0.5], n_resamples=0, include_flagged=True)
    assert set(kept["codec"]) == {"a", "r"}
    assert analysis.bd_rates(df, n_resamples=0, include_flagged=True).height == 1
    page = analysis.write_report(df, tmp_path, n_resamples=0).read_text()
    assert "48 rows come from a component whose output means nothing" in page
    left = pl.read_csv(tmp_path / "left_out.csv")
    assert left["rows"].sum() == 48 and set(left["codec"]) == {"r"}


# --- BD-rate by the field's convention ------------------------------------------------------

def sized_frame(target_point: bool):
    """Two codecs over images of 10 k and 2 M pixels with the same agreement at each
    setting; codec b needs half a's bits per pixel on the large images and 0.9 of them on the
    small ones: 0.7 of a's rate per pixel on average, but about half its mean bits."""
    rows = []
    sizes = {f"s{i:02d}": (10_000 if i % 2 else 2_000_000) for i in range(12)}
    for sid, pixels in sizes.items():
        for k, (bpp, agreement) in enumerate([(0.2, 0.4), (0.4, 0.6), (0.8, 0.8), (1.6, 0.95)]):
            for codec, factor in (("a", 1.0), ("b", 0.5 if pixels > 1e6 else 0.9)):
                rows.append({"dataset": "photos", "sample_id": sid, "task": "t", "task_type": "classify", "error": None,
                             "codec": codec, "setting": str(k), "bpp": bpp * factor, "bits": int(bpp * factor * pixels),
                             "agreement": agreement, "correct": None})
        if target_point:  # an equal-rate point of a: a different kind of condition
            rows.append({"dataset": "photos", "sample_id": sid, "task": "t", "task_type": "classify", "error": None, "codec": "a",
                         "setting": "bpp<=0.7", "target_bpp": 0.7, "bpp": 0.6, "bits": int(0.6 * pixels), "agreement": 0.2, "correct": None})
    return pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.col("error").cast(pl.String), pl.col("correct").cast(pl.Boolean))


def test_bd_rate_uses_the_settings_sweep_and_the_rate_per_pixel():
    plain, with_target = sized_frame(False), sized_frame(True)
    got = analysis.bd_rates(plain, n_resamples=0).row(0, named=True)
    assert got["rate"] == "bpp" and got["n"] == 12
    # Hand-worked: b's mean rate per pixel is (0.5 + 0.9) / 2 = 0.7 of a's at every agreement: −30 %.
    assert got["bd_rate"] == pytest.approx(-30.0)
    # The equal-rate point is not a setting: the same BD-rate with it in the rows (with it, a's
    # curve would dip at 0.6 bpp and the monotone fit would move it).
    assert analysis.bd_rates(with_target, n_resamples=0)["bd_rate"][0] == pytest.approx(-30.0)
    # Mean bits weigh each 2-M-pixel image 200 times a small one: about −50 %, another answer.
    means = plain.group_by("codec", "setting").agg(pl.col("bits").mean(), pl.col("agreement").mean()).sort("codec", "setting")
    a, b = (means.filter(pl.col("codec") == c) for c in ("a", "b"))
    assert analysis.bd_rate(a["bits"], a["agreement"], b["bits"], b["agreement"]) == pytest.approx(-49.8, abs=0.1)


def test_bd_rate_hand_worked_half_the_rate_is_minus_fifty_percent():
    rate = np.array([0.1, 0.2, 0.4, 0.8])
    score = np.array([0.3, 0.5, 0.7, 0.8])
    assert analysis.bd_rate(rate, score, rate / 2, score) == pytest.approx(-50.0)


def test_bd_rate_needs_four_points_inside_the_overlap():
    # Overlap 0.6-0.7 holds 2 + 1 points of the two curves: too few to rest the integral on.
    with pytest.raises(ValueError, match="only 3 of the two curves' points"):
        analysis.bd_rate([1, 2, 4, 8], [0.3, 0.5, 0.65, 0.7], [1, 2, 4, 8], [0.6, 0.75, 0.8, 0.85], min_overlap=0.0)
    assert analysis.bd_rate([1, 2, 4, 8], [0.3, 0.6, 0.65, 0.7], [1, 2, 4, 8], [0.6, 0.75, 0.8, 0.85], min_overlap=0.0) < 0  # 4 points: a value


# --- label-free datasets are analysed -------------------------------------------------------

def test_label_free_dataset_gets_per_sample_correlations_and_a_ranking_on_agreement():
    df = results_frame(samples=12).with_columns(score=pl.lit(None, dtype=pl.Float64), correct=pl.lit(None, dtype=pl.Float64))
    agreement = (pl.col("psnr") / 40).clip(0, 1)
    df = df.with_columns(agreement=pl.when(pl.col("codec") != "none").then(agreement).otherwise(None))
    corr = analysis.correlations(df, n_resamples=50).filter(pl.col("level") == "samples")
    assert set(corr["score_name"]) == {"agreement"}
    ranking = analysis.metric_ranking(df, n_resamples=50)
    assert ranking["score_name"].unique().to_list() == ["agreement"] and ranking["rank"][0] == 1
    coded = df.filter(pl.col("codec") != "none")
    row = ranking.filter(pl.col("metric") == "psnr").row(0, named=True)
    assert row["spearman"] == pytest.approx(stats.spearmanr(coded["psnr"], coded["agreement"]).statistic)


# --- the report's answers -------------------------------------------------------------------

def known_answers_frame():
    """40 photos, codecs a and b at 0.2 and 0.4 bpp (b a little under a); a is right on the
    first 10 photos at 0.2 bpp, b on the first 30: b keeps accuracy at equal rate, and PSNR
    (b's is higher where it is right) predicts the per-sample score; a one-track dataset, and
    one whose rows all come from a random model."""
    rows = []
    for i in range(40):
        for codec, setting, bpp, right in (("a", "1", 0.2, i < 10), ("a", "2", 0.4, i < 20),
                                           ("b", "1", 0.19, i < 30), ("b", "2", 0.39, i < 35)):
            rows.append({"dataset": "photos", "sample_id": f"p{i:02d}", "task": "cls", "task_type": "classify", "error": None,
                         "codec": codec, "setting": setting, "bpp": bpp, "bits": 1000, "correct": right,
                         "psnr": 30.0 + 5 * right + 0.01 * i, "agreement": float(right)})
    for codec, kbps, agreement in (("opus", 6.0, 0.3), ("encodec", 6.0, 0.8)):
        rows.append({"dataset": "music", "sample_id": "t0", "task": "cls", "task_type": "classify", "error": None, "codec": codec,
                     "setting": "6", "kbps": kbps, "bits": 6000, "correct": None, "agreement": agreement})
    for k in range(4):
        rows.append({"dataset": "noise", "sample_id": "n0", "task": "cls", "task_type": "classify", "error": None, "codec": "a",
                     "setting": str(k), "bpp": 0.1 * (k + 1), "bits": 100, "correct": None, "agreement": 0.5,
                     "pipeline_check": "tiny random classifier: accuracy means nothing"})
    df = pl.DataFrame(rows, infer_schema_length=None)
    return df.with_columns(pl.col("error").cast(pl.String), pl.col("correct").cast(pl.Float64).alias("score"))


def test_report_opens_with_answers_that_carry_their_support(tmp_path):
    page = analysis.write_report(known_answers_frame(), tmp_path, n_resamples=200, targets={"photos": [0.2], "music": [6.3]}).read_text()
    page = page[page.index("</nav>"):]  # after the table of contents
    assert page.index(">Answers</h2>") < page.index(">Which quality metric")
    said = pl.read_csv(tmp_path / "answers.csv")
    photos = said.filter(pl.col("dataset") == "photos")["answer"].to_list()
    rate = next(a for a in photos if a.startswith("At 0.2 bpp, b keeps accuracy highest"))
    # McNemar: 20 photos right under b only, none under a only: p = 2 · 0.5^20.
    assert "a is worse (difference -0.5 [" in rate and "McNemar exact" in rate and "n = 40 samples" in rate
    measure = next(a for a in photos if "predicts the label score best" in a)
    assert measure.startswith("psnr predicts the label score best of 1 measures: Spearman")
    music = said.filter(pl.col("dataset") == "music")["answer"].to_list()
    assert "too few samples (n = 1) to test a difference" in music[0] and "worse" not in " ".join(music)
    assert said.filter(pl.col("dataset") == "noise")["answer"].to_list() == [
        "No conclusions: every row comes from a component whose output means nothing (tiny random classifier: accuracy means nothing)."]


def test_a_count_of_non_finite_agreements_is_never_taken_for_a_score():
    df = paired_frame([-0.1] * 12).with_columns(
        agreement=pl.when((pl.col("sample_id") == "s000") & (pl.col("codec") == "b")).then(float("nan")).otherwise(pl.col("agreement")))
    df = df.with_columns(bits=pl.lit(1000))
    for table in (analysis.compare(df.drop("_c"), pairs=[(("a", "1"), ("b", "1"))], n_resamples=0),
                  analysis.equal_rate(df.drop("_c").with_columns(bpp=pl.lit(0.5)), targets=[1.0], n_resamples=0),
                  analysis.conditions(df.drop("_c"))):
        assert "agreement_nonfinite" not in table["score_name"].to_list()
