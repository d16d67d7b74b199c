"""What users of other evaluation harnesses expect around a run: `mpq-ray plan` (the work a run
would do, counted as `run` counts it, and a calibrated estimate; nothing written), `mpq-ray
status OUTPUT` (rows done, error kinds, what is left of a job), `mpq.run` (the Python API) and
`run --log-to mlflow`. One real job (a folder with a truncated photo, JPEG, a tiny ViT, PSNR)
through the serial engine serves them all."""

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from helpers import cli, cli_here, encode, photo
from PIL import Image

import mpq
from mpq.preview import plan
from mpq.reading import read_results
from mpq.spec import load_job

SLOW = pytest.mark.slow  # the study's runs load a model (torch) in the serial engine


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The job file and its output after: plan into an empty output, mpq.run with --limit 2, plan
    of the rest, mpq.run of the rest; with what each step printed or returned."""
    tmp = tmp_path_factory.mktemp("preview")
    root = tmp / "photos"
    root.mkdir()
    good = encode(Image.fromarray(photo(32, 32)), "PNG")
    (root / "a.png").write_bytes(good)
    (root / "b.png").write_bytes(good[: len(good) // 2])  # truncated: a load error
    (root / "c.png").write_bytes(encode(Image.fromarray(photo(32, 32, seed=1)), "PNG"))
    job = {"name": "preview", "datasets": [{"name": "d", "source": {"folder": str(root)}}],
           "codecs": [{"name": "jpeg", "settings": [30, 60]}],
           "tasks": [{"name": "classify", "model": "builtin:tiny-vit", "batch_size": 2}], "metrics": ["psnr"]}
    job_file = tmp / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    out = tmp / "out"
    steps = {"plan_empty": cli_here("plan", str(job_file), "-o", str(out), "--limit", "2", "--samples", "1")}
    steps["exists_after_plan"] = out.exists()
    steps["first"] = mpq.run(job, str(out), engine="serial", limit=2)
    before = tree(out)
    steps["plan_rest_cli"] = cli_here("plan", str(job_file), "--output", str(out), "--no-calibrate")
    steps["unchanged"] = tree(out) == before
    steps["plan_rest"] = plan(load_job(job_file), str(out))
    steps["rest"] = mpq.run(job_file, str(out), engine="serial")
    return job_file, out, steps


@SLOW
def test_plan_counts_the_work_estimates_it_and_writes_nothing(study):
    _, _, steps = study
    empty = steps["plan_empty"]
    assert empty.returncode == 0, empty.stderr
    assert "6 rows to compute for 2 samples; 0 rows already done" in empty.stdout  # 2 samples x (baseline + 2 settings) x 1 task
    assert "estimate for the serial engine on this machine" in empty.stdout
    assert "task classify" in empty.stdout and "per sample" in empty.stdout and "total: about" in empty.stdout
    assert not steps["exists_after_plan"]  # no results, no lease, no folder
    assert steps["first"].written == 6


@SLOW
def test_plan_on_a_resumed_output_matches_what_the_run_then_does(study):
    _, _, steps = study
    rest, found = steps["rest"], steps["plan_rest"]
    assert steps["plan_rest_cli"].returncode == 0 and steps["unchanged"]
    assert f"{found.todo} rows to compute for 1 samples; {found.done} rows already done" in steps["plan_rest_cli"].stdout
    assert (rest.written, rest.already_done, rest.samples) == (found.todo, found.done, sum(found.samples.values())) == (3, 6, 1)
    jpeg = next(line for line in found.lines if line.codec == "jpeg")
    assert (jpeg.settings, jpeg.task, jpeg.samples, jpeg.todo, jpeg.done) == (2, "classify", 1, 2, 4)
    job_file, out, _ = study
    redo = cli_here("plan", str(job_file), "-o", str(out), "--no-calibrate", "--redo", "load")  # the truncated photo's rows, as run --redo counts them
    assert redo.returncode == 0 and "3 rows to compute for 1 samples; 6 rows already done" in redo.stdout, redo.stdout


@SLOW
def test_status_of_an_output_counts_rows_and_error_kinds_and_what_is_left(study):
    job_file, out, _ = study
    df = read_results(str(out))
    errors = df.filter(pl.col("error").is_not_null())
    res = cli_here("status", str(out), "--job", str(job_file))
    assert res.returncode == 0, res.stderr
    assert f"{out}: {df.height} rows" in res.stdout and f"d: {df.height} rows, {errors.height} with errors" in res.stdout
    assert f"errors: load: {errors.height} row(s), e.g. b.png: load: " in res.stdout
    assert "no lease: no run is writing it" in res.stdout and f"to do for {job_file}: 0 rows of 0 samples" in res.stdout
    extended = job_file.with_name("more.yaml")
    extended.write_text(job_file.read_text().replace("  - 60\n", "  - 60\n  - 90\n"))
    more = cli_here("status", str(out), "--job", str(extended)).stdout
    assert "to do for" in more and "3 rows of 3 samples" in more and "d jpeg classify: 3 rows of 3 samples" in more


def test_status_of_a_job_id_is_still_the_cluster_s_and_a_job_file_with_it_is_refused(tmp_path):
    res = cli_here("status", "mpq-x-123", "--job", "job.yaml")
    assert res.returncode == 2 and "mpq-x-123: no such output folder" in res.stderr and "Traceback" not in res.stderr
    res = cli_here("status", "jobs/smoke.yaml")
    assert res.returncode == 2 and "jobs/smoke.yaml is a file: status takes an output (folder or URI) or a job id" in res.stderr


@SLOW
def test_mlflow_logs_params_summary_metrics_and_the_results_folder(study, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    job_file, out, _ = study
    uri = f"file://{tmp_path / 'mlruns'}"
    res = cli("run", str(job_file), "-o", str(out), "--engine", "serial", "--no-progress", "--log-to", "mlflow",
              env={"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "mpq-test", "MLFLOW_ALLOW_FILE_STORE": "true"})
    assert res.returncode == 0, res.stderr
    assert "logged to mlflow: run " in res.stdout
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps its file store behind this switch
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mpq-test").experiment_id])
    assert run.data.params["codec.jpeg"] == '["30", "60"]' and run.data.params["metrics"] == "psnr"
    assert run.data.params["mpq_version"] == mpq.__version__ and "builtin:tiny-vit" in run.data.params["task.classify"]
    assert run.data.tags["mpq.results"] == f"{out}/results"
    df = read_results(str(out)).filter((pl.col("codec") == "jpeg") & (pl.col("setting") == "30"))
    assert run.data.metrics["d/classify/jpeg/30/psnr"] == pytest.approx(df["psnr"].drop_nulls().mean())
    assert run.data.metrics["d/classify/jpeg/30/n"] == df.height and run.data.metrics["rows_written"] == 0

    for name, value in {"MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "mpq-api"}.items():
        monkeypatch.setenv(name, value)
    mpq.run(job_file, str(out), engine="serial", log_to="mlflow")  # the same from Python
    (api,) = client.search_runs([client.get_experiment_by_name("mpq-api").experiment_id])
    assert api.data.metrics == run.data.metrics | {"seconds": api.data.metrics["seconds"]} and api.data.params == run.data.params


def test_log_to_an_unknown_tracker_is_refused_before_any_work(tmp_path):
    res = cli_here("run", "jobs/smoke.yaml", "-o", str(tmp_path / "o"), "--log-to", "wandb")
    assert res.returncode == 2 and "--log-to: unknown tracker 'wandb'; valid choices: mlflow" in res.stderr
    assert not (tmp_path / "o").exists()


def test_import_mpq_stays_light_and_run_refuses_a_bad_job_before_any_work(tmp_path):
    res = subprocess.run([sys.executable, "-c", "import sys, mpq; print(sorted(m for m in sys.modules if m.startswith(('mpq.', 'torch', 'ray'))))"],
                         capture_output=True, text=True)
    assert res.stdout.strip() == "['mpq.version']"
    from mpq.spec import JobSpecError

    with pytest.raises(JobSpecError, match="unknown codec 'jpg'"):
        mpq.run({"name": "x", "datasets": [{"name": "d", "source": {"samples": "skimage"}}], "codecs": [{"name": "jpg"}]}, str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_status_names_the_run_holding_the_lease(tmp_path):
    from mpq.lease import Lease

    with Lease(str(tmp_path), "20261204T000000000000-abcd"):
        res = cli_here("status", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert f"{tmp_path}: 0 rows" in res.stdout and "lease: run 20261204T000000000000-abcd (host " in res.stdout
    assert "no lease" in cli_here("status", str(tmp_path)).stdout
