"""The serial engine: the same stages, one sample after another, in this process; for
debugging, for tests and as the baseline every benchmark compares against. A sample whose
process died is tried again on resume, up to ``inflight.TRIES`` times, then written as error
rows (inflight.py)."""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa

from mpq.cache import EncodedCache
from mpq.engine.inflight import InFlight
from mpq.engine.plan import Planner, Shard, iter_items
from mpq.engine.stages import Encode, Finalize, Load, Measure, Predict, through
from mpq.job import Job


def run(
    job: Job, planner: Planner, plan: list[Shard], finalize: Finalize, cache: EncodedCache | None = None,
    output: str | None = None, address: str | None = None,
) -> Iterator[pa.Table]:
    """The engines' one call shape (engine/ray.py has the same; ``address``, a Ray cluster, is
    the Ray engine's alone): the stages, built once (models load at their first use), run on
    one plan item at a time, a chunk of shards planned at a time."""
    stages = [Load(job), Encode(job, cache), *(Predict(job, t) for t in job.tasks), Measure(job)]
    in_flight = InFlight(output, run_id=finalize.run_id) if output is not None else None
    for item in iter_items(planner, plan):
        yield finalize(through(stages, [item], in_flight))
