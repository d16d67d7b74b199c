"""The Ray engine: the stages as one streaming Ray Data graph.

Working rows travel between stages a record per sample: its media in their Arrow form
(``media.ARROW``, its original once however many codec settings it has) and its rows
pickled beside them; only the final result rows are columnar. Batch sizes of GPU actors (a task's
``batch_size``, ``metric_batch_size``, ``codec_batch_size``) so count samples between stages;
each stage then batches its own model calls. The plan streams
in through read tasks that plan shards of the datasets on the workers (``plan.Planner``), a
block per shard (32 cheap images, or one costly sample). Loading and coding run as CPU
tasks, a block per task; neural codecs (where the cluster has GPUs), model and metric stages
run in actor pools (on GPUs when the cluster has them) that load their models once.
Consecutive stages that need the same resources share one actor: on a cluster without GPUs
that is every one of them, and Ray Data then fuses loading and coding into that actor
too, so each sample goes through the whole pipeline in one process, without moving its
media through the object store, on as many actors as there are CPUs. The last stage
turns rows into result rows, so only those reach the driver, which hands them to the
sink as they stream out; the dataset is never materialised.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import io
import itertools
import logging
import math
import os
import pickle
import re
import signal
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import pyarrow as pa
from ray.data import Datasource, ReadTask

from mpq.cache import EncodedCache
from mpq.engine import cluster_address, verbose
from mpq.engine.inflight import InFlight
from mpq.engine.plan import CHUNK, Planner, Shard, chunks
from mpq.engine.stages import Encode, Finalize, Load, Measure, Predict
from mpq.job import resolve
from mpq.media import ARROW, Media
from mpq.results import BASELINE
from mpq.spec import JobSpec

# A record per sample: its media in their Arrow form (each object once, however many of its
# rows hold it), and its rows pickled together beside them with each media object replaced by
# its index in that list. The rest of a working row is plain values (ids, settings, targets,
# result columns) whose keys grow stage by stage: pickled, it needs no schema per stage.
SCHEMA = pa.schema([("rows", pa.large_binary()), ("media", pa.list_(ARROW))])
# Ray Data retries the work of a dead worker without end (max_retries, max_restarts and
# max_task_retries all -1), and it stays so: a remote argument that one stage sets and the
# next does not stops Ray Data fusing loading and coding into the actors, and on a cluster
# without GPUs those tasks then wait for CPUs the actors hold (the poison job of
# tests/test_robust.py started no block in 7 minutes). mpq's own notes (inflight.py) bound
# the tries instead, across runs too: TRIES per sample.
# Shards per Ray Data execution. Ray Data keeps, in the driver, a stats record (~10 KB) of
# every block each operator outputs until its dataset is gone, with no switch to turn it
# off: a million-sample job grew the driver by 320 MiB in one execution. Runs of more shards
# than this go through consecutive executions of this many, so the driver stays flat (a
# window drains before the next starts: at 2,048 blocks a cost of about one block per worker).
WINDOW = 2048


class _Pickler(pickle.Pickler):
    """Pickles rows with each media object they hold replaced by its index in ``media``."""

    def __init__(self, file):
        super().__init__(file, protocol=5)
        self.media: list[Media] = []
        self.index: dict[int, int] = {}

    def persistent_id(self, obj):
        if not isinstance(obj, Media):
            return None
        if id(obj) not in self.index:
            self.index[id(obj)] = len(self.media)
            self.media.append(obj)
        return self.index[id(obj)]


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, media: list[Media]):
        super().__init__(file)
        self.media = media

    def persistent_load(self, pid):
        return self.media[pid]


def _pack(rows: list[dict[str, Any]]) -> pa.Table:
    """A record per sample, so the original its rows share crosses the object store once (not
    once per codec setting) and arrives as one object again."""
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        samples.setdefault((r["dataset"], r["sample_id"]), []).append(r)
    blobs, media = [], []
    for sample in samples.values():
        buf = io.BytesIO()
        pickler = _Pickler(buf)
        pickler.dump(sample)
        blobs.append(buf.getvalue())
        media.append([m.to_arrow() for m in pickler.media])
    return pa.table({"rows": blobs, "media": media}, schema=SCHEMA)


def _unpack(batch: pa.Table) -> list[dict[str, Any]]:
    rows = []
    for blob, media in zip(batch.column("rows").to_pylist(), batch.column("media").to_pylist()):
        rows += _Unpickler(io.BytesIO(blob), [Media.from_arrow(m) for m in media]).load()
    return rows


def _run(batch: pa.Table, stages: list, finalize: Finalize | None, in_flight: InFlight | None = None) -> pa.Table:
    def work(rows):
        for stage in stages:
            rows = stage(rows)
        return rows

    rows = _unpack(batch)
    rows = in_flight.run(rows, work) if in_flight else work(rows)
    return _pack(rows) if finalize is None else finalize(rows)


class _Actor:
    """Stage objects built once per actor (model loading happens here), run in order."""

    def __init__(self, specs: list[tuple], finalize: Finalize | None, threads: int, in_flight: InFlight | None = None):
        import torch

        torch.set_num_threads(threads)
        self.stages = [cls(*args) for cls, args in specs]
        self.finalize, self.in_flight = finalize, in_flight

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _run(batch, self.stages, self.finalize, self.in_flight)


@dataclass
class _Group:
    """Model/metric stages sharing one actor pool: same CPUs and GPUs per actor."""

    cpus: float
    gpus: float
    pool: Any  # the job's actor-pool setting of its first stage that has one: n, (min, max) or None (auto)
    batch_size: int
    specs: list[tuple] = field(default_factory=list)


def _gpu_codecs(job: JobSpec, has_gpu: bool) -> set[str]:
    """The neural codecs that code in a GPU actor pool: all of them where the cluster has GPUs
    and the job gives the pool some (``codec_gpus``); else none, and they code in CPU tasks."""
    if not (has_gpu and job.resources.codec_gpus):
        return set()
    return {name for name, c in resolve(job).codecs.items() if c.cls.runs_on == "gpu"}


def _groups(job: JobSpec, has_gpu: bool, cache: EncodedCache | None = None) -> list[_Group]:
    res = job.resources
    stages = []
    if neural := _gpu_codecs(job, has_gpu):
        stages.append((res.codec_gpus, res.codec_actors, res.codec_batch_size,
                       (Encode, (job, cache, neural, None, res.codec_batch_size))))
    # On a GPU actor the device is the one torch sees there (None): a GPU that Ray counts but
    # torch cannot reach (a node that declares GPUs it lacks) leaves the work on the CPU.
    for task in job.tasks:
        gpus = res.model_gpus if has_gpu else 0
        stages.append((gpus, res.model_actors, task.batch_size, (Predict, (job, task.task_id, None if gpus else "cpu"))))
    if job.metrics:
        gpus = res.metric_gpus if has_gpu else 0
        stages.append((gpus, res.metric_actors, res.metric_batch_size, (Measure, (job, None if gpus else "cpu"))))
    groups: list[_Group] = []
    for gpus, pool, batch, spec in stages:
        cpus = 0 if gpus else res.codec_cpus
        if not groups or (groups[-1].cpus, groups[-1].gpus) != (cpus, gpus):
            groups.append(_Group(cpus, gpus, pool, batch))
        groups[-1].pool = groups[-1].pool if groups[-1].pool is not None else pool  # the first stage's that sets one
        groups[-1].batch_size = max(groups[-1].batch_size, batch)
        groups[-1].specs.append(spec)
    return groups


def _pool(group: _Group, cluster: dict[str, float], shared: bool):
    """The job's pool size, or by default as many actors as the cluster's GPUs (CPUs for CPU
    actors) hold; autoscaling from one when other operators need the same resource."""
    import ray.data

    if group.pool is not None:
        lo, hi = (group.pool, group.pool) if isinstance(group.pool, int) else group.pool
    else:
        kind, each = ("GPU", group.gpus) if group.gpus else ("CPU", group.cpus)
        hi = max(1, math.floor(cluster.get(kind, 0) / each))
        lo = 1 if shared else hi
    return ray.data.ActorPoolStrategy(min_size=lo, max_size=hi)


def _available(resource: str) -> bool:
    """Whether the cluster has the resource now, or its autoscaler can add nodes that have it."""
    import ray

    if ray.cluster_resources().get(resource, 0) > 0:
        return True
    try:  # the autoscaler's node types (what Ray Data itself consults to plan for autoscaling)
        most = ray._private.state.state.get_max_resources_from_cluster_config() or {}
    except Exception:  # no autoscaler, or an older Ray
        most = {}
    return most.get(resource, 0) > 0


def _few_malloc_arenas() -> None:
    """glibc gives threads that allocate malloc arenas of their own (up to 8 per core); with Ray's
    core-worker threads and Arrow's in the driver, memory freed after each execution window stays
    scattered over them: the driver grew ~1 MiB per window (100,000 samples) with no more live
    data, flat with two arenas (what ``MALLOC_ARENA_MAX=2`` does). The driver's threads mostly
    wait, so they lose nothing by sharing. An explicit ``MALLOC_ARENA_MAX`` is left to glibc."""
    if sys.platform.startswith("linux") and "MALLOC_ARENA_MAX" not in os.environ:
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl has no mallopt)
            ctypes.CDLL(None).mallopt(-8, 2)  # mallopt(M_ARENA_MAX, 2)


def init_ray(address: str | None = None) -> None:
    import ray

    if ray.is_initialized():
        return
    address = cluster_address(address)
    _few_malloc_arenas()  # before ray.init starts the core worker's threads
    term = signal.getsignal(signal.SIGTERM)
    ray.init(
        address=address or "local",  # none given: a cluster of the run's own, not one found running here
        logging_level="ERROR",
        # Workers' output (models' download and conversion bars...) stays in their log files
        # in Ray's log folder; mpq reports what went wrong with a sample in its row.
        log_to_driver=verbose(),
        # A cluster of the run's own shows no dashboard unless --verbose: mpq shows its progress,
        # and the dashboard's 9 processes took 3 s of Ray's 10 s start on 2 cores.
        include_dashboard=verbose() if address is None else None,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
    )
    # ray.init makes SIGTERM exit at once; one the caller set (`mpq-ray run`: an orderly stop) stays.
    if term not in (signal.SIG_DFL, None) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, term)


def start_ray(address: str | None = None) -> None:
    """The cluster, and Ray Data set to keep its progress bars and notes to itself."""
    import ray.data

    init_ray(address)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # mpq shows its own
    ctx.print_on_execution_start = False
    if not verbose():  # Ray Data's notes go to its log file (ray-data.log) only
        for handler in logging.getLogger("ray.data").handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=r"ray\.data\.")  # e.g. fewer samples than actors


# A line of Ray's C++ log ("[2026-01-01 12:00:00,000 E 123 123] core_worker.cc:2465: ...").
_NATIVE_LOG_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\] \S+:\d+: ")


@contextlib.contextmanager
def _without_native_log_lines() -> Iterator[None]:
    """Ray's core worker in this process writes its errors both to its log file in Ray's
    log folder (python-core-driver-*.log) and to file descriptor 2, where Python's own
    stderr goes too: route descriptor 2 through a pipe that drops those lines."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    out_fd = os.dup(terminal)  # the thread's own, so that closing `terminal` cannot race it

    def forward():
        with os.fdopen(read, "rb") as lines, os.fdopen(out_fd, "wb", buffering=0) as out:
            for line in lines:
                if not _NATIVE_LOG_LINE.match(line):
                    out.write(line)

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # closes the pipe's last write end: the thread reads to the end
        os.close(terminal)
        thread.join(timeout=5)


