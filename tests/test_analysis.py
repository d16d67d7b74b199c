"""mpq.analysis: coefficients against scipy, reproducible bootstrap, BD-rate against known
answers, the summary-table layout, and the report and notebooks on real pipeline results."""

import math
import runpy

import numpy as np
import polars as pl
import pytest
from helpers import ROOT, photo
from PIL import Image
from scipy import stats
from typer.testing import CliRunner

from mpq import analysis
from mpq.cli import app
from mpq.reading import read_results
from mpq.runner import run_job
from mpq.spec import parse_job

TWO_CODECS = (("a", ("2", "10", "30", "60")), ("b", ("1", "5", "20", "40")))


def results_frame(seed=0, samples=6, codecs=TWO_CODECS, tasks=("t",)):
    """Hand-built result rows in the shape the pipeline writes (classify task)."""
    rng = np.random.default_rng(seed)
    rows = []
    for task in tasks:
        for i in range(samples):
            base = {"dataset": "d", "sample_id": f"s{i}", "task": task, "task_type": "classify", "error": None}
            rows.append({**base, "codec": "none", "setting": "", "bits": None, "bpp": None, "psnr": None, "lpips": None, "correct": bool(rng.random() < 0.9)})
            for codec, settings in codecs:
                for k, setting in enumerate(settings):
                    bits = int(1000 * (k + 1) * (1 + rng.random()))
                    correct = bool(rng.random() < 0.3 + 0.15 * k)
                    rows.append({**base, "codec": codec, "setting": setting, "bits": bits, "bpp": bits / 3072,
                                 "psnr": 20 + 3 * k + rng.normal(), "lpips": 0.3 / (k + 1) + 0.01 * rng.random(), "correct": correct})
    df = pl.DataFrame(rows, infer_schema_length=None)
    return df.with_columns(pl.col("error").cast(pl.String), pl.col("correct").cast(pl.Float64).alias("score"))


# --- correlation -----------------------------------------------------------------------

def test_correlate_hand_worked_example():
    r = analysis.correlate([1, 2, 3], [1, 3, 2], n_resamples=0)
    assert r["n"] == 3
    assert r["pearson"] == pytest.approx(0.5) and r["spearman"] == pytest.approx(0.5)
    assert r["kendall"] == pytest.approx(1 / 3)  # 2 concordant, 1 discordant of 3 pairs
    assert math.isnan(r["pearson_low"])  # no resamples, no interval


