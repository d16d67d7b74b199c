"""Base classes of the four pluggable component kinds.

A component declares its ``modality`` ("image" or "audio"), an ``Options`` pydantic model
for the keys it accepts in a job file, and the result ``columns`` it adds (name → Arrow
type). Media flow through them as ``mpq.media.Image`` or ``mpq.media.Audio`` objects.
Heavy libraries are imported inside methods so that listing and validating a job stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import numpy as np
    import polars as pl

    from mpq.media import Media


class AssetUnavailable(RuntimeError):
    """A model, checkpoint or dataset is neither cached locally nor reachable; ``reason``: the cause alone."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


def offline() -> bool:
    """``HF_HUB_OFFLINE=1``: use only what is cached, for every kind of asset."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def cache_home(kind: str) -> str:
    """The cache an asset of this kind lands in, as its library resolves it: torch's
    (TORCH_HOME) for checkpoints, Hugging Face's (HF_HOME) for models and datasets."""
    xdg = os.environ.get("XDG_CACHE_HOME", "~/.cache")
    if kind == "checkpoint":
        return os.path.expanduser(os.environ.get("TORCH_HOME") or os.path.join(xdg, "torch"))
    return os.path.expanduser(os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface"))


def offline_hint(kind: str, name: str, exc: Exception) -> AssetUnavailable:
    """One clear message for a model, checkpoint or dataset that is not to be had."""
    reason = f"{type(exc).__name__}: {str(exc).splitlines()[0]}" if str(exc) else type(exc).__name__
    var = "TORCH_HOME" if kind == "checkpoint" else "HF_HOME"
    where = f"{cache_home(kind)} ({var})"
    if offline():
        text = (f"{kind} {name!r} could not be loaded: it is not in {where} and HF_HUB_OFFLINE is set ({reason}). "
                "Fill that cache with `mpq-ray fetch JOB.yaml` on a machine that reaches the hub, then copy it here.")
    else:
        text = (f"{kind} {name!r} could not be loaded: it is not in {where} and could not be downloaded ({reason}). "
                "Fill that cache with `mpq-ray fetch JOB.yaml` on a machine that reaches the hub, then copy it "
                "here and set HF_HUB_OFFLINE=1.")
    return AssetUnavailable(text, reason)


class Asset:
    """A model, checkpoint or dataset that a component downloads through its library's own
    cache (``from_pretrained``, ``load_dataset``, ``torch.hub``), so the usual cache variables
    (HF_HOME, TORCH_HOME) and pre-filled caches work.

    ``fetch`` puts it in that cache (it needs the network); ``check`` is cheap and raises
    ``AssetUnavailable`` naming the asset when it cannot be had: offline (``offline()``) and
    not cached, or not cached and not reachable.
    """

    kind: ClassVar[str]  # "model", "checkpoint" or "dataset": what users and messages call it

    def __init__(self, name: str):
        self.name = name

    @property
    def key(self) -> tuple:
        """What makes two assets the same download (the job's list holds each once)."""
        return (type(self).__name__, self.name)

    def fetch(self) -> None:
        raise NotImplementedError

    def check(self) -> None:
        raise NotImplementedError

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


class Options(BaseModel):
    """Component options from the job file; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Component:
    name: ClassVar[str]  # set by registry.register
    modality: ClassVar[str] = "image"
    Options: ClassVar[type[Options]] = Options
    columns: ClassVar[dict[str, pa.DataType]] = {}

    def __init__(self, options: Options | None = None):
        self.options = options if options is not None else self.Options()

    def assets(self) -> list[Asset]:
        """What this component downloads: pre-fetched by ``mpq-ray fetch`` and checked
        (``Asset.check``) on the driver before any work."""
        return []


@dataclass(frozen=True)
class ClassTarget:
    """A classification target: the class name, and the dataset's id for it when the dataset
    numbers its classes (a ``datasets.ClassLabel``), so a classifier trained on the same ids
    is scored by id: names repeat (ImageNet has two classes called "crane")."""

    name: str
    index: int | None = None

    def __str__(self) -> str:
        return self.name


@dataclass
class Sample:
    """One input sample: media converted to the canonical form (its ``conversion`` says how), and the task target."""

    sample_id: str
    media: Media  # an Image or Audio, as the source's modality says
    target: Any = None  # class name for classification; label map, transcript, stems for others


class Source(Component):
    """Lists sample ids cheaply on the driver, loads one sample at a time in the pipeline."""

    def ids(self) -> list[str]:
        raise NotImplementedError

    def count(self) -> int:
        """How many ids there are; sources that know it without listing them say so."""
        return len(self.ids())

    def id_range(self, start: int, stop: int) -> list[str]:
        """``ids()[start:stop]``, listed once per source object; sources that can make a range
        without listing every id do."""
        if getattr(self, "_ids", None) is None:
            self._ids = self.ids()
        return self._ids[start:stop]

    def load(self, sample_id: str) -> Sample:
        raise NotImplementedError

    def describe(self) -> str:
        """Where the data came from, recorded in every row (e.g. ``hf:beans/default/validation``)."""
        raise NotImplementedError

    def classes(self) -> list[ClassTarget] | None:
        """The dataset's classes (with their ids where it numbers them), checked against a
        classifier's before any work; None when its samples have no class labels."""
        return None


@dataclass
class Coded:
    """A codec round trip: bits counted from the real encoded bytes, and the decoded media."""

    bits: int
    decoded: Media  # of the input's type
    extra: dict[str, Any] = field(default_factory=dict)  # values for the codec's own columns
    device: str = "cpu"  # where the codec ran (a neural codec: its network), recorded as `codec_device`


class Codec(Component):
    default_settings: ClassVar[list] = []
    runs_on: ClassVar[str] = "cpu"  # "gpu": a neural network does the coding, on a GPU where there is one
    # Where a "gpu" codec runs its network (a torch device, set by the engine's Encode stage).
    device: str = "cpu"
    pipeline_check: str | None = None  # why this codec's output means nothing, if it doesn't

    def check_setting(self, setting: Any) -> None:
        """Raise ValueError naming the valid range when ``setting`` is out of it."""

    def version(self) -> str:
        raise NotImplementedError

    def preflight(self, settings: list) -> None:
        """Cheap check, on the driver before any work, that the weights these settings need
        can be had; raises ``AssetUnavailable`` naming them otherwise."""

    def roundtrip(self, media: Media, setting: Any) -> Coded:
        raise NotImplementedError

    def roundtrip_batch(self, media: list[Media], setting: Any) -> list[Coded]:
        """Round trips of several inputs at one setting; a neural codec on a GPU runs inputs
        of one shape through its network together."""
        return [self.roundtrip(m, setting) for m in media]

    def assets(self, settings: list | None = None) -> list[Asset]:
        """What the codec downloads for these settings (default: its default sweep)."""
        return []


class Task(Component):
    """A pretrained model and its per-sample score.

    ``predict`` returns, per input, a dict with ``label``, ``prediction`` (strings),
    ``correct`` (bool or None), ``score`` (float: the per-sample task score) and the task's
    own columns; keys starting with ``_`` hold what ``agreement`` needs (a mask, the
    separated stems) and are not stored.
    """

    # Set by the model loader: recorded in every row.
    model_id: str = ""
    model_revision: str = ""
    pipeline_check: str | None = None  # why this model's scores mean nothing, if they don't

    def __init__(self, options: Options, device: str = "cpu", precision: str = "fp32"):
        super().__init__(options)
        self.device, self.precision = device, precision

    def load(self) -> None:
        """Load the model (once per actor); sets model_id and model_revision."""
        raise NotImplementedError

    def preflight(self) -> None:
        """Cheap checks, on the driver before any work, beyond its ``assets()`` (which are
        checked anyway); raises ``AssetUnavailable`` or ``ValueError`` naming the problem."""

    def check_dataset(self, dataset: str, source: Source) -> None:
        """Before any work: raise ValueError naming what in this dataset the model cannot score."""

    def predict(self, media: list[Media], targets: list[Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def agreement(self, output: dict[str, Any], reference: dict[str, Any]) -> dict[str, float | None]:
        """The label-free score of ``output`` (``predict``'s dict for a coded input) against
        ``reference`` (its dict for the uncompressed input), as columns of the row:
        ``agreement`` in [0, 1], 1 for the same answer, falling as the task's own distance
        between the two answers grows, and that raw distance in a column of the task's own
        (declared in ``columns``), so every task's agreement is on one scale."""
        return {}

    @classmethod
    def aggregate(cls, rows: "pl.DataFrame") -> dict[str, float | None]:
        """Split-level scores of one condition's rows (error rows excluded), e.g. accuracy,
        dataset-level mIoU or WER. Used by the run summary and by ``mpq.analysis``."""
        return mean_agreement(rows)

    @classmethod
    def sums(cls, rows: "pl.DataFrame") -> "dict[str, np.ndarray] | None":
        """``aggregate`` as sums: per row, the parts (arrays with one row per row) whose sums
        over any weighting of the rows ``from_sums`` turns into the same scores; None where the
        aggregate is not a function of sums (a median). Lets ``mpq.analysis`` score thousands
        of bootstrap resamples at once."""
        return agreement_sums(rows)

    @classmethod
    def from_sums(cls, sums: "dict[str, np.ndarray]") -> "dict[str, np.ndarray]":
        """Scores (arrays, NaN where ``aggregate`` gives None) from ``sums``' parts summed
        over rows (leading axes kept: one score per resample)."""
        return agreement_from_sums(sums)


def mean_agreement(rows: "pl.DataFrame") -> dict[str, float | int | None]:
    """The split-level label-free score: the mean of the rows' finite ``agreement``; where
    some are infinite or NaN, ``agreement_nonfinite`` counts them instead of averaging them."""
    if "agreement" not in rows.columns:
        return {"agreement": None}
    col = rows["agreement"].drop_nulls().cast(float)
    finite = col.filter(col.is_finite())
    out = {"agreement": finite.mean() if finite.len() else None}
    if finite.len() < col.len():
        out["agreement_nonfinite"] = col.len() - finite.len()
    return out


def column_sums(rows: "pl.DataFrame", column: str, where: "np.ndarray | None" = None) -> tuple["np.ndarray", "np.ndarray"]:
    """A column's values (0 where null, NaN or not ``where``) and 1 where counted."""
    import numpy as np

    if column not in rows.columns:
        return np.zeros(rows.height), np.zeros(rows.height)
    values = rows[column].cast(float).fill_null(float("nan")).to_numpy().astype(float)
    counted = ~np.isnan(values) & (True if where is None else where)
    return np.where(counted, values, 0.0), counted.astype(float)


def ratio(num: "np.ndarray", den: "np.ndarray") -> "np.ndarray":
    """num / den, NaN where den is 0."""
    import numpy as np

    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1), np.nan)


def agreement_sums(rows: "pl.DataFrame") -> "dict[str, np.ndarray]":
    total, count = column_sums(rows, "agreement")
    return {"agreement": total, "agreement_n": count}


def agreement_from_sums(sums: "dict[str, np.ndarray]") -> "dict[str, np.ndarray]":
    return {"agreement": ratio(sums["agreement"], sums["agreement_n"])}


class Metric(Component):
    lower_better: ClassVar[bool] = False
    pipeline_check: str | None = None

    def __init__(self, options: Options | None = None, device: str = "cpu"):
        super().__init__(options)
        self.device = device

    def compute(self, references: list[Media], tests: list[Media]) -> list[dict[str, Any]]:
        """One dict of this metric's columns per (reference, test) pair. The metric stage passes
        the rows of one sample with one and the same reference object."""
        raise NotImplementedError