class PlanDatasource(Datasource):
    """The plan as a Ray Data source: each read task plans a part of the shards (``Planner.items``;
    the results' keys read once per worker process), and its block of plan items is split a
    shard a block."""

    def __init__(self, planner: Planner, plan: list[Shard], readers: int):
        super().__init__()
        self.planner = planner
        # Parts of `size` shards of one dataset (at most CHUNK, and enough parts to keep the
        # readers busy), the datasets taking turns as they do in the plan.
        self.size = max(1, min(CHUNK, math.ceil(len(plan) / readers)))
        per_dataset: dict[str, list[Shard]] = {}
        for shard in plan:
            per_dataset.setdefault(shard.dataset, []).append(shard)
        turns = itertools.zip_longest(*(chunks(shards, self.size) for shards in per_dataset.values()))
        self.parts = [part for turn in turns for part in turn if part is not None]

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list[ReadTask]:
        from ray.data.block import BlockMetadata

        planner = self.planner

        def read(part: list[Shard]) -> Iterator[pa.Table]:
            items = [item for shard in planner.items(part) for item in shard]
            if items:
                yield _pack(items)

        return [
            ReadTask(functools.partial(read, part), BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None))
            for part in self.parts
        ]


def plan_dataset(planner: Planner, plan: list[Shard], readers: int):
    """The plan's blocks, read by at most ``readers`` read tasks at a time."""
    import ray.data

    source = PlanDatasource(planner, plan, readers)
    # A read task's output is one block (Ray Data joins what it yields), which Ray Data splits
    # into equal parts to make the number of blocks asked for: a block per shard.
    return ray.data.read_datasource(
        source, num_cpus=0, concurrency=readers, override_num_blocks=len(source.parts) * source.size
    )


