"""`mpq-ray submit` on a real two-node Ray cluster on loopback, and its fault tolerance (the
whole smoke job submitted to the session's head: tests/conftest.py's `smoke_run`).

The cluster is the session's head (tests/conftest.py) and a worker node that this module
adds and owns (the fault tests kill it and start another); the module's end kills the
worker node and waits until the head counts it dead, so the tests after it find the
session's cluster as it was.
"""

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import psutil
import pytest
import yaml
from helpers import ROOT, LocalCluster, rows_on_disk, wait_for
from test_plugins import JOB as PLUGIN_JOB
from test_plugins import write_plugin

from mpq.reading import read_results

# The fault tests' job: the smoke job's stages with many small batches and enough work that
# results stream out over a while, so a kill lands between the first rows and the last: a
# block per photo, twice as many blocks as the cluster has CPUs (actors), so blocks are still
# waiting when the first ones' rows come.
FAULT_JOB = {
    "name": "faults",
    "datasets": [{"name": "skimage", "source": {"samples": "skimage"}}],
    "codecs": [{"name": "jpeg", "settings": list(range(10, 100, 10))}],
    "tasks": [{"name": "classify", "model": "builtin:tiny-vit", "batch_size": 2}],
    "metrics": ["psnr", {"name": "lpips", "backbone": "random"}],
    "resources": {"metric_batch_size": 2},
}
FAULT_ROWS = 8 * 10  # 8 photos × (baseline + 9 JPEG qualities) × 1 task


def mpq(*args: str, env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpq.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, **kw)


WORKER_CPUS = 2  # with the head's 2, 4 CPUs: FAULT_JOB's 8 blocks are twice as many, and each node runs some


@pytest.fixture(scope="module")
def cluster(ray_head):
    c = ray_head
    c.worker = c.start_worker(WORKER_CPUS)
    try:
        # Ready when a job sees both nodes alive (the Jobs API also needs its agent up).
        probe = "import ray, sys; ray.init(); sys.exit(sum(n['Alive'] for n in ray.nodes()) != 2)"
        wait_for(lambda: mpq_job_ok(c, probe), 240, "the two-node cluster to accept jobs", every=1)
        yield c
    finally:
        if c.worker.poll() is None:  # as `ray stop` ends a node: its raylet tells the head it leaves
            os.killpg(c.worker.pid, signal.SIGTERM)
        wait_for(lambda: c.alive_nodes() == 1, 120, "the head to count the worker node dead", every=1)
        c.kill(c.worker)


def mpq_job_ok(c: LocalCluster, code: str) -> bool:
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(c.dashboard)
        job = client.submit_job(entrypoint=f"python -c {shlex.quote(code)}")
    except Exception:  # dashboard or job agent still starting
        return False
    status = wait_for(lambda: client.get_job_status(job).is_terminal() and client.get_job_status(job), 120, "probe job")
    return status == "SUCCEEDED"


def submit(c: LocalCluster, job: Path, out: Path, *extra: str, env: dict | None = None) -> tuple[str, subprocess.CompletedProcess]:
    res = mpq("submit", str(job), "--address", c.dashboard, "--output", str(out),
              "--env", "MPQ_FLUSH_ROWS=1", *extra, env=env or c.env)
    assert res.returncode in (0, 1), res.stderr
    job_id = next(line.split()[1] for line in res.stdout.splitlines() if line.startswith("submitted "))
    assert f"results: {out}/results" in res.stdout
    return job_id, res


def driver(out: Path) -> psutil.Process | None:
    """The driver process of the job writing to ``out``, if one runs."""
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if "mpq.cli" in cmd and str(out) in cmd:
            return p
    return None


def job_status(c: LocalCluster, job_id: str) -> str:
    from ray.job_submission import JobSubmissionClient

    return str(JobSubmissionClient(c.dashboard).get_job_status(job_id))


def assert_exact_rows(out: Path, n: int) -> None:
    df = read_results(str(out))  # the last row of each key...
    assert df.height == n and rows_on_disk(out) == n  # ...and not one more row on disk
    assert df.filter(pl.col("error").is_not_null()).height == 0


@pytest.fixture
def fault_job(tmp_path) -> Path:
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump(FAULT_JOB))
    return path


def test_submit_refuses_a_relative_output_before_contacting_any_cluster(tmp_path):
    res = mpq("submit", "jobs/smoke.yaml", "--address", "http://127.0.0.1:9", env=dict(os.environ))
    assert res.returncode == 2
    assert "output 'out/smoke' is a relative path" in res.stderr and "shared storage" in res.stderr


def test_submit_refuses_an_unknown_redo_kind_before_contacting_any_cluster(tmp_path):
    res = mpq("submit", "jobs/smoke.yaml", "--output", str(tmp_path / "out"), "--redo", "typo",
              "--address", "http://127.0.0.1:9", env=dict(os.environ))
    assert res.returncode == 2
    assert "--redo: no error is of kind 'typo'" in res.stderr and "Traceback" not in res.stderr


