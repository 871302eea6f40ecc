"""Plot learning curves of runs beside the Dreamer paper's curves and baselines; tabulate and aggregate them.

Runs are read from <indir>/<task>/<method>/<seed>/metrics.jsonl, one JSON object per line. Each run is binned along
x (bins [k * bins, (k + 1) * bins) on a grid anchored at 0, placed at the bin centers, y averaged within a bin), then
the seeds of a (task, method) are reduced at each bin into a line (--agg) and a shaded band (--band). By default the
paper's published test-return curves (scores/dreamer.json, 20 DMC tasks x 5 seeds) and baseline scores
(scores/baselines.json) of the tasks of the runs are drawn beside them, the curves as "<method> (reference)"; give
--curves or --baselines_file with no value to leave them out, or other files to use those. Usage:

  python plotting.py --indir ./logdir --outdir ./plots
  python plotting.py --indir ./logdir --outdir ./plots --tasks dmc_cartpole_balance --bins 3e4 --baselines 'd4pg.*'
  python plotting.py --indir ./logdir --outdir ./plots --curves --baselines_file  # The runs alone.
  python plotting.py --outdir ./plots  # The paper alone: its 20 tasks.

With --table it writes <outdir>/<name>.md instead and prints it: a Markdown table with one row per task and, at each
of --table_steps, the mean ± std over seeds of every --indir method and every --curves method ("(reference)"). Beside
it, <name>_aggregates.md holds the interquartile mean (IQM), median and mean over tasks and seeds of the scores
normalised by --max_score, each with a stratified-bootstrap 95% confidence interval (rliable, Agarwal et al. 2021),
and <name>_profiles.png the performance profiles (fraction of runs with a normalised score above each threshold).
Each method is aggregated over the tasks it has (n says how many tasks × seeds); --tasks compares over the same ones:

  python plotting.py --indir ./logdir --outdir ./plots --table --table_steps 1e5 5e5 1e6
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
from rliable import library, metrics

SCORES = pathlib.Path(__file__).resolve().parent / "scores"  # The paper's published scores, in the repository.

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


def methods(runs, curves, labels=()):
    """{column: runs} of the methods of runs and, as "<method> (reference)", of curves, renamed by labels first; the
    methods of runs come first, each group sorted by name."""
    groups = collections.defaultdict(list)
    for origin, items in (("", runs), (" (reference)", curves)):
        for run in items:
            groups[rename(run["method"], labels) + origin].append(run)
    return dict(sorted(groups.items(), key=lambda item: (item[0].endswith(" (reference)"), item[0])))


def table(runs, curves, steps, labels=()):
    """Markdown table of runs beside reference curves at the given x steps.

    One row per task (the tasks of runs, or of curves when there are no runs); for each step one column per method
    of methods(). Each cell is table_cell() of value_at() over the seeds that have a value at that step."""
    groups = methods(runs, curves, labels)
    tasks = sorted({run["task"] for run in (runs or curves)})
    header = ["task"] + [f"{column} @ {format_number(step)}" for step in steps for column in groups]
    rows = [header, ["---"] * len(header)]
    for task in tasks:
        row = [task]
        for step in steps:
            for items in groups.values():
                values = [value_at(run["xs"], run["ys"], step) for run in items if run["task"] == task]
                row.append(table_cell([value for value in values if value is not None]))
        rows.append(row)
    return markdown(rows)


def markdown(rows):
    return "".join("| " + " | ".join(row) + " |\n" for row in rows)


def score_matrix(runs, step, max_score=1000.0):
    """rliable's (seeds x tasks) matrix of value_at(step) / max_score of one method's runs, and how many values it
    left out; (None, 0) without any value.

    Tasks without a value at step are left out. Every task keeps as many seeds as the task with the fewest (its first
    ones by seed name), so that each task weighs the same in the aggregates."""
    values = collections.defaultdict(list)
    for run in sorted(runs, key=lambda run: run["seed"]):
        if (value := value_at(run["xs"], run["ys"], step)) is not None:
            values[run["task"]].append(value / max_score)
    if not values:
        return None, 0
    seeds = min(map(len, values.values()))
    scores = np.array([column[:seeds] for _, column in sorted(values.items())]).T
    return scores, sum(map(len, values.values())) - scores.size


def bootstrap(scores, func, reps=2000, seed=0, size=0.95):
    """func(scores) and its percentile confidence interval (rows lower, upper) by rliable's stratified bootstrap
    (get_interval_estimates): each resample redraws every task's seeds with replacement, so the tasks stay fixed.

    rliable draws from NumPy's global random state (its random_state argument does not reach the draws), so it is
    seeded here and restored after: the same numbers every time, as the legacy stream is frozen across versions."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        point, interval = library.get_interval_estimates({"": scores}, func, reps=reps, confidence_interval_size=size)
    finally:
        np.random.set_state(state)
    return point[""], interval[""]


