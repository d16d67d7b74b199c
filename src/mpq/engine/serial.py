"""The serial engine: the same stages, one sample after another, in this process.

For debugging, for tests and as the baseline every benchmark compares against.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa

from mpq.cache import EncodedCache
from mpq.engine.stages import Encode, Finalize, Load, Measure, Predict
from mpq.spec import JobSpec


def run_serial(
    job: JobSpec, items: Iterable[dict[str, Any]], finalize: Finalize, cache: EncodedCache | None = None
) -> Iterator[pa.Table]:
    load, encode, measure = Load(job), Encode(job, cache), Measure(job)
    predictors = [Predict(job, t.task_id) for t in job.tasks]
    stages: list[Callable] = [load, encode, *predictors, measure]
    for item in items:
        rows = [item]
        for stage in stages:
            rows = stage(rows)
        yield finalize(rows)
