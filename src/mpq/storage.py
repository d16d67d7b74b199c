"""Where mpq's files live, and the one way each is written whole.

``filesystem`` resolves a location (a local path, or a URI: ``s3://``, ``gs://``, ``file://``...)
to a pyarrow filesystem and a path in it; every reader and writer of an output goes through it.

``write`` is the atomic write that results, the encoded cache, the lease and the in-flight notes
use: a reader, or a run killed at any moment, sees the old file or the new one, never part of
one. On a local disk the file is written under a temporary name beside its own and renamed
(``write_local``, which also serves model folders that a library saves itself); on an object
store it is built in memory and then uploaded by one stream, and the store shows an object
only once its upload is complete.
"""

from __future__ import annotations

import os
import shutil
import uuid
from typing import Callable

import pyarrow as pa
import pyarrow.fs as pafs


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and path of a local folder or an fsspec/Arrow URI (s3://, gs://).

    One resolver, so that all use the same settings: for s3:// the standard AWS variables,
    AWS_ENDPOINT_URL included (honoured by ``from_uri``)."""
    return pafs.FileSystem.from_uri(location) if "://" in location else (pafs.LocalFileSystem(), location)


def write(fs: pafs.FileSystem, path: str, content: Callable[[pa.NativeFile], object]) -> None:
    """``content(sink)`` writes the file; ``path`` holds it once it is whole. The folder must exist."""
    if isinstance(fs, pafs.LocalFileSystem):
        def to_file(tmp: str) -> None:
            with fs.open_output_stream(tmp) as sink:
                content(sink)

        write_local(path, to_file)
        return
    # An object store's output stream commits what it got when closed after an error, so the
    # stream is opened only once the whole file is in hand.
    sink = pa.BufferOutputStream()
    content(sink)
    data = sink.getvalue()
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_local(path: str | os.PathLike, save: Callable[[str], object], exclusive: bool = False) -> bool:
    """``save(tmp)`` writes a file or a folder at a temporary name beside ``path``, renamed to
    ``path`` when whole; on an error the temporary is removed. With ``exclusive`` (a file only),
    ``path`` is taken only if nothing is there yet. False when ``path`` was not taken: with
    ``exclusive``, something was there; otherwise a folder was (another writer finished first)."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        save(tmp)
        if exclusive:
            try:
                os.link(tmp, path)  # fails if the name exists
            except FileExistsError:
                return False
        else:
            try:
                os.replace(tmp, path)  # a file is replaced; a folder with files in it is not
            except OSError:
                if not os.path.isdir(path):
                    raise
                return False
        return True
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.unlink(tmp)