AGGREGATES = ("IQM", "median", "mean")
TAUS = np.linspace(0, 1, 101)  # Thresholds of the performance profiles, in normalised score.


def summary(scores):
    """The AGGREGATES as rliable defines them: the IQM of all runs (the mean of their middle 50%), robust to outlier
    runs and tasks yet less noisy than the median; the median and the mean of the per-task means."""
    return np.array([metrics.aggregate_iqm(scores), metrics.aggregate_median(scores), metrics.aggregate_mean(scores)])


def profile(scores, taus=TAUS):
    """Performance profile: the fraction of runs (every seed of every task) with a score above each tau, as
    rliable's score distributions; the whole distribution of scores, not one number."""
    return np.mean(scores[..., None] > taus, axis=(0, 1))


def estimates(runs, curves, steps, labels=(), max_score=1000.0, reps=2000, seed=0):
    """{(column, step): (scores, bootstrap of summary(), bootstrap of profile())} for each method of methods() and
    each step, None where the method has no value at the step. Each method goes over the tasks it has."""
    results = {}
    for column, items in methods(runs, curves, labels).items():
        for step in steps:
            scores, dropped = score_matrix(items, step, max_score)
            results[column, step] = None
            if scores is None:
                continue
            if dropped:
                warn(column, f"left out {dropped} seed values at {format_number(step)}: each task keeps {len(scores)}")
            results[column, step] = (
                scores,
                bootstrap(scores, summary, reps, seed),
                bootstrap(scores, profile, reps, seed),
            )
    return results


def interval(point, lower, upper):
    return f"{point:.3f} [{lower:.3f}, {upper:.3f}]"


def aggregates_table(results, steps, max_score=1000.0, reps=2000):
    """Markdown: one row per step and method, with n (tasks × seeds) and each of AGGREGATES as point [95% CI]."""
    text = (
        f"Scores / {max_score:g} at each step, over tasks and seeds: point estimate "
        f"[95% stratified-bootstrap confidence interval, {reps} resamples]. IQM: interquartile mean of all runs; "
        "median and mean: of the per-task means (rliable, Agarwal et al. 2021). n: tasks × seeds.\n\n"
    )
    rows = [["method", "step", "n", *AGGREGATES], ["---"] * (3 + len(AGGREGATES))]
    for step in steps:
        for (column, at), result in results.items():
            if at == step and result:
                (seeds, tasks), (point, (lower, upper)) = result[0].shape, result[1]
                rows.append([column, format_number(step), f"{tasks} × {seeds}", *map(interval, point, lower, upper)])
            elif at == step:
                rows.append([column, format_number(step), "0", *[MISSING] * len(AGGREGATES)])
    return text + markdown(rows)


def plot_profiles(results, steps, size=(4, 3)):
    """One subplot per step with each method's performance profile and its 95% CI band, drawn by rliable."""
    from rliable import plot_utils  # It imports seaborn: only when drawing profiles.

    names = list(dict.fromkeys(column for column, _ in results))
    colors = palette(names)
    width = size[0] * len(steps)
    fig, grid = plt.subplots(1, len(steps), figsize=(width, size[1] + 0.6), squeeze=False, layout="constrained")
    for index, (ax, step) in enumerate(zip(grid.flat, steps)):
        chosen = {column: result[2] for (column, at), result in results.items() if at == step and result}
        plot_utils.plot_performance_profiles(
            {column: point for column, (point, _) in chosen.items()},
            TAUS,
            {column: ci for column, (_, ci) in chosen.items()},
            ax=ax,
            colors=colors,
            xlabel=r"normalised score $\tau$",
            ylabel=r"fraction of runs with score $> \tau$" if index == 0 else "",
            labelsize="medium",
            ticklabelsize="medium",
        )
        ax.set_title(f"{format_number(step)} steps")
    figure_legend(fig, grid.flat, names, width)
    return fig


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
    figure_legend(fig, axes, names, width)
    return fig, axes


