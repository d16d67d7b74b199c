"""Running a job: check, plan against what is already written, stream through an engine, sink."""

from __future__ import annotations

import importlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa

from mpq.cache import EncodedCache
from mpq.components import AssetUnavailable, offline
from mpq.engine import choose, cluster_address, cpus, gpus
from mpq.engine.inflight import forget, settle
from mpq.engine.plan import Planner, count, shards
from mpq.engine.stages import Finalize
from mpq.job import Job, resolve
from mpq.lease import Lease
from mpq.results import ResultStore, check_location, check_redo
from mpq.spec import JobSpec

# A killed run loses at most this much work; MPQ_FLUSH_ROWS lets tests commit often.
FLUSH_ROWS, FLUSH_SECONDS = int(os.environ.get("MPQ_FLUSH_ROWS", 512)), 10.0


_stopping = threading.Event()


def stop(signum, frame) -> None:
    """``mpq-ray run``'s handler of SIGINT and SIGTERM (Ctrl-C, ``mpq-ray stop``, a scheduler):
    an orderly stop. KeyboardInterrupt wherever the main thread is, and a flag the sink checks
    after each result table: a library may swallow the exception (numpy's lazy first
    ``import numpy.random`` did), and the run then stops once the work in hand is done."""
    _stopping.set()
    raise KeyboardInterrupt


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, made one by ``mpq-ray run``) ended the run in order: the work it
    interrupted is not counted as a try (engine/inflight.py); ``written`` rows are in the results."""

    def __init__(self, written: int):
        super().__init__(written)
        self.written = written


@dataclass
class RunStats:
    output: str
    samples: int  # samples with work left, each through every codec setting and task
    already_done: int
    expected: int
    written: int
    errors: int
    seconds: float = 0.0  # from the plan to the last row written
    startup_seconds: float = 0.0  # until the first result rows arrived (engine start, model loading)
    engine: str = ""  # the engine that ran
    why: str = ""  # why that one: `--engine ray`, `auto: 2 CPUs, no GPU, no cluster`


def required_metric_columns(job: Job) -> dict[str, set[str]]:
    """Per dataset, the columns of the metrics the job computes on it."""
    return {name: d.metric_columns for name, d in job.datasets.items()}


def check_assets(job: Job) -> None:
    """Fail when an asset the job names cannot be had (offline and not cached, typo): all of
    them at once, not one per attempt."""
    missing = []
    for asset in job.assets():
        try:
            asset.check()
        except AssetUnavailable as exc:
            missing.append(str(exc))
    if missing:
        raise AssetUnavailable("\n".join(missing))


def preflight(job: Job, assets: bool = True) -> None:
    """Fail before any work when an asset the job names cannot be had (``assets``), or a
    model or codec refuses the job's datasets or settings."""
    if assets:
        check_assets(job)
    for task_id, entry in job.tasks.items():
        task = entry.build()
        task.preflight()
        for dataset in job.datasets.values():
            if any(t.task_id == task_id for t in dataset.tasks):
                task.check_dataset(dataset.name, dataset.source)
    for codec in job.codecs.values():
        codec.build().preflight(list(codec.settings))


def run_job(
    spec: JobSpec,
    output: str,
    engine: str = "auto",
    limit: int | None = None,
    address: str | None = None,
    progress: bool = True,
    force: bool = False,
    redo: tuple[str, ...] = (),
) -> RunStats:
    """``engine``: auto, ray or serial (``mpq.engine.choose``). ``force`` takes over the output's
    lease from a run that is gone but refreshed it lately; ``redo``: error kinds whose rows are
    computed again (``results.retryable``).

    What can be answered without the models is answered first, without loading them (or
    importing torch or Ray): a bad engine or limit, an output that cannot be written, an
    empty dataset, and a resume with nothing left to do."""
    engine, why = choose(engine, cluster_address(address), cpus(), gpus())
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be 1 or more, got {limit}")
    check_redo(redo)
    check_location(output, write=True)
    job = resolve(spec)
    if offline():  # cache lookups only: every missing model and dataset named before any is listed
        check_assets(job)
    todo = shards(job, limit)
    for name, dataset in job.datasets.items():
        if not any(s.dataset == name for s in todo):
            raise ValueError(f"dataset {name!r} has no samples ({dataset.source.describe()})")
    store = ResultStore(output)
    required, files = required_metric_columns(job), store.files()
    planner = Planner(job, output, required, files, redo)
    work = count(planner, todo)
    if work.samples:
        preflight(job, assets=not offline())  # the models' checks: only where there is work for them
    with Lease(output, store.run_id, force) as lease:  # one writer per output, from the plan to the last row
        start = time.monotonic()
        settle(output)  # tries that workers of a run stopped before this one noted after its stop
        if store.files() != files:  # another run wrote since the count: plan against its rows too
            planner = Planner(job, output, required, store.files(), redo)
            work = count(planner, todo)
        finalize = Finalize(job, store.run_id)
        cache = EncodedCache(output) if spec.cache else None
        if not work.samples:
            stream: Iterator[pa.Table] = iter(())
        else:  # the engine's module, imported only now (Ray, torch): both have one call shape
            run = importlib.import_module(f"mpq.engine.{engine}").run
            stream = run(job, planner, todo, finalize, cache, output, address)
        try:
            written, errors, first = _sink(stream, store, lease, work.rows, progress, f"{spec.name} ({engine})")
        except Interrupted:
            getattr(stream, "close", lambda: None)()  # the engine stops its workers
            forget(output, store.run_id)  # the tries they had in hand do not count
            raise
    end = time.monotonic()
    return RunStats(output, work.samples, work.done, work.rows, written, errors, end - start, (first or end) - start,
                    engine, why)


def _sink(
    stream: Iterator[pa.Table], store: ResultStore, lease: Lease, expected: int, progress: bool, label: str
) -> tuple[int, int, float | None]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    pending: list[pa.Table] = []
    written = errors = 0
    last, first = time.monotonic(), None
    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not progress,
    )

    def flush():
        nonlocal pending, last
        if pending:
            lease.check()
            store.write(pa.concat_tables(pending))
            pending, last = [], time.monotonic()

    with bar:
        task = bar.add_task(label, total=expected)
        try:
            for table in stream:
                first = first or time.monotonic()
                pending.append(table)
                written += table.num_rows
                errors += table.num_rows - table.column("error").null_count
                bar.update(task, advance=table.num_rows)
                if sum(t.num_rows for t in pending) >= FLUSH_ROWS or time.monotonic() - last > FLUSH_SECONDS:
                    flush()
                if _stopping.is_set():
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            flush()  # the rows that arrived are whole results: kept
            raise Interrupted(written) from None
        flush()
    return written, errors, first
