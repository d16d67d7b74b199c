"""The pipeline's stages. Each is a callable taking and returning a list of row dicts, so
the serial and Ray engines run the very same objects; a stage never knows its engine.

A working row carries: dataset, modality, sample_id, codec, setting, tasks (task ids still to do),
original (media), target, conversion, error, and, as it moves on, decoded, bits, the
codec's, tasks' and metrics' columns. ``Finalize`` turns it into result rows.
"""

from __future__ import annotations

import contextlib
import functools
import json
import warnings
from typing import Any, Collection

import pyarrow as pa

from mpq.cache import EncodedCache
from mpq.components import Coded
from mpq.engine.inflight import InFlight
from mpq.job import Job
from mpq.results import BASELINE, INFRA_PREFIX, run_metadata, setting_str
from mpq.targets import TARGET_SETTING, Target, knob
from mpq.targets import search as target_search

Row = dict[str, Any]


# Failures of the machine, not of the sample (out of memory, maybe from a neighbour): their rows
# are written with INFRA_PREFIX and are not done, so a re-run tries them again.
INFRA_ERRORS = ("MemoryError", "OutOfMemoryError")
PRECISIONS = {"torch.bfloat16": "bf16", "torch.float16": "fp16"}


def _error(stage: str, exc: BaseException) -> str:
    infra = INFRA_PREFIX if type(exc).__name__ in INFRA_ERRORS else ""
    return f"{infra}{stage}: {type(exc).__name__}: {exc}".strip()


def through(stages: list, rows: list[Row], in_flight: InFlight | None = None) -> list[Row]:
    """``rows`` through ``stages`` in order, under ``in_flight``'s notes where given."""

    def work(rows: list[Row]) -> list[Row]:
        for stage in stages:
            rows = stage(rows)
        return rows

    return in_flight.run(rows, work) if in_flight else work(rows)


class _JobStage:
    def __init__(self, job: Job):
        self.job = job


class Load(_JobStage):
    """Plan item {dataset, sample_id, units} → one working row per unit (codec, setting, tasks)."""

    def __call__(self, items: list[Row]) -> list[Row]:
        out = []
        for item in items:
            dataset = self.job.datasets[item["dataset"]]
            base = {"dataset": dataset.name, "modality": dataset.modality.name, "sample_id": item["sample_id"], "error": None}
            try:
                sample = dataset.source.load(item["sample_id"])
                if not isinstance(sample.media, dataset.modality):
                    raise TypeError(f"the source gave {type(sample.media).__name__}, not {dataset.modality.__name__}")
                base.update(original=sample.media, target=sample.target, conversion=sample.media.conversion)
                base.update(sample.media.size())
                if (limit := sample.media.too_large(self.job.spec)) is not None:
                    base.update(original=None, target=None, error=f"load: too large: {limit}")
            except Exception as exc:
                base.update(original=None, target=None, conversion=None, error=_error("load", exc))
            for codec, setting, tasks in item["units"]:
                out.append({**base, "codec": codec, "setting": setting, "tasks": tasks})
        return out


