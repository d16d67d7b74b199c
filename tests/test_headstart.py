"""The Ray engine's head start (engine/headstart.py): mpq's own worker process, and what it
shares with Ray. Its end-to-end run is the README's command (tests/test_cli.py)."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT
from test_robust import write_poison_job, write_poison_plugin


def test_engine_modules_turn_off_rays_uv_hook_before_ray_reads_it():
    """Ray reads RAY_ENABLE_UV_RUN_RUNTIME_ENV when it is imported. Left on (a driver run by `uv
    run`), Ray rebuilt the project's virtualenv for its workers under its session folder, where
    espeak-ng's data path is too long for the library: every actor of the smoke job exited."""
    code = "import mpq.engine.plan, ray._private.ray_constants as c; print(c.RAY_ENABLE_UV_RUN_RUNTIME_ENV)"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_UV_RUN_RUNTIME_ENV"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


WORK_THE_JOB = """
import json, sys
from mpq.engine.headstart import LocalWorker
from mpq.engine.plan import Planner, shards
from mpq.engine.stages import Finalize
from mpq.job import resolve
from mpq.spec import load_job

spec = load_job(sys.argv[1])
job = resolve(spec)
items = [i for part in Planner(job, sys.argv[2], {}, []).items(shards(job)) for i in part]
worker = LocalWorker(spec, Finalize(job, "run"), sys.argv[2], quiet=True)
try:
    rows = worker.run(items).to_pylist()
finally:
    worker.close()
print(json.dumps({"deaths": worker.deaths, "rows": [[r["sample_id"], r["codec"], r["setting"], r["error"]] for r in rows]}))
"""


@pytest.mark.slow
def test_a_sample_that_kills_the_head_start_worker_costs_its_rows_only(tmp_path):
    """The worker is a process of its own, so the driver outlives it: it starts the worker again
    on the same samples, whose tries the output notes (inflight.py), until the sample that kills
    has used its tries and its rows are `worker died` errors; its shard-mates are worked."""
    from mpq.engine.serial import TRIES

    site = write_poison_plugin(tmp_path / "site")
    poison_job = write_poison_job(tmp_path, {"imgs": ["a.png", "b-poison.png", "c.png"]})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-c", WORK_THE_JOB, str(poison_job), str(tmp_path / "out")],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["deaths"] == TRIES
    rows = {(s, c, st): e for s, c, st, e in got["rows"]}
    assert len(rows) == len(got["rows"]) == 3 * 3  # 3 images × (baseline + 2 settings), each once
    died = {k for k, e in rows.items() if e is not None}
    assert died == {("b-poison.png", "none", ""), ("b-poison.png", "poison", "50"), ("b-poison.png", "poison", "80")}
    assert all(rows[k].startswith("worker died: ") for k in died)
