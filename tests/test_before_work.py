"""What can be answered without a model is answered before any is loaded, in one line: an empty
dataset, a limit below 1, an output that cannot be written, a job file that is not YAML, and a
resume with nothing left to do (which imports neither torch nor Ray); `mpq-ray --version`."""

import json
import subprocess
import sys

import pytest
from helpers import ROOT, photo
from PIL import Image

import mpq

HEAVY = ("torch", "ray", "transformers", "timm")
# The CLI in a process of its own; then which of the heavy libraries it imported.
PROBE = """
import json, sys
from mpq.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"rc": code or 0, "imported": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def cli(*args):
    res = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True)
    probe = json.loads(res.stdout.strip().splitlines()[-1])
    return probe["rc"], res.stderr.strip(), "\n".join(res.stdout.strip().splitlines()[:-1]), probe["imported"]


@pytest.fixture
def photos(tmp_path):
    """Two photos in class folders named as the builtin ImageNet classifier names its classes."""
    root = tmp_path / "photos"
    for i, label in enumerate(("tabby", "espresso")):
        (root / label).mkdir(parents=True)
        Image.fromarray(photo(32, 32, seed=i)).save(root / label / "a.png")
    return root


def job_file(tmp_path, folder, output, tasks=True):
    path = tmp_path / "job.yaml"
    task = "tasks: [{name: classify, model: 'builtin:efficientnet-lite0'}]\n" if tasks else ""
    path.write_text(
        f"name: j\noutput: {output}\ndatasets: [{{name: d, source: {{folder: {folder}, labels: parent}}}}]\n"
        f"codecs: [{{name: jpeg, settings: [50]}}]\n{task}metrics: [psnr]\n"
    )
    return path


def test_an_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    job = job_file(tmp_path, tmp_path / "empty", tmp_path / "out")
    rc, err, _, imported = cli("run", str(job), "--engine", "serial")
    assert rc == 2 and err == f"{job}: dataset 'd' has no samples (folder:{tmp_path / 'empty'})" and imported == []


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_a_limit_below_one_is_refused(tmp_path, photos, limit):
    job = job_file(tmp_path, photos, tmp_path / "out")
    for command in ("run", "submit"):
        rc, err, _, imported = cli(command, str(job), "--limit", limit)
        assert rc == 2 and err == f"--limit must be 1 or more, got {limit}" and imported == []


def test_an_output_that_cannot_be_written_is_named_with_its_key(tmp_path, photos):
    (tmp_path / "a-file").write_text("")
    outputs = [tmp_path / "a-file" / "out"] + (["/proc/x"] if sys.platform == "linux" else [])
    for output in outputs:
        job = job_file(tmp_path, photos, output)
        rc, err, _, imported = cli("run", str(job), "--engine", "serial")
        assert rc == 2 and err.startswith(f"{job}: output {output}: cannot be written (") and "\n" not in err, err
        assert imported == []


def test_a_yaml_error_names_the_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n  datasets: 1\n")
    rc, err, _, imported = cli("run", str(bad))
    assert rc == 2 and err == f"{bad}: line 2, column 11: not valid YAML: mapping values are not allowed here" and imported == []


@pytest.mark.slow  # the first run loads a classifier
def test_a_resume_with_nothing_to_do_imports_no_model_library(tmp_path, photos):
    from mpq.runner import run_job
    from mpq.spec import load_job

    job = job_file(tmp_path, photos, tmp_path / "out")
    assert run_job(load_job(job), str(tmp_path / "out"), engine="serial", progress=False).written == 4
    rc, err, out, imported = cli("run", str(job), "--no-progress")
    assert rc == 0 and out.startswith("0 rows written (0 with errors), 4 already there"), err
    assert imported == []


def test_version_names_mpq_and_its_key_libraries():
    rc, _, out, imported = cli("--version")
    lines = out.splitlines()
    assert rc == 0 and lines[0] == f"mpq {mpq.__version__}" and len(lines) == 2 and imported == []
    assert all(f"{lib} " in lines[1] for lib in ("ray", "torch", "transformers", "pyarrow"))
