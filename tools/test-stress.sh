#!/usr/bin/env bash
# make test-stress: the whole suite, RUNS times in a row, while stress-ng keeps every core
# busy with other work. The suite must stay green on a loaded machine: its tests wait for
# events under generous deadlines and never assert how fast something came.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
py=.venv/bin/python
cores=$(nproc)
log_dir=.cache/test-stress
mkdir -p "$log_dir"

stress-ng --cpu "$cores" --timeout 4h --quiet &
stress_pid=$!
trap 'kill "$stress_pid" 2>/dev/null; wait "$stress_pid" 2>/dev/null' EXIT
echo "==> stress-ng --cpu $cores (pid $stress_pid) keeps the machine busy; $runs runs of the suite"

failed=0
for run in $(seq 1 "$runs"); do
    start=$(date +%s)
    $py -m pytest -q -p no:cacheprovider -m "not soak" ${PYTEST_ARGS:-} >"$log_dir/run-$run.log" 2>&1
    rc=$?
    took=$(( $(date +%s) - start ))
    summary=$(grep -E '^[0-9]+ (passed|failed)|(passed|failed).* in ' "$log_dir/run-$run.log" | tail -1)
    echo "run $run/$runs: exit $rc, ${took}s: $summary"
    if [ "$rc" -ne 0 ]; then
        failed=$((failed + 1))
        grep -E '^(FAILED|ERROR) ' "$log_dir/run-$run.log" | sed 's/^/    /'
    fi
done
echo "==> $((runs - failed)) of $runs runs passed under load (logs in $log_dir)"
[ "$failed" -eq 0 ]