def run_ray(
    job: JobSpec, planner: Planner, plan: list[Shard], finalize: Finalize, address: str | None = None,
    cache: EncodedCache | None = None, output: str | None = None,
) -> Iterator[pa.Table]:
    import ray

    own = cluster_address(address) is None and not ray.is_initialized()
    start_ray(address)
    try:
        with _without_native_log_lines():
            for window in chunks(plan, WINDOW):
                ds = _dataset(job, planner, window, finalize, cache, output)
                yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)
                # Its stats with it before the next window starts: the execution's objects hold
                # reference cycles, which only a full collection (rare by itself) frees.
                del ds
                gc.collect()
    except (KeyboardInterrupt, GeneratorExit):
        # An orderly stop. Ray kills workers without letting them clean up: those of a cluster
        # of the run's own go now, before the runner sets back the tries they had in hand
        # (inflight.forget); a given cluster's go when the driver does.
        if own:
            ray.shutdown()
        raise


def _dataset(
    job: JobSpec, planner: Planner, plan: list[Shard], finalize: Finalize, cache: EncodedCache | None, output: str | None,
):
    """The stage graph as a Ray Data dataset, placed on what the cluster has."""
    import ray
    import ray.data

    cluster = ray.cluster_resources()
    has_gpu = _available("GPU")
    groups = _groups(job, has_gpu, cache)
    # Classic codecs (and neural ones, without a GPU pool) code in CPU tasks, on the CPU.
    neural = _gpu_codecs(job, has_gpu)
    cpu_codecs = {BASELINE, *(c.name for c in job.codecs if c.name not in neural)} if neural else None
    codec_resources = {k: v for k, v in job.resources.codec_resources.items() if _available(k)} or None

    def in_flight(stage: int) -> InFlight | None:
        return InFlight(output, stage, finalize.run_id) if output is not None else None

    # The plan streams in: read tasks plan chunks of shards on the workers, a block per shard.
    # Planning is light (ids and a read of the results' keys): it takes no CPU, which the actor
    # pools may all hold. Taking none, every read task would run at once, each in a worker
    # process of its own that imports Ray Data and mpq (the smoke job: 28 processes on 2 CPUs,
    # beside the actors loading their models); a few at a time plan fast enough.
    ds = plan_dataset(planner, plan, readers=max(1, int(cluster.get("CPU", 0)) // 8))
    ds = ds.map_batches(
        _run, fn_kwargs={"stages": [Load(job), Encode(job, cache, cpu_codecs, "cpu")], "finalize": None if groups else finalize,
                         "in_flight": in_flight(0)},
        batch_size=None, batch_format="pyarrow", num_cpus=job.resources.codec_cpus, resources=codec_resources,
    )
    for i, group in enumerate(groups):
        # Does it share its resource? GPU pools with each other; CPU actors next to GPUs with coding.
        shared = any(bool(g.gpus) == bool(group.gpus) for g in groups if g is not group) or (has_gpu and not group.gpus)
        last = i == len(groups) - 1
        ds = ds.map_batches(
            _Actor, fn_constructor_args=(group.specs, finalize if last else None, max(1, int(group.cpus)), in_flight(i + 1)),
            # On CPUs a call takes whatever block arrives (a shard's rows); GPUs get full batches.
            batch_size=group.batch_size if group.gpus else None, batch_format="pyarrow",
            compute=_pool(group, cluster, shared), num_cpus=group.cpus, num_gpus=group.gpus,
        )
    return ds
