"""End to end: engines agree, bad inputs become error rows, interrupted runs resume exactly."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from helpers import ROOT, ray_run_env, rows_on_disk, stop_job

from mpq.reading import read_results
from mpq.results import KEY
from mpq.runner import run_job
from mpq.spec import parse_job

VOLATILE = ["run_id"]  # differs between any two runs by design


def folder_job(folder, **extra):
    return parse_job({
        "name": "folder",
        "datasets": [{"name": "odd", "source": {"folder": str(folder), "labels": "parent"}}],
        "codecs": [{"name": "jpeg", "settings": [10, 50]}, {"name": "webp", "settings": [20]}],
        "tasks": [{"name": "classify", "model": "builtin:tiny-vit", "batch_size": 4}],
        "metrics": ["psnr", {"name": "lpips", "backbone": "random"}],
        **extra,
    })


def sorted_rows(df: pl.DataFrame) -> pl.DataFrame:
    return df.drop(VOLATILE).sort(list(KEY))


def test_serial_run_bad_inputs_become_error_rows(odd_folder, tmp_path):
    job = folder_job(odd_folder)
    stats = run_job(job, str(tmp_path / "out"), engine="serial", progress=False)
    df = read_results(str(tmp_path / "out"))
    assert stats.expected == stats.written == df.height == 7 * 4  # 7 files × (baseline + 3 settings) × 1 task
    errors = df.filter(pl.col("error").is_not_null())
    assert set(errors["sample_id"]) == {"dogs/truncated.jpg", "dogs/corrupt.png"}
    assert all(e.startswith("load: MediaError") for e in errors["error"])
    ok = df.filter(pl.col("error").is_null() & (pl.col("codec") != "none"))
    assert (ok["bits"] > 0).all() and ok["psnr"].is_not_null().all() and ok["lpips"].is_not_null().all()
    assert (ok["bpp"] - ok["bits"] / (ok["width"] * ok["height"])).abs().max() < 1e-12
    conv = dict(zip(df["sample_id"], df["conversion"]))
    assert "CMYK" in conv["dogs/cmyk.jpg"] and conv["cats/rgb.png"] is None
    assert df["pipeline_check"].drop_nulls().len() == df.filter(pl.col("error").is_null()).height
    assert df["mpq_version"].is_not_null().all() and df["versions"].str.contains("torch").all()


def test_a_source_that_gives_no_media_type_costs_its_rows_with_a_clear_error(monkeypatch):
    """A plugin source handing out bare pixels (as sources did before media were types)."""
    import numpy as np

    from mpq.components import Sample
    from mpq.engine.stages import Load
    from mpq.job import resolve
    from mpq.sources.synthetic import SyntheticImages

    monkeypatch.setattr(SyntheticImages, "load", lambda self, sample_id: Sample(sample_id, np.zeros((4, 4, 3), np.uint8)))
    job = resolve(parse_job({"name": "bare", "datasets": [{"name": "s", "source": {"synthetic": "images", "count": 1}}]}))
    (row,) = Load(job)([{"dataset": "s", "sample_id": "0", "units": [("none", None, [])]}])
    assert row["error"] == "load: TypeError: the source gave ndarray, not Image" and row["original"] is None


@pytest.mark.slow
def test_ray_and_serial_engines_agree_row_for_row(odd_folder, tmp_path, ray_local):
    job = folder_job(odd_folder)
    run_job(job, str(tmp_path / "serial"), engine="serial", progress=False)
    run_job(job, str(tmp_path / "ray"), engine="ray", progress=False)
    serial, ray_ = sorted_rows(read_results(str(tmp_path / "serial"))), sorted_rows(read_results(str(tmp_path / "ray")))
    assert serial.height == ray_.height == 28
    exact = [c for c in serial.columns if serial.schema[c] != pl.Float64]
    assert serial.select(exact).equals(ray_.select(exact))
    for col in ("psnr", "bpp", "lpips"):  # batched inference may differ in the last bits
        diff = (serial[col] - ray_[col]).abs().max()
        assert diff is None or diff < 1e-5, col
    # Ray's workers fill the encoded cache with the same entries (5 readable files × 3 settings).
    entries = [sorted(p.relative_to(tmp_path / e) for p in (tmp_path / e / "cache").rglob("*.arrow")) for e in ("serial", "ray")]
    assert len(entries[0]) == 15 and entries[0] == entries[1]


def test_rerun_adds_nothing_and_extending_the_job_adds_only_new_rows(odd_folder, tmp_path):
    out = str(tmp_path / "out")
    run_job(folder_job(odd_folder), out, engine="serial", progress=False)
    again = run_job(folder_job(odd_folder), out, engine="serial", progress=False)
    assert again.written == 0 and again.already_done == 28
    bigger = folder_job(odd_folder, codecs=[{"name": "jpeg", "settings": [10, 50, 90]}, {"name": "webp", "settings": [20]}])
    more = run_job(bigger, out, engine="serial", progress=False)
    assert more.written == 7
    df = read_results(out)
    assert df.height == 35 == rows_on_disk(out)


@pytest.mark.slow
def test_run_killed_halfway_resumes_without_duplicates_or_losses(odd_folder, tmp_path):
    job_file = tmp_path / "job.yaml"
    import yaml

    job_file.write_text(yaml.safe_dump({
        "name": "kill", "output": str(tmp_path / "out"),
        "datasets": [{"name": "odd", "source": {"folder": str(odd_folder), "labels": "parent"}}],
        "codecs": [{"name": "jpeg", "settings": list(range(5, 95, 6))}],
        "tasks": [{"name": "classify", "model": "builtin:tiny-vit"}],
        "metrics": ["psnr"],
    }))
    expected = 7 * 16
    cmd = [sys.executable, "-m", "mpq.cli", "run", str(job_file), "--engine", "serial", "--no-progress"]
    env = {**os.environ, "MPQ_FLUSH_ROWS": "8"}
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = tmp_path / "out" / "results"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(results.glob("*.parquet"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = read_results(str(tmp_path / "out")).height
    assert 0 < partial < expected, "the kill must land mid-run for this test to mean anything"
    # The killed run's lease stays behind, stale at once since its process is gone from this machine.
    assert json.loads((tmp_path / "out" / "lease.json").read_text())["pid"] == proc.pid
    resume = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    assert resume.returncode == 0, resume.stderr
    assert f"pid {proc.pid}" in resume.stderr and "is stale; taking it over" in resume.stderr
    assert not (tmp_path / "out" / "lease.json").exists()
    df = read_results(str(tmp_path / "out"))  # the last row of each key...
    assert df.height == expected == rows_on_disk(tmp_path / "out")  # ...and not one more row on disk


def test_rows_record_precision_device_task_options_and_weights(tmp_path):
    """A row says what produced it: the precision the model ran in (CPUs run fp32 whatever the
    job asks), the device, every task option, and a weights identity for Demucs."""
    import json

    job = parse_job({
        "name": "prov",
        "datasets": [{"name": "music", "source": {"music": "synthetic", "tracks": 1, "seconds": 1}}],
        "codecs": [{"name": "mp3", "settings": [32]}],
        "tasks": [{"name": "separate", "model": "builtin:tiny-htdemucs", "batch_size": 1}],
        "resources": {"precision": "bf16"},
    })
    out = tmp_path / "out"
    run_job(job, str(out), engine="serial", progress=False)
    df = read_results(str(out))
    assert df.height == 2 and df["error"].null_count() == 2
    assert df["precision"].to_list() == ["fp32", "fp32"] and df["device"].to_list() == ["cpu", "cpu"]
    options = json.loads(df["task_options"][0])
    assert options["model"] == "builtin:tiny-htdemucs" and "shifts" in options
    assert df["model_revision"][0].startswith("HTDemucs sha256:") and df["model_revision"].n_unique() == 1


def test_both_engines_take_the_resolved_job_in_one_call_shape():
    """The runner picks an engine by its name (``mpq.engine.<name>.run``) and calls it one way."""
    import inspect

    from mpq.engine import ray, serial

    shape = inspect.signature(serial.run)
    assert inspect.signature(ray.run) == shape and shape.parameters["job"].annotation == "Job"


def test_auto_runs_serially_only_on_a_small_machine_without_gpu_or_cluster(monkeypatch):
    """`--engine auto`: Ray's own start costs more than it gives on a machine of few CPUs, no GPU,
    where the run would start its own cluster (docs/performance.md); Ray everywhere else."""
    from mpq.engine import RAY_FROM_CPUS, choose, cluster_address

    assert choose("auto", None, 2, 0) == ("serial", "auto: 2 CPUs, no GPU, no cluster")
    assert choose("auto", None, RAY_FROM_CPUS - 1, 0)[0] == "serial"
    assert choose("auto", None, RAY_FROM_CPUS, 0) == ("ray", f"auto: {RAY_FROM_CPUS} CPUs, no GPU, no cluster")
    assert choose("auto", None, 2, 1) == ("ray", "auto: 2 CPUs, 1 GPU, no cluster")
    assert choose("auto", "10.0.0.1:6379", 2, 0) == ("ray", "auto: cluster 10.0.0.1:6379")
    assert choose("serial", "10.0.0.1:6379", 64, 8) == ("serial", "--engine serial")
    assert choose("ray", None, 1, 0) == ("ray", "--engine ray")
    with pytest.raises(ValueError, match="unknown engine 'rey'; valid choices: auto, ray, serial"):
        choose("rey", None, 2, 0)
    monkeypatch.setenv("RAY_ADDRESS", "auto")  # a cluster `ray start` left running here
    assert cluster_address(None) == "auto" and cluster_address("10.0.0.1:6379") == "10.0.0.1:6379"
    monkeypatch.delenv("RAY_ADDRESS")
    assert cluster_address(None) is None


def test_gpus_are_counted_as_cuda_counts_them(monkeypatch):
    from mpq.engine import gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpus() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert gpus() == 2
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert gpus() == 0


def noted(folder: Path) -> list[Path]:
    """The in-flight notes of an output's samples (not the markers of stopped runs)."""
    from mpq.engine.inflight import STOPPED

    return [n for n in folder.iterdir() if not n.name.startswith(STOPPED)] if folder.exists() else []


