"""Encode once: every codec round trip is kept under ``OUTPUT/cache/encoded/``.

An entry holds what the codec produced for one sample at one setting: the bits counted
from its bitstream, the decoded media, the codec's own columns and the device it ran on. It is keyed by
(dataset, sample id, the original's digest, codec, setting, codec version, codec options), so a job extended
with a task or a metric, or resumed after a crash, decodes from the cache instead of
encoding again, and a new codec library version encodes afresh.

Each entry is one zstd-compressed Arrow IPC file holding the media in their own Arrow form
(``media.ARROW``, images and audio alike), written whole or not at all (``storage.write``: local
paths, ``s3://``, ``gs://``...), so a run killed or cut off mid-write leaves no partial entry; an
unreadable entry counts as a miss and is rewritten.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

from mpq.components import Coded
from mpq.media import ARROW, Media, MediaError
from mpq.results import setting_str
from mpq.storage import filesystem, write

SCHEMA = pa.schema([("bits", pa.int64()), ("extra", pa.string()), ("device", pa.string()), ("media", ARROW)])
# In every key: entries of an older layout are never read (format 1 stored audio as an object
# pointer; format 2, the media's fields flat beside the bits).
FORMAT = 3
WRITE_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


class EncodedCache:
    """Codec round trips of one job's output; picklable, so Ray tasks carry it."""

    def __init__(self, output: str):
        self.fs, root = filesystem(output)
        self.root = root.rstrip("/") + "/cache/encoded"

    def path(self, dataset: str, sample_id: str, codec: str, setting: Any, version: str, options: dict, original: str) -> str:
        """``original``: the input's ``Media.digest``, so a changed source is a miss, not a stale hit."""
        key = json.dumps([FORMAT, dataset, sample_id, codec, setting_str(setting), version, options, original], sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()
        return f"{self.root}/{dataset}/{codec}-{setting_str(setting)}/{digest}.arrow"

    def get(self, path: str) -> Coded | None:
        """The entry, or None when it is missing, damaged or of another layout: encode again."""
        try:
            with self.fs.open_input_file(path) as f:
                row = pa.ipc.open_file(f).read_all().to_pylist()[0]
            return Coded(bits=row["bits"], decoded=Media.from_arrow(row["media"]), extra=json.loads(row["extra"]), device=row["device"])
        except (OSError, pa.ArrowException, IndexError, KeyError, TypeError, ValueError, MediaError):
            return None

    def put(self, path: str, coded: Coded) -> None:
        record = {"bits": int(coded.bits), "extra": json.dumps(coded.extra), "device": coded.device, "media": coded.decoded.to_arrow()}
        table = pa.Table.from_pylist([record], schema=SCHEMA)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)

        def entry(f):
            with pa.ipc.new_file(f, SCHEMA, options=WRITE_OPTIONS) as writer:
                writer.write_table(table)

        write(self.fs, path, entry)
