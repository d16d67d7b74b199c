"""`mpq-ray submit` on a real two-node Ray cluster on loopback, and its fault tolerance.

The cluster (a head and a worker node, each a `ray start --block` process group that this
module owns) runs on free ports with a private temp dir, so it never meets another Ray on
the machine; teardown kills exactly those processes (never `ray stop`).
"""

import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import polars as pl
import psutil
import pytest
import yaml
from helpers import ROOT, rows_on_disk
from test_plugins import JOB as PLUGIN_JOB
from test_plugins import write_plugin

from mpq.engine.plan import Planner, count, shards
from mpq.job import resolve
from mpq.reading import read_results
from mpq.spec import load_job

VENV_BIN = os.path.dirname(sys.executable)
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


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def wait_for(condition, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class LocalCluster:
    """A Ray head and worker nodes on 127.0.0.1, each node a process group we own."""

    def __init__(self):
        self.temp_dir = tempfile.mkdtemp(prefix="mpqray-", dir="/tmp")  # short: Ray's socket paths
        self.groups: list[subprocess.Popen] = []
        self.logs: list[str] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(
            PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""),  # the job's `python` is this venv's
            RAY_AUTH_MODE="disabled",  # loopback only; keeps the test off ~/.ray/auth_token
            RAY_USAGE_STATS_ENABLED="0",
            RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        )
        self.worker_ports = random.randrange(20000, 60000, 1000)

    def start(self) -> None:
        self.start_head()
        self.worker = self.start_worker()

    def start_head(self) -> None:
        def head_args() -> list[str]:
            gcs, dash, client, agent, agent_grpc, rt_env, metrics = free_ports(7)
            self.gcs, self.dashboard = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
            return [
                "--head", f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}", f"--ray-client-server-port={client}", "--num-cpus=1",
                *self._node_ports(agent, agent_grpc, rt_env, metrics),
            ]

        self._start_node("head", head_args)

    def _node_ports(self, *ports: int) -> list[str]:
        agent, agent_grpc, rt_env, metrics = ports
        lo = self.worker_ports
        self.worker_ports += 100
        return [
            f"--dashboard-agent-listen-port={agent}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={rt_env}", f"--metrics-export-port={metrics}",
            f"--min-worker-port={lo}", f"--max-worker-port={lo + 99}",
        ]

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        cmd = [
            os.path.join(VENV_BIN, "ray"), "start", "--block", "--node-ip-address=127.0.0.1",
            f"--temp-dir={self.temp_dir}", "--object-store-memory=200000000", "--disable-usage-stats", *args,
        ]
        self.logs.append(f"{self.temp_dir}/{name}-{len(self.groups)}.log")
        with open(self.logs[-1], "w") as log:
            proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.groups.append(proc)
        return proc

    def _start_node(self, name: str, args: Callable[[], list[str]]) -> subprocess.Popen:
        """Start a node and wait until it runs. Ray 2.60's raylet gives its dashboard agent a
        fixed 15 s to start (ray-project/ray#65983) and exits when a loaded machine is slower:
        such a node is started again, on fresh ports (a failed start may leave one taken)."""
        for _ in range(10):  # a quiet machine needs one; one shared with 4 other test suites, up to ~6
            proc = self._start(name, *args())
            log = Path(self.logs[-1])
            wait_for(lambda: proc.poll() is not None or "Ray runtime started" in log.read_text(), 300, f"the {name} node", every=0.5)
            if proc.poll() is None:
                return proc
            self.kill(proc)
        raise AssertionError(f"the {name} node did not start; the last try's log ends:\n{log.read_text()[-3000:]}")

    def start_worker(self) -> subprocess.Popen:
        def worker_args() -> list[str]:
            nm, om, *rest = free_ports(6)
            return [f"--address={self.gcs}", "--num-cpus=3", f"--node-manager-port={nm}",
                    f"--object-manager-port={om}", *self._node_ports(*rest)]

        return self._start_node("worker", worker_args)

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL a node: its process group, and any of its processes that left the group."""
        try:
            leader = psutil.Process(proc.pid)
            strays = leader.children(recursive=True)
        except psutil.NoSuchProcess:
            strays = []
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in strays:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.wait()

    def busy_workers(self, proc: subprocess.Popen) -> list[str]:
        """Titles of the Ray worker processes of a node that are doing something."""
        titles = []
        for p in psutil.Process(proc.pid).children(recursive=True):
            try:
                title = " ".join(p.cmdline())
            except psutil.Error:
                continue
            if title.startswith("ray::") and not title.startswith("ray::IDLE"):
                titles.append(title)
        return titles

    def close(self) -> None:
        for proc in reversed(self.groups):
            self.kill(proc)
        # Ray workers outlive their raylet for a moment; end any left that belong to this cluster.
        for p in psutil.process_iter(["cmdline"]):
            if any(self.temp_dir in arg for arg in p.info["cmdline"] or []):
                try:
                    p.kill()
                except psutil.Error:
                    pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def mpq(*args: str, env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mpq.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def cluster():
    c = LocalCluster()
    try:
        c.start()
        # Ready when a job sees both nodes alive (the Jobs API also needs its agent up).
        probe = "import ray, sys; ray.init(); sys.exit(sum(n['Alive'] for n in ray.nodes()) != 2)"
        wait_for(lambda: mpq_job_ok(c, probe), 240, "the two-node cluster to accept jobs", every=1)
        yield c
    finally:
        c.close()


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


@pytest.mark.slow
def test_submit_runs_the_smoke_job_on_the_cluster(cluster, tmp_path):
    """One sample a dataset: every stage of the smoke job (each codec, task and metric) still
    runs on the cluster, from the mpq that `submit` uploads; more samples only repeat them."""
    out = tmp_path / "smoke"
    job_id, res = submit(cluster, ROOT / "jobs" / "smoke.yaml", out, "--limit", "1", "--follow")
    assert res.returncode == 0 and "job SUCCEEDED" in res.stdout, res.stdout[-3000:]
    smoke = resolve(load_job(ROOT / "jobs" / "smoke.yaml"))
    expected = count(Planner(smoke, str(out), {}, []), shards(smoke, limit=1)).rows
    assert f"{expected} rows written (0 with errors), 0 already there" in res.stdout  # the driver's own report
    assert_exact_rows(out, expected)
    env = {**cluster.env, "RAY_ADDRESS": cluster.dashboard}  # found as `ray job` finds it
    assert f"{job_id}: SUCCEEDED" in mpq("status", job_id, env=env).stdout
    assert f"{expected} rows written" in mpq("logs", job_id, env=env).stdout


@pytest.mark.slow
def test_worker_node_killed_mid_run_loses_and_duplicates_nothing(cluster, fault_job, tmp_path):
    out = tmp_path / "worker-kill"
    job_id, _ = submit(cluster, fault_job, out)
    wait_for(lambda: rows_on_disk(out) > 0, 600, "the first rows", every=0.05)
    busy = cluster.busy_workers(cluster.worker)
    cluster.kill(cluster.worker)
    assert rows_on_disk(out) < FAULT_ROWS, "the kill must land mid-run for this test to mean anything"
    assert busy, "the killed node must have been doing part of the work"
    cluster.worker = cluster.start_worker()  # as an autoscaler replaces a lost node
    # Once a second: each look asks the dashboard anew, CPU the job on this machine's cores needs.
    status = wait_for(lambda: (s := job_status(cluster, job_id)) in ("SUCCEEDED", "FAILED", "STOPPED") and s, 600, "the job to end", every=1)
    if status != "SUCCEEDED":  # a run that gave up resumes: the same job on the same output
        _, res = submit(cluster, fault_job, out, "--follow")
        assert res.returncode == 0, res.stdout[-3000:]
    assert_exact_rows(out, FAULT_ROWS)


@pytest.mark.slow
def test_driver_killed_mid_run_then_rerun_finishes_exactly(cluster, fault_job, tmp_path):
    out = tmp_path / "driver-kill"
    job_id, _ = submit(cluster, fault_job, out)

    def driver():
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info["cmdline"] or []
            if "mpq.cli" in cmd and str(out) in cmd:
                return p

    proc = wait_for(driver, 600, "the job's driver", every=0.5)
    wait_for(lambda: rows_on_disk(out) > 0, 600, "the first rows", every=0.05)
    proc.kill()
    proc.wait(30)
    partial = rows_on_disk(out)
    assert 0 < partial < FAULT_ROWS, "the kill must land mid-run for this test to mean anything"
    wait_for(lambda: job_status(cluster, job_id) == "FAILED", 120, "the job to be marked failed", every=1)

    _, res = submit(cluster, fault_job, out, "--follow")
    assert res.returncode == 0 and "job SUCCEEDED" in res.stdout, res.stdout[-3000:]
    assert f"{FAULT_ROWS - partial} rows written (0 with errors), {partial} already there" in res.stdout
    assert_exact_rows(out, FAULT_ROWS)


@pytest.mark.slow
def test_stop_ends_a_submitted_job(cluster, tmp_path):
    env = {**cluster.env, "RAY_ADDRESS": cluster.dashboard}
    job_id, _ = submit(cluster, ROOT / "jobs" / "smoke.yaml", tmp_path / "stopped", env=env)
    res = mpq("stop", job_id, env=env)
    assert res.returncode == 0 and job_id in res.stdout
    wait_for(lambda: job_status(cluster, job_id) == "STOPPED", 120, "the job to stop")
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
