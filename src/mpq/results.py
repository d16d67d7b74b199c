"""The results table: schema, resume keys, run metadata and the atomic Parquet sink.

Results are a Parquet dataset under ``OUTPUT/results/``, one row per
(dataset, sample_id, codec, setting, task). Each file is written under a temporary name
and renamed when complete, so a run killed at any moment leaves only whole files; the
next run reads the keys already present and skips that work.

A key is done when a file holds it with every metric column its dataset now asks for; a
job extended with a metric redoes its old rows (decoding from the encoded cache) and the
new rows supersede the old: files are named in the order they were written, and readers
keep each key's last row.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import mpq
from mpq import registry
from mpq.spec import JobSpec

KEY = ("dataset", "sample_id", "codec", "setting", "task")
BASELINE = "none"  # codec name of the uncompressed baseline row (setting "")

BASE_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("sample_id", pa.string()),
        ("codec", pa.string()),
        ("setting", pa.string()),
        ("task", pa.string()),
        ("task_type", pa.string()),  # the task's registry name, for its split-level aggregate
        ("model", pa.string()),
        ("model_revision", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bits", pa.int64()),
        ("bpp", pa.float64()),
        ("sample_rate", pa.int32()),  # audio: the input's rate, channels, length
        ("channels", pa.int32()),
        ("num_samples", pa.int64()),
        ("duration", pa.float64()),
        ("bps", pa.float64()),  # audio rate: bits per sample (time step) and effective kbps
        ("kbps", pa.float64()),
        ("label", pa.string()),
        ("prediction", pa.string()),
        ("correct", pa.bool_()),
        ("score", pa.float64()),
        ("agreement", pa.float64()),  # the task score against the model's own answer on the uncompressed input
        ("error", pa.string()),
        ("conversion", pa.string()),
        ("pipeline_check", pa.string()),
        ("source", pa.string()),
        ("codec_version", pa.string()),
        ("mpq_version", pa.string()),
        ("versions", pa.string()),
        ("run_id", pa.string()),
    ]
)

# Libraries whose versions can change a result; recorded in every row.
TRACKED_LIBRARIES = (
    "torch", "torchvision", "transformers", "datasets", "compressai", "lpips", "pillow", "imagecodecs",
    "pytorch-msssim", "numpy", "ray", "av", "soxr", "soundfile", "cdpam", "demucs", "museval", "jiwer",
    "whisper-normalizer",
)


def library_versions() -> str:
    out = {}
    for lib in TRACKED_LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            pass
    return json.dumps(out, sort_keys=True)


def schema_for(job: JobSpec) -> pa.Schema:
    """The base columns plus every column the job's components declare."""
    fields = {f.name: f for f in BASE_SCHEMA}
    components = [("codec", c.name) for c in job.codecs] + [("task", t.name) for t in job.tasks]
    components += [("metric", m.name) for m in job.metrics]
    for kind, name in components:
        for col, typ in registry.get(kind, name).columns.items():
            if col in fields and fields[col].type != typ:
                raise TypeError(f"{kind} {name!r} declares column {col!r} as {typ}, already {fields[col].type}")
            fields.setdefault(col, pa.field(col, typ))
    return pa.schema(list(fields.values()))


def filesystem(output: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path of a local folder or an fsspec/Arrow URI (s3://, gs://)."""
    return pafs.FileSystem.from_uri(output) if "://" in output else (pafs.LocalFileSystem(), output)


def setting_str(setting) -> str:
    return "" if setting is None else str(setting)


@dataclass
class ResultStore:
    """Parquet files under ``<output>/results``; ``output`` is a local path or an fsspec/Arrow URI."""

    output: str
    # Starts with the time (to the microsecond), so that file names sort in the order the runs were made.
    run_id: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f-") + uuid.uuid4().hex[:4])

    def __post_init__(self):
        self.fs, root = filesystem(self.output)
        self.root = root.rstrip("/") + "/results"
        self.fs.create_dir(self.root, recursive=True)
        self._seq = 0

    def files(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))

    def done_keys(self, required: dict[str, set[str]] | None = None) -> set[tuple[str, ...]]:
        """Keys written in a file that has every column in ``required[dataset]`` (metric columns)."""
        keys: set[tuple[str, ...]] = set()
        for path in self.files():
            with self.fs.open_input_file(path) as f:
                parquet = pq.ParquetFile(f)
                has, table = set(parquet.schema_arrow.names), parquet.read(columns=list(KEY))
            datasets = {d for d in table.column("dataset").unique().to_pylist() if (required or {}).get(d, set()) <= has}
            keys.update(k for k in zip(*(table.column(c).to_pylist() for c in KEY)) if k[0] in datasets)
        return keys

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self._seq += 1
        final = f"{self.root}/part-{self.run_id}-{self._seq:06d}.parquet"
        tmp = f"{self.root}/.tmp-{self.run_id}-{self._seq:06d}"
        with self.fs.open_output_stream(tmp) as f:
            pq.write_table(table, f)
        self.fs.move(tmp, final)


def run_metadata(run_id: str) -> dict[str, str]:
    return {"mpq_version": mpq.__version__, "versions": library_versions(), "run_id": run_id}