@pytest.mark.slow
def test_an_orderly_stop_spends_no_try_of_the_sample_it_interrupts(tmp_path):
    """Stopped twice while a sample is being worked (its in-flight note written), by Ctrl-C
    (SIGINT) and then by SIGTERM, a run ends with one line and exit code 130 each time,
    leaving no note; the third run computes the samples (only a process that dies without
    cleaning up spends a try: engine/inflight.py). Tries are 3, so two spent ones would not
    show; the notes left would."""
    import re

    # Two tracks: a stop that a library swallows lands once the sample in hand is done
    # (runner.stop), and the second run then stops on the other track.
    job_file = stop_job(tmp_path, tracks=2)
    cmd = [sys.executable, "-m", "mpq.cli", "run", str(job_file), "--engine", "serial", "--no-progress"]
    notes = tmp_path / "out" / "in-flight"
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not noted(notes):
            time.sleep(0.02)
        assert noted(notes), "the stop must land while a sample is being worked for this test to mean anything"
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 130, (stdout + stderr)[-3000:]
        assert re.search(r"^interrupted: [02] rows written; run the same command to resume$", stderr, re.M), stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        assert not noted(notes)  # the try it interrupted is not counted
    third = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert third.returncode == 0, third.stderr[-3000:]
    df = read_results(str(tmp_path / "out"))
    assert df.height == 4 and df["error"].is_null().all(), df["error"].to_list()
    assert df["score"].is_not_null().all(), df["score"].to_list()  # the separation's own score, on every row