def figure_legend(fig, axes, names, width):
    """One legend below the figure with an entry for each of names that some axis drew, in that order."""
    handles = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = [name for name in names if name in handles]
    if labels:
        fig.legend(
            [handles[label] for label in labels],
            labels,
            loc="outside lower center",
            ncol=legend_columns(names, width),
            frameon=False,
        )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--indir",
        nargs="*",
        default=[],
        help="folders of <task>/<method>/<seed>/metrics.jsonl",
    )
    parser.add_argument("--outdir", default="plots")
    parser.add_argument(
        "--name",
        default="curves",
        help="stem of <outdir>/<name>.png and .pdf (.md, _aggregates.md, _profiles.png with --table)",
    )
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
        default=[str(SCORES / "dreamer.json")],
        help="JSON files [{task, method, seed, xs, ys}, ...]; by default the paper's curves (scores/dreamer.json, "
        "beside this script), drawn for the tasks of the --indir runs; give the flag with no value for none",
    )
    parser.add_argument(
        "--baselines_file",
        nargs="*",
        default=[str(SCORES / "baselines.json")],
        help="JSON files {task: {method: score}}; by default the paper's baselines (scores/baselines.json); give the "
        "flag with no value for none",
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
        "spacing) of it, else the seed has no value there. A cell without any value shows '–'. Also writes "
        "<name>_aggregates.md: for each method and step the IQM, median and mean over tasks and seeds of y / "
        "--max_score with stratified-bootstrap 95%% confidence intervals (rliable), each method over the tasks it has "
        "(n: tasks × seeds; where tasks have different numbers of seeds with a value, each keeps as many as the "
        "fewest, with a warning), and <name>_profiles.png: their performance profiles. --bins, --baselines, "
        "--baselines_file and the plot options but --size and --dpi (of the profiles) are not used",
    )
    parser.add_argument(
        "--table_steps",
        nargs="+",
        type=float,
        default=[1e5, 5e5, 1e6],
        help="--xaxis values of the --table columns and of the aggregates",
    )
    parser.add_argument(
        "--max_score",
        type=float,
        default=1000.0,
        help="--table aggregates and profiles use y / max_score (the most a DMC episode returns: 1000)",
    )
    parser.add_argument(
        "--bootstrap_reps",
        type=int,
        default=2000,
        help="resamples of the stratified bootstrap of the aggregates' confidence intervals",
    )
    parser.add_argument("--bootstrap_seed", type=int, default=0, help="seed of that bootstrap, so the numbers repeat")
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
    write_aggregates(args, runs, curves, outdir)
    return 0


def write_aggregates(args, runs, curves, outdir):
    """<name>_aggregates.md, printed too, and <name>_profiles.png: what a paper can report over a benchmark."""
    results = estimates(
        runs, curves, args.table_steps, args.labels, args.max_score, args.bootstrap_reps, args.bootstrap_seed
    )
    text = aggregates_table(results, args.table_steps, args.max_score, args.bootstrap_reps)
    (outdir / f"{args.name}_aggregates.md").write_text(text)
    print("\n" + text, end="")
    fig = plot_profiles(results, args.table_steps, args.size)
    fig.savefig(outdir / f"{args.name}_profiles.png", dpi=args.dpi)
    plt.close(fig)
    print(f"aggregates -> {outdir / args.name}_aggregates.md and {outdir / args.name}_profiles.png", file=sys.stderr)


def beside(runs, curves, labels=(), tasks=None):
    """The runs and then the curves of tasks (all without tasks), methods renamed by labels and those of curves
    suffixed " (reference)" as in the table, so that a run named like the paper's method ("dreamer") stays apart
    (unless a label names them). Renaming before grouping lets several methods that map to one label pool their
    seeds."""
    curves = [curve for curve in curves if tasks is None or curve["task"] in tasks]
    runs = [dict(run, method=rename(run["method"], labels)) for run in runs]
    named = lambda method: rename(method, labels) if rename(method, labels) != method else f"{method} (reference)"
    return runs + [dict(curve, method=named(curve["method"])) for curve in curves]


def main(argv=None):
    args = parse_args(argv)
    runs = load_runs(args.indir, args.xaxis, args.yaxis, args.tasks, args.methods)
    curves = load_curves(args.curves, args.tasks, args.methods)
    if args.table:
        return write_table(args, runs, curves)
    # With --indir, the reference curves of the runs' tasks only: a run is drawn beside the paper, not among 20 tasks.
    runs = beside(runs, curves, args.labels, {run["task"] for run in runs} if args.indir else None)
    warn_duplicates(runs)
    if not runs:
        print(
            f"error: nothing to plot: no usable {args.yaxis!r} data for tasks {args.tasks} and methods "
            f"{args.methods} in --indir {args.indir} (or, without --indir, in --curves {args.curves})",
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
