import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """mpq's own cache (tiny models) in a temporary folder; no hub access during tests."""
    os.environ["MPQ_CACHE"] = str(tmp_path_factory.mktemp("mpq-cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield


# === Ray: one local cluster for the session ===================================================
# Every Ray test joins `ray_head`, a `ray start --head` of the session's own (a Ray start costs
# 10-30 s on this machine; the session pays it once), except those whose cluster is the thing
# tested: test_cluster's fault tests add (and kill) a worker node of their own to it,
# test_cluster_answers starts a head with token authentication, test_gpu_codecs an in-process
# cluster that declares a GPU, and test_robust's Ray runs start their own as `mpq-ray run` does
# on a machine without a cluster.

VENV_BIN = os.path.dirname(sys.executable)


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
    """A Ray head and worker nodes on 127.0.0.1, each node a `ray start --block` process group
    we own, on free ports with a private temp dir, so it never meets another Ray on the
    machine; `close` kills exactly those processes (never `ray stop`)."""

    def __init__(self):
        self.temp_dir = tempfile.mkdtemp(prefix="mpqray-", dir="/tmp")  # short: Ray's socket paths
        self.groups: list[subprocess.Popen] = []
        self.logs: list[str] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(
            PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""),  # the job's `python` is this venv's
            RAY_AUTH_MODE="disabled",  # loopback only; keeps the tests off ~/.ray/auth_token
            RAY_USAGE_STATS_ENABLED="0",
            RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        )
        self.worker_ports = random.randrange(20000, 60000, 1000)

    def start_head(self, cpus: int) -> None:
        def head_args() -> list[str]:
            gcs, dash, client, agent, agent_grpc, rt_env, metrics = free_ports(7)
            self.gcs, self.dashboard = f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}"
            return [
                "--head", f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash}", f"--ray-client-server-port={client}", f"--num-cpus={cpus}",
                *self._node_ports(agent, agent_grpc, rt_env, metrics),
            ]

        self.head = self._start_node("head", head_args)

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

    def start_worker(self, cpus: int) -> subprocess.Popen:
        def worker_args() -> list[str]:
            nm, om, *rest = free_ports(6)
            return [f"--address={self.gcs}", f"--num-cpus={cpus}", f"--node-manager-port={nm}",
                    f"--object-manager-port={om}", *self._node_ports(*rest)]

        return self._start_node("worker", worker_args)

    def alive_nodes(self) -> int:
        from ray.util.state import list_nodes

        return sum(n.state == "ALIVE" for n in list_nodes(address=self.dashboard))

    def kill(self, proc: subprocess.Popen) -> None:
        """SIGKILL a node: its process group, and any of its processes that left the group."""
        if proc.returncode is not None:  # killed before: its pid may be another process's now
            return
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


@pytest.fixture(scope="session")
def ray_head():
    """The session's Ray cluster: a head of 2 CPUs (the cluster a run starts for itself on this
    machine has as many) with the dashboard (the Jobs API of `mpq-ray submit`)."""
    c = LocalCluster()
    try:
        c.start_head(cpus=2)
        yield c
    finally:
        c.close()


@pytest.fixture
def ray_local(ray_head):
    """This process joined to the session's cluster, unless it holds a cluster already. (After
    test_gpu_codecs leaves its own, joining the session's head again left Ray Data's executor
    waiting without starting a task: test_performance starts one of its own there.)"""
    import ray

    from mpq.engine.ray import init_ray  # first: it configures Ray before Ray reads its settings

    if not ray.is_initialized():
        init_ray(ray_head.gcs)
    return ray_head


def ray_run_env(head: LocalCluster, **worker_env: str) -> dict[str, str]:
    """The environment of an `mpq-ray run` subprocess that joins ``head`` (found through
    RAY_ADDRESS, as a user's shell finds a cluster) with ``worker_env`` set in its workers too.
    A run's workers are the cluster's processes, started in the head's environment; this is the
    job config through which Ray's job manager hands a driver's job its environment."""
    env = {**head.env, **worker_env, "RAY_ADDRESS": head.gcs}
    if worker_env:
        env["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps({"runtime_env": {"env_vars": worker_env}})
    return env


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, ray_head) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's first command, `mpq-ray run jobs/smoke.yaml`, on the Ray engine (the suite's
    one Ray run of the whole job; `auto` picks serial on a small machine), all of it, run once
    on the session's cluster, its driver and workers in an mpq cache of their own, empty, as on
    a machine that has written no model yet: test_realstudy checks its science, test_cli its
    report and a second run, test_robust that it is quiet. The smoke job is the suite's most
    expensive run; one run serves them all."""
    tmp = tmp_path_factory.mktemp("smoke")
    out = tmp / "out"
    res = subprocess.run([sys.executable, "-m", "mpq.cli", "run", "jobs/smoke.yaml", "--output", str(out), "--no-progress",
                          "--engine", "ray"],
                         cwd=ROOT, env=ray_run_env(ray_head, MPQ_CACHE=str(tmp / "cache")), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


# === end of the Ray section ===================================================================


def rows_on_disk(output) -> int:
    """Rows in every results file, superseded ones included (``read_results`` keeps one per key)."""
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in (Path(output) / "results").glob("*.parquet"))


def photo(h=48, w=64, seed=0) -> np.ndarray:
    """A smooth synthetic RGB image (compressible like a photo, unlike noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], axis=-1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def odd_folder(tmp_path) -> Path:
    """Images in every awkward form a real folder holds."""
    root = tmp_path / "imgs"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    rgb = Image.fromarray(photo())
    (root / "cats" / "rgb.png").write_bytes(encode(rgb, "PNG"))
    (root / "cats" / "gray.png").write_bytes(encode(rgb.convert("L"), "PNG"))
    (root / "cats" / "rgba.png").write_bytes(encode(rgb.convert("RGBA"), "PNG"))
    (root / "dogs" / "cmyk.jpg").write_bytes(encode(rgb.convert("CMYK"), "JPEG"))
    sixteen = Image.fromarray((photo()[..., 0].astype(np.uint16) * 257))
    (root / "dogs" / "sixteen.png").write_bytes(encode(sixteen, "PNG"))
    full = encode(rgb, "JPEG")
    (root / "dogs" / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "dogs" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return root
