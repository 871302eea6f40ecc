"""Plot learning curves of runs, reference curves and baseline scores.

Runs are read from <indir>/<task>/<method>/<seed>/metrics.jsonl, one JSON object per line. Each run is binned along
x (bins [k * bins, (k + 1) * bins) on a grid anchored at 0, placed at the bin centers, y averaged within a bin), then
the seeds of a (task, method) are reduced at each bin into a line (--agg) and a shaded band (--band). Usage:

  python plotting.py --indir ./logdir --outdir ./plots --xaxis step --yaxis test/return --bins 3e4
  python plotting.py --indir ./logdir --outdir ./plots --tasks dmc_cartpole_balance \
      --curves ../shared/reference/dreamer_paper_curves.json \
      --baselines_file ../shared/reference/paper_baselines.json

With --table it writes <outdir>/<name>.md instead and prints it: a Markdown table with one row per task and, at each
of --table_steps, the mean ± std over seeds of every --indir method and every --curves method ("(reference)"):

  python plotting.py --indir ./logdir --outdir ./plots --table --table_steps 1e5 5e5 1e6 \
      --curves ../shared/reference/dreamer_paper_curves.json
"""

import argparse
import collections
import json
import math
import pathlib
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import ticker

PREFIXES = ("dmc_", "atari_", "gym_")
MISSING = "–"  # A table cell without data.
STATS = ("mean", "median", "min", "max")
BANDS = ("std", "minmax", "none")


def warn(source, reason):
    print(f"warning: {source}: {reason}", file=sys.stderr)


def matches(name, patterns):
    # Full matches, so that --tasks dmc_cartpole_balance leaves out dmc_cartpole_balance_sparse.
    return any(re.fullmatch(pattern, name) for pattern in patterns)


def rename(name, labels):
    return next((label for pattern, label in labels if re.fullmatch(pattern, name)), name)


def to_float(value):
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan


def clean(xs, ys, source):
    """Drop points whose x or y is missing, NaN, infinite or not a number, and sort by x."""
    xs = np.array([to_float(x) for x in xs], float)
    ys = np.array([to_float(y) for y in ys], float)
    keep = np.isfinite(xs) & np.isfinite(ys)
    if not keep.all():
        warn(
            source,
            f"dropped {(~keep).sum()} of {len(keep)} points with missing, NaN or non-numeric x or y",
        )
    order = np.argsort(xs[keep], kind="stable")
    return xs[keep][order], ys[keep][order]


