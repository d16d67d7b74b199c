import re
import subprocess
import sys

import polars as pl
import pytest
from helpers import ROOT, rows_on_disk

from mpq.reading import read_results


def mpq(*args, **kw):
    return subprocess.run([sys.executable, "-m", "mpq.cli", *args], cwd=ROOT, capture_output=True, text=True, **kw)


def test_list_shows_every_registered_component():
    from mpq import registry

    out = mpq("list")
    assert out.returncode == 0
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ")}
    for kind in registry.KINDS:
        assert set(registry.names(kind)) <= listed, kind


def test_every_codec_is_in_the_readme_and_documented():
    """The README's "Supported" table and docs/components.md name every registered codec."""
    from mpq import registry

    readme = (ROOT / "README.md").read_text()
    supported = readme[readme.index("## Supported") : readme.index("## Why each dependency")]
    components = (ROOT / "docs" / "components.md").read_text()
    for name in registry.names("codec"):
        assert re.search(rf"^\| codec \|[^|\n]*`{re.escape(name)}`", supported, re.M), f"README's Supported table lacks {name}"
        assert re.search(rf"^\| codec \|[^|\n]*`{re.escape(name)}`", components, re.M), f"docs/components.md lacks {name}"


def test_list_describes_every_component_in_one_line():
    out = mpq("list")
    assert re.search(r"^  jpeg +image +JPEG through Pillow", out.stdout, re.M)
    assert re.search(r"^  folder +image +A local folder of images", out.stdout, re.M)


def test_list_name_shows_options_ranges_defaults_and_the_default_sweep():
    from mpq import registry

    out = mpq("list", "jpeg")
    assert out.returncode == 0
    assert f"default sweep {registry.get('codec', 'jpeg').default_settings}" in out.stdout
    assert "quality must be an integer in [1, 95]" in out.stdout and "target_bpp" in out.stdout
    music = mpq("list", "music").stdout
    assert "tracks: int in [1, 100], default 2" in music and "seconds: float in (0, 600], default 3.0" in music
    assert "music: one of synthetic, required" in music
    classify = mpq("list", "classify").stdout
    assert "model: str, default 'google/vit-base-patch16-224'" in classify and "batch_size: int > 0, default 16" in classify
    assert "label_map: str | None, default None – a column of annotation images" in mpq("list", "hf").stdout  # a field's description


def test_list_of_an_unknown_name_names_the_valid_ones():
    out = mpq("list", "jpg")
    assert out.returncode == 2 and "no component 'jpg'; valid choices:" in out.stderr and "jpeg" in out.stderr
    assert "Traceback" not in out.stderr


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
    assert "HF_HUB_OFFLINE is set" in out.stderr and "hub is not reachable" not in out.stderr


@pytest.mark.slow
def test_smoke_job_end_to_end_and_second_run_adds_nothing(smoke_run, ray_head):
    """The default job, all of it, submitted to a Ray cluster (the session's one run of it:
    tests/conftest.py; tests/test_realstudy.py checks its science): every stage runs from the
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
    assert f"{job_id}: SUCCEEDED" in mpq("status", job_id, env=env).stdout
    assert "486 rows written" in mpq("logs", job_id, env=env).stdout
    second = mpq("run", "jobs/smoke.yaml", "--output", str(out), "--no-progress")
    assert second.returncode == 0 and "0 rows written" in second.stdout
    assert re.search(r"engine: (serial|ray) \(auto: \d+ CPUs?, (no GPU|\d+ GPUs?), no cluster\)", second.stdout), second.stdout[:500]
    assert rows_on_disk(out) == 486  # the resume wrote nothing
