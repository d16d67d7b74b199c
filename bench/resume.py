"""Planning a resumed job: results files read, and seconds, before and after the done keys
were kept per process, measured in the same run.

    uv run python bench/resume.py                   # 250,000 rows already written
    uv run python bench/resume.py --rows 1000000

The job: synthetic images, jpeg and webp at 4 settings each and the baseline (9 units), two
classify tasks: 18 rows a sample. The first half of the samples are written (a run killed
halfway), 512 rows a file as the runner writes them. The driver counts the plan and the
serial engine plans it (``count`` then ``iter_items``, in one process). "before": every part
reads every file (the per-process keys dropped before each part, as each part read them
before); "after": as planned now. Then the memory the done keys hold: their Arrow bytes and
the process's RSS growth, against the same keys as a Python set of tuples.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time

import psutil
import pyarrow as pa
import pyarrow.fs as pafs

import mpq
from mpq import results
from mpq.engine import plan as planning
from mpq.job import resolve
from mpq.spec import parse_job

opened = [0]


class CountingFileSystem(pafs.LocalFileSystem):
    def open_input_file(self, path):
        opened[0] += 1
        return super().open_input_file(path)


def write_half(job, output: str, rows: int) -> results.ResultStore:
    (dataset,) = job.datasets.values()
    combos, tasks = planning.Planner(job, output, {}, []).combos(dataset.name)
    keys = [(c, planning.setting_str(s), t) for c, s in combos for t in tasks]
    ids = dataset.source.id_range(0, rows // len(keys))
    store = results.ResultStore(output)
    for start in range(0, len(ids) * len(keys), 512):
        some = [(ids[i // len(keys)], *keys[i % len(keys)]) for i in range(start, min(start + 512, len(ids) * len(keys)))]
        codec, setting, task = ([k[j] for k in some] for j in (1, 2, 3))
        n = len(some)
        store.write(pa.table({
            "dataset": [dataset.name] * n, "sample_id": [k[0] for k in some], "codec": codec, "setting": setting,
            "task": task, "error": pa.array([None] * n, pa.string()), "mpq_version": [mpq.__version__] * n,
        }))
    return store


def plan_all(planner, plan, before: bool) -> tuple[int, float, int]:
    opened[0] = 0
    planning._done.cache_clear()
    start = time.perf_counter()
    if before:
        work = planning.Count()
        for part in planning.chunks(plan):  # count: each part read every file
            planning._done.cache_clear()
            work.rows += sum(planning.rows_of(i) for items in planner.items(part) for i in items)
        for part in planning.chunks(plan):  # iter_items: and again
            planning._done.cache_clear()
            planner.items(part)
    else:
        work = planning.count(planner, plan)
        for _ in planning.iter_items(planner, plan):
            pass
    return opened[0], time.perf_counter() - start, work.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=250_000, help="result rows already written (half the job)")
    args = parser.parse_args()
    spec = {
        "name": "resume",
        "datasets": [{"name": "s", "source": {"synthetic": "images", "count": 2 * args.rows // 18}}],
        "codecs": [{"name": c, "settings": [10, 30, 50, 70]} for c in ("jpeg", "webp")],
        "tasks": [{"name": "classify", "model": "builtin:tiny-vit"}, {"name": "classify", "id": "second"}],
    }
    job = resolve(parse_job(spec))
    with tempfile.TemporaryDirectory() as tmp:
        store = write_half(job, tmp, args.rows)
        files = store.files()
        results.filesystem = lambda output: (CountingFileSystem(), output)
        planner = planning.Planner(job, tmp, {}, files)
        plan = planning.shards(job)
        parts = -(-len(plan) // planning.CHUNK)
        print(f"{args.rows:,} rows written in {len(files):,} files; plan of {len(plan):,} shards, {parts} parts")
        old = plan_all(planner, plan, before=True)
        new = plan_all(planner, plan, before=False)
        assert old[2] == new[2], (old[2], new[2])  # the same rows to do
        for name, (reads, seconds, _) in (("before", old), ("after", new)):
            print(f"{name:>6}: {reads:>9,} file reads {seconds:8.2f} s")
        print(f" ratio: {old[0] / new[0]:.0f}x fewer reads, {old[1] / new[1]:.1f}x faster")

        planning._done.cache_clear()
        gc.collect()
        pa.default_memory_pool().release_unused()
        arrow, before = pa.total_allocated_bytes(), psutil.Process().memory_info().rss
        done = planner.done()
        arrow = pa.total_allocated_bytes() - arrow
        rss = psutil.Process().memory_info().rss - before
        keys = done.keys()
        as_set = psutil.Process().memory_info().rss - before - rss
        n = len(keys)
        print(f"{n:,} done keys held: Arrow {arrow / 2**20:.1f} MiB ({arrow / n:.0f} B a key; RSS +{rss / 2**20:.1f} MiB), "
              f"as a Python set of tuples RSS +{as_set / 2**20:.1f} MiB ({as_set / n:.0f} B a key)")

if __name__ == "__main__":
    main()
