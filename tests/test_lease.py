"""One writer per output: two runs into one output write each key once; a dead run's lease
does not block its resume; the refusal is one line; the lease works on S3 (a moto server) and
on GCS (fake-gcs-server), each through its conditional writes."""

import io
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml
from helpers import ROOT, photo, rows_on_disk
from PIL import Image

from mpq import lease as lease_mod
from mpq.lease import Holder, Lease, LeaseHeld, LeaseLost
from mpq.results import KEY
from mpq.runner import run_job
from mpq.spec import parse_job

FAST = {"MPQ_LEASE_REFRESH": "0.1", "MPQ_LEASE_TIMEOUT": "2"}


@pytest.fixture(autouse=True)
def _fast_lease(monkeypatch):
    for k, v in FAST.items():
        monkeypatch.setenv(k, v)


def job_spec(folder, out, settings) -> dict:
    return {
        "name": "lease", "output": str(out),
        "datasets": [{"name": "pics", "source": {"folder": str(folder), "labels": "parent"}}],
        "codecs": [{"name": "jpeg", "settings": settings}],
        "tasks": [{"name": "classify", "model": "builtin:tiny-vit", "batch_size": 4}],
        "metrics": ["psnr"],
    }


@pytest.fixture
def pics(tmp_path):
    for i in range(3):
        (tmp_path / "pics" / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(seed=i)).save(tmp_path / "pics" / "a" / f"{i}.png")
    return tmp_path / "pics"


def job_file(tmp_path, pics, settings) -> tuple:
    out = tmp_path / "out"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_spec(pics, out, settings)))
    return path, out


def mpq_run(path, *extra) -> list[str]:
    return [sys.executable, "-m", "mpq.cli", "run", str(path), "--engine", "serial", "--no-progress", *extra]


def keys_on_disk(out) -> set:
    table = pads.dataset(str(out / "results"), format="parquet").to_table(columns=list(KEY))
    return set(zip(*(table.column(c).to_pylist() for c in KEY)))