class Encode(_JobStage):
    """Codec round trip: encode to a real bitstream, count its bits, decode; or take that
    round trip from the cache, when given one and it holds it.

    ``codecs``: the names of the codecs (``BASELINE`` among them) this stage codes, None for
    all; the other rows pass through for a later stage (under Ray, neural codecs code in a
    GPU actor pool and the others in CPU tasks). ``device``: where neural codecs run their
    networks (None: a GPU when torch sees one); classic codecs run on the CPU. ``batch``: a
    neural codec codes up to this many rows of one setting per call (``roundtrip_batch``:
    same-shape media go through its network together), for GPUs; 1 elsewhere, as batching
    changes a network's float noise and so could change a CPU result."""

    def __init__(self, job: Job, cache: EncodedCache | None = None, codecs: Collection[str] | None = None,
                 device: str | None = None, batch: int = 1):
        super().__init__(job)
        self.cache, self.only, self.device, self.batch = cache, codecs, device, batch
        self.digest: tuple[Any, str] = (None, "")
        self.ready: dict[int, Coded] = {}  # round trips coded ahead in batches, by id() of their row

    @functools.cached_property
    def codecs(self):
        codecs = {name: c.build() for name, c in self.job.codecs.items()}
        neural = [c for c in codecs.values() if c.runs_on == "gpu"]
        device = (self.device or default_device()) if neural else "cpu"  # torch only where a codec needs it
        for codec in neural:
            codec.device = device
        return codecs

    def cache_path(self, row: Row, codec) -> str:
        if self.digest[0] is not row["original"]:  # once per sample: its rows share the original (held, so `is` is safe)
            self.digest = (row["original"], row["original"].digest())
        return self.cache.path(
            row["dataset"], row["sample_id"], row["codec"], row["setting"], codec.version(), codec.options.model_dump(mode="json"),
            self.digest[1],
        )

    def store(self, path: str, coded: Coded) -> None:
        try:
            self.cache.put(path, coded)
        except Exception as exc:  # the round trip is in hand: a cache that cannot be written costs speed, not the row
            warnings.warn(f"encoded cache: cannot write {path}: {exc}", stacklevel=1)

    def roundtrip(self, row: Row) -> Coded:
        if id(row) in self.ready:
            return self.ready.pop(id(row))
        codec = self.codecs[row["codec"]]
        if self.cache is None:
            return codec.roundtrip(row["original"], row["setting"])
        path = self.cache_path(row, codec)
        coded = self.cache.get(path)
        if coded is None:
            coded = codec.roundtrip(row["original"], row["setting"])
            self.store(path, coded)
        return coded

    def code_ahead(self, rows: list[Row]) -> None:
        """The neural codecs' rows at plain settings, ``batch`` rows of one setting per call,
        into ``ready``. A call that fails leaves its rows to be coded one by one, each with its
        own error."""
        if self.batch <= 1:
            return
        groups: dict[tuple, list[tuple[Row, str | None]]] = {}
        for row in rows:
            codec = self.codecs[row["codec"]]
            if codec.runs_on != "gpu" or isinstance(row["setting"], Target):
                continue
            path = self.cache_path(row, codec) if self.cache is not None else None
            cached = self.cache.get(path) if path is not None else None
            if cached is not None:
                self.ready[id(row)] = cached
            else:
                groups.setdefault((row["codec"], row["setting"]), []).append((row, path))
        for (name, setting), todo in groups.items():
            for i in range(0, len(todo), self.batch):
                part = todo[i : i + self.batch]
                try:
                    coded = self.codecs[name].roundtrip_batch([row["original"] for row, _ in part], setting)
                except Exception:
                    continue
                for (row, path), c in zip(part, coded):
                    self.ready[id(row)] = c
                    if path is not None:
                        self.store(path, c)

    def at_target(self, row: Row) -> tuple[Coded, Row]:
        """The round trip at the highest setting whose rate fits the row's target (each
        search step a cached round trip), and the columns that record it."""
        target, codec = row["setting"], self.codecs[row["codec"]]
        chosen, coded, _ = target_search(
            lambda setting: self.roundtrip({**row, "setting": setting}),
            lambda c: row["original"].rate(c.bits)[target.unit],
            knob(type(codec)), target.value, row["codec"],
        )
        return coded, {target.column: target.value, TARGET_SETTING: str(chosen)}

    def __call__(self, rows: list[Row]) -> list[Row]:
        mine = [r for r in rows if r["error"] is None and (self.only is None or r["codec"] in self.only)]
        self.code_ahead([r for r in mine if r["codec"] != BASELINE])
        for row in mine:
            if row["codec"] == BASELINE:
                row.update(decoded=row["original"], bits=None, codec_version=None, codec_device=None)
                continue
            codec = self.codecs[row["codec"]]
            try:
                if isinstance(row["setting"], Target):
                    coded, chosen = self.at_target(row)
                    row.update(chosen)
                else:
                    coded = self.roundtrip(row)
            except Exception as exc:
                row["error"] = _error("codec", exc)
                continue
            row.update(bits=int(coded.bits), codec_version=codec.version(), codec_device=coded.device, **coded.extra)
            if codec.pipeline_check:
                row.setdefault("checks", []).append(codec.pipeline_check)
            row["decoded"], conversion = row["original"].after_decode(coded.decoded)
            if conversion:
                row["conversion"] = "; ".join(filter(None, [row["conversion"], conversion]))
            row.update(row["original"].rate(coded.bits))
        self.ready.clear()
        return rows


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Predict:
    """One task's model, loaded at its first use (once per actor), run in batches on the decoded media.

    Every coded row's output is also scored against the model's own output on its sample's
    uncompressed input (``agreement``): the baseline row's output when it is among the
    rows, else the model is run on the original once per sample (a resumed job whose
    baseline rows are already written)."""

    def __init__(self, job: Job, task_id: str, device: str | None = None):
        entry = job.tasks[task_id]
        self.task_id, self.batch_size = task_id, entry.spec.batch_size
        self.task = entry.build(device or default_device(), job.spec.resources.precision)
        self.provenance: dict[str, str] | None = None  # set by load()

    def load(self) -> None:
        """The model, the first time a row needs it: a worker whose samples never need this task
        (an actor that only ever sees photos, in a job with a speech model) never loads it."""
        if self.provenance is not None:
            return
        self.task.load()
        # What else changes a score: the precision the model actually ran in (its loaded dtype:
        # fp32 on CPUs, and for models that ignore the job's precision, e.g. Demucs), the
        # device, and the task's options (language, reduce_labels, ...).
        self.provenance = {
            "precision": PRECISIONS.get(str(getattr(self.task, "dtype", "")), "fp32"),
            "device": self.task.device,
            "task_options": json.dumps(self.task.options.model_dump(mode="json"), sort_keys=True),
        }

    def predict(self, todo: list[Row], media: str = "decoded") -> list[dict[str, Any]]:
        try:
            return self.task.predict([r[media] for r in todo], [r["target"] for r in todo])
        except Exception:
            # One bad sample must not fail the batch: retry one by one to find it.
            preds = []
            for r in todo:
                try:
                    preds.append(self.task.predict([r[media]], [r["target"]])[0])
                except Exception as exc:
                    preds.append({"error": _error("task", exc)})
            return preds

    def batched(self, todo: list[Row], media: str = "decoded") -> list[dict[str, Any]]:
        return [p for i in range(0, len(todo), self.batch_size) for p in self.predict(todo[i : i + self.batch_size], media)]

    def references(self, todo: list[Row], preds: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
        """Per sample, the model's output on the uncompressed input."""
        key = lambda r: (r["dataset"], r["sample_id"])  # noqa: E731
        refs = {key(r): p for r, p in zip(todo, preds) if r["codec"] == BASELINE}
        missing = {key(r): r for r in todo if key(r) not in refs}  # one row per sample
        refs.update(zip(missing, self.batched(list(missing.values()), "original")))
        return refs

    def __call__(self, rows: list[Row]) -> list[Row]:
        todo = [r for r in rows if r["error"] is None and self.task_id in r["tasks"]]
        for row in rows:
            row.setdefault("results", {})
        if not todo:
            return rows
        self.load()
        preds = self.batched(todo)
        refs = self.references(todo, preds)
        info = {"model": self.task.model_id, "model_revision": self.task.model_revision, **self.provenance}
        for row, pred in zip(todo, preds):
            ref = refs[(row["dataset"], row["sample_id"])]
            public = {k: v for k, v in pred.items() if not k.startswith("_")}
            if row["codec"] != BASELINE and "error" not in pred and "error" not in ref:  # the baseline is the reference
                try:
                    public.update(self.task.agreement(pred, ref))  # `agreement` and the task's raw distance
                except Exception as exc:
                    public["error"] = _error("task agreement", exc)
            row["results"][self.task_id] = {**info, **public}
            if self.task.pipeline_check:
                row.setdefault("checks", []).append(self.task.pipeline_check)
        return rows


class Measure(_JobStage):
    """Quality metrics of the decoded media against the original (not for the baseline)."""

    def __init__(self, job: Job, device: str | None = None):
        super().__init__(job)
        self.device = device

    @functools.cached_property
    def metrics(self):
        device = self.device or default_device()
        return {name: m.build(device) for name, m in self.job.metrics.items()}

    @staticmethod
    def compute(metric, references: list, tests: list) -> list[dict[str, Any]]:
        """Always in fp32: bf16/fp16 break quality metrics (MS-SSIM above 1, NaN SSIM, CDPAM off
        by a third), so the job's precision applies to task models only, and no autocast
        region around this stage reaches the metric."""
        import torch

        with contextlib.ExitStack() as stack:
            for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
                stack.enter_context(torch.autocast(device, enabled=False))
            return metric.compute(references, tests)

    def __call__(self, rows: list[Row]) -> list[Row]:
        for dataset in {r["dataset"] for r in rows}:
            todo = [r for r in rows if r["dataset"] == dataset and r["error"] is None and r["codec"] != BASELINE]
            if not todo:
                continue
            # One reference object per sample, so that a metric can tell a sample's coded versions
            # by their shared reference (Load and the Ray transport already keep one; this makes
            # it the stage's promise, whoever built the rows).
            originals: dict[str, Any] = {}
            references = [originals.setdefault(r["sample_id"], r["original"]) for r in todo]
            for entry in self.job.datasets[dataset].metrics:
                metric = self.metrics[entry.name]
                try:
                    values = self.compute(metric, references, [r["decoded"] for r in todo])
                except Exception:
                    # One bad sample must not fail the batch: retry one by one to find it.
                    values = []
                    for r in todo:
                        try:
                            values.append(self.compute(metric, [r["original"]], [r["decoded"]])[0])
                        except Exception as exc:
                            r["error"] = _error(f"metric {entry.name}", exc)
                            values.append({})
                for r, v in zip(todo, values):
                    r.update(v)
                    if metric.pipeline_check:
                        r.setdefault("checks", []).append(metric.pipeline_check)
        return rows


class Finalize(_JobStage):
    """Working rows → result rows (one per task, media dropped) as an Arrow table."""

    MEDIA_KEYS = ("original", "decoded", "target", "tasks", "results", "checks")

    def __init__(self, job: Job, run_id: str):
        super().__init__(job)
        self.run_id = run_id
        self.schema, self.meta = self.job.schema, run_metadata(run_id)
        self.describe = {}
        self.task_types = {task_id: t.name for task_id, t in self.job.tasks.items()}

    def source_of(self, dataset: str) -> str:
        if dataset not in self.describe:
            self.describe[dataset] = self.job.datasets[dataset].source.describe()
        return self.describe[dataset]

    def __call__(self, rows: list[Row]) -> pa.Table:
        out = []
        for row in rows:
            base = {k: v for k, v in row.items() if k not in self.MEDIA_KEYS}
            base.update(self.meta, setting=setting_str(row["setting"]), source=self.source_of(row["dataset"]))
            results = row.get("results", {})
            for task_id in row["tasks"] or [""]:
                result = {"task": task_id, "task_type": self.task_types.get(task_id), **results.get(task_id, {})}
                checks = sorted(set(row.get("checks", [])))
                rec = {**base, **result, "pipeline_check": "; ".join(checks) or None}
                if result.get("error") and not base["error"]:
                    rec["error"] = result["error"]
                out.append(rec)
        names = self.schema.names
        return pa.Table.from_pylist([{k: r.get(k) for k in names} for r in out], schema=self.schema)
