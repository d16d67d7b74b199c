"""mpq.analysis: coefficients against scipy, reproducible bootstrap, BD-rate against known
answers, the summary-table layout, and the report and notebooks on real pipeline results."""

import math
import runpy

import numpy as np
import polars as pl
import pytest
from conftest import ROOT, photo
from PIL import Image
from scipy import stats
from typer.testing import CliRunner

from mpq import analysis
from mpq.cli import app
from mpq.runner import run_job
from mpq.spec import parse_job
from mpq.summary import read_results

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
    b = a.filter(pl.col("codec") == "a").with_columns(codec=pl.lit("b"), bits=(pl.col("bits") * 0.8).cast(pl.Int64))
    bd = analysis.bd_rates(pl.concat([a, b]))
    assert bd.select("anchor", "test").rows() == [("a", "b")]  # c has only 3 settings
    row = bd.row(0, named=True)
    assert row["score_name"] == "accuracy" and row["note"] is None
    assert row["bd_rate"] == pytest.approx(-20.0, abs=0.05)  # bits were rounded to integers


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
    result = CliRunner().invoke(app, ["report", str(pipeline_results), "--to", str(to), "--resamples", "200"])
    assert result.exit_code == 0, result.output
    assert (to / "report.html").is_file()
    for name in ("summary_image.md", "summary_image.csv", "conditions.csv", "correlations.csv", "correlations.md", "bd_rate.csv", "bd_rate.md"):
        assert (to / name).is_file(), name
    pngs = sorted((to / "plots").glob("*.png"))
    assert [p.name for p in pngs] == [  # accuracy and the label-free agreement
        "metrics_synthetic_classify_accuracy.png", "metrics_synthetic_classify_agreement.png",
        "rate_synthetic_classify_accuracy.png", "rate_synthetic_classify_agreement.png",
    ]
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)

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
    assert corr.group_by("level").len().sort("level").rows() == [("conditions", 6), ("samples", 3)]  # × accuracy, agreement
    assert corr.filter(pl.col("level") == "samples")["n"].to_list() == [24, 24, 24]
    bd = pl.read_csv(to / "bd_rate.csv")
    assert bd.select("anchor", "test").rows() == [("jpeg", "webp")] * 2  # accuracy and agreement
    assert bd["bd_rate"][0] is not None or bd["note"][0]

    page = (to / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(pngs)
    assert 'src="http' not in page and "<link" not in page  # nothing outside the file
    for text in ("<th>jpeg 5</th>", "<th>baseline</th>", "across conditions", "across samples", "Machine BD-rate",
                 f"{psnr:.4g}", "tiny random classifier: accuracy means nothing"):
        assert text in page, text


@pytest.mark.slow
@pytest.mark.parametrize("notebook", ["summary.py", "correlation.py", "rate_performance.py"])
def test_notebooks_run_top_to_bottom(notebook, pipeline_results, tmp_path, monkeypatch):
    monkeypatch.setenv("MPQ_RESULTS", str(pipeline_results))
    monkeypatch.setenv("MPQ_RESAMPLES", "100")
    monkeypatch.setenv("MPQ_FIGURES", str(tmp_path))
    ns = runpy.run_path(str(ROOT / "analysis" / notebook), run_name="__main__")
    if notebook == "summary.py":
        # 9 conditions' accuracy and 8 coded ones' agreement (none on the baseline)
        assert list(ns["tables"]) == ["image"] and ns["conds"].height == 9 + 8
    elif notebook == "correlation.py":
        assert ns["corr"].height == 6 + 3 and len(ns["figures"]) == 2  # conditions and figures: × accuracy, agreement
    else:
        assert (tmp_path / "rate_synthetic_classify_accuracy.png").is_file()
        assert ns["bd"].height == 2  # accuracy and agreement


def test_report_on_a_folder_without_results_fails_with_a_clear_message(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert "no results folder" in result.output
    assert not (tmp_path / "nothing").exists()