def read_jsonl(path):
    """Parse a JSON lines file, skipping lines that are truncated, not UTF-8, not JSON or not objects."""
    records, bad = [], []
    for number, line in enumerate(pathlib.Path(path).read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError as e:  # Covers both JSONDecodeError and UnicodeDecodeError.
            bad.append(f"line {number} ({e})")
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            bad.append(f"line {number} (not a JSON object)")
    if bad:
        warn(path, f"skipped {len(bad)} undecodable line(s), first: {bad[0]}")
    return records


def load_run(path, xaxis, yaxis):
    """Return the sorted (xs, ys) of one metrics.jsonl, or None with a warning if nothing is usable."""
    try:
        records = read_jsonl(path)
    except OSError as e:
        warn(path, f"unreadable ({e})")
        return None
    if not records:
        warn(path, "empty file")
        return None
    # Lines log different metrics, so only those with the y key count.
    rows = [record for record in records if yaxis in record]
    if not rows:
        warn(path, f"no {yaxis!r} values")
        return None
    xs, ys = clean([row.get(xaxis) for row in rows], [row[yaxis] for row in rows], path)
    if not len(xs):
        warn(path, f"no finite ({xaxis!r}, {yaxis!r}) points")
        return None
    return xs, ys


def load_runs(indirs, xaxis="step", yaxis="test/return", tasks=(".*",), methods=(".*",)):
    """Find <indir>/<task>/<method>/<seed>/metrics.jsonl and return dict(task, method, seed, xs, ys, source)."""
    runs = []
    for indir in map(pathlib.Path, indirs):
        if not indir.is_dir():
            warn(indir, "not a directory")
            continue
        for path in sorted(indir.rglob("metrics.jsonl")):
            parts = path.relative_to(indir).parts[:-1]
            if len(parts) != 3:
                warn(path, "not at <indir>/<task>/<method>/<seed>/metrics.jsonl")
                continue
            task, method, seed = parts
            if not (matches(task, tasks) and matches(method, methods)):
                continue
            run = load_run(path, xaxis, yaxis)
            if run:
                runs.append(
                    {
                        "task": task,
                        "method": method,
                        "seed": seed,
                        "xs": run[0],
                        "ys": run[1],
                        "source": str(path),
                    }
                )
    return runs


def load_json(path, kind):
    try:
        data = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as e:
        warn(path, f"unreadable {kind} file ({e})")
        return None
    return data


def load_curves(paths, tasks=(".*",), methods=(".*",)):
    """Read reference curves [{task, method, seed, xs, ys}, ...] into the same form as load_runs()."""
    runs = []
    for path in paths:
        entries = load_json(path, "curves")
        if entries is not None and not isinstance(entries, list):
            warn(path, "not a list of curves")
            entries = None
        for index, entry in enumerate(entries or []):
            source = f"{path}[{index}]"
            if not (isinstance(entry, dict) and {"task", "method", "xs", "ys"} <= entry.keys()):
                warn(source, "not a curve with keys task, method, xs, ys")
                continue
            task, method, xs, ys = (
                str(entry["task"]),
                str(entry["method"]),
                entry["xs"],
                entry["ys"],
            )
            if not (isinstance(xs, list) and isinstance(ys, list) and len(xs) == len(ys)):
                warn(source, "xs and ys are not lists of the same length")
                continue
            if not (matches(task, tasks) and matches(method, methods)):
                continue
            xs, ys = clean(xs, ys, source)
            if not len(xs):
                warn(source, "no finite points")
                continue
            # Seeds are strings in some files and ints in others; runs use folder names.
            seed = str(entry.get("seed", index))
            runs.append(
                {
                    "task": task,
                    "method": method,
                    "seed": seed,
                    "xs": xs,
                    "ys": ys,
                    "source": source,
                }
            )
    return runs


def load_baselines(paths, regex=".*", tasks=(".*",)):
    """Read {task: {method: score}} files, keeping methods that fully match regex; later files win."""
    baselines = collections.defaultdict(dict)
    for path in paths:
        data = load_json(path, "baselines")
        if data is not None and not isinstance(data, dict):
            warn(path, "not a {task: {method: score}} object")
            data = None
        for task, scores in (data or {}).items():
            if not matches(task, tasks):
                continue
            if not isinstance(scores, dict):
                warn(path, f"{task}: not a {{method: score}} object")
                continue
            for method, score in scores.items():
                if not re.fullmatch(regex, method):
                    continue
                if not math.isfinite(to_float(score)):
                    warn(path, f"{task}/{method}: score {score!r} is not a finite number")
                    continue
                baselines[task][method] = to_float(score)
    return dict(baselines)


def bin_run(xs, ys, bins):
    """Mean of ys within bins [k * bins, (k + 1) * bins), returned at the bin centers (k + 0.5) * bins.

    The grid is anchored at 0 so that all runs share the same x positions. Without bins (None or <= 0) the points
    are kept, with ys averaged over duplicate xs."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    binned = bool(bins) and bins > 0
    keys = np.floor(xs / bins) if binned else xs
    unique, inverse = np.unique(keys, return_inverse=True)
    inverse = inverse.ravel()
    means = np.bincount(inverse, ys, len(unique)) / np.bincount(inverse, None, len(unique))
    return ((unique + 0.5) * bins if binned else unique), means


def aggregate(runs, bins=None, agg="mean", band="std"):
    """Bin each run and reduce over the runs present at each x: returns xs, line, lower, upper.

    The line is the agg statistic over runs; the band is line +- population std over runs, or their min and max,
    or collapses onto the line for band 'none'. Bins that only some seeds reach use those seeds."""
    points = [pd.DataFrame(dict(zip("xy", bin_run(run["xs"], run["ys"], bins)))) for run in runs]
    groups = pd.concat(points).groupby("x")["y"]
    xs, line = groups.agg(agg).index.to_numpy(float), groups.agg(agg).to_numpy(float)
    if band == "std":
        std = groups.std(ddof=0).to_numpy(float)
        return xs, line, line - std, line + std
    if band == "minmax":
        return xs, line, groups.min().to_numpy(float), groups.max().to_numpy(float)
    return xs, line, line, line


def value_at(xs, ys, step):
    """One seed's y at step, or None: linearly interpolated between the evaluations around step (exact at an
    evaluation); after the last evaluation its value if step lies within one evaluation interval (the median spacing
    of the seed's evaluations) of it; None before the first evaluation or further after the last."""
    xs, ys = bin_run(xs, ys, None)  # Sorted, duplicate xs averaged.
    if not len(xs) or step < xs[0]:
        return None
    if step <= xs[-1]:
        return float(np.interp(step, xs, ys))
    spacing = float(np.median(np.diff(xs))) if len(xs) > 1 else 0.0
    return float(ys[-1]) if step - xs[-1] <= spacing else None


def table_cell(values):
    """Mean ± population std over seeds and, in parentheses, the number of seeds; MISSING without values."""
    if not values:
        return MISSING
    return f"{np.mean(values):.1f} ± {np.std(values):.1f} ({len(values)})"


def table(runs, curves, steps, labels=()):
    """Markdown table of runs beside reference curves at the given x steps.

    One row per task (the tasks of runs, or of curves when there are no runs); for each step one column per method
    of runs and one per method of curves (headed "<method> (reference)"), methods renamed by labels first. Each cell
    is table_cell() of value_at() over the seeds that have a value at that step."""
    groups = collections.defaultdict(list)
    for origin, items in (("", runs), (" (reference)", curves)):
        for run in items:
            groups[run["task"], rename(run["method"], labels) + origin].append(run)
    columns = sorted({column for _, column in groups}, key=lambda column: (column.endswith(" (reference)"), column))
    tasks = sorted({run["task"] for run in (runs or curves)})
    header = ["task"] + [f"{column} @ {format_number(step)}" for step in steps for column in columns]
    rows = [header, ["---"] * len(header)]
    for task in tasks:
        row = [task]
        for step in steps:
            for column in columns:
                values = [value_at(run["xs"], run["ys"], step) for run in groups.get((task, column), [])]
                row.append(table_cell([value for value in values if value is not None]))
        rows.append(row)
    return "".join("| " + " | ".join(row) + " |\n" for row in rows)


def format_task(task):
    for prefix in PREFIXES:
        task = task.removeprefix(prefix)
    return task.replace("_", " ").title()


def format_number(x, pos=None):
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def palette(names):
    colors = plt.get_cmap("tab10" if len(names) <= 10 else "tab20").colors
    return {name: colors[index % len(colors)] for index, name in enumerate(names)}


def legend_columns(labels, width):
    # Rough width of one legend entry in inches at the default font size, so the legend fits the figure.
    entry = 0.8 + 0.08 * max(len(label) for label in labels)
    return max(1, min(len(labels), int(width / entry)))


def plot(
    runs,
    baselines=None,
    bins=3e4,
    agg="mean",
    band="std",
    add=(),
    cols=4,
    size=(4, 3),
    xlim=None,
    ylim=None,
    xlabel="step",
    ylabel="test/return",
):
    """One subplot per task with runs, a line and band per method, dashed baselines, one legend below."""
    tasks = sorted({run["task"] for run in runs})
    methods = sorted({run["method"] for run in runs})
    baselines = {task: scores for task, scores in (baselines or {}).items() if task in tasks}
    others = sorted({method for scores in baselines.values() for method in scores} - set(methods))
    names = methods + [name for name in add if name not in methods] + others
    colors = palette(names)  # Shared by all subplots so that a method keeps its color.
    cols = max(1, min(cols, len(tasks)))
    rows = math.ceil(len(tasks) / cols)
    width = cols * size[0]
    ncol = legend_columns(names, width)
    height = rows * size[1] + 0.3 * math.ceil(len(names) / ncol) + 0.4
    fig, grid = plt.subplots(rows, cols, figsize=(width, height), squeeze=False, layout="constrained")
    for ax in grid.flat[len(tasks) :]:
        fig.delaxes(ax)
    axes = list(grid.flat[: len(tasks)])
    for index, (ax, task) in enumerate(zip(axes, tasks)):
        relevant = [run for run in runs if run["task"] == task]
        for method in methods:
            if chosen := [run for run in relevant if run["method"] == method]:
                xs, line, lower, upper = aggregate(chosen, bins, agg, band)
                ax.fill_between(xs, lower, upper, color=colors[method], alpha=0.2, lw=0)
                ax.plot(
                    xs,
                    line,
                    color=colors[method],
                    label=method,
                    marker="o" if len(xs) == 1 else None,
                )
        for name in add:
            xs, line, _, _ = aggregate(relevant, bins, name, "none")
            ax.plot(xs, line, color=colors[name], label=name, ls=":", lw=2)
        for method, score in sorted(baselines.get(task, {}).items()):
            ax.axhline(score, color=colors[method], label=method, ls="--", lw=1.2)
        ax.set_title(format_task(task))
        ax.xaxis.set_major_locator(ticker.MaxNLocator(5, steps=[1, 2, 2.5, 5, 10]))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(format_number))
        ax.grid(alpha=0.3)
        if index + cols >= len(tasks):  # Lowest subplot of its column.
            ax.set_xlabel(xlabel)
        if xlim:
            ax.set_xlim(*xlim)
        if ylim:
            ax.set_ylim(*ylim)
    fig.supylabel(ylabel)
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = [name for name in names if name in handles]
    fig.legend(
        [handles[label] for label in labels],
        labels,
        loc="outside lower center",
        ncol=ncol,
        frameon=False,
    )
    return fig, axes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--indir",
        nargs="*",
        default=[],
        help="folders of <task>/<method>/<seed>/metrics.jsonl",
    )
    parser.add_argument("--outdir", default="plots")
    parser.add_argument("--name", default="curves", help="stem of <outdir>/<name>.png and .pdf (.md with --table)")
    parser.add_argument("--xaxis", default="step")
    parser.add_argument("--yaxis", default="test/return")
    parser.add_argument(
        "--bins",
        type=float,
        default=3e4,
        help="bin width along x; <= 0 disables binning",
    )
    parser.add_argument("--tasks", nargs="+", default=[".*"], help="regexes, full match")
    parser.add_argument("--methods", nargs="+", default=[".*"], help="regexes, full match")
    parser.add_argument(
        "--curves",
        nargs="*",
        default=[],
        help="JSON files [{task, method, seed, xs, ys}, ...]",
    )
    parser.add_argument(
        "--baselines_file",
        nargs="*",
        default=[],
        help="JSON files {task: {method: score}}",
    )
    parser.add_argument(
        "--baselines",
        default=None,
        help="regex of baseline methods; all of them by default",
    )
    parser.add_argument(
        "--labels",
        nargs="*",
        default=[],
        help="pairs of regex and legend label for methods",
    )
    parser.add_argument(
        "--agg",
        choices=list(STATS),
        default="mean",
        help="statistic over seeds for the line",
    )
    parser.add_argument(
        "--band",
        choices=BANDS,
        default="std",
        help="shaded band: line +- std, or min to max",
    )
    parser.add_argument(
        "--add",
        nargs="*",
        choices=list(STATS),
        default=[],
        help="extra line over all methods",
    )
    parser.add_argument("--cols", type=int, default=4, help="subplots per row")
    parser.add_argument(
        "--size",
        nargs=2,
        type=float,
        default=[4, 3],
        help="width height of one subplot, inches",
    )
    parser.add_argument("--xlim", nargs=2, type=float, default=None)
    parser.add_argument("--ylim", nargs=2, type=float, default=None)
    parser.add_argument("--dpi", type=int, default=100)
    parser.add_argument(
        "--table",
        action="store_true",
        help="write <outdir>/<name>.md and print it instead of plotting: a Markdown table, one row per task, for each "
        "--table_steps one column per --indir method and one per --curves method ('(reference)'), each cell the mean "
        "± std (population) over seeds and, in parentheses, the number of seeds. A seed's value at a step is "
        "linearly interpolated between its evaluations around the step (exact at an evaluation); past its last "
        "evaluation it is that evaluation's value if the step lies within one evaluation interval (the seed's median "
        "spacing) of it, else the seed has no value there. A cell without any value shows '–'. --bins, --baselines "
        "and the plot options are not used",
    )
    parser.add_argument(
        "--table_steps",
        nargs="+",
        type=float,
        default=[1e5, 5e5, 1e6],
        help="--xaxis values of the --table columns",
    )
    args = parser.parse_args(argv)
    if len(args.labels) % 2:
        parser.error("--labels takes pairs of regex and label")
    args.labels = list(zip(args.labels[::2], args.labels[1::2]))
    patterns = [("--tasks", p) for p in args.tasks] + [("--methods", p) for p in args.methods]
    patterns += [("--labels", p) for p, _ in args.labels] + (
        [("--baselines", args.baselines)] if args.baselines else []
    )
    for flag, pattern in patterns:
        try:
            re.compile(pattern)
        except (re.error, OverflowError) as e:
            parser.error(f"argument {flag}: {pattern!r} is not a regular expression ({e}); e.g. '.*cartpole.*'")
    return args


