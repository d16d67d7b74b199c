"""What many test files share: the repository's root, synthetic photos, the CLI run as a user
runs it, job files, tiny models written by ``save_pretrained``, rows counted on disk, Ray
clusters of the tests' own on loopback."""

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
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


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


def rows_on_disk(output) -> int:
    """Rows in every results file, superseded ones included (``read_results`` keeps one per key)."""
    import pyarrow.parquet as pq

    return sum(pq.read_metadata(f).num_rows for f in (Path(output) / "results").glob("*.parquet"))


def cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """``mpq-ray ARGS`` in a process of its own, as from a shell in the repository's root, with
    ``env`` over this process's environment: for what only a fresh process shows (its imports,
    exit code, signals, variables read at import)."""
    import os

    return subprocess.run([sys.executable, "-m", "mpq.cli", *args], cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})})


def cli_here(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """``mpq-ray ARGS`` in this process, from the repository's root (the same ``app`` through
    click's runner, ``env`` set for the call): the command without a new process's imports."""
    import traceback
    from contextlib import chdir

    from typer.testing import CliRunner

    from mpq.cli import app

    with chdir(ROOT):
        res = CliRunner().invoke(app, [str(a) for a in args], env=env)
    stderr = res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        stderr += "".join(traceback.format_exception(res.exception))
    return subprocess.CompletedProcess(args, res.exit_code, res.stdout, stderr)


def write_job(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def stop_job(tmp_path: Path, tracks: int) -> Path:
    """A job file whose samples take seconds each (20-s tracks through a tiny Demucs, twice: the
    mixture and its MP3), for stopping a run mid-sample."""
    return write_job(tmp_path / "job.yaml", {
        "name": "stop", "output": str(tmp_path / "out"),
        "datasets": [{"name": "music", "source": {"music": "synthetic", "tracks": tracks, "seconds": 20}}],
        "codecs": [{"name": "mp3", "settings": [64]}],
        "tasks": [{"name": "separate", "model": "builtin:tiny-htdemucs", "batch_size": 1}],
        "metrics": ["audio_psnr"],
    })


def tiny_vit(path: Path, names: list[str], answer: int) -> str:
    """A tiny ViT classifier over ``names``, as save_pretrained writes it, that always answers class ``answer``."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    n = len(names)
    config = ViTConfig(
        image_size=32, patch_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=1, intermediate_size=16,
        num_labels=n, id2label=dict(enumerate(names)), label2id={name: i for i, name in enumerate(names)},
    )
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.eye(n)[answer] * 5)
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def tiny_segformer(path: Path, num_labels: int) -> str:
    """A tiny random SegFormer (seeded), as save_pretrained writes it; its processor reduces labels (ADE20k's convention)."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(0)
    labels = {i: f"c{i}" for i in range(num_labels)}
    config = SegformerConfig(
        num_labels=num_labels, hidden_sizes=[8, 8, 16, 16], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 1, 1],
        decoder_hidden_size=16, id2label=labels, label2id={v: k for k, v in labels.items()},
    )
    SegformerForSemanticSegmentation(config).save_pretrained(path)
    SegformerImageProcessor(size={"height": 32, "width": 32}, do_reduce_labels=True).save_pretrained(path)
    return str(path)


# --- Ray clusters of the tests' own --------------------------------------------------------------

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
        self.killed: list[subprocess.Popen] = []  # by a test or by close
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
        self.killed.append(proc)
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
        # A node that ended by itself (not by a test's kill): its logs stay, for the failure it caused.
        died = [log for proc, log in zip(self.groups, self.logs) if proc.poll() is not None and proc not in self.killed]
        for proc in reversed(self.groups):
            self.kill(proc)
        # Ray workers outlive their raylet for a moment; end any left that belong to this cluster.
        for p in psutil.process_iter(["cmdline"]):
            if any(self.temp_dir in arg for arg in p.info["cmdline"] or []):
                try:
                    p.kill()
                except psutil.Error:
                    pass
        if died:
            warnings.warn(f"Ray nodes ended by themselves; their logs stay in {self.temp_dir}: {died}", stacklevel=2)
        else:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def ray_run_env(head: LocalCluster, **worker_env: str) -> dict[str, str]:
    """The environment of an `mpq-ray run` subprocess that joins ``head`` (found through
    RAY_ADDRESS, as a user's shell finds a cluster) with ``worker_env`` set in its workers too.
    A run's workers are the cluster's processes, started in the head's environment; this is the
    job config through which Ray's job manager hands a driver's job its environment."""
    env = {**head.env, **worker_env, "RAY_ADDRESS": head.gcs}
    if worker_env:
        env["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps({"runtime_env": {"env_vars": worker_env}})
    return env
