"""One writer per output: a run holds ``OUTPUT/lease.json`` while it writes.

The lease names its holder (host, pid, run id, start, last refresh); a thread rewrites it
every ``MPQ_LEASE_REFRESH`` seconds. It is taken with a create-if-absent write: a hard link
on local folders (atomic, never half-written), ``PutObject`` with ``If-None-Match: *`` on
S3, an upload with ``ifGenerationMatch=0`` on GCS. A second run into a held output stops
before any work.

Every later write is conditional on the version read before it (the file's inode and
modification time under a lock on local folders; ``If-Match`` on the ETag on S3;
``ifGenerationMatch`` on the object's generation on GCS), so of a holder refreshing and a
run taking over, exactly one wins, and a holder that finds its lease taken (it was paused
past the timeout, or a run used ``--force``) stops writing.

A lease whose object the store has not seen rewritten for ``MPQ_LEASE_TIMEOUT`` seconds, or
whose holder process is gone from this machine, is stale: the next run takes it over with a
warning, so a crashed run never blocks its resume. Age is measured on the store's own
clock (the modification time of the lease against that of an object written just then),
never by comparing the clocks of two hosts.

Any other pyarrow filesystem (``hdfs://``, ``abfs://``) is reached with no conditional
write: there a write is checked by reading it back a moment later, which tells apart runs
started more than a write's time apart.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
import zlib
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow.fs as pafs

from mpq.storage import filesystem, write, write_local

LEASE = "lease.json"
READ_BACK_SECONDS = 1.0  # stores without create-if-absent: how long a rival write may take to land
def warn(message: str) -> None:
    """To the user's terminal whatever logging is set to (Ray reconfigures logging in-process)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def refresh_seconds() -> float:
    return float(os.environ.get("MPQ_LEASE_REFRESH", 20))


def timeout_seconds() -> float:
    return float(os.environ.get("MPQ_LEASE_TIMEOUT", 120))


class LeaseHeld(RuntimeError):
    """Another run holds the output; the message is one line."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over while it ran."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _machine() -> str:
    """This boot of this machine and this process namespace: where a pid means the same process."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() + os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux: staleness by time only
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@dataclass
class Holder:
    run_id: str
    host: str
    pid: int
    started: str
    refreshed: str
    machine: str = ""

    @classmethod
    def parse(cls, raw: bytes) -> Holder | None:
        try:
            data = json.loads(raw)
            return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})  # newer fields: ignored
        except (ValueError, TypeError, KeyError):
            return None

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    def stale(self, age: float) -> bool:
        """``age``: seconds since the store last saw the lease written, on its own clock."""
        if self.machine and self.machine == _machine() and not _alive(self.pid):
            return True
        return age > timeout_seconds()

    def describe(self, age: float | None = None) -> str:
        ago = f", {age:.0f} s ago" if age is not None else ""
        return f"run {self.run_id} (host {self.host}, pid {self.pid}, started {self.started}, last refresh {self.refreshed}{ago})"


@dataclass
class Version:
    """The lease object as a store holds it: its bytes, the tag a conditional write names,
    and when the store last wrote it (seconds on the store's clock)."""

    data: bytes
    tag: str
    modified: float