def warn_duplicates(runs):
    # The same task/method/seed from two sources is most likely a run named like a reference method.
    sources = {}
    for run in runs:
        key = (run["task"], run["method"], run["seed"])
        if key in sources:
            warn(
                run["source"],
                f"duplicate of {'/'.join(key)} from {sources[key]}; both are aggregated",
            )
        sources.setdefault(key, run["source"])


def write_table(args, runs, curves):
    if not (runs or curves):
        print(
            f"error: nothing to tabulate: no usable {args.yaxis!r} data for tasks {args.tasks} and methods "
            f"{args.methods} in --indir {args.indir} or --curves {args.curves}",
            file=sys.stderr,
        )
        return 1
    text = table(runs, curves, args.table_steps, args.labels)
    outdir = pathlib.Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / f"{args.name}.md").write_text(text)
    print(text, end="")
    print(f"{len(runs)} runs, {len(curves)} reference curves -> {outdir / args.name}.md", file=sys.stderr)
    return 0


def main(argv=None):
    args = parse_args(argv)
    runs = load_runs(args.indir, args.xaxis, args.yaxis, args.tasks, args.methods)
    curves = load_curves(args.curves, args.tasks, args.methods)
    if args.table:
        return write_table(args, runs, curves)
    runs += curves
    # Renaming before grouping lets several methods that map to one label pool their seeds.
    runs = [dict(run, method=rename(run["method"], args.labels)) for run in runs]
    warn_duplicates(runs)
    if not runs:
        print(
            f"error: nothing to plot: no usable {args.yaxis!r} data for tasks {args.tasks} and methods "
            f"{args.methods} in --indir {args.indir} or --curves {args.curves}",
            file=sys.stderr,
        )
        return 1
    baselines = load_baselines(args.baselines_file, args.baselines or ".*", args.tasks)
    baselines = {
        task: {rename(method, args.labels): score for method, score in scores.items()}
        for task, scores in baselines.items()
    }
    fig, axes = plot(
        runs,
        baselines,
        args.bins,
        args.agg,
        args.band,
        args.add,
        args.cols,
        args.size,
        args.xlim,
        args.ylim,
        args.xaxis,
        args.yaxis,
    )
    outdir = pathlib.Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(outdir / f"{args.name}.{ext}", dpi=args.dpi)
    plt.close(fig)
    print(f"{len(axes)} tasks, {len(runs)} runs -> {outdir / args.name}.png and .pdf")
    return 0


if __name__ == "__main__":
    sys.exit(main())
