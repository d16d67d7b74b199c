"""The work plan: which (sample, codec, setting, task) units are still to do."""

from __future__ import annotations

import itertools
from typing import Any

from mpq import registry
from mpq.results import BASELINE, setting_str
from mpq.spec import JobSpec


def plan(job: JobSpec, done: set[tuple[str, ...]], limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """Plan items, one per sample with work left: {dataset, sample_id, units: [(codec, setting, task ids)]}.

    Returns the items and the number of result rows they will produce. A unit lists only
    the tasks whose rows are not in ``done``, so an interrupted or extended job redoes
    nothing that was written.

    Datasets take turns in the order (one sample of each, then the next of each...): a
    dataset whose samples are slow (long music tracks) is then spread over the run instead
    of being its tail, where one worker would finish it alone while the others idle.
    """
    per_dataset, rows = [], 0
    for dataset in job.datasets:
        items = []
        source = registry.get("source", dataset.source_type)(job.source_options(dataset))
        ids = source.ids()
        n = min(x for x in (dataset.limit, limit, len(ids)) if x is not None)
        task_ids = [t.task_id for t in job.tasks_for(dataset)] or [""]
        combos = [(BASELINE, None)] + [(c.name, s) for c in job.codecs_for(dataset) for s in job.settings(c)]
        for sample_id in ids[:n]:
            units = []
            for codec, setting in combos:
                todo = [t for t in task_ids if (dataset.name, sample_id, codec, setting_str(setting), t) not in done]
                if todo:
                    units.append((codec, setting, [t for t in todo if t]))
                    rows += len(todo)
            if units:
                items.append({"dataset": dataset.name, "sample_id": sample_id, "units": units})
        per_dataset.append(items)
    turns = itertools.chain.from_iterable(itertools.zip_longest(*per_dataset))
    return [item for item in turns if item is not None], rows
