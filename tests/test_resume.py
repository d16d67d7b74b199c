"""Resume at scale: planning a resumed job reads each results file once per process, not once
per part of the plan (on object storage every read is requests)."""

import pickle

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

import mpq
from mpq import results
from mpq.engine import plan as planning
from mpq.engine.plan import Planner, count, iter_items, shards
from mpq.job import resolve
from mpq.results import INFRA_PREFIX, ResultStore
from mpq.runner import required_metric_columns
from mpq.spec import parse_job


class CountingFileSystem(pafs.LocalFileSystem):
    """The local filesystem, counting the files opened for reading."""

    opened: list[str] = []

    def open_input_file(self, path):
        self.opened.append(path)
        return super().open_input_file(path)


@pytest.fixture
def opened(monkeypatch):
    CountingFileSystem.opened = []
    monkeypatch.setattr(results, "filesystem", lambda output: (CountingFileSystem(), output))
    return CountingFileSystem.opened


def rows(sample_ids, codec, setting, *, error=None, version=mpq.__version__, psnr=True):
    n = len(sample_ids)
    table = {
        "dataset": ["s"] * n, "sample_id": sample_ids, "codec": [codec] * n, "setting": [setting] * n,
        "task": ["classify"] * n, "error": pa.array([error] * n, pa.string()), "mpq_version": [version] * n,
    }
    if psnr:
        table["psnr"] = pa.array([None if codec == "none" else 30.0] * n, pa.float64())
    return pa.table(table)


def test_planning_a_resumed_job_reads_each_results_file_once_whatever_the_parts(tmp_path, opened, monkeypatch):
    job = resolve(parse_job({
        "name": "resume",
        "datasets": [{"name": "s", "source": {"synthetic": "images", "count": 12}}],
        "codecs": [{"name": "jpeg", "settings": [10]}],
        "tasks": [{"name": "classify", "model": "builtin:tiny-vit"}],
        "metrics": ["psnr"],
        "resources": {"samples_per_block": 1},
    }))
    plan = shards(job)
    ids = [job.datasets["s"].source.id_range(s.start, s.stop)[0] for s in plan]
    store = ResultStore(str(tmp_path / "out"))
    # Real Parquet files, as a run killed halfway leaves them (a file per write).
    store.write(rows(ids[0:4], "none", ""))
    store.write(rows(ids[0:4], "jpeg", "10"))
    store.write(rows(ids[4:6], "none", "", error="load: MediaError: truncated"))  # the sample's error: done
    store.write(rows(ids[6:7], "none", "", error=INFRA_PREFIX + "worker died"))  # the machine's: to redo
    store.write(rows(ids[7:8], "none", "", version="0.1.0"))  # an older mpq's figures: to redo
    store.write(rows(ids[8:10], "jpeg", "10", psnr=False))  # written before psnr was asked: to redo
    files = store.files()
    assert len(files) == 6
    done = {(i, "none") for i in ids[0:6]} | {(i, "jpeg") for i in ids[0:4]}

    monkeypatch.setattr(planning, "CHUNK", 2)  # 12 shards: 6 parts
    planner = Planner(job, store.output, required_metric_columns(job), files)
    size = len(pickle.dumps(planner))
    opened.clear()
    work = count(planner, plan)
    items = list(iter_items(planner, plan))
    # A Ray read task plans its part with its own copy of the planner, in a worker process.
    again = pickle.loads(pickle.dumps(planner))
    parts = [again.items(plan[i : i + 3]) for i in range(0, len(plan), 3)]

    # Each file once, not once per part: 6 files, 6 + 6 + 4 parts planned.
    assert len(opened) == len(files) and set(opened) == set(files), f"{len(opened)} opens of {len(files)} files"
    assert len(pickle.dumps(planner)) == size  # what was read does not travel with the planner
    expected = [
        {"dataset": "s", "sample_id": i, "units": [u for u in (("none", None, ["classify"]), ("jpeg", 10, ["classify"]))
                                                   if (i, u[0]) not in done]}
        for i in ids
    ]
    expected = [e for e in expected if e["units"]]
    assert items == [i for part in parts for shard in part for i in shard] == expected
    assert (work.samples, work.rows, work.done) == (8, 24 - len(done), len(done))