def aged(path, seconds: float) -> None:
    """Make the lease file look last written ``seconds`` ago to its store."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def holder(run_id="other", pid=1, age=0.0, machine="elsewhere") -> Holder:
    t = (datetime.now(timezone.utc) - timedelta(seconds=age)).isoformat(timespec="milliseconds")
    return Holder(run_id, "otherhost", pid, t, t, machine)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_two_runs_started_together_write_each_key_once(tmp_path, pics):
    settings = list(range(5, 95, 10))
    path, out = job_file(tmp_path, pics, settings)
    env = {**os.environ, **FAST, "MPQ_FLUSH_ROWS": "4"}
    procs = [subprocess.Popen(mpq_run(path), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    ends = [(p.wait(), p.stderr.read()) for p in procs]
    expected = 3 * (1 + len(settings))
    assert rows_on_disk(out) == len(keys_on_disk(out)) == expected
    assert 0 in [rc for rc, _ in ends], ends
    for rc, err in ends:
        if rc:  # the later one stops before any work, in one line
            assert rc == 2 and len(err.strip().splitlines()) == 1 and "is being written by run" in err, err
    assert not (out / "lease.json").exists()


def test_held_output_refused_in_one_line_report_reads_it_force_takes_over(tmp_path, pics):
    from typer.testing import CliRunner

    from mpq.analysis import load
    from mpq.cli import app

    path, out = job_file(tmp_path, pics, [20])
    run_job(parse_job(job_spec(pics, out, [20])), str(out), engine="serial", progress=False)
    before = rows_on_disk(out)
    with Lease(str(out), "holder-run") as held:
        refused = CliRunner().invoke(app, ["run", str(path), "--engine", "serial", "--no-progress"])
        assert refused.exit_code == 2
        line = refused.stderr.strip()
        assert len(line.splitlines()) == 1, line
        for part in ("is being written by run holder-run", f"pid {os.getpid()}", "started", "last refresh", "--force"):
            assert part in line, part
        assert rows_on_disk(out) == before
        assert load(str(out)).height == before  # reading (report, notebooks) needs no lease
        forced = CliRunner().invoke(app, ["run", str(path), "--engine", "serial", "--no-progress", "--force"])
        assert forced.exit_code == 0, forced.output
        assert "warning: " in forced.output and "taking over the lease of run holder-run" in forced.output
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not held._lost:
            time.sleep(0.05)
        with pytest.raises(LeaseLost, match="taken over"):
            held.check()
    assert rows_on_disk(out) == before  # nothing left to do for the forced run


def test_stale_by_time_is_taken_over_fresh_foreign_holder_is_not(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "lease.json").write_bytes(holder(pid=dead_pid(), age=0).encode())
    with pytest.raises(LeaseHeld, match="is being written by run other"):  # another machine: the pid says nothing
        Lease(str(out), "mine").__enter__()
    (out / "lease.json").write_bytes(holder().encode())
    aged(out / "lease.json", 10)  # older than MPQ_LEASE_TIMEOUT (2 s)
    with Lease(str(out), "mine"):
        assert json.loads((out / "lease.json").read_text())["run_id"] == "mine"
    assert "is stale; taking it over" in capsys.readouterr().err
    assert not (out / "lease.json").exists()


def test_dead_holder_on_this_machine_is_stale_at_once(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "lease.json").write_bytes(holder(pid=dead_pid(), machine=lease_mod._machine()).encode())
    with Lease(str(out), "mine"):
        pass
    (out / "lease.json").write_bytes(holder(pid=os.getpid(), machine=lease_mod._machine()).encode())
    with pytest.raises(LeaseHeld):  # alive here
        Lease(str(out), "mine").__enter__()


def test_lease_is_refreshed_and_released_on_exception(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ZeroDivisionError):
        with Lease(str(out), "mine"):
            first = json.loads((out / "lease.json").read_text())["refreshed"]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and json.loads((out / "lease.json").read_text())["refreshed"] == first:
                time.sleep(0.05)
            assert json.loads((out / "lease.json").read_text())["refreshed"] > first
            1 / 0
    assert not (out / "lease.json").exists()


def race(leases: list[Lease]) -> list[str]:
    """The run ids of the leases that took the output, all trying at once."""
    barrier = threading.Barrier(len(leases))

    def take(lease):
        barrier.wait()
        try:
            lease._acquire()
            return lease.me.run_id
        except LeaseHeld:
            return None

    with ThreadPoolExecutor(len(leases)) as pool:
        return [r for r in pool.map(take, leases) if r]


def test_one_of_many_takes_a_stale_lease(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "lease.json").write_bytes(holder().encode())
    aged(out / "lease.json", 10)
    leases = [Lease(str(out), f"run{i}") for i in range(8)]
    won = race(leases)
    assert len(won) == 1 and json.loads((out / "lease.json").read_text())["run_id"] == won[0]


# --- S3, against the session's moto server ---------------------------------------------------


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    """The session's S3 server, its bucket `mpq`, and this process's AWS variables pointing at it."""
    import boto3

    env = {
        "AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    }
    with pytest.MonkeyPatch.context() as m:
        for k, v in env.items():
            m.setenv(k, v)
        boto3.client("s3").create_bucket(Bucket="mpq")
        yield boto3.client("s3")


def test_s3_create_if_absent_has_one_winner(s3):
    store = lease_mod._S3("s3://mpq/race")
    barrier = threading.Barrier(8)

    def create(i):
        barrier.wait()
        return store.create("lease.json", f"{i}".encode())

    with ThreadPoolExecutor(8) as pool:
        wins = [i for i, ok in enumerate(pool.map(create, range(8))) if ok]
    assert len(wins) == 1
    assert store.read("lease.json").data == str(wins[0]).encode()
    assert not store.create("lease.json", b"again")


def test_s3_lease_refuses_a_second_run_takes_over_a_stale_one(s3):
    out = "s3://mpq/jobs/one"
    with Lease(out, "first"):
        body = s3.get_object(Bucket="mpq", Key="jobs/one/lease.json")["Body"].read()
        assert json.loads(body)["run_id"] == "first"
        with pytest.raises(LeaseHeld, match="s3://mpq/jobs/one is being written by run first") as exc:
            Lease(out, "second").__enter__()
        assert "\n" not in str(exc.value)
    assert "Contents" not in s3.list_objects_v2(Bucket="mpq", Prefix="jobs/one/")  # released
    s3.put_object(Bucket="mpq", Key="jobs/one/lease.json", Body=holder(age=600).encode())
    with pytest.raises(LeaseHeld):  # just written, whatever its holder's clock says
        Lease(out, "resume").__enter__()
    time.sleep(3.2)  # past MPQ_LEASE_TIMEOUT on S3's clock (whole seconds)
    with Lease(out, "resume"):
        assert json.loads(s3.get_object(Bucket="mpq", Key="jobs/one/lease.json")["Body"].read())["run_id"] == "resume"


def test_stores_without_conditional_writes_read_the_lease_back(s3, monkeypatch):
    """hdfs://, abfs:// and other pyarrow filesystems; here pyarrow's own S3 client, which has no conditional write."""
    import pyarrow.fs as pafs

    monkeypatch.setattr(lease_mod, "READ_BACK_SECONDS", 0.05)
    fs, root = pafs.FileSystem.from_uri("s3://mpq/readback")
    store = lease_mod._ReadBack(fs, root)
    assert store.create("lease.json", b"one")
    assert not store.create("lease.json", b"two")
    current = store.read("lease.json")
    assert current.data == b"one"
    assert not store.replace("lease.json", b"three", "another-tag") and store.read("lease.json").data == b"one"
    assert store.replace("lease.json", b"three", current.tag) and store.read("lease.json").data == b"three"
    store.delete("lease.json")
    assert store.read("lease.json") is None


