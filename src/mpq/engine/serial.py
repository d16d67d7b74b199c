"""The serial engine: the same stages, one sample after another, in this process.

For debugging, for tests and as the baseline every benchmark compares against.

A sample that kills the process (out of memory, a crash in a codec's native library) would
kill every resumed run too. So the output keeps a note of the sample in flight: a sample
found there from a run that died is tried once more, then written as error rows.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterator

import pyarrow as pa

from mpq.cache import EncodedCache
from mpq.engine.plan import WORKER_DIED, error_rows
from mpq.engine.stages import Encode, Finalize, Load, Measure, Predict
from mpq.results import filesystem
from mpq.spec import JobSpec

TRIES = 2  # a sample whose process died is tried this many times in all, then written as error rows


class InFlight:
    """OUTPUT/in-flight.json: how many runs died while on each sample (while on it now included)."""

    def __init__(self, output: str):
        self.fs, root = filesystem(output)
        self.path = root.rstrip("/") + "/in-flight.json"
        try:
            with self.fs.open_input_stream(self.path) as f:
                self.tries: dict[str, int] = json.loads(f.read())
        except FileNotFoundError:
            self.tries = {}

    def save(self) -> None:
        with self.fs.open_output_stream(self.path) as f:
            f.write(json.dumps(self.tries).encode())

    def start(self, key: str) -> int:
        """Note the sample as in flight; returns how many times it was started before."""
        before = self.tries.get(key, 0)
        if before < TRIES:
            self.tries[key] = before + 1
            self.save()
        return before

    def done(self, key: str) -> None:
        if self.tries.pop(key, None) is not None:
            self.save()


def run_serial(
    job: JobSpec, items: list[dict[str, Any]], finalize: Finalize, cache: EncodedCache | None = None,
    output: str | None = None,
) -> Iterator[pa.Table]:
    load, encode, measure = Load(job), Encode(job, cache), Measure(job)
    predictors = [Predict(job, t.task_id) for t in job.tasks]
    stages: list[Callable] = [load, encode, *predictors, measure]
    in_flight = InFlight(output) if output is not None else None
    for item in items:
        key = f"{item['dataset']}/{item['sample_id']}"
        if in_flight is not None and in_flight.start(key) >= TRIES:
            error = f"{WORKER_DIED}the process ended {TRIES} times while working on this sample (out of memory, or a crash in native code); not tried again"
            yield finalize(error_rows(item, error))  # its note stays: these rows may yet be lost unflushed
            continue
        rows = [item]
        for stage in stages:
            rows = stage(rows)
        yield finalize(rows)
        if in_flight is not None:
            in_flight.done(key)
