"""The results table: schema, resume keys, run metadata and the atomic Parquet sink.

Results are a Parquet dataset under ``OUTPUT/results/``, one row per
(dataset, sample_id, codec, setting, task). Each file is written whole or not at all
(``storage.write``), so a run killed at any moment leaves only whole files; the next run
reads the keys already present and skips that work.

A key is done when a file holds it with every metric column its dataset now asks for; a
job extended with a metric redoes its old rows (decoding from the encoded cache) and the
new rows supersede the old: files are named in the order they were written, and readers
keep each key's last row.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mpq import storage
from mpq.storage import filesystem  # a name here too: the resume test and bench count ResultStore's reads through it
from mpq.targets import COLUMNS as TARGET_COLUMNS
from mpq.version import __version__

KEY = ("dataset", "sample_id", "codec", "setting", "task")
BASELINE = "none"  # codec name of the uncompressed baseline row (setting "")
INFRA_PREFIX = "infra: "  # an error the machine caused (out of memory, a lost worker), not the sample
READERS = 16  # results files read at once for their done keys
# mpq 0.1.0's encoded cache stored audio as an object pointer and failed reading it back.
OLD_CACHE_ERROR = "cannot create an OBJECT array from memory buffer"


# Rows of an older mpq whose figures were defined differently (0.1.0: `bps` per time step,
# ADE20k labels read unshifted, DAC codebooks rounded over both channels; 0.2.0: `agreement`
# on each task's own scale, ASR's unbounded below and separation's in dB, and Whisper's
# sampled temperature fallback) are not done.
COMPATIBLE_SINCE = (0, 3, 0)


def current(mpq_version: str | None) -> bool:
    try:
        return tuple(int(x) for x in (mpq_version or "0").split(".")[:3]) >= COMPATIBLE_SINCE
    except ValueError:
        return False


def retryable(error: str | None, redo: tuple[str, ...] = ()) -> bool:
    """An error row that is not done: the infrastructure failed, not the sample, and a re-run
    redoes it; or one whose kind (``error_kind``) a re-run asks to redo (``run --redo KIND``)."""
    if error is None:
        return False
    kind = error_kind(error)
    return (error.startswith(INFRA_PREFIX) or OLD_CACHE_ERROR in error
            or any(k == "all" or kind == k or kind.startswith(k + " ") for k in redo))


ERROR_STAGES = ("load", "codec", "task", "metric", "worker died")  # what an error row names first


def check_redo(kinds: tuple[str, ...]) -> None:
    """Refuse a ``--redo`` kind that no error row can have (a typo would redo nothing)."""
    for kind in kinds:
        if kind != "all" and not any(kind == s or kind.startswith(s + " ") for s in ERROR_STAGES):
            raise ValueError(f"--redo: no error is of kind {kind!r}; valid kinds: {', '.join(ERROR_STAGES)}, task agreement, metric NAME, all")


def error_kind(error: str) -> str:
    """What failed, as an error row names it: load, codec, task, task agreement, metric NAME,
    worker died (``infra: `` first where the machine failed, not the sample)."""
    infra = INFRA_PREFIX if error.startswith(INFRA_PREFIX) else ""
    return infra + error.removeprefix(infra).split(":", 1)[0].strip()

BASE_SCHEMA = pa.schema(
    [
        ("dataset", pa.string()),
        ("modality", pa.string()),  # the dataset's: image or audio
        ("sample_id", pa.string()),
        ("codec", pa.string()),
        ("setting", pa.string()),
        ("task", pa.string()),
        ("task_type", pa.string()),  # the task's registry name, for its split-level aggregate
        ("model", pa.string()),
        ("model_revision", pa.string()),
        ("precision", pa.string()),  # the task model's: fp32 on CPUs whatever the job asks; metrics are always fp32
        ("device", pa.string()),
        ("task_options", pa.string()),  # JSON: every option of the task, defaults included
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bits", pa.int64()),
        ("bpp", pa.float64()),
        ("sample_rate", pa.int32()),  # audio: the input's rate, channels, length
        ("channels", pa.int32()),
        ("num_samples", pa.int64()),
        ("duration", pa.float64()),
        ("bps", pa.float64()),  # audio rate: bits per channel sample (the study's) and effective kbps
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
        ("codec_device", pa.string()),  # where the codec ran (a neural codec: its network); null on the baseline
        ("mpq_version", pa.string()),
        ("versions", pa.string()),
        ("run_id", pa.string()),
    ]
)

# Libraries whose versions can change a result; recorded in every row.
TRACKED_LIBRARIES = (
    "torch", "torchvision", "transformers", "datasets", "compressai", "lpips", "pillow", "imagecodecs",
    "pytorch-msssim", "numpy", "ray", "av", "soxr", "soundfile", "cdpam", "demucs", "museval", "jiwer",
    "whisper-normalizer", "dists-pytorch", "ssimulacra2", "pesq", "pystoi", "visqol-python", "faster-whisper", "ctranslate2",
    "timm", "rapidocr-onnxruntime", "onnxruntime",
)


def library_versions() -> str:
    out = {}
    for lib in TRACKED_LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            pass
    return json.dumps(out, sort_keys=True)


def schema_for(components: list[tuple[str, dict[str, pa.DataType]]], targets: bool = False) -> pa.Schema:
    """The base columns plus every column the job's components declare (``components``: each
    one's name for messages, e.g. "codec 'jpeg'", and its columns), and the target-rate columns
    when a codec searches for a rate."""
    fields = {f.name: f for f in BASE_SCHEMA}
    for who, columns in components:
        for col, typ in columns.items():
            if col in fields and fields[col].type != typ:
                raise TypeError(f"{who} declares column {col!r} as {typ}, already {fields[col].type}")
            fields.setdefault(col, pa.field(col, typ))
    if targets:
        fields.update({col: pa.field(col, typ) for col, typ in TARGET_COLUMNS.items()})
    return pa.schema(list(fields.values()))


class LocationError(ValueError):
    """An output that cannot be reached: unreachable endpoint, missing bucket, bad credentials."""


def check_location(output: str, write: bool = False) -> None:
    """Fail before any work, in one line naming ``output`` and the cause, if it cannot be listed
    (or, with ``write``, on a local disk, written)."""
    try:
        fs, root = filesystem(output)
        fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))  # endpoint, credentials
        if not isinstance(fs, pafs.LocalFileSystem):  # listing a missing bucket finds nothing, no error
            bucket = root.split("/", 1)[0]
            if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise FileNotFoundError(f"bucket {bucket!r} does not exist")
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise LocationError(f"{output}: {' '.join(str(exc).split())}") from None
    if write and isinstance(fs, pafs.LocalFileSystem):  # a remote output is first written by the lease, before any work too
        _check_writable(output, root)


def _check_writable(output: str, root: str) -> None:
    """Write in a local output once; the folders made for it are removed, so that a run stopped
    before any work (a model that cannot be had) leaves nothing behind."""
    made, folder = [], os.path.abspath(root)
    while not os.path.exists(folder) and folder != os.path.dirname(folder):
        made.append(folder)  # the deepest first
        folder = os.path.dirname(folder)
    try:
        os.makedirs(root, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as exc:
        raise LocationError(f"output {output}: cannot be written ({exc.strerror or exc})") from None
    finally:
        for folder in made:
            with contextlib.suppress(OSError):  # not empty: another run's since
                os.rmdir(folder)


def setting_str(setting) -> str:
    return "" if setting is None else str(setting)


def _passing(column: pa.ChunkedArray, test) -> pa.ChunkedArray:
    """Where ``test`` holds of the value (a null included), asked once per distinct value."""
    values = [v for v in column.unique().to_pylist() if test(v)]
    return pc.is_in(column, pa.array(values, getattr(column.type, "value_type", column.type)))


_KEYS = pa.schema([(c, pa.dictionary(pa.int32(), pa.string())) for c in KEY])


class DoneKeys:
    """The done keys of some results files, held compactly (a resumed job's planning asks for
    a part's samples again and again): per dataset, its rows' (sample_id, codec, setting, task),
    each column dictionary-encoded, about 16 bytes a row besides the distinct values."""

    def __init__(self, by_dataset: dict[str, pa.Table]):
        self.by_dataset = by_dataset

    def keys(self, dataset: str | None = None, sample_ids: set[str] | None = None) -> set[tuple[str, ...]]:
        """The done keys, only of ``dataset`` and ``sample_ids`` when given."""
        out: set[tuple[str, ...]] = set()
        for name, table in self.by_dataset.items():
            if dataset is not None and name != dataset:
                continue
            if sample_ids is not None:
                table = table.filter(pc.is_in(table.column("sample_id"), pa.array(list(sample_ids), pa.string())))
            out.update(zip(itertools.repeat(name), *(table.column(c).cast(pa.string()).to_pylist() for c in KEY[1:])))
        return out


@dataclass
class ResultStore:
    """Parquet files under ``<output>/results``; ``output`` is a local path or an fsspec/Arrow URI."""

    output: str
    # Starts with the time (to the microsecond), so that file names sort in the order the runs were made.
    run_id: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f-") + uuid.uuid4().hex[:4])

    def __post_init__(self):
        self.fs, root = filesystem(self.output)
        self.root = root.rstrip("/") + "/results"
        self._seq = 0

    def exists(self) -> bool:
        return self.fs.get_file_info(self.root).type == pafs.FileType.Directory

    def files(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))

    def done(self, required: dict[str, set[str]] | None = None, files: list[str] | None = None, redo: tuple[str, ...] = ()) -> DoneKeys:
        """The keys written in ``files`` (default: every results file) that are done: in a file that
        has every column in ``required[dataset]`` (metric columns), except rows whose error is
        ``retryable`` (with ``redo``'s kinds) and rows of an mpq older than ``COMPATIBLE_SINCE``.
        Each file is read once. A key redone is written again, and readers keep its last row."""
        paths = self.files() if files is None else files
        with ThreadPoolExecutor(READERS) as pool:  # on object storage a read is requests: many at once
            tables = list(pool.map(functools.partial(self._done_rows, required=required or {}, redo=redo), paths))
        table = pa.concat_tables(tables).unify_dictionaries() if tables else _KEYS.empty_table()
        by_dataset = {}
        for name in table.column("dataset").unique().to_pylist():
            by_dataset[name] = table.filter(pc.equal(table.column("dataset"), name)).select(KEY[1:]).combine_chunks()
        del tables, table
        pa.default_memory_pool().release_unused()  # the files' buffers (mimalloc keeps them otherwise)
        return DoneKeys(by_dataset)

    def _done_rows(self, path: str, required: dict[str, set[str]], redo: tuple[str, ...]) -> pa.Table:
        with self.fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f, read_dictionary=KEY)  # as the file holds them: compact
            has = set(parquet.schema_arrow.names)
            table = parquet.read(columns=list(KEY) + [c for c in ("error", "mpq_version") if c in has])
        mask = _passing(table.column("dataset"), lambda d: d is not None and required.get(d, set()) <= has)
        if "error" in has:
            mask = pc.and_(mask, pc.invert(_passing(table.column("error"), functools.partial(retryable, redo=redo))))
        mask = pc.and_(mask, _passing(table.column("mpq_version"), current) if "mpq_version" in has else pa.repeat(False, table.num_rows))
        return table.filter(mask).select(list(KEY)).cast(_KEYS)

    def done_keys(self, required: dict[str, set[str]] | None = None, files: list[str] | None = None) -> set[tuple[str, ...]]:
        """The keys ``done`` finds, as tuples."""
        return self.done(required, files).keys()

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._seq == 0:  # created on the first write: readers leave no trace
            self.fs.create_dir(self.root, recursive=True)
        self._seq += 1
        final = f"{self.root}/part-{self.run_id}-{self._seq:06d}.parquet"
        storage.write(self.fs, final, lambda f: pq.write_table(table, f))


def run_metadata(run_id: str) -> dict[str, str]:
    return {"mpq_version": __version__, "versions": library_versions(), "run_id": run_id}