def test_run_into_s3_holds_the_lease_while_it_writes(s3, pics, tmp_path):
    out = "s3://mpq/runs/one"
    job = parse_job(job_spec(pics, out, [20]))
    with Lease(out, "holder-run"):
        with pytest.raises(LeaseHeld, match="is being written by run holder-run"):
            run_job(job, out, engine="serial", progress=False)

    def keys():
        return [o["Key"] for o in s3.list_objects_v2(Bucket="mpq", Prefix="runs/one/").get("Contents", [])]

    assert not [k for k in keys() if k.endswith(".parquet")]  # stopped before any work
    stats = run_job(job, out, engine="serial", progress=False)
    assert stats.written == 6 and "runs/one/lease.json" not in keys()
    parts = [k for k in keys() if k.startswith("runs/one/results/part-")]
    assert sum(pq.read_metadata(io.BytesIO(s3.get_object(Bucket="mpq", Key=k)["Body"].read())).num_rows for k in parts) == 6


def test_a_fresh_lease_is_held_whatever_its_holders_clock_says(tmp_path):
    """Age is the store's: a holder on a host whose clock runs 10 minutes slow, which has
    just refreshed its lease, is not stale."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "lease.json").write_bytes(holder(age=600).encode())
    with pytest.raises(LeaseHeld, match="is being written by run other"):
        Lease(str(out), "mine").__enter__()


@pytest.mark.parametrize("where", ["local", "s3", "gs"])
def test_a_refresh_never_overwrites_a_lease_taken_over_since_it_was_read(tmp_path, where, request):
    out = str(tmp_path / "out") if where == "local" else f"{where}://mpq/taken-{os.getpid()}"
    if where != "local":
        request.getfixturevalue({"s3": "s3", "gs": "gcs"}[where])
    held = Lease(out, "slow")
    held._acquire()
    before = held.store.read("lease.json")  # the holder reads its lease ...
    with Lease(out, "taker", force=True):  # ... another run takes it over ...
        real_read = held.store.read
        reads = iter([before])
        held.store.read = lambda name: next(reads, None) or real_read(name)
        waits = iter([False])
        held._stop.wait = lambda timeout: next(waits, True)  # one refresh, now
        held._refresh()  # ... then the holder writes its refresh
        assert Holder.parse(real_read("lease.json").data).run_id == "taker"
        with pytest.raises(LeaseLost, match="taken over by run taker"):
            held.check()


def test_s3_conditional_replace_names_the_version_it_read(s3):
    store = lease_mod._S3("s3://mpq/replace")
    assert store.create("lease.json", b"one")
    first = store.read("lease.json")
    assert store.replace("lease.json", b"two", first.tag)
    assert not store.replace("lease.json", b"three", first.tag)  # the ETag moved on
    assert store.read("lease.json").data == b"two"
    assert abs(store.now() - store.read("lease.json").modified) < 5


# --- GCS, against the session's fake-gcs-server ----------------------------------------------


@pytest.fixture(scope="module")
def gcs(gcs_endpoint):
    """The session's GCS server, its bucket `mpq`, and STORAGE_EMULATOR_HOST pointing at it."""
    from google.cloud import storage

    with pytest.MonkeyPatch.context() as m:
        m.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
        yield storage.Client().create_bucket("mpq")


