"""Ray in this process: joining or starting the cluster, with Ray's and Ray Data's own output
kept to their log files (mpq reports progress and errors itself), and the driver's memory and
signals kept as mpq needs them."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import signal
import sys
import threading
import warnings
from typing import Iterator

from mpq.engine import cluster_address, verbose


def _few_malloc_arenas() -> None:
    """glibc gives threads that allocate malloc arenas of their own (up to 8 per core); with Ray's
    core-worker threads and Arrow's in the driver, memory freed after each execution window stays
    scattered over them: the driver grew ~1 MiB per window (100,000 samples) with no more live
    data, flat with two arenas (what ``MALLOC_ARENA_MAX=2`` does). The driver's threads mostly
    wait, so they lose nothing by sharing. An explicit ``MALLOC_ARENA_MAX`` is left to glibc."""
    if sys.platform.startswith("linux") and "MALLOC_ARENA_MAX" not in os.environ:
        with contextlib.suppress(OSError, AttributeError):  # not glibc (musl has no mallopt)
            ctypes.CDLL(None).mallopt(-8, 2)  # mallopt(M_ARENA_MAX, 2)


def start_ray(address: str | None = None) -> None:
    """Joins the cluster at ``address`` (else ``RAY_ADDRESS``) or starts one of the run's own,
    once per process; Ray Data keeps its progress bars and notes to itself."""
    import ray
    import ray.data

    if not ray.is_initialized():
        address = cluster_address(address)
        _few_malloc_arenas()  # before ray.init starts the core worker's threads
        term = signal.getsignal(signal.SIGTERM)
        ray.init(
            address=address or "local",  # none given: a cluster of the run's own, not one found running here
            logging_level="ERROR",
            # Workers' output (models' download and conversion bars...) stays in their log files
            # in Ray's log folder; mpq reports what went wrong with a sample in its row.
            log_to_driver=verbose(),
            # A cluster of the run's own shows no dashboard unless --verbose: mpq shows its progress,
            # and the dashboard's 9 processes took 3 s of Ray's 10 s start on 2 cores.
            include_dashboard=verbose() if address is None else None,
            runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}},
        )
        # ray.init makes SIGTERM exit at once; one the caller set (`mpq-ray run`: an orderly stop) stays.
        if term not in (signal.SIG_DFL, None) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, term)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # mpq shows its own
    ctx.print_on_execution_start = False
    if not verbose():  # Ray Data's notes go to its log file (ray-data.log) only
        for handler in logging.getLogger("ray.data").handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module=r"ray\.data\.")  # e.g. fewer samples than actors


# A line of Ray's C++ log ("[2026-01-01 12:00:00,000 E 123 123] core_worker.cc:2465: ...").
_NATIVE_LOG_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\] \S+:\d+: ")


@contextlib.contextmanager
def without_native_log_lines() -> Iterator[None]:
    """Ray's core worker in this process writes its errors both to its log file in Ray's
    log folder (python-core-driver-*.log) and to file descriptor 2, where Python's own
    stderr goes too: route descriptor 2 through a pipe that drops those lines."""
    if verbose():
        yield
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    out_fd = os.dup(terminal)  # the thread's own, so that closing `terminal` cannot race it

    def forward():
        with os.fdopen(read, "rb") as lines, os.fdopen(out_fd, "wb", buffering=0) as out:
            for line in lines:
                if not _NATIVE_LOG_LINE.match(line):
                    out.write(line)

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)  # closes the pipe's last write end: the thread reads to the end
        os.close(terminal)
        thread.join(timeout=5)
