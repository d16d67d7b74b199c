"""The serial engine: the same stages, one sample after another, in this process.

For debugging, for tests and as the baseline every benchmark compares against. A sample
whose process died is tried again on resume, up to ``inflight.TRIES`` times, then written as
error rows (inflight.py).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa

from mpq.cache import EncodedCache
from mpq.engine.inflight import InFlight
from mpq.engine.stages import Encode, Finalize, Load, Measure, Predict
from mpq.job import Job, resolve
from mpq.spec import JobSpec


class SerialWork:
    """The stages, built once (models load at their first use), run on one plan item at a time."""

    def __init__(self, job: JobSpec | Job, finalize: Finalize, cache: EncodedCache | None = None, output: str | None = None):
        job = resolve(job)
        self.stages: list[Callable] = [Load(job), Encode(job, cache), *(Predict(job, t) for t in job.tasks), Measure(job)]
        self.finalize = finalize
        self.in_flight = InFlight(output, run_id=finalize.run_id) if output is not None else None

    def work(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for stage in self.stages:
            rows = stage(rows)
        return rows

    def __call__(self, item: dict[str, Any]) -> pa.Table:
        return self.finalize(self.in_flight.run([item], self.work) if self.in_flight else self.work([item]))


def run_serial(
    job: JobSpec | Job, items: Iterable[dict[str, Any]], finalize: Finalize, cache: EncodedCache | None = None,
    output: str | None = None,
) -> Iterator[pa.Table]:
    work = SerialWork(job, finalize, cache, output)
    for item in items:
        yield work(item)
