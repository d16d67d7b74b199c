import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, encode, photo
from PIL import Image


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """mpq's own cache (tiny models) in a temporary folder; no hub access during tests."""
    os.environ["MPQ_CACHE"] = str(tmp_path_factory.mktemp("mpq-cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from mpq.engine.ray_process import start_ray  # first: it configures Ray before Ray reads its settings

    start_ray()
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's first command, `mpq-ray run jobs/smoke.yaml`, on the Ray engine (the suite's
    one Ray run of the whole job; `auto` picks serial on a small machine), all of it, run once
    for the session on a machine that has written no model yet (its own empty mpq cache):
    test_realstudy checks its science, test_cli its report and a second run. The smoke job is
    the suite's most expensive run; one run serves them all."""
    tmp = tmp_path_factory.mktemp("smoke")
    out = tmp / "out"
    env = {**os.environ, "MPQ_CACHE": str(tmp / "cache")}
    res = subprocess.run([sys.executable, "-m", "mpq.cli", "run", "jobs/smoke.yaml", "--output", str(out), "--no-progress",
                          "--engine", "ray"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


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


# --- Shared, built once a session: the S3 server, tiny models ------------------------------


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
def tiny_segformer(tmp_path_factory) -> str:
    """A tiny random SegFormer of 4 classes, written by save_pretrained."""
    from helpers import tiny_segformer

    return tiny_segformer(tmp_path_factory.mktemp("models") / "tiny-segformer", 4)
