"""One writer per output: a run holds ``OUTPUT/lease.json`` while it writes.

The lease names its holder (host, pid, run id, start) and when it last refreshed it; a
thread rewrites it every ``MPQ_LEASE_REFRESH`` seconds. It is taken with a create-if-absent
write: a hard link on local folders (atomic, never half-written), ``PutObject`` with
``If-None-Match: *`` on S3. A second run into a held output stops before any work.

A lease not refreshed for ``MPQ_LEASE_TIMEOUT`` seconds, or whose holder process is gone
from this machine, is stale: the next run takes it over with a warning, so a crashed run
never blocks its resume. Taking over goes through a create-if-absent marker named after the
stale holder, so of two runs taking over one stale lease only one wins. A holder that finds
its lease taken (it was paused past the timeout, or a run used ``--force``) stops writing.

Other stores (``gs://``...) offer no create-if-absent through pyarrow: there the lease is
written if absent and read back a moment later, which tells apart runs started more than a
write's time apart.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow.fs as pafs

from mpq.results import filesystem

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
            holder = cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})  # newer fields: ignored
            holder.age()
            return holder
        except (ValueError, TypeError, KeyError):
            return None

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    def age(self) -> float:
        return (datetime.now(timezone.utc) - datetime.fromisoformat(self.refreshed)).total_seconds()

    def stale(self) -> bool:
        if self.machine and self.machine == _machine() and not _alive(self.pid):
            return True
        return self.age() > timeout_seconds()

    def describe(self) -> str:
        return (
            f"run {self.run_id} (host {self.host}, pid {self.pid}, started {self.started}, "
            f"last refresh {self.refreshed}, {self.age():.0f} s ago)"
        )


class _Local:
    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, exist_ok=True)

    def _tmp(self, name: str, data: bytes) -> str:
        tmp = f"{self.root}/.{name}.{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
        return tmp

    def create(self, name: str, data: bytes) -> bool:
        tmp = self._tmp(name, data)
        try:
            os.link(tmp, f"{self.root}/{name}")  # fails if the name exists; the content is whole
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def read(self, name: str) -> bytes | None:
        try:
            return Path(self.root, name).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        os.replace(self._tmp(name, data), f"{self.root}/{name}")

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

    def create(self, name: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data, IfNoneMatch="*")
            return True
        except ClientError as exc:
            # 412: the object exists; 409: a concurrent conditional write to it won.
            if exc.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise

    def read(self, name: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def write(self, name: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(name), Body=data)

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(name))


class _ReadBack:
    """Any pyarrow filesystem: create-if-absent approximated by write, wait, read back."""

    def __init__(self, fs: pafs.FileSystem, root: str):
        self.fs, self.root = fs, root.rstrip("/")
        fs.create_dir(self.root, recursive=True)

    def create(self, name: str, data: bytes) -> bool:
        if self.read(name) is not None:
            return False
        self.write(name, data)
        time.sleep(READ_BACK_SECONDS)
        return self.read(name) == data  # a rival's later write wins; the earlier writer backs off

    def read(self, name: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(f"{self.root}/{name}") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        with self.fs.open_output_stream(f"{self.root}/{name}") as f:
            f.write(data)

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

    def _held_message(self, holder: Holder) -> str:
        return (
            f"{self.output} is being written by {holder.describe()}; wait for it to end, or once it is gone "
            f"take over with --force (a lease not refreshed for {timeout_seconds():.0f} s is taken over by itself)"
        )

    def _acquire(self) -> None:
        for _ in range(3):  # again only when the lease changed hands under us
            if self.store.create(LEASE, self.me.encode()):
                return
            raw = self.store.read(LEASE)
            if raw is None:  # released in between
                continue
            holder = Holder.parse(raw)
            if holder is None:
                warn(f"{self.output}: {LEASE} is unreadable; taking it over")
                self.store.write(LEASE, self.me.encode())
                return
            if self.force:
                warn(f"{self.output}: taking over the lease of {holder.describe()} (--force)")
                self.store.write(LEASE, self.me.encode())
                return
            if not holder.stale():
                raise LeaseHeld(self._held_message(holder))
            marker = f"{LEASE}.takeover-{holder.run_id}"
            if not self.store.create(marker, self.me.encode()):
                raise LeaseHeld(
                    f"{self.output}: another run is taking over the stale lease of {holder.describe()}; "
                    f"if it is gone, take over with --force"
                )
            try:
                if self.store.read(LEASE) == raw:  # nobody took it between our read and the marker
                    warn(f"{self.output}: the lease of {holder.describe()} is stale; taking it over")
                    self.store.write(LEASE, self.me.encode())
                    return
            finally:
                self.store.delete(marker)
        raise LeaseHeld(f"{self.output}: the lease keeps changing hands; another run is starting there")

    def _owned(self) -> bool:
        holder = Holder.parse(self.store.read(LEASE) or b"")
        return holder is not None and holder.run_id == self.me.run_id

    def _refresh(self) -> None:
        while not self._stop.wait(refresh_seconds()):
            try:
                holder = Holder.parse(self.store.read(LEASE) or b"")
                if holder is None or holder.run_id != self.me.run_id:
                    taker = holder.describe() if holder else "someone (the lease is gone)"
                    self._lost = f"{self.output}: this run's lease was taken over by {taker}; stopping"
                    return
                self.me.refreshed = _now()
                self.store.write(LEASE, self.me.encode())
            except Exception as exc:  # a network blip: keep the run, try again next time
                warn(f"{self.output}: could not refresh the lease: {exc}")
