"""Results on object storage, through a real S3 API: moto's standalone server on 127.0.0.1
(the session's, conftest.s3_endpoint).

The runs find the server the way a user's shell would, through the standard AWS variables
(AWS_ENDPOINT_URL included) and nothing else; the rows are counted back by an independent
reader, pyarrow's dataset API over an S3FileSystem given the endpoint explicitly.
"""

import runpy
import socket
import urllib.request
import uuid

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import ROOT, cli_here, photo
from typer.testing import CliRunner

from mpq import __version__ as MPQ_VERSION
from mpq import results
from mpq.cache import EncodedCache
from mpq.cli import app
from mpq.codecs.image import PillowCodec
from mpq.components import Coded
from mpq.media import Image
from mpq.reading import read_results
from mpq.results import KEY, ResultStore

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "mpq-test", "AWS_SECRET_ACCESS_KEY": "mpq-secret", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A fresh bucket on the server, named; this process's AWS variables point at it."""
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = f"mpq-{uuid.uuid4().hex[:12]}"
    independent_fs(s3_endpoint).create_dir(bucket)
    return bucket


def independent_fs(endpoint: str) -> pafs.S3FileSystem:
    """Not through mpq's filesystem(): every setting given explicitly."""
    return pafs.S3FileSystem(
        endpoint_override=endpoint, access_key=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        secret_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"], region="us-east-1", allow_bucket_creation=True,
    )


def objects(fs: pafs.FileSystem, prefix: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return [i.path for i in infos if i.type == pafs.FileType.File]


@pytest.fixture
def tiny_job(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny",
        "datasets": [{"name": "skimage", "source": {"samples": "skimage"}}],
        "codecs": [{"name": "jpeg", "settings": [20, 50]}],
        "tasks": [{"name": "classify", "model": "builtin:tiny-vit"}],
        "metrics": ["psnr"],
    }))
    return path


def one_line_failure(args: list[str], location: str) -> str:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output  # no traceback
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and location in lines[0], result.output
    return lines[0]


@pytest.mark.slow
def test_run_resume_summary_and_report_on_s3(s3, tiny_job, tmp_path, s3_endpoint, monkeypatch):
    bucket = s3
    uri = f"s3://{bucket}/tiny"
    run = ["run", str(tiny_job), "-o", uri, "--engine", "serial", "--limit", "2", "--no-progress"]
    first = cli_here(*run)  # as from a shell: only the AWS variables (set by the fixture) say where S3 is
    assert first.returncode == 0, first.stderr
    assert "6 rows written (0 with errors), 0 already there" in first.stdout  # 2 images × (baseline + 2 settings)
    assert "summary" in first.stdout and "accuracy" in first.stdout  # the summary read the rows back from S3

    second = CliRunner().invoke(app, run)
    assert second.exit_code == 0, second.output
    assert "0 rows written (0 with errors), 6 already there" in second.output and "accuracy" in second.output

    fs = independent_fs(s3_endpoint)
    table = ds.dataset(f"{bucket}/tiny/results", filesystem=fs, format="parquet").to_table()
    keys = set(zip(*(table.column(c).to_pylist() for c in KEY)))
    assert table.num_rows == len(keys) == 6
    names = objects(fs, bucket)
    assert sum("/cache/encoded/" in n for n in names) == 2 * 2  # one cache entry per image and setting
    assert not [n for n in names if ".tmp-" in n]

    status = CliRunner().invoke(app, ["status", uri, "--job", str(tiny_job), "--limit", "2"])  # reads S3, writes nothing
    assert status.exit_code == 0, status.output
    assert f"{uri}: 6 rows" in status.output and "no run is writing it" in status.output and "0 rows of 0 samples" in status.output
    planned = CliRunner().invoke(app, ["plan", str(tiny_job), "-o", uri, "--limit", "3", "--no-calibrate"])
    assert planned.exit_code == 0 and "3 rows to compute for 1 samples; 6 rows already done" in planned.output, planned.output
    assert objects(fs, bucket) == names

    with monkeypatch.context() as m:  # the job extended with a metric decodes from the cache on S3
        calls = []
        real = PillowCodec.roundtrip
        m.setattr(PillowCodec, "roundtrip", lambda self, *a: calls.append(a) or real(self, *a))
        spec = yaml.safe_load(tiny_job.read_text())
        tiny_job.write_text(yaml.safe_dump({**spec, "metrics": ["psnr", "ssim"]}))
        third = CliRunner().invoke(app, run)
    assert third.exit_code == 0, third.output
    assert "6 rows written (0 with errors), 0 already there" in third.output and calls == []

    report = CliRunner().invoke(app, ["report", uri, "--to", str(tmp_path / "report"), "--resamples", "0"])
    assert report.exit_code == 0, report.output
    summary = pl.read_csv(tmp_path / "report" / "summary_image.csv")
    assert "jpeg 20" in summary.columns and "ssim" in summary["measure"].to_list()
    assert "ssim" in (tmp_path / "report" / "report.html").read_text()

    monkeypatch.setenv("MPQ_RESULTS", uri)  # the notebooks read through analysis.load
    ns = runpy.run_path(str(ROOT / "analysis" / "summary.py"), run_name="__main__")
    assert ns["df"].height == 6 and ns["conds"].height == 3 + 2  # accuracy of 3 conditions, agreement of the 2 coded


