"""The learning check's runs as curves and a table: test return per evaluation, and the mean over a window of env
steps with a 95% stratified-bootstrap interval (rliable) over the window's evaluations of all seeds.

    python benchmarks/learning_table.py --runs ./logdir/dmc_walker_stand --curves docs/learning_check_runs.json \
      --reference ../shared/reference/calibration_walker_stand.json --levels docs/random_policy.json

Runs are read from <runs>/<method>/<seed>/metrics.jsonl; their curves are merged into --curves (replacing those of
the same task, method and seed), which plotting.py draws with --curves. The table goes to stdout as markdown.
"""

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import plotting  # noqa: E402


def read_runs(root, prefix):
    """Curves {task, method, seed, xs, ys, std} of the runs under root/<method>/<seed>."""
    curves = []
    for path in sorted(pathlib.Path(root).glob("*/*/metrics.jsonl")):
        rows = read_jsonl(path)
        tests = [r for r in rows if "test/return" in r]
        if not tests:
            continue
        method, seed = path.parent.parent.name, int(path.parent.name)
        curves.append(
            dict(
                task=pathlib.Path(root).name,
                method=prefix.get(method, method),
                seed=seed,
                xs=[r["step"] for r in tests],
                ys=[round(r["test/return"], 1) for r in tests],
                std=[round(r.get("test/return_std", 0.0), 1) for r in tests],
            )
        )
    return curves


def read_jsonl(path):
    rows = []
    for line in pathlib.Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # A line cut short by a kill.
            pass
    return rows


def window_mean(curves, low, high, reps=2000, seed=0):
    """Mean test return over the evaluations in [low, high] of all curves, and its 95% bootstrap interval."""
    scores = np.array([y for c in curves for x, y in zip(c["xs"], c["ys"]) if low <= x <= high], float)
    if not len(scores):
        return None
    point, interval = plotting.bootstrap(scores[:, None], lambda x: np.array([x.mean()]), reps, seed)  # rliable's
    return float(point[0]), interval[:, 0], len(scores)


def table(curves, low, high, steps, levels=None):
    methods = list(dict.fromkeys(c["method"] for c in curves))
    head = ["method", "seed"] + [f"{s // 1000}k" for s in steps] + [f"mean {low // 1000}k–{high // 1000}k [95% CI] (n)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        runs = [c for c in curves if c["method"] == method]
        for run in runs:
            values = dict(zip(run["xs"], run["ys"]))
            cells = [f"{values[s]:.0f}" if s in values else "" for s in steps]
            lines.append("| " + " | ".join([method, str(run["seed"]), *cells, summary([run], low, high)]) + " |")
        if len(runs) > 1:
            seeds = ", ".join(str(r["seed"]) for r in runs)
            lines.append(
                "| " + " | ".join([f"**{method}**", seeds, *[""] * len(steps), summary(runs, low, high)]) + " |"
            )
    for name, value in (levels or {}).items():
        lines.append("| " + " | ".join([name, "", *[""] * len(steps), f"{value:.0f}"]) + " |")
    return "\n".join(lines)


def summary(curves, low, high):
    result = window_mean(curves, low, high)
    if result is None:
        return "—"
    mean, (lower, upper), count = result
    return f"{mean:.0f} [{lower:.0f}, {upper:.0f}] ({count})"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="folder <task> with runs in <method>/<seed>/")
    parser.add_argument("--curves", help="JSON list of curves to merge the runs into (written back)")
    parser.add_argument("--reference", nargs="*", default=[], help="curve files to show beside them in the table")
    parser.add_argument("--levels", help="JSON {task: {name: return}} of fixed levels (docs/random_policy.json)")
    parser.add_argument("--methods", nargs="*", help="the table's methods (curve names), in this order; default all")
    parser.add_argument("--window", nargs=2, type=float, default=(25000, 50000), help="env steps of the mean")
    parser.add_argument("--rename", nargs="*", default=["dreamer=dreamer-32"], help="method=name in the curves")
    args = parser.parse_args()
    prefix = dict(item.split("=", 1) for item in args.rename)
    curves = read_runs(args.runs, prefix)
    if args.curves:
        path = pathlib.Path(args.curves)
        kept = json.loads(path.read_text()) if path.exists() else []
        keys = {(c["task"], c["method"], c["seed"]) for c in curves}
        kept = [c for c in kept if (c["task"], c["method"], c["seed"]) not in keys]
        path.write_text(json.dumps(kept + curves, indent=1) + "\n")
    task = pathlib.Path(args.runs).name
    for file in args.reference:
        curves += [c for c in json.loads(pathlib.Path(file).read_text()) if c["task"] == task]
    if args.methods:
        curves = sorted(
            (c for c in curves if c["method"] in args.methods), key=lambda c: args.methods.index(c["method"])
        )
    low, high = (int(x) for x in args.window)
    steps = sorted({x for c in curves for x in c["xs"] if x <= high})
    levels = json.loads(pathlib.Path(args.levels).read_text()).get(task, {}) if args.levels else {}
    print(table(curves, low, high, steps, levels))


if __name__ == "__main__":
    main()
