"""How working rows travel between Ray stages: a record per sample (so the batch sizes Ray Data
hands GPU actors count samples), its media in their Arrow form (``media.ARROW``), each object
once however many of its rows hold it (the original crosses the object store once, not once per
codec setting), and its rows pickled beside them, each media object replaced by its index in
that list: plain values whose keys grow stage by stage, which need no schema per stage."""

from __future__ import annotations

import io
import pickle
from typing import Any

import pyarrow as pa

from mpq.media import ARROW, Media

SCHEMA = pa.schema([("rows", pa.large_binary()), ("media", pa.list_(ARROW))])


class _Pickler(pickle.Pickler):
    """Pickles rows with each media object they hold replaced by its index in ``media``."""

    def __init__(self, file):
        super().__init__(file, protocol=5)
        self.media: list[Media] = []
        self.index: dict[int, int] = {}

    def persistent_id(self, obj):
        if not isinstance(obj, Media):
            return None
        if id(obj) not in self.index:
            self.index[id(obj)] = len(self.media)
            self.media.append(obj)
        return self.index[id(obj)]


def pack(rows: list[dict[str, Any]]) -> pa.Table:
    """A record per sample, so the original its rows share arrives as one object again."""
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        samples.setdefault((r["dataset"], r["sample_id"]), []).append(r)
    blobs, media = [], []
    for sample in samples.values():
        buf = io.BytesIO()
        pickler = _Pickler(buf)
        pickler.dump(sample)
        blobs.append(buf.getvalue())
        media.append([m.to_arrow() for m in pickler.media])
    return pa.table({"rows": blobs, "media": media}, schema=SCHEMA)


def unpack(batch: pa.Table) -> list[dict[str, Any]]:
    rows = []
    for blob, media in zip(batch.column("rows").to_pylist(), batch.column("media").to_pylist()):
        unpickler = pickle.Unpickler(io.BytesIO(blob))
        unpickler.persistent_load = [Media.from_arrow(m) for m in media].__getitem__  # an index back to its object
        rows += unpickler.load()
    return rows
