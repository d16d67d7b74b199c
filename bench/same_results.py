"""Are two runs' results the same, row for row? For a change that must not change any result.

    uv run python bench/same_results.py BEFORE_OUTPUT AFTER_OUTPUT

Rows are matched by their key (dataset, sample_id, codec, setting, task); every column the
first run wrote is compared exactly (NaN equals NaN), except ``run_id``. Columns only the
second run has are listed, not compared. Exit status 0 when every row and value is the same,
3 when the only differences are known run-to-run noise (``KNOWN_NOISE``, printed all the same),
1 otherwise.
`bench/same_engines.sh` runs the smoke and fault-test jobs on both engines and calls this on each.
"""

from __future__ import annotations

import sys

import polars as pl

from mpq.reading import read_results
from mpq.results import KEY

PER_RUN = {"run_id"}  # differs between any two runs
# Columns known to vary between two runs of the same code: the largest difference that is
# that noise, and its cause, printed with the difference. ESTOI (up to 2e-12 on the smoke
# job) varied in rows of mpq 0.3.0, before mpq seeded pystoi's noise.
KNOWN_NOISE = {
    "estoi": (1e-9, "pystoi's ESTOI adds EPS-scaled noise from numpy's global generator, unseeded in mpq 0.3.0"),
}


def differences(before: pl.DataFrame, after: pl.DataFrame) -> list[tuple[str, bool]]:
    """What differs, one line each, and whether it is known noise (none: the same rows and values)."""
    out = []
    keys = list(KEY)
    lost = before.join(after, on=keys, how="anti", nulls_equal=True)
    gained = after.join(before, on=keys, how="anti", nulls_equal=True)
    if lost.height or gained.height:
        out.append((f"keys: {lost.height} rows only before, {gained.height} only after", False))
    missing = [c for c in before.columns if c not in after.columns]
    if missing:
        out.append((f"columns missing after: {missing}", False))
    both = before.join(after, on=keys, how="inner", suffix="__after", nulls_equal=True)
    for col in before.columns:
        if col in keys or col in PER_RUN or col in missing:
            continue
        a, b = both[col], both[f"{col}__after"]
        same = (a == b) | (a.is_null() & b.is_null())
        if a.dtype.is_float():
            same = same | (a.is_nan() & b.is_nan())
        n = both.height - int(same.fill_null(False).sum())
        if n:
            note, noise = "", False
            if a.dtype.is_numeric():
                largest = (a.cast(pl.Float64) - b.cast(pl.Float64)).abs().max()
                note = f", largest difference {largest:.3g}"
                if col in KNOWN_NOISE and largest is not None and largest <= KNOWN_NOISE[col][0]:
                    note, noise = f"{note} (known noise: {KNOWN_NOISE[col][1]})", True
            out.append((f"{col}: {n} of {both.height} rows differ{note}", noise))
    return out


def main(before_output: str, after_output: str) -> int:
    before, after = read_results(before_output), read_results(after_output)
    new = [c for c in after.columns if c not in before.columns]
    print(f"{before.height} rows before, {after.height} after; columns only after: {new or 'none'}")
    found = differences(before, after)
    print("\n".join(line for line, _ in found) if found else f"identical: every row, every column but {', '.join(sorted(PER_RUN))}")
    return 0 if not found else 3 if all(noise for _, noise in found) else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
