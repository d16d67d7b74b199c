"""The one piece the benchmarks share: a child process run to its end while a thread samples
its memory, so each script says only what it measures (PSS of the tree, the driver's RSS...)."""

from __future__ import annotations

import subprocess
import threading
from typing import Callable


def communicate_with_peak(proc: subprocess.Popen, measure: Callable[[int], int], every: float) -> tuple[str, str, int]:
    """``proc.communicate()``, and the peak of ``measure(pid)`` sampled every ``every`` seconds
    (a measure raising psutil's errors, the process being gone, counts as 0)."""
    import psutil

    peak, stop = 0, threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            try:
                peak = max(peak, measure(proc.pid))
            except psutil.Error:
                pass
            stop.wait(every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    stop.set()
    sampler.join()
    return out, err, peak