class _Local:
    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def _write(self, name: str, data: bytes, exclusive: bool = False) -> bool:
        return write_local(f"{self.root}/{name}", lambda tmp: Path(tmp).write_bytes(data), exclusive)

    def create(self, name: str, data: bytes) -> bool:
        return self._write(name, data, exclusive=True)  # a hard link: fails if the name exists; the content is whole

    def read(self, name: str) -> Version | None:
        try:
            with open(f"{self.root}/{name}", "rb") as f:
                st = os.fstat(f.fileno())
                return Version(f.read(), f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}", st.st_mtime)
        except FileNotFoundError:
            return None

    def replace(self, name: str, data: bytes, tag: str) -> bool:
        import fcntl

        with open(f"{self.root}/.{name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # read and replace as one step against other writers here
            current = self.read(name)
            if current is None or current.tag != tag:
                return False
            return self._write(name, data)

    def now(self) -> float:
        return time.time()  # the clock that stamps this folder's files

    def delete(self, name: str) -> None:
        Path(self.root, name).unlink(missing_ok=True)


class _S3:
    """boto3, since pyarrow's S3 filesystem has no conditional write. Endpoint and region come
    from the URI's query (as pyarrow reads them) or boto3's usual settings (AWS_ENDPOINT_URL...)."""

    def __init__(self, uri: str):
        import boto3

        parts = urlsplit(uri)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        endpoint = query.get("endpoint_override")
        if endpoint and "://" not in endpoint:
            endpoint = f"{query.get('scheme', 'https')}://{endpoint}"
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=query.get("region"))
        self.bucket, self.prefix = parts.netloc, parts.path.strip("/")

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _put(self, name: str, data: bytes, **condition) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data, **condition)
            return True
        except ClientError as exc:
            # 412: the condition failed; 409: a concurrent conditional write won; 404: gone (If-Match).
            if exc.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404"):
                return False
            raise

    def create(self, name: str, data: bytes) -> bool:
        return self._put(name, data, IfNoneMatch="*")

    def read(self, name: str) -> Version | None:
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self._key(name))
        except self.client.exceptions.NoSuchKey:
            return None
        return Version(got["Body"].read(), got["ETag"], got["LastModified"].timestamp())

    def replace(self, name: str, data: bytes, tag: str) -> bool:
        return self._put(name, data, IfMatch=tag)

    def now(self) -> float:
        """S3's clock: the modification time of an object written now."""
        probe = f"{LEASE}.clock-{uuid.uuid4().hex[:8]}"
        self.client.put_object(Bucket=self.bucket, Key=self._key(probe), Body=b"")
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(probe))["LastModified"].timestamp()
        finally:
            self.delete(probe)

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(name))


class _GCS:
    """google-cloud-storage, since pyarrow's GCS filesystem has no conditional write. Google's
    default credentials; an emulator named by ``STORAGE_EMULATOR_HOST`` (the client reads it)."""

    def __init__(self, uri: str):
        from google.cloud import storage

        parts = urlsplit(uri)
        # A named bucket's objects need no project: none is looked for, so credentials without one serve.
        self.bucket = storage.Client(project=None).bucket(parts.netloc)
        self.prefix = parts.path.strip("/")

    def _blob(self, name: str):
        return self.bucket.blob(f"{self.prefix}/{name}" if self.prefix else name)

    def _upload(self, name: str, data: bytes, generation: int) -> bool:
        from google.api_core.exceptions import PreconditionFailed

        try:
            self._blob(name).upload_from_string(data, content_type="application/json", if_generation_match=generation)
            return True
        except PreconditionFailed:  # 412: the object exists (0), or is gone or of another generation than named
            return False

    def create(self, name: str, data: bytes) -> bool:
        return self._upload(name, data, 0)

    def read(self, name: str) -> Version | None:
        from google.api_core.exceptions import NotFound

        blob = self._blob(name)
        try:
            data = blob.download_as_bytes()  # its headers name the generation of these very bytes
            tag = str(blob.generation)
            # The download lacks the time of writing; were the object rewritten since, this is
            # the later time, so a lease only ever looks younger, and the tag still names the bytes.
            blob.reload()
        except NotFound:
            return None
        return Version(data, tag, blob.updated.timestamp())

    def replace(self, name: str, data: bytes, tag: str) -> bool:
        return self._upload(name, data, int(tag))

    def now(self) -> float:
        """GCS's clock: the ``updated`` time of an object written now (the upload answers with it)."""
        probe = self._blob(f"{LEASE}.clock-{uuid.uuid4().hex[:8]}")
        probe.upload_from_string(b"")
        try:
            return probe.updated.timestamp()
        finally:
            probe.delete()

    def delete(self, name: str) -> None:
        from google.api_core.exceptions import NotFound

        try:
            self._blob(name).delete()
        except NotFound:
            pass


