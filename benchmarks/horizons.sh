#!/usr/bin/env bash
# The paper's horizon figure on one task: Dreamer, Dreamer without a value model and PlaNet at several horizons
# (imagination horizon --horizon for the first two, planning horizon --plan_horizon for PlaNet), each at the
# cpu_check scale for a wall-time budget, then the curves side by side and a table.
#
#   benchmarks/horizons.sh [task=dmc_walker_stand] [minutes per run=95] [horizons="5 15 25"] [seed=0] [flags...]
#
# Runs go to ./logdir/<task>/<method>-h<horizon>/<seed> one after another; each is stopped cleanly at its budget
# (SIGTERM: it finishes the episode under way and checkpoints), and the same command resumes all of them. The
# figure and table land in ./plots/horizons/ (plotting.py: curves.png, curves.md and the aggregates).
set -euo pipefail
cd "$(dirname "$0")/.."
task="${1:-dmc_walker_stand}"
minutes="${2:-95}"
horizons="${3:-5 15 25}"
seed="${4:-0}"
shift $(($# < 4 ? $# : 4))
for horizon in ${horizons}; do
  for method in dreamer no_value planet; do
    logdir="./logdir/${task}/${method}-h${horizon}/${seed}"
    flags=(--configs cpu_check --task "${task}" --seed "${seed}" --horizon "${horizon}")
    if [[ ${method} == no_value ]]; then flags+=(--behavior no_value); fi
    if [[ ${method} == planet ]]; then flags+=(--behavior planet --plan_horizon "${horizon}"); fi
    echo "Horizon ${horizon}, ${method}: ${minutes} minutes, logdir ${logdir}."
    timeout --preserve-status --signal=TERM --kill-after=20m "${minutes}m" \
      python dreamer.py --logdir "${logdir}" "${flags[@]}" "$@"
  done
done
methods=()
for horizon in ${horizons}; do methods+=("dreamer-h${horizon}" "no_value-h${horizon}" "planet-h${horizon}"); done
python plotting.py --indir ./logdir --tasks "${task}" --methods "${methods[@]}" --outdir ./plots/horizons
python plotting.py --indir ./logdir --tasks "${task}" --methods "${methods[@]}" --outdir ./plots/horizons --table \
  --table_steps 5e4 1e5 2e5
