"""`mpq-ray report` at study scale: wall time of the whole report on a synthetic results
set, and the bootstrap of split-level scores from per-sample sums against recomputing
``Task.aggregate`` on every resample's rows (the baseline), measured in the same run.

    uv run python bench/report.py                  # 100,000 rows, 1,000 resamples
    uv run python bench/report.py --rows 20000 --resamples 200 --stages   # and each part's time

The results: 5 datasets (4 classified, 1 segmented with 150 classes, like ADE20k) × 10
codecs × 8 settings and the baseline, PSNR and LPIPS, one task each; the samples per
dataset follow from ``--rows``. The baseline comparison runs BD-rate (every setting's score
and rate per resample) on the segmented dataset with ``--baseline-resamples`` resamples
both ways and extrapolates the slow one to ``--resamples``. CPU seconds are printed beside
wall seconds: on a shared machine they are what the report itself used.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import polars as pl

from mpq.analysis import bdrate, write_report

CODECS = [f"codec{i}" for i in range(10)]
SETTINGS = [str(s) for s in (5, 10, 20, 30, 50, 70, 85, 95)]
CLASSES = 150


def results(rows: int, seed: int = 0) -> pl.DataFrame:
    """Pipeline-shaped rows: 5 datasets × (baseline + 10 codecs × 8 settings) per sample."""
    rng = np.random.default_rng(seed)
    per_sample = 1 + len(CODECS) * len(SETTINGS)
    samples = max(1, rows // (5 * per_sample))
    frames = []
    for d in range(5):
        segment = d == 4
        codec = np.repeat(["none", *CODECS], [1, *[len(SETTINGS)] * len(CODECS)])
        setting = np.array(["", *SETTINGS * len(CODECS)])
        level = np.array([1.0, *[(k + 1) / len(SETTINGS) for k in range(len(SETTINGS))] * len(CODECS)])
        strength = np.array([0.0, *np.repeat(rng.uniform(0.8, 1.2, len(CODECS)), len(SETTINGS))])
        n = samples * per_sample
        q = np.tile(level, samples) * np.tile(np.where(strength == 0, 1, strength), samples).clip(0, 1.2)
        ease = np.repeat(rng.random(samples), per_sample)
        frame = {
            "dataset": [f"data{d}"] * n, "sample_id": np.repeat([f"s{i:05d}" for i in range(samples)], per_sample),
            "task": ["segment" if segment else "classify"] * n, "task_type": ["segment" if segment else "classify"] * n,
            "codec": np.tile(codec, samples), "setting": np.tile(setting, samples), "error": pl.Series([None] * n, dtype=pl.String),
            "bpp": 0.05 + 2 * q * rng.uniform(0.8, 1.2, n), "width": [512] * n, "height": [384] * n,
            "psnr": 22 + 15 * q + rng.normal(0, 1, n),
            "lpips": 0.5 * (1.2 - q) + rng.normal(0, 0.02, n),
            "agreement": (rng.random(n) < 0.5 + 0.4 * q).astype(float),
            "mpq_version": ["0.1.0"] * n, "model": ["synthetic"] * n, "codec_version": ["synthetic 1"] * n, "run_id": ["bench"] * n,
        }
        if segment:
            union = rng.integers(0, 2000, size=(n, CLASSES)) * (rng.random((n, CLASSES)) < 0.1)
            inter = (union * np.clip(0.4 + 0.5 * q[:, None] + rng.normal(0, 0.05, (n, CLASSES)), 0, 1)).astype(np.int64)
            frame |= {"intersection": inter.tolist(), "union": union.tolist(), "pixels_valid": [10_000] * n,
                      "pixels_correct": (10_000 * np.clip(0.5 + 0.4 * q, 0, 1)).astype(int), "correct": pl.Series([None] * n, dtype=pl.Boolean)}
            frame["score"] = inter.sum(1) / np.maximum(union.sum(1), 1)
        else:
            correct = rng.random(n) < 0.2 + 0.5 * q * (0.5 + ease)
            frame |= {"correct": correct, "score": correct.astype(float)}
        coded = pl.col("codec") != "none"
        frames.append(pl.DataFrame(frame, strict=False).with_columns(
            pl.when(coded).then(pl.col(c)) for c in ("bpp", "psnr", "lpips", "agreement")).with_columns(bits=pl.col("bpp") * 512 * 384))
    return pl.concat(frames, how="diagonal_relaxed")


def timed(fn, cpu: list | None = None):
    """fn()'s result and wall seconds; appends its CPU seconds (this process's, every thread) to ``cpu``."""
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn()
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--baseline-resamples", type=int, default=10)
    parser.add_argument("--out", help="keep the report in this folder (default: a temporary one), e.g. to compare tables")
    parser.add_argument("--stages", action="store_true", help="also time each part of the report on its own")
    args = parser.parse_args()
    df = results(args.rows)
    print(f"{df.height:,} rows, {df['sample_id'].n_unique()} samples a dataset, 5 datasets × {len(CODECS)} codecs × {len(SETTINGS)} settings")

    seg = df.filter(pl.col("task_type") == "segment")
    _, fast = timed(lambda: bdrate.bd_rates(seg, n_resamples=args.baseline_resamples, seed=0))
    sums = bdrate.resampled_scores
    bdrate.resampled_scores = lambda *a, **k: None  # the baseline: Task.aggregate on each resample's rows
    try:
        _, slow = timed(lambda: bdrate.bd_rates(seg, n_resamples=args.baseline_resamples, seed=0))
    finally:
        bdrate.resampled_scores = sums
    _, fast_full = timed(lambda: bdrate.bd_rates(seg, n_resamples=args.resamples, seed=0))
    per = slow / args.baseline_resamples
    print(f"BD-rate, segmented dataset, {args.baseline_resamples} resamples: per-resample aggregate {slow:.1f} s, "
          f"per-sample sums {fast:.1f} s ({slow / fast:.0f}x)")
    print(f"  at {args.resamples} resamples: sums {fast_full:.1f} s; the aggregate path extrapolated {per * args.resamples / 60:.1f} min")

    if args.stages:  # where the time goes: each part of the report on its own
        from threadpoolctl import threadpool_limits

        from mpq import analysis

        for name, fn in (("correlations", analysis.correlations), ("metric ranking", analysis.metric_ranking),
                         ("equal rate", analysis.equal_rate), ("BD-rate", analysis.bd_rates), ("plot intervals", analysis.plot_conditions)):
            cpu = []
            with threadpool_limits(limits=1):  # as in write_report
                _, took = timed(lambda fn=fn: fn(df, n_resamples=args.resamples, seed=0), cpu)
            print(f"  {name}: {took:.1f} s (CPU {cpu[0]:.1f} s)")
    cpu = []
    with tempfile.TemporaryDirectory() as tmp:
        path, wall = timed(lambda: write_report(df, args.out or tmp, n_resamples=args.resamples, seed=0), cpu)
        size = path.stat().st_size
    print(f"whole report, {args.resamples} resamples: {wall:.1f} s (CPU {cpu[0]:.1f} s; load average {os.getloadavg()[0]:.1f}); "
          f"report.html {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