def test_gcs_writes_are_conditional_on_the_generation(gcs):
    store = lease_mod._GCS("gs://mpq/replace")
    assert store.create("lease.json", b"one")
    assert not store.create("lease.json", b"again")  # ifGenerationMatch=0: it exists
    first = store.read("lease.json")
    assert first.tag == str(gcs.get_blob("replace/lease.json").generation)
    assert store.replace("lease.json", b"two", first.tag)
    assert not store.replace("lease.json", b"three", first.tag)  # the generation moved on
    assert gcs.blob("replace/lease.json").download_as_bytes() == b"two"
    assert abs(store.now() - store.read("lease.json").modified) < 5
    store.delete("lease.json")
    assert store.read("lease.json") is None
    assert not store.replace("lease.json", b"four", first.tag)  # gone: no generation to match
    store.delete("lease.json")  # already gone: nothing to do
    assert [b.name for b in gcs.list_blobs(prefix="replace/")] == []  # the clock's probe too


def test_gcs_lease_refuses_a_second_run_takes_over_a_stale_one(gcs, capsys):
    out = "gs://mpq/jobs/one"
    with Lease(out, "first") as first:
        assert isinstance(first.store, lease_mod._GCS)
        assert json.loads(gcs.blob("jobs/one/lease.json").download_as_bytes())["run_id"] == "first"
        with pytest.raises(LeaseHeld, match="gs://mpq/jobs/one is being written by run first") as exc:
            Lease(out, "second").__enter__()
        assert "\n" not in str(exc.value)
    assert [b.name for b in gcs.list_blobs(prefix="jobs/one/")] == []  # released
    gcs.blob("jobs/one/lease.json").upload_from_string(holder(age=600).encode())
    with pytest.raises(LeaseHeld):  # just written, whatever its holder's clock says
        Lease(out, "resume").__enter__()
    time.sleep(2.5)  # past MPQ_LEASE_TIMEOUT (2 s) on the store's clock
    with Lease(out, "resume"):
        assert json.loads(gcs.blob("jobs/one/lease.json").download_as_bytes())["run_id"] == "resume"
    assert "the lease of run other (host otherhost" in (err := capsys.readouterr().err) and "is stale; taking it over" in err


def test_gcs_runs_started_together_one_holds_the_lease(gcs):
    leases = [Lease("gs://mpq/race", f"run{i}") for i in range(8)]
    won = race(leases)
    assert len(won) == 1
    assert json.loads(gcs.blob("race/lease.json").download_as_bytes())["run_id"] == won[0]
