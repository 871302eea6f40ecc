#!/usr/bin/env bash
# The CPU learning check: Dreamer on dmc_walker_stand with half-width networks, 16-sequence batches and five
# test episodes per evaluation (the paper's algorithm and defaults otherwise), stopped cleanly after a wall-time budget.
#
#   benchmarks/learning.sh [seed=0] [minutes=95] [extra dreamer.py flags...]
#
# The run goes to ./logdir/dmc_walker_stand/dreamer-<precision>/<seed> (or $LOGDIR). At the budget
# it gets SIGTERM, finishes the episode under way, writes a checkpoint and exits; running the same command
# again resumes it. A stop can wait for a train burst, an episode and an evaluation's burst (over 10 minutes on a
# slow 2-core host), hence the long grace before SIGKILL.
set -euo pipefail
cd "$(dirname "$0")/.."
seed="${1:-0}"
minutes="${2:-95}"
shift $(($# < 2 ? $# : 2))
precision=32
for ((i = 1; i <= $#; i++)); do
  if [[ "${!i}" == --precision ]]; then j=$((i + 1)); precision="${!j}"; fi
  if [[ "${!i}" == --precision=* ]]; then precision="${!i#--precision=}"; fi
done
logdir="${LOGDIR:-./logdir/dmc_walker_stand/dreamer-${precision}/${seed}}"
echo "Learning check: seed ${seed}, ${minutes} minutes, logdir ${logdir}."
status=0
# The run's own exit status: 0 also when the budget's SIGTERM stopped it cleanly (checkpoint written), not when
# it failed in its stop or needed the SIGKILL.
timeout --preserve-status --signal=TERM --kill-after=20m "${minutes}m" \
  python dreamer.py --logdir "${logdir}" --configs cpu_check --seed "${seed}" --precision 32 "$@" || status=$?
if [[ ${status} -ne 0 ]]; then exit "${status}"; fi
python - "${logdir}" <<'PY'
import json, pathlib, sys
lines = pathlib.Path(sys.argv[1], "metrics.jsonl").read_text().splitlines()
rows = []
for line in lines:
    try:
        rows.append(json.loads(line))
    except json.JSONDecodeError:
        pass
tests = [r for r in rows if "test/return" in r]
start = rows[0]["time"] if rows else 0
print("env steps | test return (± std over its episodes) | wall minutes")
for r in tests:
    spread = f" ± {r['test/return_std']:.1f}" if "test/return_std" in r else ""
    print(f"{r['step']:>9} | {r['test/return']:>11.1f}{spread:>8} | {(r['time'] - start) / 60:>12.1f}")
late = [r["test/return"] for r in tests if 25000 <= r["step"] <= 50000]
if late:
    print(f"Mean test return from 25k to 50k env steps: {sum(late) / len(late):.1f} over {len(late)} evaluations.")
if tests:
    last = [r["test/return"] for r in tests[-5:]]
    print(f"Env steps reached: {max(r['step'] for r in rows)}; mean of the last 5 evaluations: {sum(last) / len(last):.1f}.")
PY
