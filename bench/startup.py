"""Start-up of the Ray engine against the serial one: time to the first result row.

    uv run python bench/startup.py                  # the smoke job, 3 paired runs
    uv run python bench/startup.py --repeat 5 --job jobs/smoke.yaml

Each run is a fresh process on a fresh output that stops at its first result row. Two
figures per run: `startup`, the runner's own (`RunStats.startup_seconds`: from the plan to
the first rows, what bench/throughput.py reports), and `command`, from starting the
process to the first rows (adds Python, mpq's imports and the preflight). Serial and Ray
alternate, so both see the same machine load; the ratios are per pair.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(job_file: str, engine: str, output: str) -> dict:
    import yaml

    from mpq import runner
    from mpq.spec import parse_job

    first = {}

    def first_rows(stream, store, lease, expected, progress, label):
        tables = iter(stream)
        table = next(tables)
        first["at"] = time.time()
        store.write(table)
        tables.close()  # the rest of the job is not start-up
        return table.num_rows, 0, time.monotonic()

    runner._sink = first_rows
    stats = runner.run_job(parse_job(yaml.safe_load(Path(job_file).read_text())), output, engine=engine, progress=False)
    if engine == "ray":
        import ray

        ray.shutdown()
    return {"startup": stats.startup_seconds, "first_at": first["at"], "rows": stats.written}


def spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:.2f}" if len(values) == 1 else f"{med:.2f} ({min(values):.2f}–{max(values):.2f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", default=str(ROOT / "jobs" / "smoke.yaml"))
    ap.add_argument("--repeat", type=int, default=3, help="paired serial/Ray runs")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--output", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.job, args.child, args.output)))
        return
    runs: dict[str, list[dict]] = {"serial": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="mpq-startup-") as workdir:
        for i in range(args.repeat):
            for engine in runs:
                began = time.time()
                proc = subprocess.run(
                    [sys.executable, __file__, "--job", args.job, "--child", engine, "--output", f"{workdir}/{engine}-{i}"],
                    cwd=ROOT, capture_output=True, text=True,
                )
                if proc.returncode != 0:
                    sys.exit(f"{engine} run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r["command"] = r["first_at"] - began
                runs[engine].append(r)
                print(f"  run {i + 1} {engine:<6} startup {r['startup']:6.1f} s, command to first row {r['command']:6.1f} s", flush=True)
    for key in ("startup", "command"):
        ratios = [r[key] / s[key] for r, s in zip(runs["ray"], runs["serial"])]
        print(
            f"{key:<8} serial {spread([r[key] for r in runs['serial']])} s, Ray {spread([r[key] for r in runs['ray']])} s; "
            f"Ray / serial {spread(ratios)}× (median (min–max) of {args.repeat} pairs)"
        )


if __name__ == "__main__":
    main()
