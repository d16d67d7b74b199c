"""The Ray engine's source: the plan, planned shard by shard in read tasks on the workers."""

from __future__ import annotations

import functools
import itertools
import math
from typing import Iterator

import pyarrow as pa
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from mpq.engine.plan import CHUNK, Planner, Shard, chunks
from mpq.engine.transport import pack


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
        planner = self.planner

        def read(part: list[Shard]) -> Iterator[pa.Table]:
            items = [item for shard in planner.items(part) for item in shard]
            if items:
                yield pack(items)

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
