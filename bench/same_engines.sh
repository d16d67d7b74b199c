#!/usr/bin/env bash
# Does a change leave every result as it was? Run the same four jobs before and after it.
#
#   bench/same_engines.sh before BASE      # on the code before the change
#   bench/same_engines.sh after BASE       # on the code after it, then compares with BASE/before-*
#   bench/same_engines.sh LABEL BASE CASE...   # only some of the four cases
#
# The cases: the default job (jobs/smoke.yaml) and the fault-test job (bench/fault_job.py:
# awkward inputs whose error rows are compared too), each under --engine serial and --engine
# ray, into BASE/LABEL-{default,fault}-{serial,ray}, niced, logs and wall times in BASE/logs.
# The fault job's inputs are written once to BASE/fault-data: its rows record the folder's path,
# so both sides read the same one. A label other than `before` is then compared case by case
# with BASE/before-* (bench/same_results.py), one verdict line each (SAME; SAME but for known
# run-to-run noise, as ESTOI's last digits; DIFFERENT), the differences under it; exit status 1 if any differ.
# Run from the repository root. An output that exists is refused, not resumed: a resumed run
# writes no rows and would compare the old ones. NICE=0 runs at normal priority: on a loaded
# machine a niced Ray node can miss its start-up deadline every time.
set -uo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
label=$1 base=$(realpath -m "$2")
shift 2
cases=("$@")
[ ${#cases[@]} -eq 0 ] && cases=(default-serial default-ray fault-serial fault-ray)

mkdir -p "$base/logs"
[ -f "$base/fault-data/fault.yaml" ] || uv run python bench/fault_job.py "$base/fault-data" >/dev/null || exit 1

for case in "${cases[@]}"; do
    case $case in
        default-*) job=jobs/smoke.yaml ;;
        fault-*) job=$base/fault-data/fault.yaml ;;
        *) echo "unknown case $case (default-serial, default-ray, fault-serial, fault-ray)" >&2; exit 2 ;;
    esac
    out=$base/$label-$case log=$base/logs/$label-$case.log
    if [ -e "$out" ]; then
        echo "$out exists: remove it to run $case again" >&2
        exit 2
    fi
    start=$(date +%s)
    for try in 1 2 3; do
        nice -n "${NICE:-10}" uv run mpq-ray run "$job" --output "$out" --engine "${case#*-}" --no-progress >"$log" 2>&1
        rc=$?
        # On a loaded machine Ray's node can miss its start-up deadline (its raylet waits for the
        # metrics agent, a Python process), before any row.
        grep -q "timed out during startup" "$log" || break
        echo "$label-$case: Ray did not start (try $try)" | tee -a "$base/logs/times.txt"
        cp "$log" "$log.ray-start-$try"
        rm -rf "$out"
    done
    echo "$label-$case: exit $rc, $(( $(date +%s) - start )) s wall ($(date -u +%FT%TZ))" | tee -a "$base/logs/times.txt"
done

[ "$label" = before ] && exit 0
status=0
for case in "${cases[@]}"; do
    report=$(uv run python bench/same_results.py "$base/before-$case" "$base/$label-$case" 2>&1)
    case $? in
        0) echo "$case: SAME (before vs $label)" ;;
        3) echo "$case: SAME but for known run-to-run noise (before vs $label)" ;;
        *) echo "$case: DIFFERENT (before vs $label)"; status=1 ;;
    esac
    sed 's/^/    /' <<<"$report"
done
exit $status
