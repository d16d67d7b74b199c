"""The work plan, streamed: which (sample, codec, setting, task) units are still to do.

Nobody holds the whole plan. The driver cuts each dataset's ids into shards (ranges of
positions in ``Source.ids()``, a few samples each); a shard is planned where it is read (a
Ray Data read task, or the serial engine's loop), and checks only its own samples' keys
against the results already written. The driver's memory therefore does not grow with the
job, and a million-sample job starts as fast as a small one. A resumed job's done keys are
the exception: each process that plans reads them once, and holds them compactly (about
16 bytes a row written; ``results.DoneKeys``), so that its parts do not read them again.

Shards of the datasets take turns (one of each, then the next of each...): a dataset whose
samples are slow (long music tracks) is then spread over the run instead of being its tail,
where one worker would finish it alone while the others idle.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any, Iterator

from mpq.job import Dataset, Job
from mpq.results import BASELINE, DoneKeys, ResultStore, setting_str

# Samples per shard (and per block of the Ray engine), by the work one sample costs: images
# through CPU codecs are cheap and batch well; a neural codec or an audio clip is seconds.
CHEAP, COSTLY = 32, 1
MIN_SHARDS = 64  # a dataset is cut into at least this many shards where it has the samples


@dataclass(frozen=True, slots=True)  # a million-sample plan is 31,250 of them in the driver
class Shard:
    dataset: str
    start: int  # positions in the source's ids
    stop: int


def samples_per_shard(job: Job, dataset: Dataset) -> int:
    """At most this many samples per shard (``shards`` cuts small datasets finer)."""
    if job.spec.resources.samples_per_block:
        return job.spec.resources.samples_per_block
    if dataset.modality.name == "audio":
        return COSTLY
    neural = any(c.cls.runs_on == "gpu" for c in dataset.codecs)
    return COSTLY if neural else CHEAP


def shards(job: Job, limit: int | None = None) -> list[Shard]:
    """Every dataset's ids cut into shards, the datasets taking turns."""
    per_dataset = []
    for dataset in job.datasets.values():
        n = min(x for x in (dataset.spec.limit, limit, dataset.source.count()) if x is not None)
        # A small dataset is cut finer, so that its samples still spread over the workers
        # (unless the job sets the block size itself).
        size = job.spec.resources.samples_per_block or min(samples_per_shard(job, dataset), max(1, n // MIN_SHARDS))
        per_dataset.append([Shard(dataset.name, i, min(i + size, n)) for i in range(0, n, size)])
    turns = itertools.chain.from_iterable(itertools.zip_longest(*per_dataset))
    return [s for s in turns if s is not None]


@functools.lru_cache(maxsize=1)  # the run's, held while the process lives (or plans another run)
def _done(output: str, required: tuple[tuple[str, tuple[str, ...]], ...], files: tuple[str, ...], redo: tuple[str, ...]) -> DoneKeys:
    return ResultStore(output).done({d: set(cols) for d, cols in required}, list(files), redo)


class Planner:
    """Plans shards: picklable, so Ray's read tasks carry it (the job travels as its spec and is
    resolved once per process, so sources are built and their ids listed once per process).
    ``files``: the results files when the run started (the keys done before it; this run's own
    rows are never planned twice, each shard being planned once). Their done keys are read
    once per process, at the first part planned, and kept for the other parts: every part
    (a Ray read task) unpickles its own planner, so they are kept beside it, not in it.
    ``redo``: error kinds whose rows are planned again (``results.retryable``)."""

    def __init__(self, job: Job, output: str, required: dict[str, set[str]], files: list[str], redo: tuple[str, ...] = ()):
        self.job, self.output, self.required, self.files, self.redo = job, output, required, files, tuple(redo)

    def done(self) -> DoneKeys:
        required = tuple(sorted((d, tuple(sorted(cols))) for d, cols in self.required.items()))
        return _done(self.output, required, tuple(self.files), self.redo)

    def ids(self, shard: Shard) -> list[str]:
        return self.job.datasets[shard.dataset].source.id_range(shard.start, shard.stop)

    @functools.lru_cache(maxsize=64)
    def combos(self, dataset: str) -> tuple[list[tuple[str, Any]], list[str]]:
        """The (codec, setting) pairs, baseline first, and the task ids of a dataset."""
        d = self.job.datasets[dataset]
        tasks = [t.task_id for t in d.tasks] or [""]
        return [(BASELINE, None)] + [(c.name, s) for c in d.codecs for s in c.settings], tasks

    def items(self, shards: list[Shard]) -> list[list[dict[str, Any]]]:
        """Per shard, the plan items of its samples with work left: {dataset, sample_id, units:
        [(codec, setting, task ids)]}. A unit lists only the tasks whose rows are not written
        yet, so an interrupted or extended job redoes nothing that was written."""
        ids = [self.ids(shard) for shard in shards]
        wanted: dict[str, set[str]] = {}
        for shard, some in zip(shards, ids):
            wanted.setdefault(shard.dataset, set()).update(some)
        done = set()
        if self.files:
            index = self.done()
            for dataset, sample_ids in wanted.items():
                done |= index.keys(dataset, sample_ids)
        out = []
        for shard, some in zip(shards, ids):
            combos, task_ids = self.combos(shard.dataset)
            items = []
            for sample_id in some:
                units = []
                for codec, setting in combos:
                    todo = [t for t in task_ids if (shard.dataset, sample_id, codec, setting_str(setting), t) not in done]
                    if todo:
                        units.append((codec, setting, [t for t in todo if t]))
                if units:
                    items.append({"dataset": shard.dataset, "sample_id": sample_id, "units": units})
            out.append(items)
        return out


def rows_of(item: dict[str, Any]) -> int:
    """Result rows an item produces: one per unit and task (or one for a unit without tasks)."""
    return sum(max(1, len(tasks)) for _, _, tasks in item["units"])


CHUNK = 64  # shards planned together


def chunks(plan: list[Shard], size: int | None = None) -> Iterator[list[Shard]]:
    size = size or CHUNK
    for i in range(0, len(plan), size):
        yield plan[i : i + size]


@dataclass
class Count:
    samples: int = 0  # samples with work left
    rows: int = 0  # result rows to write
    done: int = 0  # result rows already written


def count(planner: Planner, plan: list[Shard]) -> Count:
    """What the plan will do, counted on the driver a chunk of shards at a time (for progress
    and the run's summary); nothing of it is kept."""
    out = Count()
    if not planner.files:  # nothing written yet: everything is to do, no need to plan it
        for shard in plan:
            combos, tasks = planner.combos(shard.dataset)
            out.samples += shard.stop - shard.start
            out.rows += (shard.stop - shard.start) * len(combos) * len(tasks)
        return out
    for part in chunks(plan):
        for shard, items in zip(part, planner.items(part)):
            combos, tasks = planner.combos(shard.dataset)
            todo = sum(rows_of(i) for i in items)
            out.samples += len(items)
            out.rows += todo
            out.done += (shard.stop - shard.start) * len(combos) * len(tasks) - todo
    return out


def iter_items(planner: Planner, plan: list[Shard]) -> Iterator[dict[str, Any]]:
    """The serial engine's plan: item after item, a chunk of shards planned at a time."""
    for part in chunks(plan):
        for items in planner.items(part):
            yield from items