class _ReadBack:
    """Any pyarrow filesystem: conditional writes approximated by write, wait, read back."""

    def __init__(self, fs: pafs.FileSystem, root: str):
        self.fs, self.root = fs, root.rstrip("/")
        fs.create_dir(self.root, recursive=True)

    def _write(self, name: str, data: bytes) -> bool:
        write(self.fs, f"{self.root}/{name}", lambda f: f.write(data))
        time.sleep(READ_BACK_SECONDS)
        landed = self.read(name)
        return landed is not None and landed.data == data  # a rival's later write wins; the earlier writer backs off

    def create(self, name: str, data: bytes) -> bool:
        return self.read(name) is None and self._write(name, data)

    def read(self, name: str) -> Version | None:
        path = f"{self.root}/{name}"
        try:
            with self.fs.open_input_stream(path) as f:
                data = f.read()
        except FileNotFoundError:
            return None
        info = self.fs.get_file_info(path)
        modified = info.mtime.timestamp() if info.mtime else time.time()
        return Version(data, f"{info.mtime_ns}-{info.size}-{zlib.crc32(data)}", modified)

    def replace(self, name: str, data: bytes, tag: str) -> bool:
        current = self.read(name)
        return current is not None and current.tag == tag and self._write(name, data)

    def now(self) -> float:
        probe = f"{LEASE}.clock-{uuid.uuid4().hex[:8]}"
        write(self.fs, f"{self.root}/{probe}", lambda f: f.write(b""))
        try:
            mtime = self.fs.get_file_info(f"{self.root}/{probe}").mtime
            return mtime.timestamp() if mtime else time.time()
        finally:
            self.delete(probe)

    def delete(self, name: str) -> None:
        try:
            self.fs.delete_file(f"{self.root}/{name}")
        except FileNotFoundError:
            pass


def _store(output: str):
    fs, root = filesystem(output)
    if isinstance(fs, pafs.LocalFileSystem):
        return _Local(root)
    if isinstance(fs, pafs.S3FileSystem):
        return _S3(output)
    if isinstance(fs, pafs.GcsFileSystem):
        return _GCS(output)
    return _ReadBack(fs, root)


class Lease:
    """``with Lease(output, run_id):`` holds ``output`` for one run; ``check()`` before each write."""

    def __init__(self, output: str, run_id: str, force: bool = False):
        self.output, self.force = output, force
        self.store = _store(output)
        now = _now()
        self.me = Holder(run_id, socket.gethostname(), os.getpid(), now, now, _machine())
        self._stop = threading.Event()
        self._lost: str | None = None
        self._thread = threading.Thread(target=self._refresh, name="mpq-lease", daemon=True)

    def __enter__(self) -> Lease:
        self._acquire()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        try:
            if self._owned():
                self.store.delete(LEASE)
        except Exception as exc:  # the run's outcome stands; the lease goes stale by itself
            warn(f"{self.output}: could not release the lease: {exc}")

    def check(self) -> None:
        if self._lost:
            raise LeaseLost(self._lost)

    def _held_message(self, holder: Holder, age: float) -> str:
        return (
            f"{self.output} is being written by {holder.describe(age)}; wait for it to end, or once it is gone "
            f"take over with --force (a lease not refreshed for {timeout_seconds():.0f} s is taken over by itself)"
        )

    def _acquire(self) -> None:
        for _ in range(3):  # again only when the lease changed hands under us
            if self.store.create(LEASE, self.me.encode()):
                return
            current = self.store.read(LEASE)
            if current is None:  # released in between
                continue
            holder = Holder.parse(current.data)
            age = max(0.0, self.store.now() - current.modified)
            if holder is None:
                why = f"{LEASE} is unreadable; taking it over"
            elif self.force:
                why = f"taking over the lease of {holder.describe(age)} (--force)"
            elif holder.stale(age):
                why = f"the lease of {holder.describe(age)} is stale; taking it over"
            else:
                raise LeaseHeld(self._held_message(holder, age))
            if self.store.replace(LEASE, self.me.encode(), current.tag):  # of several takers, one wins
                warn(f"{self.output}: {why}")
                return
        raise LeaseHeld(f"{self.output}: the lease keeps changing hands; another run is starting there")

    def _owned(self) -> bool:
        current = self.store.read(LEASE)
        holder = Holder.parse(current.data) if current else None
        return holder is not None and holder.run_id == self.me.run_id

    def _refresh(self) -> None:
        while not self._stop.wait(refresh_seconds()):
            try:
                current = self.store.read(LEASE)
                holder = Holder.parse(current.data) if current else None
                if holder is not None and holder.run_id == self.me.run_id:
                    self.me.refreshed = _now()
                    if self.store.replace(LEASE, self.me.encode(), current.tag):
                        continue
                    current = self.store.read(LEASE)  # written by another between our read and write
                    holder = Holder.parse(current.data) if current else None
                taker = holder.describe() if holder else "someone (the lease is gone)"
                self._lost = f"{self.output}: this run's lease was taken over by {taker}; stopping"
                return
            except Exception as exc:  # a network blip: keep the run, try again next time
                warn(f"{self.output}: could not refresh the lease: {exc}")
