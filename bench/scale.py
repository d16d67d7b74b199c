"""The engine's own overhead at scale: seconds per sample and driver memory, 10k to 1M samples.

    uv run python bench/scale.py                       # 10,000 and 100,000 samples
    uv run python bench/scale.py --samples 10000 100000 1000000

The job does as little as a job can, so that what is timed is the engine itself: the
`synthetic` source's tiny images (8 × 8 pixels, made from their id), no codec, task or
metric, so each sample is one baseline row through load, Finalize and the Parquet sink.
Each run is a fresh process writing a fresh output. Printed per size: seconds to the first
result rows (start-up) and in all, the overhead per sample (in all, and after start-up), and the
driver's peak memory (RSS of the driver process alone: Ray's own processes are measured
by bench/throughput.py). The baseline, measured in the same invocation, is the serial
engine on the smallest size: the same stages with no engine around them; ratios are
against it (overhead) and against the smallest Ray run (memory).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
from peak import communicate_with_peak

ROOT = Path(__file__).resolve().parents[1]


def job(samples: int) -> dict:
    return {"name": "scale", "datasets": [{"name": "tiny", "source": {"synthetic": "images", "count": samples, "size": 8}}]}


def child(samples: int, engine: str, output: str) -> dict:
    from mpq.runner import run_job
    from mpq.spec import parse_job

    stats = run_job(parse_job(job(samples)), output, engine=engine, progress=False)
    assert stats.written == samples and stats.errors == 0, stats
    return {"seconds": stats.seconds, "startup": stats.startup_seconds, "rows": stats.written}


def spawn(samples: int, engine: str) -> dict:
    """A fresh process; its answer and the driver's peak RSS, sampled every 0.2 s."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(samples), engine, f"{tmp}/out"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        out, err, peak = communicate_with_peak(proc, lambda pid: psutil.Process(pid).memory_info().rss, every=0.2)
    if proc.returncode != 0:
        sys.exit(f"{engine} at {samples} failed ({proc.returncode}):\n{err[-3000:]}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_mib": peak / 2**20, "samples": samples, "engine": engine}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        samples, engine, output = args.child
        print(json.dumps(child(int(samples), engine, output)))
        return

    sizes = sorted(args.samples)
    base = spawn(sizes[0], "serial")
    runs = [spawn(n, "ray") for n in sizes]
    def ms(r: dict) -> float:  # engine overhead per sample, start-up included
        return r["seconds"] / r["samples"] * 1000

    def after(r: dict) -> float:  # ... and after start-up
        return (r["seconds"] - r["startup"]) / r["samples"] * 1000

    print(f"{'engine':7} {'samples':>9} {'start-up s':>10} {'total s':>8} {'ms/sample':>10} {'after start':>11} "
          f"{'vs serial':>9} {'driver MiB':>10} {'vs first':>8}")
    for r in [base, *runs]:
        print(
            f"{r['engine']:7} {r['samples']:>9,} {r['startup']:>10.1f} {r['seconds']:>8.1f} {ms(r):>10.3f} {after(r):>11.3f} "
            f"{ms(r) / ms(base):>8.2f}× {r['peak_mib']:>10.0f} {r['peak_mib'] / runs[0]['peak_mib']:>7.2f}×"
        )


if __name__ == "__main__":
    main()