def test_submit_hands_redo_to_the_run_on_the_cluster():
    """The command the cluster runs, read by `mpq-ray run`'s own parser, asks for the same redo."""
    import shlex

    import typer

    from mpq import cluster
    from mpq.cli import app

    args = shlex.split(cluster.entrypoint("/shared/out", limit=2, force=True, redo=("metric lpips", "load")))
    assert args[:5] == ["exec", "python", "-m", "mpq.cli", "run"]  # the shell becomes the driver: a stop reaches it
    run = typer.main.get_command(app).commands["run"]
    params = run.make_context("run", args[5:]).params
    assert params["redo"] == ["metric lpips", "load"] and params["limit"] == 2 and params["force"] and params["output"] == "/shared/out"


@pytest.mark.slow
def test_driver_killed_then_a_node_lost_mid_rerun_loses_and_duplicates_nothing(cluster, fault_job, tmp_path):
    """Two faults, each mid-run. The job's driver is killed: Ray marks the job failed, and the
    same job submitted again resumes from the rows on disk. In that second run a worker node is
    killed: the run goes on without it (Ray Data redoes the lost node's work on the nodes left
    and on the one that replaces it) and ends by itself. Not a row lost, none written twice."""
    out = tmp_path / "faults"
    first, _ = submit(cluster, fault_job, out)
    proc = wait_for(lambda: driver(out), 600, "the job's driver", every=0.5)
    wait_for(lambda: rows_on_disk(out) > 0, 600, "the first rows", every=0.05)
    proc.kill()
    proc.wait(30)
    partial = rows_on_disk(out)
    assert 0 < partial < FAULT_ROWS, "the driver's kill must land mid-run for this test to mean anything"
    wait_for(lambda: job_status(cluster, first) == "FAILED", 120, "the job to be marked failed", every=1)

    second, _ = submit(cluster, fault_job, out)
    wait_for(lambda: rows_on_disk(out) > partial, 600, "the second run's first rows", every=0.05)
    busy = cluster.busy_workers(cluster.worker)
    cluster.kill(cluster.worker)
    assert rows_on_disk(out) < FAULT_ROWS, "the node's kill must land mid-run for this test to mean anything"
    assert busy, "the killed node must have been doing part of the work"
    cluster.worker = cluster.start_worker(WORKER_CPUS)  # as an autoscaler replaces a lost node
    # Once a second: each look asks the dashboard anew, CPU the job on this machine's cores needs.
    status = wait_for(lambda: (s := job_status(cluster, second)) in ("SUCCEEDED", "FAILED", "STOPPED") and s, 600, "the job to end", every=1)
    if status == "SUCCEEDED":
        log = mpq("logs", second, "--address", cluster.dashboard, env=cluster.env).stdout
    else:  # Ray's own retry bounds gave the run up: the same job on the same output resumes it
        _, res = submit(cluster, fault_job, out, "--follow")
        assert res.returncode == 0 and "job SUCCEEDED" in res.stdout, res.stdout[-3000:]
        log = res.stdout
    written, there = map(int, re.search(r"(\d+) rows written \(0 with errors\), (\d+) already there", log).groups())
    assert written + there == FAULT_ROWS and there >= partial, log[-3000:]  # each key written once, by one run
    assert_exact_rows(out, FAULT_ROWS)


@pytest.mark.slow
def test_stop_ends_a_submitted_job(cluster, tmp_path):
    """Stopped right after it is submitted, the job ends, its driver too: Ray signals the
    entrypoint's process and its children as they are when the stop comes, so a driver that
    a shell started a moment later ran on, orphaned, through the whole job."""
    env = {**cluster.env, "RAY_ADDRESS": cluster.dashboard}
    out = tmp_path / "stopped"
    job_id, _ = submit(cluster, ROOT / "jobs" / "smoke.yaml", out, env=env)
    res = mpq("stop", job_id, env=env)
    assert res.returncode == 0 and job_id in res.stdout
    wait_for(lambda: job_status(cluster, job_id) == "STOPPED", 120, "the job to stop")
    wait_for(lambda: driver(out) is None, 60, "the stopped job's driver to end", every=0.5)
    res = mpq("logs", job_id, "--follow", env=env)
    assert res.returncode == 1 and "job STOPPED" in res.stdout


@pytest.mark.slow
def test_submit_ships_the_plugin_the_job_uses(cluster, tmp_path):
    """A codec installed only where the job is submitted from (the cluster's nodes lack it)
    runs on the cluster: `submit` ships its package and its entry points."""
    site = write_plugin(tmp_path / "site")
    job = tmp_path / "plugin.yaml"
    job.write_text(yaml.safe_dump(PLUGIN_JOB))
    out = tmp_path / "plugin"
    _, res = submit(cluster, job, out, "--follow", env={**cluster.env, "PYTHONPATH": str(site)})
    assert res.returncode == 0 and "job SUCCEEDED" in res.stdout, res.stdout[-3000:]
    assert_exact_rows(out, 2)  # the photo's baseline and its posterized version
    assert set(read_results(str(out))["codec"]) == {"none", "posterize"}
