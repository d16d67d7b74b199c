"""Bounded tries for a sample that kills the process working on it.

A sample that kills its worker (out of memory, a crash in a codec's native library) is
retried by Ray without end, and kills every resumed serial run. So before a stage works on
a block of samples it notes the try under OUTPUT/in-flight/ (one small file, on the storage
the results go to, which every worker sees), and removes the note when the work is done.
Work that an exception ends (Ctrl-C, SIGTERM, `mpq-ray stop`, a Ray worker told to exit)
sets the note back as it was: only a process that dies without cleaning up spends a try.
Ray kills the workers of a stopped run without a word, so a note also names the run whose
try it counts, and an orderly stop sets back the tries its run still has noted (``forget``);
on a cluster the run joined, its workers end only as its driver exits, and one may note a try
after that, so the stop leaves a marker and the next run sets such tries back before it
starts (``settle``).
A block found noted was being worked on when its process died: its samples are then worked
one at a time, each noting its own tries, so that the one that kills is found and its
block-mates are not lost. A sample found with its tries used up is not worked on again: its
rows become error rows ``worker died: ...``, which count as done, and the job goes on.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from mpq.storage import filesystem, write

WORKER_DIED = "worker died: "
# Both engines: a sample's work is started at most this many times (a lost Ray node costs the
# samples in flight on it one try), then its rows become `worker died` errors.
TRIES = 3


def sample_key(row: dict[str, Any]) -> str:
    return f"{row['dataset']}/{row['sample_id']}"


def error_rows(item: dict[str, Any], error: str) -> list[dict[str, Any]]:
    """Working rows for every unit of a plan item, each with ``error`` and nothing else done."""
    return [
        {"dataset": item["dataset"], "sample_id": item["sample_id"], "codec": codec, "setting": setting, "tasks": tasks, "error": error}
        for codec, setting, tasks in item["units"]
    ]


SPENT = "spent"  # a spent sample's note names no run: no stop sets it back
STOPPED = "stopped-"  # a marker's name: the run that follows stopped in order


def _tries(note: bytes | None) -> int:
    """A note is ``TRIES RUN``, or a bare count (older notes)."""
    try:
        return int(note.split()[0]) if note else 0
    except ValueError:
        return 0


def _folder(output: str) -> tuple[pafs.FileSystem, str]:
    fs, root = filesystem(output)
    return fs, f"{root.rstrip('/')}/in-flight"


def forget(output: str, run: str) -> None:
    """After an orderly stop: each try that the run ``run`` still has noted was work in hand
    (or, rarely, work whose worker died and was not retried yet), and does not count. A marker
    names the run for ``settle``, for a try that a worker of it notes after this."""
    fs, folder = _folder(output)
    fs.create_dir(folder, recursive=True)
    write(fs, f"{folder}/{STOPPED}{run}", lambda f: f.write(b""))
    _set_back(fs, fs.get_file_info(pafs.FileSelector(folder)), {run})


def settle(output: str) -> None:
    """At a run's start, with the output's lease held: the tries noted by runs stopped before it
    (their markers), whose workers are gone now, do not count either."""
    fs, folder = _folder(output)
    try:
        files = fs.get_file_info(pafs.FileSelector(folder))
    except FileNotFoundError:
        return
    markers = [i for i in files if i.base_name.startswith(STOPPED)]
    if markers:
        _set_back(fs, files, {m.base_name.removeprefix(STOPPED) for m in markers})
        for m in markers:
            fs.delete_file(m.path)


def _set_back(fs: pafs.FileSystem, files: list[pafs.FileInfo], runs: set[str]) -> None:
    """Takes one try off each note (of ``files``, markers passed over) whose last try one of
    ``runs`` noted: a note names the run of its last try only."""
    named = {run.encode() for run in runs}
    for info in files:
        if info.base_name.startswith(STOPPED):
            continue
        with fs.open_input_stream(info.path) as f:
            note = f.read()
        if len(last := note.split()[1:]) == 1 and last[0] in named:
            tries = _tries(note) - 1
            if tries > 0:
                write(fs, info.path, lambda f: f.write(str(tries).encode()))  # earlier runs' tries, in no run's hand
            else:
                fs.delete_file(info.path)


@dataclass
class InFlight:
    output: str
    stage: int = 0  # which stage group (Ray: one per actor pool), so that each counts its own tries
    run_id: str = ""  # the run whose tries this counts (``forget``)

    @functools.cached_property
    def _fs(self) -> tuple[pafs.FileSystem, str]:
        return filesystem(self.output)

    def _path(self, key: str) -> tuple[pafs.FileSystem, str]:
        fs, root = self._fs
        digest = hashlib.sha1(key.encode()).hexdigest()[:20]
        return fs, f"{root.rstrip('/')}/in-flight/{self.stage}-{digest}"

    def _note(self, key: str) -> tuple[int, bytes | None]:
        """Tries noted before this one, and the note as it was; notes this one unless they are
        used up."""
        fs, path = self._path(key)
        try:
            with fs.open_input_stream(path) as f:
                old = f.read()
        except FileNotFoundError:
            old = None
        before = _tries(old)
        if before < TRIES:
            self._write(key, f"{before + 1} {self.run_id}".encode())
        return before, old

    def _write(self, key: str, note: bytes | None) -> None:
        fs, path = self._path(key)
        if note:
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            write(fs, path, lambda f: f.write(note))
            return
        try:
            fs.delete_file(path)
        except FileNotFoundError:
            pass

    def _working(self, key: str, old: bytes | None, work):
        """``work()``, then its note cleared; an exception (an orderly stop) sets it back as it
        was (``old``): the process lived to say so, and the try does not count."""
        try:
            out = work()
        except BaseException:
            self._write(key, old)
            raise
        self._write(key, None)
        return out

    def run(self, rows: list[dict[str, Any]], work) -> list[dict[str, Any]]:
        """``work(rows)`` on the block, or, if it was being worked on when its process died, on
        each of its samples with tries left; the spent samples' rows as errors."""
        samples: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            samples.setdefault(sample_key(r), []).append(r)

        def each():
            return [r for key, some in samples.items() for r in self._one(key, some, work)]

        if len(samples) <= 1:
            return each()
        block = "block:" + "\n".join(sorted(samples))
        before, old = self._note(block)
        return self._working(block, old, (lambda: work(rows)) if before == 0 else each)

    def _one(self, key: str, rows: list[dict[str, Any]], work) -> list[dict[str, Any]]:
        before, old = self._note(key)
        if before < TRIES:
            return self._working(key, old, lambda: work(rows))
        # A spent sample's note stays: its error rows may yet be lost unwritten, and must then
        # be written again, not tried.
        self._write(key, f"{TRIES} {SPENT}".encode())
        error = (
            f"{WORKER_DIED}the process working on this sample ended {TRIES} times (out of memory, "
            "or a crash in native code); not tried again"
        )
        return [e for r in rows for e in (error_rows(r, error) if "units" in r else [{**r, "error": error}])]
