#!/usr/bin/env bash
# Run tests many times, each in a fresh pytest, while CPU hogs keep cores busy: a test that races
# the processes it starts fails here sooner or later. `make stress-tests` calls this.
#
#   tests/stress.sh [RUNS] [HOGS] [PYTEST ARGS...]
#   RUNS  how many times (default 10); HOGS  busy loops beside the tests (default 1: one core busy)
#   PYTEST ARGS  which tests (default: -m slow, every test that starts a process)
#
# Prints one line per run and a summary; keeps the output of each failed run; exit status 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
hogs=${2:-1}
shift $(( $# < 2 ? $# : 2 ))
[ $# -gt 0 ] || set -- -m slow
python=${PYTHON:-.venv/bin/python}
logs=$(mktemp -d "${TMPDIR:-/tmp}/namegen-stress.XXXXXX")

hog_pids=()
stop_hogs() { for pid in "${hog_pids[@]}"; do kill "$pid" 2>/dev/null; done; }
trap stop_hogs EXIT
trap 'exit 130' INT TERM
for _ in $(seq "$hogs"); do
    "$python" -c "while True: pass" &
    hog_pids+=($!)
done

echo "stress: $runs run(s) of pytest $*, beside $hogs CPU hog(s); $(uptime)"
failed=0
for i in $(seq "$runs"); do
    start=$SECONDS
    if WANDB_MODE=offline WANDB_SILENT=true "$python" -m pytest -q -rs "$@" >"$logs/run-$i.log" 2>&1; then
        echo "run $i/$runs: passed ($((SECONDS - start)) s): $(tail -n 1 "$logs/run-$i.log")"
        rm -f "$logs/run-$i.log"
    else
        failed=$((failed + 1))
        echo "run $i/$runs: FAILED ($((SECONDS - start)) s): $(tail -n 1 "$logs/run-$i.log"); log: $logs/run-$i.log"
    fi
done
echo "stress: $((runs - failed)) of $runs run(s) passed, beside $hogs CPU hog(s); $(uptime)"
rmdir "$logs" 2>/dev/null
[ "$failed" -eq 0 ]
