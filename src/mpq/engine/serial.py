"""The serial engine: the same stages, one sample after another, in this process.

For debugging, for tests and as the baseline every benchmark compares against. A sample
whose process died is tried once more on resume, then written as error rows (inflight.py).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa

from mpq.cache import EncodedCache
from mpq.engine.inflight import InFlight
from mpq.engine.stages import Encode, Finalize, Load, Measure, Predict
from mpq.job import Job, resolve
from mpq.spec import JobSpec

TRIES = 2  # the first try, and once more on resume


def run_serial(
    job: JobSpec | Job, items: Iterable[dict[str, Any]], finalize: Finalize, cache: EncodedCache | None = None,
    output: str | None = None,
) -> Iterator[pa.Table]:
    job = resolve(job)
    load, encode, measure = Load(job), Encode(job, cache), Measure(job)
    predictors = [Predict(job, task_id) for task_id in job.tasks]
    stages: list[Callable] = [load, encode, *predictors, measure]
    in_flight = InFlight(output, TRIES) if output is not None else None

    def work(rows):
        for stage in stages:
            rows = stage(rows)
        return rows

    for item in items:
        yield finalize(in_flight.run([item], work) if in_flight else work([item]))
