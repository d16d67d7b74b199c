import re
import subprocess
import sys

import polars as pl
import pytest
from conftest import ROOT

from mpq.summary import read_results


def mpq(*args, **kw):
    return subprocess.run([sys.executable, "-m", "mpq.cli", *args], cwd=ROOT, capture_output=True, text=True, **kw)


def test_list_shows_every_registered_component():
    out = mpq("list")
    assert out.returncode == 0
    for name in ("jpeg", "webp", "mbt2018", "classify", "psnr", "lpips", "hf", "folder", "samples",
                 "mp3", "opus", "aac", "encodec_48khz", "dac", "asr", "separate", "cdpam", "audio_psnr", "speech", "music", "musdb"):
        assert name in out.stdout


def test_bad_job_file_fails_before_work_with_one_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndatasets: [{name: d, source: {samples: skimage}}]\ncodecs: [{name: jpg}]\n")
    out = mpq("run", str(bad), "--output", str(tmp_path / "o"))
    assert out.returncode == 2
    assert "codecs[0].name: unknown codec 'jpg'; valid choices:" in out.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # the check before work imports compressai and torchvision for their checkpoint URLs
def test_offline_hub_model_fails_naming_the_model(tmp_path):
    out = mpq("run", str(ROOT / "jobs" / "beans.yaml"), "--output", str(tmp_path / "o"), env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert out.returncode == 2
    assert "nateraw/vit-base-beans" in out.stderr and "mpq-ray fetch" in out.stderr


@pytest.mark.slow
def test_smoke_job_end_to_end_and_second_run_adds_nothing(smoke_run):
    """The default job through the CLI and the Ray engine, all of it: the session's one run
    (tests/conftest.py; tests/test_realstudy.py checks its science). Then the same command again,
    the engine left to `auto`."""
    out, first = smoke_run
    df = read_results(str(out))
    # images: 22 photos × (baseline + 9 settings + 2 target rates); audio: (4 speech + 1 music) × (baseline + 5 settings)
    assert df.height == 22 * 12 + 5 * 6 and df.filter(pl.col("error").is_not_null()).height == 0
    at_target = df.filter(pl.col("target_bpp").is_not_null())
    assert at_target.height == 22 * 2 and (at_target["bpp"] <= at_target["target_bpp"]).all()
    assert "summary" in first.stdout and "agreement" in first.stdout
    assert "engine: ray (--engine ray)" in first.stdout
    assert df.select("dataset", "sample_id", "codec", "setting", "task").n_unique() == df.height
    second = mpq("run", "jobs/smoke.yaml", "--output", str(out), "--no-progress")
    assert second.returncode == 0 and "0 rows written" in second.stdout
    assert re.search(r"engine: (serial|ray) \(auto: \d+ CPUs?, (no GPU|\d+ GPUs?), no cluster\)", second.stdout), second.stdout[:500]
    assert read_results(str(out)).height == 294
