"""The job file: YAML parsed into a validated, typed ``JobSpec``.

Everything that can be checked without doing work is checked here, and all problems are
reported together in one ``JobSpecError`` whose lines name the key, the value and the valid
choices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mpq import registry
from mpq.targets import TARGET_KEYS, Target
from mpq.targets import check as target_check

Setting = int | float | str


class JobSpecError(ValueError):
    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        if len(problems) == 1:
            super().__init__(f"{source}: {problems[0]}")
        else:
            super().__init__(f"{source} is invalid:\n" + "\n".join(f"  - {p}" for p in problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _WithOptions(BaseModel):
    """Keys beyond the declared fields are the component's own options."""

    model_config = ConfigDict(extra="allow")

    @property
    def option_values(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DatasetSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    source: dict[str, Any]
    limit: int | None = Field(default=None, gt=0)

    @property
    def source_type(self) -> str:
        return next(k for k in self.source if k in registry.names("source"))


class CodecSpec(_WithOptions):
    name: str
    settings: list[Setting] | None = None  # None: the codec's default sweep
    # Target rates instead of settings (mpq.targets): the setting is searched per sample.
    target_bpp: list[Any] | None = None
    target_kbps: list[Any] | None = None

    @property
    def targets(self) -> dict[str, list[Any]]:
        return {k: v for k in TARGET_KEYS if (v := getattr(self, k)) is not None}


class TaskSpec(_WithOptions):
    name: str
    id: str | None = None  # defaults to the task name; must be unique in the job
    batch_size: int = Field(default=16, gt=0)
    datasets: list[str] | None = None  # default: every dataset of the task's modality

    @property
    def task_id(self) -> str:
        return self.id or self.name


class MetricSpec(_WithOptions):
    name: str


ActorPool = int | tuple[int, int]


class Resources(_Strict):
    codec_cpus: float = Field(default=1, gt=0)
    # Custom Ray resources each codec task also asks for, e.g. {codec_node: 1} to keep codec work on
    # the nodes that declare it (cluster.yaml's CPU group); ignored where no node has it.
    codec_resources: dict[str, float] = {}
    # Neural codecs (runs_on "gpu") code in an actor pool of this many GPUs per actor when the
    # cluster has GPUs (0: in the CPU tasks with the others); each actor loads a model once and
    # codes up to codec_batch_size rows of one setting per call. A pool with the same GPUs per
    # actor as the model actors is the model actors' own pool: codec and models in one process.
    codec_gpus: float = Field(default=1, ge=0)
    codec_actors: ActorPool | None = None
    codec_batch_size: int = Field(default=8, gt=0)
    model_gpus: float = Field(default=1, ge=0, description="GPUs per model actor, when the cluster has GPUs")
    metric_gpus: float = Field(default=0, ge=0)
    # Samples (each with its rows: one per codec setting) per call of metric actors on GPUs; CPU
    # actors and --engine serial take a block's samples. A pool shared with a task takes the
    # larger batch size.
    metric_batch_size: int = Field(default=16, gt=0)
    # Actor pool sizes; by default as many actors as the cluster's GPUs (or CPUs) hold.
    model_actors: ActorPool | None = None
    metric_actors: ActorPool | None = None
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    # Samples per shard of the plan (and per block under Ray); by default from the work a sample
    # costs: 32 images through CPU codecs, 1 through a neural codec, 1 audio clip.
    samples_per_block: int | None = Field(default=None, gt=0)

    @field_validator("codec_actors", "model_actors", "metric_actors")
    @classmethod
    def _pool(cls, v: ActorPool | None) -> ActorPool | None:
        if v is None:
            return v
        lo, hi = (v, v) if isinstance(v, int) else v
        if lo < 1 or hi < lo:
            raise ValueError(f"actor pool must be N >= 1 or [min, max] with 1 <= min <= max, got {v}")
        return v


class JobSpec(_Strict):
    name: str
    output: str | None = None
    datasets: list[DatasetSpec] = Field(min_length=1)
    codecs: list[CodecSpec] = []
    tasks: list[TaskSpec] = []
    metrics: list[MetricSpec] = []
    resources: Resources = Resources()
    cache: bool = True  # keep codec outputs under OUTPUT/cache, so that no sample is encoded twice
    # Larger inputs become error rows before any work on them. A sample costs about 140 bytes
    # per pixel under Ray, 215 serially (baseline + 2 settings, classifier, PSNR and LPIPS; more
    # settings, more): 40 megapixels is ~9 GB, and two at once fit a 24 GB machine.
    max_pixels: int | None = Field(default=40_000_000, gt=0)
    max_seconds: float | None = Field(default=900, gt=0)  # audio; the longest MUSDB track is ~10 min

    @field_validator("metrics", mode="before")
    @classmethod
    def _metric_names(cls, v: Any) -> Any:
        return [{"name": m} if isinstance(m, str) else m for m in v] if isinstance(v, list) else v

    def settings(self, spec: CodecSpec) -> list[Setting | Target]:
        """The entry's settings (by default its codec's sweep, unless it asks for target
        rates only), then its target rates."""
        targets = [Target(TARGET_KEYS[k][0], float(v)) for k, values in spec.targets.items() for v in values]
        if spec.settings is not None:
            return [*spec.settings, *targets]
        return targets or list(registry.get("codec", spec.name).default_settings)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _pydantic_problems(exc: ValidationError, prefix: str = "") -> list[str]:
    problems = []
    for err in exc.errors():
        loc = _loc(tuple(err["loc"]))
        where = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        if err["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown key")
        else:
            problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')} (got {err.get('input')!r})")
    return problems


def _choices(kind: str) -> str:
    return ", ".join(registry.names(kind))


def _option_problems(kind: str, name: str, values: dict, where: str, spec_keys: tuple = ()) -> list[str]:
    """Problems with a component's options; ``spec_keys``: the keys its job entry takes besides them."""
    cls = registry.get(kind, name)
    try:
        cls.Options(**values)
    except ValidationError as exc:
        fields = ", ".join([*spec_keys, *cls.Options.model_fields]) or "none"
        return [p + (f"; valid keys: {fields}" if p.endswith("unknown key") else "") for p in _pydantic_problems(exc, where)]
    return []


def validate(job: JobSpec) -> list[str]:
    """Checks that need the registry: names, options, settings, cross references."""
    problems: list[str] = []
    dataset_names = [d.name for d in job.datasets]
    modalities = set()
    for i, d in enumerate(job.datasets):
        where = f"datasets[{i}].source"
        kinds = [k for k in d.source if k in registry.names("source")]
        if len(kinds) != 1:
            problems.append(
                f"{where}: needs exactly one source key, got {sorted(d.source) or 'none'}; valid choices: {_choices('source')}"
            )
            continue
        source_problems = _option_problems("source", kinds[0], d.source, where)
        problems += source_problems
        cls = registry.get("source", kinds[0])
        modalities.add(cls.modality if source_problems else cls(cls.Options(**d.source)).modality)
    for dup in {n for n in dataset_names if dataset_names.count(n) > 1}:
        problems.append(f"datasets: name {dup!r} is used twice")

    entries = {"codec": (job.codecs, CodecSpec), "task": (job.tasks, TaskSpec), "metric": (job.metrics, MetricSpec)}
    for kind, (specs, spec_cls) in entries.items():
        for i, spec in enumerate(specs):
            where = f"{kind}s[{i}]"
            if spec.name not in registry.names(kind):
                problems.append(f"{where}.name: unknown {kind} {spec.name!r}; valid choices: {_choices(kind)}")
                continue
            problems += _option_problems(kind, spec.name, spec.option_values, where, tuple(spec_cls.model_fields))
            mod = registry.get(kind, spec.name).modality
            if mod not in modalities:
                problems.append(f"{where}: {kind} {spec.name!r} works on {mod}, but no dataset in the job is {mod}")

    for i, c in enumerate(job.codecs):
        if c.name not in registry.names("codec"):
            continue
        codec_cls = registry.get("codec", c.name)
        problems += [f"codecs[{i}].{k}: {why}" for k, values in c.targets.items() if (why := target_check(codec_cls, k, values))]
        if c.targets and c.settings is None:
            continue
        settings = [s for s in job.settings(c) if not isinstance(s, Target)]
        if not settings:
            problems.append(f"codecs[{i}].settings: empty; give at least one setting")
        for j, s in enumerate(settings):
            try:
                codec_cls(codec_cls.Options()).check_setting(s)
            except ValueError as exc:
                problems.append(f"codecs[{i}].settings[{j}]: {s!r}: {exc}")
        if len({str(s) for s in settings}) != len(settings):
            problems.append(f"codecs[{i}].settings: {settings} repeats a setting")

    task_ids = [t.task_id for t in job.tasks]
    for dup in {t for t in task_ids if task_ids.count(t) > 1}:
        problems.append(f"tasks: id {dup!r} is used twice; give each task of the same name an `id`")
    for i, t in enumerate(job.tasks):
        for name in t.datasets or []:
            if name not in dataset_names:
                problems.append(f"tasks[{i}].datasets: unknown dataset {name!r}; valid choices: {', '.join(dataset_names)}")
    metric_names = [m.name for m in job.metrics]
    for dup in {m for m in metric_names if metric_names.count(m) > 1}:
        problems.append(f"metrics: {dup!r} is listed twice")
    codec_names = [c.name for c in job.codecs]
    for dup in {c for c in codec_names if codec_names.count(c) > 1}:
        problems.append(f"codecs: {dup!r} is listed twice; put all its settings in one entry")
    return problems


def parse_job(data: Any, source: str = "job") -> JobSpec:
    if not isinstance(data, dict):
        raise JobSpecError(source, [f"expected a mapping at the top level, got {type(data).__name__}"])
    try:
        job = JobSpec.model_validate(data)
    except ValidationError as exc:
        raise JobSpecError(source, _pydantic_problems(exc)) from None
    problems = validate(job)
    if problems:
        raise JobSpecError(source, problems)
    return job


def load_job(path: str | Path) -> JobSpec:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise JobSpecError(str(path), [f"cannot read the job file: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = " ".join(filter(None, (getattr(exc, "problem", None), getattr(exc, "context", None)))) or str(exc)
        raise JobSpecError(str(path), [f"{where}not valid YAML: {what}"]) from None
    return parse_job(data, str(path))
