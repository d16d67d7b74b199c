"""The resolved job: every component a validated ``JobSpec`` names, looked up and configured once.

``resolve(spec)`` gives a ``Job``: per dataset its source, modality, codecs with their settings,
tasks and metrics; the result schema; the assets. The runner, the plan, the stages and the
results read it; nothing after validation goes back to the registry.

A ``Job`` pickles as its spec's JSON and is resolved again on the other side, once per process
(``resolve`` keeps the last few): Ray ships it cheaply, and a worker's plan tasks and stages share
its sources (a folder is listed once per process). Components that load weights are built where
they run (``Entry.build``), by the stages, as before.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mpq import registry
from mpq.components import Asset, Options, Source
from mpq.media import MEDIA, Media
from mpq.results import schema_for
from mpq.spec import CodecSpec, DatasetSpec, JobSpec, MetricSpec, TaskSpec


@dataclass(frozen=True, eq=False)
class Entry:
    """One component as the job configures it: its registered class, its typed options and
    its entry in the job file."""

    cls: type
    options: Options
    spec: CodecSpec | TaskSpec | MetricSpec

    @property
    def name(self) -> str:
        return self.spec.name

    def build(self, *args: Any) -> Any:
        return self.cls(self.options, *args)


@dataclass(frozen=True, eq=False)
class CodecEntry(Entry):
    settings: tuple[Any, ...] = ()  # fixed settings, then target rates (``Target``)


@dataclass(frozen=True, eq=False)
class TaskEntry(Entry):
    @property
    def task_id(self) -> str:
        return self.spec.task_id


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset and what the job does to it: the components of its modality that apply."""

    spec: DatasetSpec
    source: Source
    modality: type[Media]  # its media type: Image or Audio
    codecs: tuple[CodecEntry, ...]
    tasks: tuple[TaskEntry, ...]
    metrics: tuple[Entry, ...]

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def metric_columns(self) -> set[str]:
        """The columns of the metrics computed on it: a row without them is not done (resume)."""
        return {col for m in self.metrics for col in m.cls.columns}


@dataclass(eq=False)
class Job:
    spec: JobSpec
    json: str  # the spec as JSON: what a pickled Job carries
    datasets: dict[str, Dataset]
    codecs: dict[str, CodecEntry]
    tasks: dict[str, TaskEntry]  # by task id
    metrics: dict[str, Entry]
    schema: pa.Schema

    def __reduce__(self):
        return _resolve_json, (self.json,)

    def assets(self) -> list[Asset]:
        """Every model, checkpoint and dataset the job's components download, each once."""
        found: list[Asset] = []
        for d in self.datasets.values():
            found += d.source.assets()
        for c in self.codecs.values():
            found += c.build().assets(list(c.settings))
        for t in self.tasks.values():
            found += t.build().assets()
        for m in self.metrics.values():
            found += m.build().assets()
        return list({a.key: a for a in found}.values())


def resolve(spec: JobSpec) -> Job:
    """The resolved job of a validated spec: once, where a run, a plan or a command starts;
    everything after takes the ``Job``."""
    return _resolve_json(spec.model_dump_json())


@functools.lru_cache(maxsize=8)
def _resolve_json(json: str) -> Job:
    spec = JobSpec.model_validate_json(json)

    def entry(kind: str, s, cls=Entry, **extra) -> Entry:
        component = registry.get(kind, s.name)
        return cls(component, component.Options(**s.option_values), s, **extra)

    codecs = {c.name: entry("codec", c, CodecEntry, settings=tuple(spec.settings(c))) for c in spec.codecs}
    tasks = {t.task_id: entry("task", t, TaskEntry) for t in spec.tasks}
    metrics = {m.name: entry("metric", m) for m in spec.metrics}
    datasets = {}
    for d in spec.datasets:
        source_cls = registry.get("source", d.source_type)
        source = source_cls(source_cls.Options(**d.source))
        mod = source.modality  # a source may serve either modality, by its options (hf: image or audio column)
        datasets[d.name] = Dataset(
            d, source, MEDIA[mod],
            codecs=tuple(c for c in codecs.values() if c.cls.modality == mod),
            tasks=tuple(t for t in tasks.values() if t.cls.modality == mod and (t.spec.datasets is None or d.name in t.spec.datasets)),
            metrics=tuple(m for m in metrics.values() if m.cls.modality == mod),
        )
    columns = [(f"{kind} {e.name!r}", e.cls.columns) for kind, entries in (("codec", codecs), ("task", tasks), ("metric", metrics)) for e in entries.values()]
    schema = schema_for(columns, targets=any(c.targets for c in spec.codecs))
    return Job(spec, json, datasets, codecs, tasks, metrics, schema)