def test_missing_bucket_is_one_line_before_any_work(s3, tiny_job, tmp_path):
    bucket = s3
    uri = f"s3://{bucket}-missing/tiny"
    line = one_line_failure(["run", str(tiny_job), "-o", uri, "--engine", "serial"], uri)
    assert f"bucket '{bucket}-missing' does not exist" in line
    line = one_line_failure(["report", uri, "--to", str(tmp_path / "r")], uri)
    assert "does not exist" in line and not (tmp_path / "r").exists()


def test_unreachable_endpoint_is_one_line(s3, tiny_job, monkeypatch):
    bucket = s3
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    uri = f"s3://{bucket}/tiny"
    line = one_line_failure(["run", str(tiny_job), "-o", uri, "--engine", "serial"], uri)
    assert "NETWORK_CONNECTION" in line and f"127.0.0.1:{port}" in line


@pytest.fixture
def s3_auth(s3_endpoint):
    """Make the server check credentials (moto accepts any by default), for one test."""

    def set_count(value: bytes):
        req = urllib.request.Request(f"{s3_endpoint}/moto-api/reset-auth", data=value, method="POST", headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req).close()

    set_count(b"0")
    yield
    set_count(b"inf")


def test_bad_credentials_are_one_line(s3, tiny_job, tmp_path, s3_auth):
    bucket = s3
    uri = f"s3://{bucket}/tiny"
    line = one_line_failure(["run", str(tiny_job), "-o", uri, "--engine", "serial"], uri)
    assert "INVALID_ACCESS_KEY_ID" in line
    line = one_line_failure(["report", uri, "--to", str(tmp_path / "r")], uri)
    assert "INVALID_ACCESS_KEY_ID" in line


def half_then_fail(sink, data: pa.Buffer):
    """The connection drops halfway through an object."""
    sink.write(data[: data.size // 2])
    raise ConnectionError("connection lost")


def test_an_interrupted_write_leaves_nothing_a_later_run_trusts(s3, monkeypatch, s3_endpoint):
    """pyarrow's S3 output stream, closed after an error, commits what it got (checked first);
    mpq builds each object whole before its upload, so an interrupted write leaves nothing."""
    bucket = s3
    fs = independent_fs(s3_endpoint)
    with pytest.raises(ConnectionError), fs.open_output_stream(f"{bucket}/cut/direct") as f:
        half_then_fail(f, pa.py_buffer(b"0123456789"))
    assert fs.open_input_file(f"{bucket}/cut/direct").readall() == b"01234"
    store = ResultStore(f"s3://{bucket}/cut")
    table = pa.table({c: ["x"] for c in KEY} | {"error": pa.array([None], pa.string()), "mpq_version": [MPQ_VERSION]})
    real_write = pq.write_table

    def cut_parquet(t, f, **kw):
        sink = pa.BufferOutputStream()
        real_write(t, sink, **kw)
        half_then_fail(f, sink.getvalue())

    with monkeypatch.context() as m, pytest.raises(ConnectionError):
        m.setattr(results.pq, "write_table", cut_parquet)
        store.write(table)
    assert objects(fs, f"{bucket}/cut/results") == []
    assert store.files() == [] and store.done_keys() == set() and read_results(f"s3://{bucket}/cut").is_empty()
    store.write(table)
    assert store.done_keys() == {("x",) * len(KEY)}

    cache = EncodedCache(f"s3://{bucket}/cut")
    path = cache.path("d", "a.png", "jpeg", 10, "v1", {}, "0")
    image = Image(photo())
    cache.put(path, Coded(bits=8, decoded=image))
    whole = fs.open_input_file(path).readall()
    real_new_file = pa.ipc.new_file

    class CutWriter:  # writes the entry's real bytes, up to half of them
        def __init__(self, sink, schema, options=None):
            self.sink, self.schema, self.options = sink, schema, options

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write_table(self, t):
            buf = pa.BufferOutputStream()
            with real_new_file(buf, self.schema, options=self.options) as w:
                w.write_table(t)
            half_then_fail(self.sink, buf.getvalue())

    other = cache.path("d", "b.png", "jpeg", 10, "v1", {}, "0")
    with monkeypatch.context() as m:
        m.setattr(pa.ipc, "new_file", CutWriter)
        with pytest.raises(ConnectionError):
            cache.put(other, Coded(bits=8, decoded=image))
        with pytest.raises(ConnectionError):
            cache.put(path, Coded(bits=8, decoded=image))  # over an entry that exists
    assert cache.get(other) is None and fs.open_input_file(path).readall() == whole
    assert cache.get(path).bits == 8 and np.array_equal(cache.get(path).decoded.pixels, image.pixels)
    assert objects(fs, f"{bucket}/cut/cache") == [path]
