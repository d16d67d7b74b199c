"""The one atomic write, on a real local folder (on S3: tests/test_s3.py): a write cut off
midway leaves the old file readable and nothing else; a folder saved by a library is taken
whole by the first writer to finish; an exclusive write takes only a free name."""

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mpq.storage import filesystem, write, write_local


def half_then_fail(sink, data: bytes):
    sink.write(data[: len(data) // 2])
    raise ConnectionError("connection lost")


def test_a_write_cut_off_midway_leaves_the_old_file_and_nothing_else(tmp_path):
    fs, root = filesystem(str(tmp_path))
    path = f"{root}/t.parquet"
    old, new = pa.table({"x": [1, 2]}), pa.table({"x": [3, 4, 5]})
    write(fs, path, lambda f: pq.write_table(old, f))
    sink = pa.BufferOutputStream()
    pq.write_table(new, sink)
    with pytest.raises(ConnectionError):
        write(fs, path, lambda f: half_then_fail(f, sink.getvalue().to_pybytes()))
    assert os.listdir(tmp_path) == ["t.parquet"] and pq.read_table(path).equals(old)
    with pytest.raises(ConnectionError):
        write(fs, f"{root}/other.parquet", lambda f: half_then_fail(f, sink.getvalue().to_pybytes()))
    assert os.listdir(tmp_path) == ["t.parquet"]
    write(fs, path, lambda f: pq.write_table(new, f))
    assert os.listdir(tmp_path) == ["t.parquet"] and pq.read_table(path).equals(new)


def test_a_uri_is_resolved_to_its_filesystem_and_path(tmp_path):
    fs, path = filesystem(f"file://{tmp_path}/out")
    assert isinstance(fs, pa.fs.LocalFileSystem) and path == f"{tmp_path}/out"
    fs, path = filesystem("relative/out")
    assert isinstance(fs, pa.fs.LocalFileSystem) and path == "relative/out"


def test_a_folder_is_taken_whole_by_the_first_writer_to_finish(tmp_path):
    path = tmp_path / "model"

    def save(name):
        def to(tmp):
            os.mkdir(tmp)
            Path(tmp, "config.json").write_text(name)

        return to

    assert write_local(path, save("first"))
    assert not write_local(path, save("second"))  # renaming onto a folder with files fails: the first stays
    assert (path / "config.json").read_text() == "first" and os.listdir(tmp_path) == ["model"]

    def cut(tmp):
        os.mkdir(tmp)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_local(tmp_path / "other", cut)
    assert os.listdir(tmp_path) == ["model"]


def test_an_exclusive_write_takes_only_a_free_name(tmp_path):
    path = tmp_path / "lease.json"
    assert write_local(path, lambda tmp: Path(tmp).write_bytes(b"one"), exclusive=True)
    assert not write_local(path, lambda tmp: Path(tmp).write_bytes(b"two"), exclusive=True)
    assert path.read_bytes() == b"one" and os.listdir(tmp_path) == ["lease.json"]
    assert write_local(path, lambda tmp: Path(tmp).write_bytes(b"two"))  # not exclusive: replaced
    assert path.read_bytes() == b"two" and os.listdir(tmp_path) == ["lease.json"]
