"""The Ray engine's head start: results while Ray starts a cluster of the run's own.

Before its first row, a Ray run on a cluster it starts itself pays for Ray's own start: the
cluster (GCS, raylet, agents), then a worker process per actor and per Ray Data helper actor,
each importing Ray Data (about 25 s on 2 cores, where the serial engine has its first rows
in 7). mpq's own start (torch, the models) only comes after. So one worker process of mpq's
own works the plan's last shards the serial way and hands its rows to the driver; Ray
starts once it has its first rows (on a small machine two starts at once share its cores,
and both come later), and from then on the worker runs at a low priority (nice 10). Ray's
read tasks and that worker claim each shard before working on it, so every shard is worked
once; the worker stops at Ray's first rows. A sample that kills the worker costs it the way
it costs a Ray worker (inflight.py): the worker starts again, and the sample's rows become
``worker died`` errors once its tries are used up.

Only where the run starts its cluster here: a cluster given by ``--address``/``RAY_ADDRESS``
(or one ``ray start`` left running) has paid its start already and may span machines, where
a claim in this machine's temporary folder would not be seen. ``MPQ_HEAD_START=0`` turns
it off.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import shutil
import signal
import tempfile
import threading
from typing import Any, Iterator

import pyarrow as pa

from mpq.cache import EncodedCache
from mpq.engine import starts_own_cluster, verbose
from mpq.engine.plan import Claims, Planner, Shard
from mpq.engine.stages import Finalize
from mpq.spec import JobSpec


NICE = 10  # the worker's, once Ray starts


def wanted(address: str | None, plan: list[Shard]) -> bool:
    """A head start is worth it where the run starts its own cluster and has shards for both."""
    return os.environ.get("MPQ_HEAD_START", "1") != "0" and len(plan) > 1 and starts_own_cluster(address)


def _serve(conn, spec: JobSpec, finalize: Finalize, output: str, quiet: bool, nice: int) -> None:
    """The worker process: plan items in, their result rows out, until the driver hangs up."""
    from mpq.engine.serial import SerialWork

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    os.nice(nice)
    if quiet:  # as Ray workers' output goes to their log files: models' bars and notes
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
    work = SerialWork(spec, finalize, EncodedCache(output) if spec.cache else None, output)
    while True:
        try:
            items = conn.recv()
        except EOFError:
            return
        conn.send(pa.concat_tables([work(item) for item in items]))


class LocalWorker:
    """One worker process of mpq's own (spawned: the driver's threads are not forked)."""

    def __init__(self, spec: JobSpec, finalize: Finalize, output: str, quiet: bool):
        self.args = (spec, finalize, output, quiet)
        self.conn = self.process = None
        self.deaths, self.nice = 0, 0

    def yield_cpu(self) -> None:
        """From now on at a low priority, every thread of the process (torch's too): Ray gives its
        processes fixed times to start (30 s for its agents), which a worker loading models
        beside them made it miss on a loaded 2-core machine."""
        self.nice = NICE
        if self.process is not None:
            with contextlib.suppress(OSError):  # not Linux, or the process just ended
                for thread in os.listdir(f"/proc/{self.process.pid}/task"):
                    with contextlib.suppress(OSError):
                        os.setpriority(os.PRIO_PROCESS, int(thread), max(NICE, os.getpriority(os.PRIO_PROCESS, int(thread))))

    def _start(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, *self.args, self.nice), name="mpq-head-start", daemon=True)
        self.process.start()
        child.close()  # the child's end lives in the child only: its death reads as EOF here

    def run(self, items: list[dict[str, Any]]) -> pa.Table:
        """The shard's result rows. A death starts a new process on the same items: each try at a
        sample is noted in the output (inflight.py), so the one that kills becomes error rows."""
        from mpq.engine.serial import TRIES

        for _ in range(TRIES * len(items) + 1):
            if self.process is None:
                self._start()
            try:
                self.conn.send(items)
                return self.conn.recv()
            except (EOFError, OSError):
                self.deaths += 1
                self.close()
        raise RuntimeError(f"the head start's worker died {self.deaths} times on one shard of {len(items)} samples")

    def close(self) -> None:
        if self.process is not None:
            self.conn.close()
            self.process.kill()
            self.process.join()
            self.conn = self.process = None


class _RayStart:
    """``ray.init`` in a thread of its own, which then stays: Ray binds the processes it starts
    to the thread that started them (Linux's parent-death signal), so a thread that ended
    would take the cluster with it."""

    def __init__(self):
        self.ended, self.error = threading.Event(), None
        threading.Thread(target=self._start, name="mpq-ray-start", daemon=True).start()

    def _start(self) -> None:
        from mpq.engine.ray import start_ray

        try:
            start_ray("local")
        except BaseException as exc:  # handed to the driver's thread
            self.error = exc
        self.ended.set()
        threading.Event().wait()

    def done(self) -> bool:
        return self.ended.is_set()

    def result(self) -> None:
        self.ended.wait()
        if self.error is not None:
            raise self.error


class _Background:
    """Ray's result tables, pulled in a thread so that the driver works its shards meanwhile."""

    def __init__(self, tables: Iterator[pa.Table]):
        self.out: queue.Queue = queue.Queue(maxsize=4)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._pull, args=(tables,), name="mpq-ray-rows", daemon=True)
        self.thread.start()

    def _pull(self, tables: Iterator[pa.Table]) -> None:
        try:
            for table in tables:
                while not self.stop.is_set():
                    try:
                        self.out.put(("rows", table), timeout=0.5)
                        break
                    except queue.Full:
                        pass
                if self.stop.is_set():
                    break
        except BaseException as exc:  # handed to the driver's thread
            self.out.put(("error", exc))
        finally:
            tables.close()
            self.out.put(("end", None))

    def arrived(self) -> bool:
        return not self.out.empty()

    def __iter__(self) -> Iterator[pa.Table]:
        while True:
            kind, value = self.out.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    def close(self) -> None:
        """Stops pulling: at once, or when Ray hands over its next table (at most 10 s; the thread
        is a daemon)."""
        self.stop.set()
        for _ in range(20):
            if not self.thread.is_alive():
                return
            with contextlib.suppress(queue.Empty):  # unblock a put waiting on a full queue
                self.out.get(timeout=0.5)


class HeadStart:
    """The Ray engine's result tables, the first ones from the local worker (module docstring).
    ``samples``: how many samples the local worker worked."""

    def __init__(self, spec: JobSpec, planner: Planner, plan: list[Shard], finalize: Finalize,
                 cache: EncodedCache | None, output: str):
        self.spec, self.planner, self.plan, self.finalize, self.cache, self.output = spec, planner, plan, finalize, cache, output
        self.samples = 0

    def __iter__(self) -> Iterator[pa.Table]:
        folder = tempfile.mkdtemp(prefix="mpq-claims-")
        claims = Claims(folder)
        worker = LocalWorker(self.spec, self.finalize, self.output, quiet=not verbose())
        starting: _RayStart | None = None
        taken: set[Shard] = set()
        ray_rows: _Background | None = None
        try:
            try:
                for shard in reversed(self.plan):
                    # Ray starts once the worker has its first rows: on a small machine the two
                    # starts would share its cores, and the first rows come later.
                    if starting is None and self.samples:
                        worker.yield_cpu()
                        starting = _RayStart()
                    if ray_rows is None and starting is not None and starting.done():
                        ray_rows = self._ray(starting, taken, claims)
                    if ray_rows is not None and ray_rows.arrived():
                        break
                    if not claims.take(shard):
                        break  # Ray's read tasks have come this far
                    taken.add(shard)
                    for items in self.planner.items([shard]):
                        if items:
                            self.samples += len(items)
                            yield worker.run(items)
            finally:
                worker.close()  # its models with it
            if ray_rows is None and len(taken) < len(self.plan):
                ray_rows = self._ray(starting or _RayStart(), taken, claims)
            if ray_rows is not None:
                yield from ray_rows
            elif starting is not None:  # the worker did it all: Ray's start is not left half done at exit
                starting.ended.wait()
        finally:
            if ray_rows is not None:
                ray_rows.close()
            shutil.rmtree(folder, ignore_errors=True)

    def _ray(self, starting: _RayStart, taken: set[Shard], claims: Claims) -> _Background | None:
        from mpq.engine.ray import run_ray

        starting.result()
        rest = [s for s in self.plan if s not in taken]
        if not rest:
            return None
        return _Background(run_ray(self.spec, self.planner, rest, self.finalize, "local", self.cache, self.output, claims))
