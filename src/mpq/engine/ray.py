"""The Ray engine: the stages as one streaming Ray Data graph, placed on what the cluster has
(docs/pipeline.md draws it). Read tasks plan the shards (datasource.py); loading and coding run
in CPU tasks; neural codecs (where there are GPUs), models and metrics in actor pools
(placement.py) that load their models once, consecutive stages of the same resources in one
actor (without GPUs Ray Data fuses loading and coding into it too: a sample then goes through
the whole pipeline in one process, its media never in the object store). Only result rows reach
the driver, which hands them to the sink as they stream out; the dataset is never materialised."""

from __future__ import annotations

import gc
from typing import Iterator

import pyarrow as pa

from mpq.cache import EncodedCache
from mpq.engine import cluster_address
from mpq.engine.datasource import plan_dataset
from mpq.engine.inflight import InFlight
from mpq.engine.placement import available, gpu_codecs, groups, pool
from mpq.engine.plan import Planner, Shard, chunks
from mpq.engine.ray_process import start_ray, without_native_log_lines
from mpq.engine.stages import Encode, Finalize, Load, through
from mpq.engine.transport import pack, unpack
from mpq.job import Job
from mpq.results import BASELINE

# Ray Data retries the work of a dead worker without end, and it stays so: a remote argument that
# one stage sets and the next does not stops Ray Data fusing loading and coding into the actors,
# and without GPUs those tasks then wait for CPUs the actors hold (the poison job of
# tests/test_robust.py started no block in 7 minutes). mpq's own notes (inflight.py) bound the
# tries instead, across runs too: TRIES per sample.
# Shards per Ray Data execution. Ray Data keeps, in the driver, a stats record (~10 KB) of
# every block each operator outputs until its dataset is gone, with no switch to turn it
# off: a million-sample job grew the driver by 320 MiB in one execution. Runs of more shards
# than this go through consecutive executions of this many, so the driver stays flat (a
# window drains before the next starts: at 2,048 blocks a cost of about one block per worker).
WINDOW = 2048


def _run(batch: pa.Table, stages: list, finalize: Finalize | None, in_flight: InFlight | None = None) -> pa.Table:
    rows = through(stages, unpack(batch), in_flight)
    return pack(rows) if finalize is None else finalize(rows)


class _Actor:
    """Stage objects built once per actor (model loading happens here), run in order."""

    def __init__(self, specs: list[tuple], finalize: Finalize | None, threads: int, in_flight: InFlight | None = None):
        import torch

        torch.set_num_threads(threads)
        self.stages = [cls(*args) for cls, args in specs]
        self.finalize, self.in_flight = finalize, in_flight

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _run(batch, self.stages, self.finalize, self.in_flight)


def run(
    job: Job, planner: Planner, plan: list[Shard], finalize: Finalize, cache: EncodedCache | None = None,
    output: str | None = None, address: str | None = None,
) -> Iterator[pa.Table]:
    """The engines' one call shape (engine/serial.py has the same): the result tables of
    ``plan``'s work, as they come. ``address``: the cluster to join (None: ``RAY_ADDRESS``, else
    a cluster of the run's own)."""
    import ray

    own = cluster_address(address) is None and not ray.is_initialized()
    start_ray(address)
    try:
        with without_native_log_lines():
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
        # (inflight.forget); a given cluster's go when the driver does (inflight.settle).
        if own:
            ray.shutdown()
        raise


def _dataset(
    job: Job, planner: Planner, plan: list[Shard], finalize: Finalize, cache: EncodedCache | None, output: str | None,
):
    """The stage graph as a Ray Data dataset, placed on what the cluster has."""
    import ray

    cluster = ray.cluster_resources()
    has_gpu = available("GPU")
    actors = groups(job, has_gpu, cache)
    res = job.spec.resources
    # Classic codecs (and neural ones, without a GPU pool) code in CPU tasks, on the CPU.
    neural = gpu_codecs(job, has_gpu)
    cpu_codecs = {BASELINE, *(name for name in job.codecs if name not in neural)} if neural else None
    codec_resources = {k: v for k, v in res.codec_resources.items() if available(k)} or None

    def in_flight(stage: int) -> InFlight | None:
        return InFlight(output, stage, finalize.run_id) if output is not None else None

    # The plan streams in: read tasks plan chunks of shards on the workers, a block per shard.
    # Planning is light (ids and a read of the results' keys): it takes no CPU, which the actor
    # pools may all hold. Taking none, every read task would run at once, each in a worker
    # process of its own that imports Ray Data and mpq (the smoke job: 28 processes on 2 CPUs,
    # beside the actors loading their models); a few at a time plan fast enough.
    ds = plan_dataset(planner, plan, readers=max(1, int(cluster.get("CPU", 0)) // 8))
    ds = ds.map_batches(
        _run, fn_kwargs={"stages": [Load(job), Encode(job, cache, cpu_codecs, "cpu")], "finalize": None if actors else finalize,
                         "in_flight": in_flight(0)},
        batch_size=None, batch_format="pyarrow", num_cpus=res.codec_cpus, resources=codec_resources,
    )
    for i, group in enumerate(actors):
        # Does it share its resource? GPU pools with each other; CPU actors next to GPUs with coding.
        shared = any(bool(g.gpus) == bool(group.gpus) for g in actors if g is not group) or (has_gpu and not group.gpus)
        last = i == len(actors) - 1
        ds = ds.map_batches(
            _Actor, fn_constructor_args=(group.specs, finalize if last else None, max(1, int(group.cpus)), in_flight(i + 1)),
            # On CPUs a call takes whatever block arrives (a shard's rows); GPUs get full batches.
            batch_size=group.batch_size if group.gpus else None, batch_format="pyarrow",
            compute=pool(group, cluster, shared), num_cpus=group.cpus, num_gpus=group.gpus,
        )
    return ds
