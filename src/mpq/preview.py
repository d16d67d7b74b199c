"""What a run would do, before it does it (`mpq-ray plan`), and where an output stands
(`mpq-ray status OUTPUT`): rows to compute and already done per dataset, codec and task,
counted as `run` counts them (the same plan, the same done keys), and an estimate of the
serial engine's time on this machine from a few samples through its stage objects.
Nothing here writes into the output: no results, no lease, no encoded cache, no notes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mpq.engine.plan import Planner, chunks, shards
from mpq.job import Job, resolve
from mpq.results import ResultStore, check_location, check_redo
from mpq.runner import required_metric_columns
from mpq.spec import JobSpec


@dataclass
class Line:
    """One (dataset, codec, task): its settings, samples with work left, rows to compute and done."""

    dataset: str
    codec: str
    task: str
    settings: int
    samples: int = 0
    todo: int = 0
    done: int = 0


@dataclass
class Plan:
    lines: list[Line]
    samples: dict[str, int]  # per dataset: samples with work left
    first: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # per dataset: its first plan items (calibration)

    @property
    def todo(self) -> int:
        return sum(line.todo for line in self.lines)

    @property
    def done(self) -> int:
        return sum(line.done for line in self.lines)


def plan(spec: JobSpec, output: str, limit: int | None = None, redo: tuple[str, ...] = (), keep: int = 2) -> Plan:
    """The work ``run_job(spec, output, limit=limit, redo=redo)`` would do now, and up to
    ``keep`` plan items per dataset for a calibration."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be 1 or more, got {limit}")
    check_redo(redo)
    check_location(output)  # reads only: a missing output is an empty one
    job = resolve(spec)
    todo = shards(job, limit)
    for name, dataset in job.datasets.items():  # as `run` refuses it
        if not any(s.dataset == name for s in todo):
            raise ValueError(f"dataset {name!r} has no samples ({dataset.source.describe()})")
    planner = Planner(job, output, required_metric_columns(job), ResultStore(output).files(), redo)
    lines: dict[tuple[str, str, str], Line] = {}
    for name in job.datasets:
        combos, tasks = planner.combos(name)
        for codec in dict.fromkeys(c for c, _ in combos):
            for task in tasks:
                lines[(name, codec, task)] = Line(name, codec, task, sum(c == codec for c, _ in combos))
    out = Plan(list(lines.values()), dict.fromkeys(job.datasets, 0))
    for part in chunks(todo):
        for shard, items in zip(part, planner.items(part)):
            combos, tasks = planner.combos(shard.dataset)
            n = shard.stop - shard.start
            for codec, _ in combos:
                for task in tasks:
                    lines[(shard.dataset, codec, task)].done += n
            out.samples[shard.dataset] += len(items)
            kept = out.first.setdefault(shard.dataset, [])
            kept += items[: keep - len(kept)]
            for item in items:
                seen = set()
                for codec, _, unit_tasks in item["units"]:
                    for task in unit_tasks or [""]:
                        line = lines[(shard.dataset, codec, task)]
                        line.todo, line.done = line.todo + 1, line.done - 1
                        if (codec, task) not in seen:
                            seen.add((codec, task))
                            line.samples += 1
    return out


@dataclass
class Estimate:
    setup: float  # seconds: building the stages, loading models and codecs (once per process)
    first_use: float  # seconds: the first sample's extra time (each stage's first call), once per dataset
    per_sample: dict[str, dict[str, float]]  # dataset -> stage -> seconds per calibration sample
    total: float  # seconds for the remaining work, setup included
    samples: int  # calibration samples run


def calibrate(job: Job, found: Plan) -> Estimate:
    """Time the serial engine's stages (engine/serial.py) on ``found.first``'s items here and scale
    each dataset's times to its remaining work: loading by samples left, the other stages by
    rows left. Models, codecs and metrics are loaded first and timed apart (``setup``), and so is
    the first sample's extra time (``first_use``) where a dataset has more than one."""
    from mpq.engine.stages import Encode, Load, Measure, Predict

    if not any(found.first.values()):
        return Estimate(0.0, 0.0, {}, 0.0, 0)
    start = time.perf_counter()
    stages: dict[str, Any] = {"load": Load(job), "encode": Encode(job)}  # no cache: nothing written
    stages.update({f"task {t}": Predict(job, t) for t in job.tasks})
    stages["measure"] = Measure(job)
    for name, stage in stages.items():
        if name.startswith("task "):
            stage.load()
    _ = stages["encode"].codecs, stages["measure"].metrics  # cached properties: built here, not in the first sample's time
    setup = time.perf_counter() - start
    per_sample, first_use, total, runs = {}, 0.0, setup, 0
    for dataset, items in found.first.items():
        if not items:
            continue
        timed = []  # per item: seconds per stage
        for item in items:
            rows, times = [item], {}
            for name, stage in stages.items():
                t = time.perf_counter()
                rows = stage(rows)
                times[name] = time.perf_counter() - t
            timed.append(times)
        runs += len(items)
        if len(items) > 1:  # the first sample pays each stage's first call (lazy imports, kernels): once, not per sample
            first, timed, items = timed[0], timed[1:], items[1:]
            first_use += max(0.0, sum(first.values()) - sum(sum(t.values()) for t in timed) / len(timed))
        mean = {name: sum(t[name] for t in timed) / len(timed) for name in stages}
        own = {f"task {t.task_id}" for t in job.datasets[dataset].tasks}
        per_sample[dataset] = {name: s for name, s in mean.items() if not name.startswith("task ") or name in own}
        rows_timed = sum(max(1, len(tasks)) for i in items for _, _, tasks in i["units"]) / len(items)  # per sample
        rows_left = sum(line.todo for line in found.lines if line.dataset == dataset)
        total += mean["load"] * found.samples[dataset]
        total += sum(s for name, s in mean.items() if name != "load") / rows_timed * rows_left
    return Estimate(setup, first_use, per_sample, total + first_use, runs)


@dataclass
class OutputState:
    rows: int  # one per key: the last row written of each
    on_disk: int  # every row in the files, superseded ones included
    by_dataset: list[tuple[str, int, int]]  # dataset, rows, error rows
    errors: Any  # reading.error_kinds: kind, rows, one example (sample_id, error)
    holder: str | None  # the run holding the output's lease, if one does


def output_state(output: str) -> OutputState:
    """What an output holds, read as the summary and the report read it (no lease taken)."""
    import polars as pl
    import pyarrow.parquet as pq

    from mpq.lease import LEASE, Holder
    from mpq.reading import error_kinds, read_results
    from mpq.storage import filesystem

    check_location(output)
    store = ResultStore(output)
    on_disk = 0
    for path in store.files():
        with store.fs.open_input_file(path) as f:
            on_disk += pq.ParquetFile(f).metadata.num_rows
    df = read_results(output)
    by_dataset = []
    if not df.is_empty():
        counts = df.group_by("dataset", maintain_order=True).agg(pl.len(), pl.col("error").is_not_null().sum())
        by_dataset = [(d, int(n), int(e)) for d, n, e in counts.sort("dataset").iter_rows()]
    fs, root = filesystem(output)
    holder = None
    try:
        with fs.open_input_stream(f"{root.rstrip('/')}/{LEASE}") as f:
            found = Holder.parse(f.read())
        holder = found.describe() if found else f"unreadable {LEASE}"
    except FileNotFoundError:
        pass
    return OutputState(df.height, on_disk, by_dataset, error_kinds(df), holder)
