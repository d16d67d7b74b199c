"""bench/gpu.py's GPU busy fraction: kernel time merged from a profiler trace, checked by hand."""

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu.py"


@pytest.fixture(scope="module")
def gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kernel_busy_merges_overlapping_kernels_and_ignores_other_events(gpu, tmp_path):
    trace = tmp_path / "trace.json"
    events = [
        {"cat": "kernel", "ts": 100, "dur": 10},  # 100–110
        {"cat": "kernel", "ts": 105, "dur": 10},  # 105–115: overlaps, adds 5
        {"cat": "kernel", "ts": 108, "dur": 2},  # inside: adds nothing
        {"cat": "gpu_memcpy", "ts": 115, "dur": 50},  # a copy, not a kernel
        {"cat": "cpu_op", "ts": 0, "dur": 1000},
        {"cat": "kernel", "ts": 130, "dur": 20},  # 130–150
    ]
    trace.write_text(json.dumps({"traceEvents": events}))
    covered, window = gpu.kernel_busy(str(trace), first_to_last=True)
    assert covered == pytest.approx(35e-6)  # 15 + 20 µs
    assert window == pytest.approx(50e-6)  # 100 to 150 µs
    assert gpu.kernel_busy(str(trace))[0] == pytest.approx(35e-6)