@pytest.mark.slow
def test_a_stopped_ray_run_leaves_no_try_counted(tmp_path, ray_head):
    """Ray kills the workers of a stopped run (here, one on the session's cluster) without
    letting them clean up; the run's tries in their hands are set back all the same: at the
    stop (inflight.forget), and, for a try that a worker noted as the driver was exiting (it
    happens: a sample started in that moment), by the next run before it starts (settle)."""
    from mpq.engine.inflight import STOPPED, settle

    job_file = stop_job(tmp_path, tracks=1)
    cmd = [sys.executable, "-m", "mpq.cli", "run", str(job_file), "--engine", "ray", "--no-progress"]
    notes = tmp_path / "out" / "in-flight"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ray_run_env(ray_head), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not noted(notes):
        time.sleep(0.05)
    assert noted(notes), "the stop must land while a sample is being worked for this test to mean anything"
    time.sleep(2)  # into the model stage's actor too, where the try is noted again
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, (stdout + stderr)[-3000:]
    assert "run the same command to resume" in stderr
    stopped = [n.name.removeprefix(STOPPED) for n in notes.iterdir() if n.name.startswith(STOPPED)]
    left = {n.name: n.read_text() for n in noted(notes)}
    assert len(stopped) == 1 and all(note.split()[1:] == stopped for note in left.values()), left  # noted late, if any
    settle(str(tmp_path / "out"))
    assert not any(notes.iterdir()), [(n.name, n.read_text()) for n in notes.iterdir()]
