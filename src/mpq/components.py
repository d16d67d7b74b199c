"""Base classes of the four pluggable component kinds.

A component declares its ``modality`` ("image" or "audio"), an ``Options`` pydantic model
for the keys it accepts in a job file, and the result ``columns`` it adds (name → Arrow
type). Heavy libraries are imported inside methods so that listing and validating a job
stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import polars as pl


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


@dataclass
class Sample:
    """One input sample: media converted to the canonical form, and the task target."""

    sample_id: str
    media: Any
    target: Any = None  # class name for classification; label map, transcript, stems for others
    conversion: str | None = None


class Source(Component):
    """Lists sample ids cheaply on the driver, loads one sample at a time in the pipeline."""

    def ids(self) -> list[str]:
        raise NotImplementedError

    def load(self, sample_id: str) -> Sample:
        raise NotImplementedError

    def describe(self) -> str:
        """Where the data came from, recorded in every row (e.g. ``hf:beans/default/validation``)."""
        raise NotImplementedError

    def assets(self) -> list[str]:
        """Hub assets this source needs (for pre-fetching and offline checks)."""
        return []


@dataclass
class Coded:
    """A codec round trip: bits counted from the real encoded bytes, and the decoded media."""

    bits: int
    decoded: Any
    extra: dict[str, Any] = field(default_factory=dict)  # values for the codec's own columns


class Codec(Component):
    default_settings: ClassVar[list] = []
    setting_type: ClassVar[type] = int
    pipeline_check: str | None = None  # why this codec's output means nothing, if it doesn't

    def check_setting(self, setting: Any) -> None:
        """Raise ValueError naming the valid range when ``setting`` is out of it."""

    def version(self) -> str:
        raise NotImplementedError

    def preflight(self, settings: list) -> None:
        """Cheap check, on the driver before any work, that the weights these settings need
        can be had; raises ``AssetUnavailable`` naming them otherwise."""

    def roundtrip(self, media: Any, setting: Any) -> Coded:
        raise NotImplementedError


class Task(Component):
    """A pretrained model and its per-sample score.

    ``predict`` returns, per input, a dict with ``label``, ``prediction`` (strings),
    ``correct`` (bool or None), ``score`` (float: the per-sample task score) and the task's
    own columns.
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
        """Cheap check, on the driver before any work, that the model can be loaded;
        raises ``AssetUnavailable`` naming it otherwise."""

    def assets(self) -> list[str]:
        return []

    def predict(self, media: list[Any], targets: list[Any]) -> list[dict[str, Any]]:
        raise NotImplementedError

    @classmethod
    def aggregate(cls, rows: "pl.DataFrame") -> dict[str, float | None]:
        """Split-level scores of one condition's rows (error rows excluded), e.g. accuracy,
        dataset-level mIoU or WER. Used by the run summary and by ``mpq.analysis``."""
        return {}


class Metric(Component):
    lower_better: ClassVar[bool] = False
    pipeline_check: str | None = None

    def __init__(self, options: Options | None = None, device: str = "cpu"):
        super().__init__(options)
        self.device = device

    def assets(self) -> list[str]:
        return []

    def compute(self, references: list[Any], tests: list[Any]) -> list[dict[str, Any]]:
        """One dict of this metric's columns per (reference, test) pair."""
        raise NotImplementedError
