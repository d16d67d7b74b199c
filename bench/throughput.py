"""Throughput and memory of the Ray engine against the serial baseline.

    uv run python bench/throughput.py                  # the smoke job on 48 images: serial, then Ray
    uv run python bench/throughput.py --samples 96 --repeat 3
    uv run python bench/throughput.py --memory         # Ray at 100 and at 1000 samples: peak memory

Each run is a fresh process (so a run pays its own start-up: imports, `ray.init`, actors
and model loading) writing to a fresh output (so no run reuses another's encoded cache).
A sample is one planned item: one input through every codec setting, task and metric.
The embedded `samples` source has 8 photographs; the job's image datasets are scaled to N
samples with its `repeat` option (deterministic variants with their own sample ids) and a
`limit`; the smoke job's speech (4 clips) and music (1 track) stay as they are.

Stage throughput is each stage alone over the same samples, in one process with the whole
machine (torch's default threads). On a machine without GPUs every stage shares the same
cores, so no engine can beat running them one after another at full speed: that bound,
1 / sum(1 / stage rate), is printed beside the slowest stage's rate.

Memory is the proportional set size (PSS: shared pages, e.g. Ray's object store, counted
once) summed over the run's process and all its descendants (Ray's raylet, GCS and
workers), sampled every 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml
from peak import communicate_with_peak

ROOT = Path(__file__).resolve().parents[1]


def scaled_job(job_file: str, samples: int) -> dict:
    """The job with every dataset cut (or, for embedded samples, repeated) to ``samples``."""
    from mpq.media import SKIMAGE_PHOTOS
    from mpq.sources.samples import PACKAGED_PHOTOS

    job = yaml.safe_load(Path(job_file).read_text())
    for dataset in job["datasets"]:
        source = dataset["source"]
        if "samples" in source:
            every = SKIMAGE_PHOTOS if source["samples"] == "skimage" else PACKAGED_PHOTOS
            source["repeat"] = math.ceil(samples / len(source.get("names") or every))
        dataset["limit"] = samples
    return job


# --- children: one run, or the stages alone ---------------------------------------------


def child_run(job_data: dict, engine: str, output: str) -> dict:
    from mpq.runner import run_job
    from mpq.spec import parse_job

    stats = run_job(parse_job(job_data), output, engine=engine, progress=False)
    return {
        "samples": stats.samples, "rows": stats.written, "errors": stats.errors, "seconds": stats.seconds,
        "startup": stats.startup_seconds,
    }


def child_stages(job_data: dict) -> dict:
    """Samples per second of each stage alone over all samples, in this one process (torch's
    default threads), models loaded beforehand; each stage's inputs are made before it is timed."""
    from mpq.engine.plan import Planner, iter_items, shards
    from mpq.engine.stages import Encode, Load, Measure, Predict
    from mpq.job import resolve
    from mpq.spec import parse_job

    job = resolve(parse_job(job_data))
    items = list(iter_items(Planner(job, "", {}, []), shards(job)))
    load, encode, measure = Load(job), Encode(job), Measure(job)
    predictors = {task_id: Predict(job, task_id) for task_id in job.tasks}
    for predict in predictors.values():
        predict.load()
    out = {}

    def timed(name, fn):
        start = time.perf_counter()
        result = fn()
        out[name] = len(items) / (time.perf_counter() - start)
        return result

    per_sample = timed("codec (load + encode)", lambda: [encode(load([item])) for item in items])
    measure(per_sample[0])  # metric models load lazily: not timed
    for task_id, predict in predictors.items():
        timed(f"model {task_id}", lambda: [predict(rows) for rows in per_sample])
    if job.metrics:
        timed("metrics " + " + ".join(job.metrics), lambda: [measure(rows) for rows in per_sample])
    return out


# --- the parent: runs children, samples their memory --------------------------------------