@pytest.mark.parametrize("n", [12, 150, 5000])  # Kendall by the level grid (12, 150) and by scipy (5000)
def test_correlate_matches_scipy_with_ties(n):
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    y = np.round(x + rng.normal(size=n))  # many ties
    r = analysis.correlate(x, y, n_resamples=0)
    assert r["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)
    assert r["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert r["kendall"] == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)


def test_correlations_on_a_frame_match_scipy_at_both_levels():
    df = results_frame()
    # An inf PSNR (identical decode) and an error row must both be left out.
    df = df.with_columns(pl.when((pl.col("sample_id") == "s0") & (pl.col("codec") == "a") & (pl.col("setting") == "60"))
                         .then(float("inf")).otherwise(pl.col("psnr")).alias("psnr"))
    bad = df.filter(pl.col("codec") == "b").head(1).with_columns(sample_id=pl.lit("broken"), error=pl.lit("codec: boom"), psnr=pl.lit(999.0))
    df = pl.concat([df, bad])
    corr = analysis.correlations(df, n_resamples=0)
    assert set(corr["level"]) == {"conditions", "samples"}
    assert set(corr["metric"]) == {"bpp", "psnr", "lpips"}

    coded = df.filter((pl.col("codec") != "none") & pl.col("error").is_null()).sort("codec", "setting")
    finite = coded.filter(pl.col("psnr").is_finite())
    # Across conditions: numpy means per setting vs accuracy per setting.
    x, y = [], []
    for (_, _), g in coded.group_by(["codec", "setting"], maintain_order=True):
        p = g["psnr"].to_numpy()
        x.append(p[np.isfinite(p)].mean())
        y.append(g["correct"].cast(pl.Float64).mean())
    row = corr.filter((pl.col("level") == "conditions") & (pl.col("metric") == "psnr")).row(0, named=True)
    assert row["n"] == 8 and row["score_name"] == "accuracy"
    assert row["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert row["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert row["kendall"] == pytest.approx(stats.kendalltau(x, y).statistic)
    # Across samples: every finite coded row.
    row = corr.filter((pl.col("level") == "samples") & (pl.col("metric") == "psnr")).row(0, named=True)
    xs, ys = finite["psnr"].to_numpy(), finite["score"].to_numpy()
    assert row["n"] == len(xs) == 6 * 8 - 1
    assert row["pearson"] == pytest.approx(stats.pearsonr(xs, ys).statistic)
    assert row["spearman"] == pytest.approx(stats.spearmanr(xs, ys).statistic)
    assert row["kendall"] == pytest.approx(stats.kendalltau(xs, ys).statistic)


def test_bootstrap_intervals_are_reproducible_and_percentiles_of_resampled_coefficients():
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    a = analysis.correlate(x, y, n_resamples=300, seed=7)
    assert a == analysis.correlate(x, y, n_resamples=300, seed=7)
    assert a != analysis.correlate(x, y, n_resamples=300, seed=8)
    # Independent recomputation: the same resamples (one draw of shape (B, n)), scipy per resample.
    idx = np.random.default_rng(7).integers(0, 40, size=(300, 40))
    for name, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
        boot = [fn(x[i], y[i]).statistic for i in idx]
        low, high = np.percentile(boot, [2.5, 97.5])
        assert a[f"{name}_low"] == pytest.approx(low) and a[f"{name}_high"] == pytest.approx(high)
        assert a[f"{name}_low"] < a[name] < a[f"{name}_high"]


def test_constant_scores_give_nan_not_a_number_from_noise():
    r = analysis.correlate([1.0, 2.0, 3.0, 4.0], [0.1, 0.1, 0.1, 0.1], n_resamples=50)
    assert all(math.isnan(r[k]) for k in ("pearson", "spearman", "kendall", "pearson_low"))


# --- BD-rate ---------------------------------------------------------------------------

def test_bd_rate_constant_rate_factor_gives_that_factor():
    bits = np.array([1e4, 2e4, 4e4, 8e4])
    score = np.array([0.5, 0.7, 0.8, 0.85])
    assert analysis.bd_rate(bits, score, bits * 0.8, score) == pytest.approx(-20.0)
    assert analysis.bd_rate(bits, score, bits * 1.25, score) == pytest.approx(25.0)


def test_bd_rate_shifted_curve_over_the_overlap_only():
    # log(bits) = 2 + 10·score is linear, which pchip reproduces exactly; the test codec
    # reaches every score 0.05 earlier: exp(-10·0.05) − 1 over the overlap [0.55, 0.8].
    score = np.array([0.5, 0.6, 0.7, 0.8])
    bits = np.exp(2 + 10 * score)
    assert analysis.bd_rate(bits, score, bits, score + 0.05) == pytest.approx(100 * (math.exp(-0.5) - 1))


def test_bd_rate_refuses_curves_that_do_not_overlap_or_do_not_move():
    with pytest.raises(ValueError, match="do not overlap"):
        analysis.bd_rate([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4], [0.5, 0.6, 0.7, 0.8])
    with pytest.raises(ValueError, match="distinct task scores"):
        analysis.bd_rate([1, 2, 3, 4], [0.5] * 4, [1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4])


def test_bd_rates_on_results_pairs_codecs_with_enough_settings():
    a = results_frame(samples=10, codecs=(("a", ("1", "2", "3", "4")), ("c", ("1", "2", "3"))))
    # Codec b: a's decisions at 80 % of a's bits, sample by sample.
    b = a.filter(pl.col("codec") == "a").with_columns(codec=pl.lit("b"), bits=(pl.col("bits") * 0.8).cast(pl.Int64), bpp=pl.col("bpp") * 0.8)
    bd = analysis.bd_rates(pl.concat([a, b]), n_resamples=50)
    assert bd.select("anchor", "test").rows() == [("a", "b")]  # c has only 3 settings
    row = bd.row(0, named=True)
    assert row["score_name"] == "accuracy" and "no value" not in (row["note"] or "")
    assert row["rate"] == "bpp" and row["bd_rate"] == pytest.approx(-20.0)
    # A resample draws a sample at every setting of both codecs: b stays a at 80 % of the bits.
    assert row["bd_rate_low"] == pytest.approx(-20.0, abs=0.05) and row["bd_rate_high"] == pytest.approx(-20.0, abs=0.05)


# --- tables ----------------------------------------------------------------------------

def test_summary_table_layout_values_and_column_driven_rows():
    df = results_frame()
    table = analysis.summary_tables(df)["other"]  # codecs a/b are not registered: modality unknown
    assert table.columns == ["measure", "dataset", "baseline", "a 2", "a 10", "a 30", "a 60", "b 1", "b 5", "b 20", "b 40"]
    assert table["measure"].to_list() == ["psnr", "lpips", "bpp", "accuracy"]
    psnr = table.row(0, named=True)
    assert psnr["baseline"] is None
    expected = df.filter((pl.col("codec") == "a") & (pl.col("setting") == "10"))["psnr"].to_numpy().mean()
    assert psnr["a 10"] == pytest.approx(expected)
    acc = table.filter(pl.col("measure") == "accuracy").row(0, named=True)
    assert acc["baseline"] == pytest.approx(df.filter(pl.col("codec") == "none")["correct"].cast(pl.Float64).mean())

    without = analysis.summary_tables(df.drop("lpips"))["other"]
    assert "lpips" not in without["measure"].to_list()
    two = analysis.summary_tables(results_frame(tasks=("t1", "t2")))["other"]
    assert two.filter(pl.col("measure") == "accuracy")["dataset"].to_list() == ["d / t1", "d / t2"]
    assert two.filter(pl.col("measure") == "psnr").height == 1  # one row: metrics do not depend on the task
    md = analysis.to_markdown(table)
    assert md.startswith("| measure | dataset | baseline | a 2 |") and f"{expected:.4g}" in md


# --- report and notebooks on real pipeline results ---------------------------------------

@pytest.fixture(scope="module")
def pipeline_results(tmp_path_factory):
    """A small real run: synthetic photographs, JPEG and WebP at four settings each."""
    root = tmp_path_factory.mktemp("analysis")
    for i in range(3):
        (root / "imgs" / "astronaut").mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(seed=i)).save(root / "imgs" / "astronaut" / f"{i}.png")
    job = parse_job({
        "name": "analysis",
        "datasets": [{"name": "synthetic", "source": {"folder": str(root / "imgs"), "labels": "parent"}}],
        "codecs": [{"name": "jpeg", "settings": [5, 20, 50, 80]}, {"name": "webp", "settings": [0, 30, 60, 90]}],
        "tasks": [{"name": "classify", "model": "builtin:tiny-vit", "batch_size": 4}],
        "metrics": ["psnr", {"name": "lpips", "backbone": "random"}],
    })
    out = root / "out"
    run_job(job, str(out), engine="serial", progress=False)
    return out


@pytest.mark.slow
def test_report_command_writes_tables_plots_and_one_portable_html(pipeline_results, tmp_path):
    to = tmp_path / "report"
    # The tiny classifier has random weights (a pipeline check): kept, to check the wiring end to end.
    result = CliRunner().invoke(app, ["report", str(pipeline_results), "--to", str(to), "--resamples", "200", "--include-flagged"])
    assert result.exit_code == 0, result.output
    assert (to / "report.html").is_file()
    for name in ("summary_image.md", "summary_image.csv", "conditions.csv", "correlations.csv", "correlations.md", "bd_rate.csv", "bd_rate.md",
                 "metric_ranking.csv", "metric_ranking.md", "equal_rate.csv", "equal_rate.md"):
        assert (to / name).is_file(), name
    pngs = sorted((to / "plots").glob("*.png"))
    assert [p.name for p in pngs] == [  # accuracy and the label-free agreement, against rate and each metric
        "metric_lpips_synthetic_classify_accuracy.png", "metric_lpips_synthetic_classify_agreement.png",
        "metric_psnr_synthetic_classify_accuracy.png", "metric_psnr_synthetic_classify_agreement.png",
        "rate_synthetic_classify_accuracy.png", "rate_synthetic_classify_agreement.png",
    ]
    assert_figures(to / "plots")

    rows = read_results(str(pipeline_results))
    table = pl.read_csv(to / "summary_image.csv")
    assert table.columns == ["measure", "dataset", "baseline", "jpeg 5", "jpeg 20", "jpeg 50", "jpeg 80", "webp 0", "webp 30", "webp 60", "webp 90"]
    assert table["measure"].to_list() == ["psnr", "lpips", "bpp", "accuracy", "agreement"]
    jpeg5 = rows.filter((pl.col("codec") == "jpeg") & (pl.col("setting") == "5"))
    psnr = table.filter(pl.col("measure") == "psnr")["jpeg 5"][0]
    assert psnr == pytest.approx(jpeg5["psnr"].to_numpy().mean())
    bpp = table.filter(pl.col("measure") == "bpp")["webp 90"][0]
    webp90 = rows.filter((pl.col("codec") == "webp") & (pl.col("setting") == "90"))
    assert bpp == pytest.approx((webp90["bits"] / (webp90["width"] * webp90["height"])).mean())

    corr = pl.read_csv(to / "correlations.csv")
    # bpp, psnr, lpips × (accuracy, agreement) across conditions, × (score, agreement) across samples
    assert corr.group_by("level").len().sort("level").rows() == [("conditions", 6), ("samples", 6)]
    assert corr.filter(pl.col("level") == "samples")["n"].to_list() == [24] * 6
    bd = pl.read_csv(to / "bd_rate.csv")
    assert bd.select("anchor", "test").rows() == [("jpeg", "webp")] * 2  # accuracy and agreement
    assert bd["bd_rate"][0] is not None or bd["note"][0]

    page = (to / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(pngs)
    assert 'src="http' not in page and "<link" not in page  # nothing outside the file
    eq = pl.read_csv(to / "equal_rate.csv")
    assert set(eq["codec"]) == {"jpeg", "webp"} and eq.filter(pl.col("best")).height == eq.select("target", "score_name").n_unique()
    for text in (">jpeg 5</th>", ">baseline</th>", "across conditions", "across samples", "Machine BD-rate", "At equal rate",
                 "Which quality metric predicts the task best",
                 f"{psnr:.4g}", "tiny random classifier: accuracy means nothing"):
        assert text in page, text


@pytest.mark.slow
@pytest.mark.parametrize("notebook", ["summary.py", "correlation.py", "rate_performance.py", "statistics.py"])
def test_notebooks_run_top_to_bottom(notebook, pipeline_results, tmp_path, monkeypatch):
    monkeypatch.setenv("MPQ_RESULTS", str(pipeline_results))
    monkeypatch.setenv("MPQ_RESAMPLES", "100")
    monkeypatch.setenv("MPQ_FIGURES", str(tmp_path))
    monkeypatch.setenv("MPQ_INCLUDE_FLAGGED", "1")  # the pipeline's tiny classifier has random weights
    ns = runpy.run_path(str(ROOT / "analysis" / notebook), run_name="__main__")
    if notebook == "summary.py":
        # 9 conditions' accuracy and 8 coded ones' agreement (none on the baseline)
        assert list(ns["tables"]) == ["image"] and ns["conds"].height == 9 + 8
    elif notebook == "correlation.py":
        # 6 across conditions, 6 across samples (score and agreement × bpp, psnr, lpips); figures: (accuracy, agreement) × (psnr, lpips)
        assert ns["corr"].height == 6 + 6 and len(ns["figures"]) == 4
    elif notebook == "rate_performance.py":
        assert (tmp_path / "rate_synthetic_classify_accuracy.png").is_file()
        assert ns["bd"].height == 2  # accuracy and agreement
    else:
        # The tiny random classifier is wrong on every image (no metric predicts a constant score), and
        # its agreement is ranked on too few samples.
        assert set(ns["ranking"]["metric"]) == {"psnr", "lpips"} and ns["ranking"]["rank"].null_count() == ns["ranking"].height == 4
        assert set(ns["at_rate"]["codec"]) == {"jpeg", "webp"} and ns["at_rate"]["target"].n_unique() == 3
        assert ns["vs_baseline"].height == 8 and set(ns["vs_baseline"]["test"]) == {"too few samples (n = 3)"}  # 3 images


def test_report_on_a_folder_without_results_fails_with_a_clear_message(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "no results folder" in result.output
    assert not (tmp_path / "nothing").exists()


# --- issue 11: clustered samples, non-monotone BD-rate curves, non-finite values ---------

def clustered_frame(samples=60, settings=8, seed=0):
    """``samples`` images × ``settings`` codec settings; each image has a random effect on
    both its PSNR and its score and one on its score alone, so an image's rows are clustered."""
    rng = np.random.default_rng(seed)
    effect, own = rng.normal(size=samples), rng.normal(size=samples)
    rows = []
    for i in range(samples):
        for k in range(settings):
            rows.append({"dataset": "d", "sample_id": f"s{i}", "task": "t", "task_type": "classify", "error": None,
                         "codec": "a", "setting": str(k), "bits": 1000 * (k + 1), "bpp": (k + 1) / 3,
                         "psnr": 25 + k + 3 * effect[i] + rng.normal(), "correct": True,
                         "score": 0.5 * effect[i] + 0.4 * own[i] + 0.05 * k + 0.2 * rng.normal()})
    return pl.DataFrame(rows, infer_schema_length=None).with_columns(pl.col("error").cast(pl.String))


def test_kendall_of_each_cluster_resample_matches_scipy_on_the_repeated_points_at_large_n_with_ties():
    from mpq.analysis.correlation import _GRID, _Points, cluster_weights

    rng = np.random.default_rng(7)
    member = rng.permutation(np.repeat(np.arange(250), 24))  # 6,000 points in 250 clusters, unsorted
    x = np.round(rng.normal(size=member.size), 3)
    y = np.round(x + rng.normal(size=member.size), 2)
    x[::9] = 0.25  # a large tie on x
    points = _Points(x, y, member)
    assert 8 * x.size + len(points.ux) * len(points.uy) > _GRID  # not the level grid
    weights = next(cluster_weights(member, 40, seed=3))  # (resamples, clusters)
    got = points.coefficients(weights)["kendall"]
    for w, tau in zip(weights[:, member].astype(int), got, strict=True):
        assert tau == pytest.approx(stats.kendalltau(np.repeat(x, w), np.repeat(y, w)).statistic, abs=1e-12)


def test_spearman_and_kendall_of_each_cluster_resample_by_quadratic_forms_match_scipy_with_a_binary_score():
    from mpq.analysis.correlation import _Points, cluster_weights

    rng = np.random.default_rng(8)
    member = rng.permutation(np.repeat(np.arange(120), 30))  # 3,600 points in 120 clusters, unsorted
    x = np.round(rng.normal(size=member.size), 2)  # ties within and across clusters
    y = (rng.random(member.size) < 0.3 + 0.4 * (x > 0)).astype(float)  # right or wrong: two levels
    points = _Points(x, y, member)
    weights = next(cluster_weights(member, 40, seed=3))  # (resamples, clusters)
    got = points.coefficients(weights)
    assert points.forms is not None  # the quadratic forms, not the level counts
    by_levels = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        points._by_levels(weights, ("spearman", "kendall"), by_levels)
    for name, fn in (("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
        assert np.array_equal(got[name], by_levels[name])  # the same float64 numbers by either route
        for w, r in zip(weights[:, member].astype(int), got[name], strict=True):
            assert r == pytest.approx(fn(np.repeat(x, w), np.repeat(y, w)).statistic, abs=1e-12)


def test_sample_level_intervals_resample_sample_ids_not_rows():
    df = clustered_frame()
    resamples = 1000
    row = analysis.correlations(df, n_resamples=resamples, seed=0).filter(
        (pl.col("level") == "samples") & (pl.col("metric") == "psnr")).row(0, named=True)
    assert row["n"] == 480 and row["clusters"] == 60
    # Independent recomputation: draw sample ids (sorted ids, one (B, 60) draw), stack each
    # drawn image's 8 rows, scipy on every resample.
    by_id = {sid: (g["psnr"].to_numpy(), g["score"].to_numpy()) for (sid,), g in df.group_by(["sample_id"])}
    ids = sorted(by_id)
    methods = {"pearson": stats.pearsonr, "spearman": stats.spearmanr, "kendall": stats.kendalltau}
    boot = {name: [] for name in methods}
    for draw in np.random.default_rng(0).integers(0, len(ids), size=(resamples, len(ids))):
        x = np.concatenate([by_id[ids[j]][0] for j in draw])
        y = np.concatenate([by_id[ids[j]][1] for j in draw])
        for name, fn in methods.items():
            boot[name].append(fn(x, y).statistic)
    for name, values in boot.items():
        low, high = np.percentile(values, [2.5, 97.5])
        assert row[f"{name}_low"] == pytest.approx(low) and row[f"{name}_high"] == pytest.approx(high), name
    # Resampling rows as if independent gives a clearly narrower interval.
    naive = analysis.correlate(df["psnr"].to_numpy(), df["score"].to_numpy(), n_resamples=resamples, seed=0)
    assert naive["clusters"] == 480
    assert row["pearson_high"] - row["pearson_low"] > 1.3 * (naive["pearson_high"] - naive["pearson_low"])


RATES = np.array([1e4, 2e4, 4e4, 8e4])
TEST_SCORES = np.array([0.60, 0.70, 0.72, 0.75])


def test_bd_rate_fits_a_noisy_anchor_monotone_before_integrating():
    # The audit's case: an anchor whose third score dips below its second (0.69 < 0.70).
    # Hand-worked monotone (pool-adjacent-violators) fit: settings 2 and 3 pool to score
    # 0.695 at their mean log-rate, i.e. the geometric mean of 2e4 and 4e4 bits.
    noisy = analysis.bd_rate(RATES, [0.60, 0.70, 0.69, 0.75], RATES, TEST_SCORES)
    pooled = analysis.bd_rate([1e4, math.sqrt(2e4 * 4e4), 8e4], [0.60, 0.695, 0.75], RATES, TEST_SCORES)
    assert noisy == pytest.approx(pooled)
    # A monotone anchor is used as measured; the fit changes nothing there.
    assert analysis.bd_rate(RATES, [0.60, 0.70, 0.71, 0.75], RATES, TEST_SCORES) == pytest.approx(-5.431952, abs=1e-5)
    # The same noisy anchor at a constant factor of the rate: exactly that factor.
    assert analysis.bd_rate(RATES, [0.60, 0.70, 0.69, 0.75], RATES * 0.7, [0.60, 0.70, 0.69, 0.75]) == pytest.approx(-30.0)


def test_bd_rate_needs_the_stated_minimum_overlap_of_scores():
    # Overlap 0.74–0.75: a fifteenth of the narrower range, under the 50 % minimum.
    with pytest.raises(ValueError, match="50 %"):
        analysis.bd_rate(RATES, TEST_SCORES, RATES, [0.74, 0.80, 0.85, 0.90])
    assert analysis.bd_rate(RATES, TEST_SCORES, RATES, [0.74, 0.80, 0.85, 0.90], min_overlap=0.05, min_points=2) is not None


def bd_frame(samples=40, seed=1):
    """Codec a at four settings; codec b decides like a but its accuracy lags, at 80 % of the bits."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(samples):
        skill = rng.random()
        for k in range(4):
            bits = 1000 * 2**k
            base = {"dataset": "d", "sample_id": f"s{i}", "task": "t", "task_type": "classify", "error": None, "setting": str(k)}
            rows.append({**base, "codec": "a", "bits": bits, "correct": bool(skill < 0.4 + 0.15 * k + 0.05 * rng.normal())})
            rows.append({**base, "codec": "b", "bits": int(bits * 0.8), "correct": bool(skill < 0.35 + 0.15 * k + 0.05 * rng.normal())})
    df = pl.DataFrame(rows, infer_schema_length=None)
    return df.with_columns(pl.col("error").cast(pl.String), pl.col("correct").cast(pl.Float64).alias("score"))


def test_bd_rates_bootstrap_interval_over_sample_ids():
    df = bd_frame()
    resamples = 200
    row = analysis.bd_rates(df, n_resamples=resamples, seed=3).row(0, named=True)
    # Independent recomputation: numpy means per (codec, setting) over the drawn sample ids.
    ids = sorted(df["sample_id"].unique())
    table = {(c, s, sid): (b, y) for c, s, sid, b, y in df.select("codec", "setting", "sample_id", "bits", "correct").iter_rows()}

    def curve(codec, draw):
        bits = [np.mean([table[codec, str(k), ids[j]][0] for j in draw]) for k in range(4)]
        acc = [np.mean([table[codec, str(k), ids[j]][1] for j in draw]) for k in range(4)]
        return bits, acc

    everyone = np.arange(len(ids))
    assert row["bd_rate"] == pytest.approx(analysis.bd_rate(*curve("a", everyone), *curve("b", everyone)))
    boot = []
    for draw in np.random.default_rng(3).integers(0, len(ids), size=(resamples, len(ids))):
        try:
            boot.append(analysis.bd_rate(*curve("a", draw), *curve("b", draw)))
        except ValueError:
            pass
    low, high = np.percentile(boot, [2.5, 97.5])
    assert row["bd_rate_low"] == pytest.approx(low) and row["bd_rate_high"] == pytest.approx(high)
    assert row["bd_rate_low"] < row["bd_rate"] < row["bd_rate_high"]


def test_bd_rates_note_says_why_a_value_is_missing_or_fitted():
    a = bd_frame().filter(pl.col("codec") == "a")  # accuracy 0.525, 0.65, 0.875, 1.0

    def like_a(codec, right, factor):
        """Codec at ``factor`` × a's bits whose first right[k] of 40 samples are correct at setting k."""
        index = pl.col("sample_id").str.slice(1).cast(pl.Int64)
        correct = pl.col("setting").cast(pl.Int64).replace_strict(dict(enumerate(right))) > index
        return a.with_columns(codec=pl.lit(codec), bits=(pl.col("bits") * factor).cast(pl.Int64), correct=correct)

    c = like_a("c", [8, 12, 18, 22], 0.5)  # 0.2–0.55: overlaps a over 0.525–0.55 only
    d = like_a("d", [21, 26, 24, 40], 0.9)  # 0.525, 0.65, 0.6, 1.0: dips at setting 2
    bd = analysis.bd_rates(pl.concat([a, c, d]), n_resamples=0)
    rows = {(r["anchor"], r["test"]): r for r in bd.iter_rows(named=True)}
    assert rows["a", "c"]["bd_rate"] is None and "under 50 % of the narrower range" in rows["a", "c"]["note"]
    assert rows["a", "d"]["bd_rate"] is not None
    assert rows["a", "d"]["note"] == "test d: the monotone fit moved 2 setting(s) whose score falls as the rate rises"


def inf_frame():
    """Three images at two settings; the lossless setting decodes two of them exactly (PSNR inf)."""
    df = results_frame(samples=3, codecs=(("a", ("1", "2")),))
    exact = (pl.col("codec") == "a") & (pl.col("setting") == "2") & pl.col("sample_id").is_in(["s0", "s1"])
    return df.with_columns(pl.when(exact).then(float("inf")).otherwise(pl.col("psnr")).alias("psnr"))


def test_non_finite_values_left_out_of_means_are_counted():
    from mpq.means import summarize

    df = inf_frame()
    kept = df.filter((pl.col("codec") == "a") & (pl.col("setting") == "2") & (pl.col("sample_id") == "s2"))["psnr"][0]
    summary = summarize(df).filter(pl.col("codec") == "a").sort("setting")
    assert summary["psnr_nonfinite"].to_list() == [0, 2]
    assert summary["psnr"][1] == pytest.approx(kept)
    assert "lpips_nonfinite" not in summary.columns  # only metrics that have any

    conds = analysis.conditions(df).filter(pl.col("codec") == "a").sort("setting")
    assert conds["psnr_nonfinite"].to_list() == [0, 2]

    table = analysis.summary_tables(df)["other"]
    counts = table.filter(pl.col("measure") == "psnr_nonfinite").row(0, named=True)
    assert (counts["a 1"], counts["a 2"]) == (0, 2)
    assert table["measure"].to_list() == ["psnr", "psnr_nonfinite", "lpips", "bpp", "accuracy"]

    corr = analysis.correlations(df, n_resamples=0)
    assert corr.filter((pl.col("level") == "samples") & (pl.col("metric") == "psnr"))["nonfinite"].to_list() == [2]


def test_report_says_how_many_non_finite_values_were_left_out(tmp_path):
    page = analysis.write_report(inf_frame(), tmp_path, n_resamples=0).read_text()
    assert "psnr: 2 non-finite values" in page
    two_tasks = pl.concat([inf_frame(), inf_frame().with_columns(pl.lit("t2").alias("task"))])  # a metric's value repeats per task
    assert "psnr: 2 non-finite values" in analysis.write_report(two_tasks, tmp_path / "two", n_resamples=0).read_text()
    assert "resamples sample ids" in page


# --- the report for a paper: intervals, formats, several outputs -------------------------

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-", "svg": b"<?xml"}


def assert_figures(plots):
    """Every figure as PNG, SVG and PDF, each a file of its format."""
    stems = {p.stem for p in plots.iterdir()}
    assert stems
    for stem in stems:
        for fmt, magic in MAGIC.items():
            data = (plots / f"{stem}.{fmt}").read_bytes()
            assert data.startswith(magic), (stem, fmt)
        assert b"<svg" in (plots / f"{stem}.svg").read_bytes() and b"<text" in (plots / f"{stem}.svg").read_bytes()  # text kept as text


def booktabs(tex: str) -> tuple[int, list[list[str]]]:
    """Columns declared and cell rows of a booktabs tabular: header, then body rows."""
    import re

    assert tex.count("\\toprule") == 1 and tex.count("\\midrule") == 1 and tex.count("\\bottomrule") == 1
    spec = re.search(r"\\begin\{tabular\*?\}(?:\{\\linewidth\})?\{(?:@\{[^}]*\{[^}]*\}\})?([lcr]+)\}", tex).group(1)
    head = tex[tex.index("\\toprule") + 8 : tex.index("\\midrule")]
    body = tex[tex.index("\\midrule") : tex.index("\\bottomrule")].split("\n", 1)[1]
    rows = [r for r in (head, *body.split("\\\\")) if r.strip()]
    return len(spec), [[c.strip() for c in re.split(r"(?<!\\)&", r)] for r in rows]


def test_report_figures_in_three_formats_and_tables_as_booktabs_latex(tmp_path):
    import shutil
    import subprocess

    analysis.write_report(results_frame(samples=14), tmp_path, n_resamples=50)
    assert_figures(tmp_path / "plots")
    assert {p.name for p in (tmp_path / "plots").glob("*.pdf")} == {
        "rate_d_t_accuracy.pdf", "metric_psnr_d_t_accuracy.pdf", "metric_lpips_d_t_accuracy.pdf"}
    for name in ("summary_other", "metric_ranking", "equal_rate", "bd_rate", "runs", "correlations_samples"):
        md = (tmp_path / f"{name}.md").read_text().splitlines()
        columns, rows = booktabs((tmp_path / f"{name}.tex").read_text())
        assert columns == md[1].count("|") - 1 and all(len(r) == columns for r in rows), name  # the rule: one |---| a column
        assert len(rows) == len(md) - 1, name  # the header and every row of the Markdown table
    summary = pl.read_csv(tmp_path / "summary_other.csv")
    _, rows = booktabs((tmp_path / "summary_other.tex").read_text())
    psnr = next(r for r in rows if r[0] == "psnr")
    assert psnr[2] == ""  # the baseline has no PSNR: an empty cell
    assert float(psnr[3]) == pytest.approx(summary.filter(pl.col("measure") == "psnr")["a 2"][0], rel=1e-3)
    if shutil.which("pdflatex"):  # where a TeX engine exists, the table compiles
        doc = tmp_path / "t.tex"
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\\input{bd_rate.tex}\\end{document}")
        subprocess.run(["pdflatex", "-interaction=nonstopmode", doc.name], cwd=tmp_path, check=True, capture_output=True)


def targeted_frame(samples=14):
    """Two codecs' sweeps, and codec a also coded at a target rate (its own rows)."""
    df = results_frame(samples=samples)
    at = df.filter((pl.col("codec") == "a") & (pl.col("setting") == "10")).with_columns(setting=pl.lit("bpp<=0.7"), target_bpp=pl.lit(0.7))
    return pl.concat([df, at], how="diagonal_relaxed")


def test_plotted_means_carry_the_tables_bootstrap_interval_and_targets_stand_apart():
    from mpq.analysis.paired import joint_bootstrap, percentile_interval
    from mpq.analysis.tables import COLUMN_LABEL

    df = targeted_frame()
    conds = analysis.plot_conditions(df, n_resamples=80, seed=3)
    row = conds.filter((pl.col("codec") == "b") & (pl.col("setting") == "5")).row(0, named=True)
    _, boot = joint_bootstrap(df.with_columns(COLUMN_LABEL.alias("_c")), n_resamples=80, seed=3)
    assert (row["score_low"], row["score_high"]) == pytest.approx(percentile_interval(boot["b 5"]["accuracy"]))
    ids, draws = sorted(df["sample_id"].unique()), np.random.default_rng(3).integers(0, 14, size=(80, 14))
    psnr = df.filter((pl.col("codec") == "b") & (pl.col("setting") == "5")).sort("sample_id")["psnr"].to_numpy()
    assert len(ids) == 14 and (row["psnr_low"], row["psnr_high"]) == pytest.approx(percentile_interval(psnr[draws].mean(1)))
    assert conds.filter(pl.col("at_target"))["setting"].unique().to_list() == ["bpp<=0.7"]

    fig = analysis.rate_performance(conds, "d", "t", "accuracy", "bpp")
    (ax,) = fig.axes
    drawn = {c.get_label(): c.lines[0] for c in ax.containers}  # each errorbar's data line, by legend label
    assert set(drawn) == {"a, settings 2–60", "b, settings 1–40", "a at bpp<=0.7"}
    star = drawn["a at bpp<=0.7"]
    assert star.get_marker() == "*" and star.get_linestyle() == "None"  # not joined to a curve
    assert len(drawn["a, settings 2–60"].get_xdata()) == 4  # the four settings only
    assert ax.get_xlabel() == "rate (bits per pixel, bpp)" and ax.get_ylabel() == "accuracy (fraction, 0–1)"
    assert any("bootstrap 95 % intervals" in t.get_text() for t in fig.texts)


def test_plots_say_when_there_are_too_few_samples_and_mark_flagged_rows():
    df = results_frame(samples=6).with_columns(
        pipeline_check=pl.when(pl.col("codec") == "b").then(pl.lit("random weights")).otherwise(None))
    conds = analysis.plot_conditions(df, n_resamples=50)
    assert conds.filter(pl.col("flagged"))["codec"].unique().to_list() == ["b"] and conds["score_low"].null_count() == conds.height
    fig = analysis.rate_performance(conds, "d", "t", "accuracy", "bpp")
    assert any(t.get_text() == "no intervals: too few samples (n = 6)" for t in fig.texts)
    drawn = {c.get_label(): c.lines[0] for c in fig.axes[0].containers}
    assert set(drawn) == {"a, settings 2–60", "b, settings 1–40 (pipeline check: means nothing)"}
    assert drawn["b, settings 1–40 (pipeline check: means nothing)"].get_markerfacecolor() == "none"
    assert drawn["a, settings 2–60"].get_markerfacecolor() != "none"
    assert not analysis.plot_conditions(df, n_resamples=0, include_flagged=True)["flagged"].any()

    many = results_frame(samples=12).with_columns(pipeline_check=pl.when(pl.col("codec") == "b").then(pl.lit("random")).otherwise(None))
    conds = analysis.plot_conditions(many, n_resamples=50)
    assert conds.filter(pl.col("flagged"))["score_low"].null_count() == conds.filter(pl.col("flagged")).height  # no interval
    assert conds.filter(~pl.col("flagged") & (pl.col("codec") == "a"))["score_low"].null_count() == 0


def write_output(frame: pl.DataFrame, folder, version: str):
    from mpq.results import ResultStore

    ResultStore(str(folder)).write(frame.with_columns(mpq_version=pl.lit(version), run_id=pl.lit(f"run-{version}")).to_arrow())
    return folder


def test_report_of_several_outputs_keeps_each_runs_provenance_and_datasets_apart(tmp_path):
    a = write_output(results_frame(samples=12, seed=1).with_columns(model=pl.lit("m1")), tmp_path / "out_a", "0.2.0")
    b = write_output(results_frame(samples=12, seed=2).with_columns(model=pl.lit("m2")), tmp_path / "out_b", "0.2.1")
    result = CliRunner().invoke(app, ["report", str(a), str(b), "--to", str(tmp_path / "rep"), "--resamples", "30"])
    assert result.exit_code == 0, result.output
    runs = pl.read_csv(tmp_path / "rep" / "runs.csv")
    assert runs.select("output", "rows", "mpq versions", "models", "datasets").rows() == [
        ("out_a", 12 * 9, "0.2.0", "m1", "d (out_a)"), ("out_b", 12 * 9, "0.2.1", "m2", "d (out_b)")]
    summary = pl.read_csv(tmp_path / "rep" / "summary_other.csv")
    assert set(summary["dataset"]) == {"d (out_a)", "d (out_b)"}  # the same dataset name: not pooled
    one = results_frame(samples=12, seed=1)
    acc = summary.filter((pl.col("measure") == "accuracy") & (pl.col("dataset") == "d (out_a)"))["a 2"][0]
    assert acc == pytest.approx(one.filter((pl.col("codec") == "a") & (pl.col("setting") == "2"))["correct"].mean())
    page = (tmp_path / "rep" / "report.html").read_text()
    assert "Figures: d (out_a)" in page and "Figures: d (out_b)" in page
    assert CliRunner().invoke(app, ["report", str(a), str(b)]).exit_code != 0  # several outputs need --to


@pytest.mark.parametrize("points", [2, 3, 4, 6, 9])
def test_bd_rate_pchip_integrates_as_scipys(points):
    from scipy.interpolate import PchipInterpolator

    from mpq.analysis.bdrate import Pchip

    rng = np.random.default_rng(points)
    for _ in range(200):
        x = np.sort(rng.choice(np.linspace(0, 1, 50), size=points, replace=False))
        y = rng.normal(size=points) if rng.random() < 0.5 else np.cumsum(rng.random(points))  # wiggly or monotone
        y[rng.random(points) < 0.2] = y[0]  # flat stretches: zero slopes
        a, b = np.sort(rng.uniform(x[0], x[-1], size=2))
        ref = PchipInterpolator(x, y)
        assert Pchip(x, y).integrate(a, b) == pytest.approx(ref.integrate(a, b), rel=1e-10, abs=1e-12)
        assert Pchip(x, y).integrate(x[0], x[-1]) == pytest.approx(ref.integrate(x[0], x[-1]), rel=1e-10, abs=1e-12)


def test_bd_rate_of_every_resample_at_once_equals_one_resample_at_a_time():
    from mpq.analysis.bdrate import _pairs, _pairs_rows

    rng = np.random.default_rng(11)
    resamples, settings, codecs = 400, 6, ["a", "b", "c"]
    curves = {}
    for i, codec in enumerate(codecs):
        rates = np.sort(rng.uniform(0.1, 2, size=(resamples, settings)), 1) * (1 + 0.2 * i)
        scores = np.round(0.3 + 0.4 * rates / rates.max() + rng.normal(0, 0.04, size=rates.shape), 2)  # ties and dips
        curves[codec] = (rates, scores)
    curves["a"][1][0] = 0.5  # one level only: no curve
    curves["b"][1][1, 2] = np.nan  # a score missing: that resample fitted on its own
    curves["c"][0][2, 0] = curves["c"][0][2, 1]  # equal rates
    batched = _pairs_rows(curves, codecs, 0.5, 4)
    for b in range(resamples):
        one = _pairs({c: (r[b], s[b]) for c, (r, s) in curves.items()}, codecs, 0.5, 4)
        for pair, (value, _) in one.items():
            if value is None:
                assert np.isnan(batched[pair][b]), (b, pair)
            else:
                assert batched[pair][b] == pytest.approx(value, rel=1e-12, abs=1e-12), (b, pair)
    assert sum(np.isfinite(v).sum() for v in batched.values()) > resamples  # most pairs have a value


def test_report_page_has_contents_and_folds_long_tables(tmp_path):
    from mpq.analysis.report import FOLD_ROWS, write_table

    long = pl.DataFrame({"codec": [f"c{i}" for i in range(FOLD_ROWS + 1)], "score": np.linspace(0, 1, FOLD_ROWS + 1)})
    folded, short = str(write_table(long, tmp_path, "long")), str(write_table(long.head(FOLD_ROWS), tmp_path, "short"))
    assert folded.startswith("<details>") and f"{FOLD_ROWS + 1} rows (long.csv)" in folded and "c25" in folded
    assert "<details" not in short and "c24" in short
    assert pl.read_csv(tmp_path / "long.csv").equals(long)
    two = pl.concat([results_frame(samples=10), results_frame(samples=10, seed=1).with_columns(dataset=pl.lit("e"))])
    page = analysis.write_report(two, tmp_path / "rep", n_resamples=0).read_text()
    nav = page[page.index("<nav>") : page.index("</nav>")]
    for heading in ("Answers", "At equal rate", "Run", "Figures: d", "Figures: e"):
        assert f">{heading}</a>" in nav, heading
    assert 'href="#s_figures-e"' in nav and 'id="s_figures-e"' in page