def tree_pss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def spawn(args: list[str]) -> tuple[dict, int]:
    """Run this script as a child; return its JSON answer and the peak PSS of its process tree."""
    proc = subprocess.Popen(
        [sys.executable, __file__, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err, peak = communicate_with_peak(proc, tree_pss, every=0.5)
    if proc.returncode != 0:
        sys.exit(f"child {args[:2]} failed ({proc.returncode}):\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1]), peak


def run_engine(job: dict, engine: str, workdir: str, tag: str) -> dict:
    job_file = Path(workdir) / f"{tag}.json"
    job_file.write_text(json.dumps(job))
    result, peak = spawn(["--child", "run", "--engine", engine, "--job-json", str(job_file), "--output", f"{workdir}/{tag}"])
    return {
        **result, "peak_mib": peak / 2**20, "sps": result["samples"] / result["seconds"],
        "steady_sps": result["samples"] / max(result["seconds"] - result["startup"], 1e-9),
    }


def spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:.2f}" if len(values) == 1 else f"{med:.2f} ({min(values):.2f}–{max(values):.2f})"


def throughput(job_file: str, samples: int, repeat: int) -> None:
    job = scaled_job(job_file, samples)
    runs: dict[str, list[dict]] = {"serial": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="mpq-bench-") as workdir:
        for i in range(repeat):  # serial and Ray alternate, so that both see the same machine load
            for engine in runs:
                runs[engine].append(run_engine(job, engine, workdir, f"{engine}-{i}"))
                r = runs[engine][-1]
                print(f"  run {i + 1} {engine:<6} {r['seconds']:7.1f} s, startup {r['startup']:5.1f} s, peak {r['peak_mib']:6.0f} MiB", flush=True)
        stage_file = Path(workdir) / "stages.json"
        stage_file.write_text(json.dumps(job))
        stages, stage_peak = spawn(["--child", "stages", "--job-json", str(stage_file)])

    first = runs["serial"][0]
    print(f"\n{Path(job_file).name}: {first['samples']} samples, {first['rows']} rows; {os.cpu_count()} CPUs, load average now {os.getloadavg()[0]:.1f}")
    print(f"{'engine':<8}" + "".join(f"{h:>24}" for h in ("seconds", "startup s", "samples/s", "after startup", "peak MiB")))
    for engine, rs in runs.items():
        cols = [spread([r[k] for r in rs]) for k in ("seconds", "startup", "sps", "steady_sps", "peak_mib")]
        print(f"{engine:<8}" + "".join(f"{c:>24}" for c in cols))
    ratio = [r["sps"] / s["sps"] for r, s in zip(runs["ray"], runs["serial"])]
    steady = [r["steady_sps"] / s["steady_sps"] for r, s in zip(runs["ray"], runs["serial"])]
    print(f"Ray / serial: {spread(ratio)}× end to end, {spread(steady)}× after startup (median (min–max) of {repeat} paired runs)")
    print(f"\neach stage alone, one process, the same samples (samples/s; peak {stage_peak / 2**20:.0f} MiB):")
    for name, sps in stages.items():
        print(f"  {name:<40}{sps:8.2f}")
    slowest = min(stages, key=stages.get)
    bound = 1 / sum(1 / sps for sps in stages.values())
    print(f"  {'all stages one after another (bound)':<40}{bound:8.2f}")
    for engine, rs in runs.items():
        of_slowest = spread([100 * r["steady_sps"] / stages[slowest] for r in rs])
        of_bound = spread([100 * r["steady_sps"] / bound for r in rs])
        print(f"{engine} after startup: {of_slowest} % of the slowest stage ({slowest}), {of_bound} % of the bound")


def memory(job_file: str, sizes: list[int], engine: str) -> None:
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="mpq-bench-") as workdir:
        for n in sizes:
            r = run_engine(scaled_job(job_file, n), engine, workdir, f"{engine}-{n}")
            peaks[n] = r["peak_mib"]
            print(f"{n:>6} samples on {engine}: {r['rows']} rows in {r['seconds']:.0f} s, peak {r['peak_mib']:.0f} MiB", flush=True)
    lo, hi = sizes[0], sizes[-1]
    print(f"peak at {hi} / peak at {lo}: {peaks[hi] / peaks[lo]:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", default=str(ROOT / "jobs" / "smoke.yaml"))
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=1, help="paired serial/Ray runs (report median and spread)")
    ap.add_argument("--memory", action="store_true", help="peak memory at each of --sizes samples instead")
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--engine", default="ray")
    ap.add_argument("--child", choices=["run", "stages"], help=argparse.SUPPRESS)
    ap.add_argument("--job-json", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        job = json.loads(Path(args.job_json).read_text())
        result = child_run(job, args.engine, args.output) if args.child == "run" else child_stages(job)
        print(json.dumps(result))
    elif args.memory:
        memory(args.job, args.sizes, args.engine)
    else:
        throughput(args.job, args.samples, args.repeat)


if __name__ == "__main__":
    main()
