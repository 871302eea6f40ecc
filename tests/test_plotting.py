import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import plotting

SCORES = ROOT / "scores"  # The paper's published curves and baselines, shipped with the repository.


def write_run(root, task, method, seed, steps, returns, key="test/return"):
    path = pathlib.Path(root, task, method, str(seed), "metrics.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for step, value in zip(steps, returns):
            f.write(json.dumps({"step": step, key: value}) + "\n")
            f.write(json.dumps({"step": step, "model_loss": 1.0}) + "\n")  # Lines without the y key.
    return path


def write_runs(
    root,
    tasks=("dmc_walker_walk", "dmc_cheetah_run"),
    methods=("dreamer", "planet"),
    seeds=3,
):
    steps = np.arange(0, 100_000, 5_000)
    for t, task in enumerate(tasks):
        for m, method in enumerate(methods):
            for seed in range(seeds):
                write_run(
                    root,
                    task,
                    method,
                    seed,
                    steps.tolist(),
                    (steps / 100 * (m + 1) + seed + t).tolist(),
                )


def lines_of(ax):
    return [line for line in ax.get_lines() if len(line.get_xdata())]


def legend_labels(fig):
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def test_bin_run_means_within_bins_at_centers():
    xs, ys = plotting.bin_run([0, 10, 20, 35, 40], [1, 3, 5, 7, 9], 20)
    np.testing.assert_allclose(xs, [10, 30, 50])
    np.testing.assert_allclose(ys, [2, 6, 9])
    xs, ys = plotting.bin_run([0, 10, 10, 20], [1, 2, 4, 5], None)
    np.testing.assert_allclose(xs, [0, 10, 20])
    np.testing.assert_allclose(ys, [1, 3, 5])


def test_aggregate_over_seeds():
    runs = [
        {"xs": np.array([0.0, 5, 10]), "ys": np.array([1.0, 3, 10])},
        {"xs": np.array([0.0, 10]), "ys": np.array([4.0, 20])},
        {"xs": np.array([1.0, 11, 25]), "ys": np.array([5.0, 30, 7])},
    ]
    xs, line, lower, upper = plotting.aggregate(runs, 10, "mean", "std")
    np.testing.assert_allclose(xs, [5, 15, 25])
    first = np.array([2.0, 4, 5])  # Seed 0 averages 1 and 3 within its first bin.
    np.testing.assert_allclose(line, [first.mean(), 20, 7])
    np.testing.assert_allclose(upper - line, [first.std(), np.std([10, 20, 30]), 0])
    np.testing.assert_allclose(line - lower, upper - line)
    xs, line, lower, upper = plotting.aggregate(runs, 10, "median", "minmax")
    np.testing.assert_allclose(line, [4, 20, 7])
    np.testing.assert_allclose(lower, [2, 10, 7])
    np.testing.assert_allclose(upper, [5, 30, 7])


def test_main_writes_png_and_pdf_with_one_subplot_per_task(tmp_path):
    write_runs(tmp_path / "logdir")
    outdir = tmp_path / "plots"
    assert (
        plotting.main(
            [
                "--indir",
                str(tmp_path / "logdir"),
                "--outdir",
                str(outdir),
                "--bins",
                "1e4",
            ]
        )
        == 0
    )
    assert (outdir / "curves.png").stat().st_size > 0
    assert (outdir / "curves.pdf").read_bytes().startswith(b"%PDF")
    runs = plotting.load_runs([tmp_path / "logdir"])
    assert len(runs) == 12 and all(len(run["xs"]) == 20 for run in runs)
    fig, axes = plotting.plot(runs, bins=1e4)
    assert len(fig.axes) == len(axes) == 2
    assert [ax.get_title() for ax in axes] == ["Cheetah Run", "Walker Walk"]
    assert all(len(lines_of(ax)) == 2 for ax in axes)
    assert legend_labels(fig) == ["dreamer", "planet"]
    colors = [{line.get_label(): line.get_color() for line in lines_of(ax)} for ax in axes]
    assert colors[0] == colors[1]
    assert plotting.format_number(1.5e6) == "1.5M" and plotting.format_number(3e4) == "30k"


def test_robustness_skips_bad_runs_with_warnings(tmp_path, capsys):
    logdir = tmp_path / "logdir"
    write_runs(logdir, tasks=("dmc_walker_walk",), methods=("dreamer",), seeds=1)
    missing = write_run(logdir, "dmc_walker_walk", "dreamer", 1, [0, 1000], [1, 2], key="train/return")
    nans = write_run(
        logdir,
        "dmc_walker_walk",
        "dreamer",
        2,
        [0, 1000, 2000],
        [1.0, float("nan"), 3.0],
    )
    partial = write_run(logdir, "dmc_walker_walk", "dreamer", 3, [0, 1000], [1, 2])
    partial.write_text(partial.read_text() + '{"step": 2000, "test/ret')
    garbage = write_run(logdir, "dmc_walker_walk", "dreamer", 4, [0, 1000], [1, 2])
    garbage.write_bytes(b"\xff\xfe not json\n[1, 2]\n" + garbage.read_bytes())
    empty = logdir / "dmc_walker_walk" / "dreamer" / "5" / "metrics.jsonl"
    empty.parent.mkdir()
    empty.touch()
    shallow = logdir / "dmc_walker_walk" / "metrics.jsonl"
    shallow.write_text('{"step": 0, "test/return": 1}\n')
    runs = plotting.load_runs([logdir])
    err = capsys.readouterr().err
    assert sorted(run["seed"] for run in runs) == ["0", "2", "3", "4"]
    assert [len(run["xs"]) for run in sorted(runs, key=lambda run: run["seed"])] == [
        20,
        2,
        2,
        2,
    ]
    for path, reason in [
        (missing, "no 'test/return' values"),
        (nans, "dropped 1 of 3 points"),
        (partial, "skipped 1 undecodable line"),
        (garbage, "skipped 2 undecodable line"),
        (empty, "empty file"),
        (shallow, "not at <indir>/<task>/<method>/<seed>/metrics.jsonl"),
    ]:
        assert f"warning: {path}: {reason}" in err
    assert plotting.main(["--indir", str(logdir), "--outdir", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "curves.png").exists()


def test_nothing_to_plot_exits_with_message(tmp_path, capsys):
    logdir = tmp_path / "logdir"
    write_run(logdir, "dmc_walker_walk", "dreamer", 0, [0, 1000], [1, 2], key="train/return")
    assert plotting.main(["--indir", str(logdir), "--outdir", str(tmp_path / "plots")]) == 1
    assert "error: nothing to plot" in capsys.readouterr().err
    assert not (tmp_path / "plots").exists()
    command = [
        sys.executable,
        str(ROOT / "plotting.py"),
        "--indir",
        str(tmp_path / "missing"),
    ]
    result = subprocess.run(command, check=False, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert "error: nothing to plot" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("flags", [["--tasks", "*cartpole*"], ["--labels", "dreamer(", "mine"], ["--baselines", "["]])
def test_pattern_that_is_no_regex_exits_2(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as error:
        plotting.main(["--indir", str(tmp_path), "--outdir", str(tmp_path / "plots"), *flags])
    assert error.value.code == 2
    assert f"argument {flags[0]}: {flags[1]!r} is not a regular expression" in capsys.readouterr().err


def test_labels_filters_and_several_indirs(tmp_path):
    write_runs(tmp_path / "a", methods=("dreamer",), seeds=2)
    write_runs(tmp_path / "b", methods=("planet", "slac"), seeds=1)
    args = [
        "--indir",
        str(tmp_path / "a"),
        str(tmp_path / "b"),
        "--outdir",
        str(tmp_path / "plots"),
    ]
    args += [
        "--labels",
        "dream.*",
        "Dreamer",
        "planet",
        "PlaNet",
        "--tasks",
        "dmc_walker_.*",
    ]
    args += ["--methods", "dreamer", "planet"]
    assert plotting.main(args) == 0
    runs = plotting.load_runs(
        [tmp_path / "a", tmp_path / "b"],
        tasks=["dmc_walker_.*"],
        methods=["dreamer", "planet"],
    )
    assert {(run["task"], run["method"]) for run in runs} == {
        ("dmc_walker_walk", "dreamer"),
        ("dmc_walker_walk", "planet"),
    }
    assert len(runs) == 3
    assert plotting.rename("dreamer", [("dream.*", "Dreamer")]) == "Dreamer"
    assert plotting.rename("planet", [("dream.*", "Dreamer")]) == "planet"
    # Full matches: a task name does not select its longer variants.
    assert plotting.matches("dmc_cartpole_balance", ["dmc_cartpole_balance"])
    assert not plotting.matches("dmc_cartpole_balance_sparse", ["dmc_cartpole_balance"])
    runs = [
        dict(
            run,
            method=plotting.rename(run["method"], [("dream.*", "Dreamer"), ("planet", "PlaNet")]),
        )
        for run in runs
    ]
    fig, axes = plotting.plot(runs)
    assert len(axes) == 1 and legend_labels(fig) == ["Dreamer", "PlaNet"]


def test_add_aggregates_all_methods(tmp_path):
    write_runs(tmp_path, tasks=("dmc_walker_walk",), seeds=2)
    runs = plotting.load_runs([tmp_path])
    _fig, (ax,) = plotting.plot(runs, bins=1e4, add=["mean", "max"])
    lines = {line.get_label(): line for line in lines_of(ax)}
    assert set(lines) == {"dreamer", "planet", "mean", "max"}
    _, expected, _, _ = plotting.aggregate(runs, 1e4, "mean", "none")
    np.testing.assert_allclose(lines["mean"].get_ydata(), expected)
    np.testing.assert_allclose(
        lines["max"].get_ydata(),
        np.max([plotting.bin_run(r["xs"], r["ys"], 1e4)[1] for r in runs], 0),
    )


def test_reference_curves_and_baselines_in_the_repository():
    runs = plotting.load_curves([SCORES / "dreamer.json"])
    baselines = plotting.load_baselines([SCORES / "baselines.json"])
    assert len(runs) == 100 and {run["seed"] for run in runs} == {"0", "1", "2", "3", "4"}
    assert len({run["task"] for run in runs}) == 20 and len(baselines) == 18
    fig, axes = plotting.plot(runs, baselines)
    assert len(fig.axes) == len(axes) == 20
    assert all(lines_of(ax) for ax in axes)
    ax = next(ax for ax in axes if ax.get_title() == "Cartpole Swingup")
    flat = {line.get_label(): line.get_ydata() for line in ax.get_lines() if line.get_linestyle() == "--"}
    assert flat.keys() == baselines["dmc_cartpole_swingup"].keys()
    for method, ys in flat.items():
        np.testing.assert_allclose(ys, baselines["dmc_cartpole_swingup"][method])
    assert {"dreamer", "d4pg_100m", "a3c_100m_proprio"} <= set(legend_labels(fig))


def test_defaults_draw_a_run_beside_the_paper_from_any_folder(tmp_path, monkeypatch, capsys):
    write_runs(tmp_path / "logdir", tasks=("dmc_cartpole_balance",), methods=("dreamer",), seeds=1)
    monkeypatch.chdir(tmp_path)  # The defaults are found beside plotting.py, not in the working folder.
    args = plotting.parse_args(["--indir", "logdir", "--outdir", "plots"])
    assert args.curves == [str(SCORES / "dreamer.json")] and args.baselines_file == [str(SCORES / "baselines.json")]
    assert plotting.main(["--indir", "logdir", "--outdir", "plots"]) == 0
    assert "1 tasks, 6 runs" in capsys.readouterr().out  # The run and the paper's 5 seeds of its one task.
    assert (tmp_path / "plots" / "curves.png").stat().st_size > 0
    runs = plotting.load_runs(["logdir"])
    curves = plotting.load_curves(args.curves)
    drawn = plotting.beside(runs, curves, tasks={"dmc_cartpole_balance"})
    fig, axes = plotting.plot(drawn, plotting.load_baselines(args.baselines_file))
    assert len(axes) == 1
    assert legend_labels(fig) == ["dreamer", "dreamer (reference)", "a3c_100m_proprio", "d4pg_100m"]
    assert plotting.main(["--indir", "logdir", "--outdir", "plots", "--curves", "--baselines_file"]) == 0
    assert "1 tasks, 1 runs" in capsys.readouterr().out  # Both flags without a value: the run alone.


def test_own_run_beside_several_curves_files(tmp_path, capsys):
    write_runs(tmp_path / "logdir", tasks=("dmc_cartpole_balance",), methods=("mine",), seeds=1)
    paper, check = tmp_path / "paper.json", tmp_path / "check.json"
    paper.write_text(
        json.dumps(
            [
                {"task": task, "method": "dreamer", "seed": seed, "xs": [0, 1e5], "ys": [0, 900]}
                for task in ("dmc_cartpole_balance", "dmc_walker_walk")
                for seed in range(3)
            ]
        )
    )
    check.write_text(json.dumps([{"task": "dmc_cartpole_balance", "method": "check", "xs": [0, 1e5], "ys": [0, 1]}]))
    args = ["--indir", str(tmp_path / "logdir"), "--outdir", str(tmp_path / "plots"), "--tasks", "dmc_cartpole_.*"]
    args += ["--curves", str(paper), str(check), "--baselines", "d4pg.*"]
    assert plotting.main(args) == 0
    assert "1 tasks, 5 runs" in capsys.readouterr().out  # Walker's curves are left out: the run has no such task.
    assert (tmp_path / "plots" / "curves.pdf").exists()


def table_rows(text, index=0):
    """Header and {first cell: {column: cell}} of the index-th Markdown table in text."""
    lines = [block for block in text.strip().split("\n\n") if block.startswith("|")][index].splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "").split()) == {"---"}
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    return header, {row[0]: dict(zip(header[1:], row[1:])) for row in rows}


def test_value_at_interpolates_and_stops_after_the_last_evaluation():
    xs, ys = [5_000, 100_000, 200_000], [100, 200, 400]
    assert plotting.value_at(xs, ys, 100_000) == 200
    assert plotting.value_at(xs, ys, 150_000) == 300
    assert plotting.value_at(xs, ys, 1_000) is None  # Before the first evaluation.
    assert plotting.value_at(xs, ys, 290_000) == 400  # Within one evaluation interval (median 97.5k) of the last.
    assert plotting.value_at(xs, ys, 300_000) is None


def test_table_mean_std_over_seeds_reference_and_missing(tmp_path, capsys):
    steps = [5_000, 100_000, 200_000]
    write_run(tmp_path / "logdir", "dmc_cartpole_balance", "dreamer", 0, steps, [100, 200, 300])
    write_run(tmp_path / "logdir", "dmc_cartpole_balance", "dreamer", 1, steps, [120, 260, 340])
    write_run(tmp_path / "logdir", "dmc_walker_walk", "dreamer", 0, [5_000, 10_000], [30, 40])
    curves = tmp_path / "reference.json"
    curves.write_text(
        json.dumps(
            [
                {"task": "dmc_cartpole_balance", "method": "dreamer", "seed": 0, "xs": [0, 200_000], "ys": [0, 400]},
                {"task": "dmc_cartpole_balance", "method": "dreamer", "seed": 1, "xs": [0, 200_000], "ys": [0, 600]},
                {"task": "dmc_cheetah_run", "method": "dreamer", "seed": 0, "xs": [0, 1e6], "ys": [0, 900]},
            ]
        )
    )
    args = ["--indir", str(tmp_path / "logdir"), "--outdir", str(tmp_path / "out"), "--name", "scores"]
    args += ["--table", "--table_steps", "1e5", "2e5", "5e5", "--curves", str(curves), "--bootstrap_reps", "20"]
    assert plotting.main(args) == 0
    out = capsys.readouterr().out
    text = (tmp_path / "out" / "scores.md").read_text()
    assert out.startswith(text)  # The table, then its aggregates.
    assert not (tmp_path / "out" / "scores.png").exists()
    header, rows = table_rows(text)
    assert header == [
        "task",
        "dreamer @ 100k",
        "dreamer (reference) @ 100k",
        "dreamer @ 200k",
        "dreamer (reference) @ 200k",
        "dreamer @ 500k",
        "dreamer (reference) @ 500k",
    ]
    assert list(rows) == ["dmc_cartpole_balance", "dmc_walker_walk"]  # The tasks of the runs.
    cartpole, walker = rows["dmc_cartpole_balance"], rows["dmc_walker_walk"]
    assert cartpole["dreamer @ 100k"] == "230.0 ± 30.0 (2)"
    assert cartpole["dreamer @ 200k"] == "320.0 ± 20.0 (2)"
    assert cartpole["dreamer (reference) @ 100k"] == "250.0 ± 50.0 (2)"  # Interpolated: 200 and 300.
    assert cartpole["dreamer (reference) @ 200k"] == "500.0 ± 100.0 (2)"
    assert cartpole["dreamer @ 500k"] == cartpole["dreamer (reference) @ 500k"] == "–"  # After the last evaluation.
    assert set(walker.values()) == {"–"}  # Stopped at 10k; no reference curve for the task.


def test_table_labels_and_nothing_to_tabulate(tmp_path, capsys):
    write_run(tmp_path / "logdir", "dmc_cartpole_balance", "dreamer-32", 0, [0, 10], [1, 3])
    args = ["--indir", str(tmp_path / "logdir"), "--outdir", str(tmp_path / "out"), "--table", "--curves"]
    assert plotting.main(args + ["--table_steps", "5", "--labels", "dreamer-.*", "mine", "--bootstrap_reps", "10"]) == 0
    header, rows = table_rows(capsys.readouterr().out)
    assert header == ["task", "mine @ 5"] and rows["dmc_cartpole_balance"]["mine @ 5"] == "2.0 ± 0.0 (1)"
    assert plotting.main(args + ["--tasks", "atari_.*"]) == 1
    assert "nothing to tabulate" in capsys.readouterr().err


def test_table_beside_the_paper_by_default(tmp_path, capsys):
    write_run(tmp_path / "logdir", "dmc_cartpole_balance", "dreamer", 0, [5_000, 100_000], [150, 300])
    args = ["--indir", str(tmp_path / "logdir"), "--outdir", str(tmp_path), "--table", "--table_steps", "1e5"]
    assert plotting.main(args + ["--bootstrap_reps", "20"]) == 0
    out, err = capsys.readouterr()
    _, rows = table_rows(out)
    assert rows["dmc_cartpole_balance"]["dreamer @ 100k"] == "300.0 ± 0.0 (1)"
    assert rows["dmc_cartpole_balance"]["dreamer (reference) @ 100k"].endswith("(5)")
    # The aggregates: each method over the tasks it has, the run's one task and the paper's 20.
    text = (tmp_path / "curves_aggregates.md").read_text()
    assert out.endswith(text) and f"{tmp_path / 'curves'}_aggregates.md and {tmp_path / 'curves'}_profiles.png" in err
    header, rows = table_rows(text)
    assert header == ["method", "step", "n", "IQM", "median", "mean"]
    assert rows["dreamer"] == {
        "step": "100k",
        "n": "1 × 1",
        **dict.fromkeys(plotting.AGGREGATES, "0.300 [0.300, 0.300]"),
    }
    assert rows["dreamer (reference)"]["n"] == "20 × 5"
    paper = [plotting.value_at(c["xs"], c["ys"], 1e5) / 1000 for c in plotting.load_curves([SCORES / "dreamer.json"])]
    point, lower, upper = parse_interval(rows["dreamer (reference)"]["mean"])
    assert point == round(np.mean(paper), 3) and lower < point < upper
    assert (tmp_path / "curves_profiles.png").read_bytes().startswith(b"\x89PNG")
    assert plotting.main(args + ["--bootstrap_reps", "20", "--name", "again"]) == 0
    assert (tmp_path / "again_aggregates.md").read_text() == text  # Seeded: the same numbers every time.


def parse_interval(cell):
    point, lower, upper = cell.replace("[", "").replace(",", "").replace("]", "").split()
    return float(point), float(lower), float(upper)


# 4 tasks x 2 seeds. IQM: the middle 4 of the 8 sorted scores 0, .1, .2, .2, .3, .4, 1, 1, so (.2 + .2 + .3 + .4) / 4;
# per-task means .1, .2, .3, 1: median .25, mean .4.
HAND = np.array([[0.0, 0.1, 0.2, 1.0], [0.2, 0.3, 0.4, 1.0]])


def test_aggregates_as_computed_by_hand():
    point, (lower, upper) = plotting.bootstrap(HAND, plotting.summary, reps=200, seed=0)
    np.testing.assert_allclose(point, [0.275, 0.25, 0.4])
    assert np.all(lower <= point) and np.all(point <= upper) and np.all(lower < upper)
    # Resampling seeds within tasks: a task mean stays between its seeds, so the mean stays in [.35, .45].
    assert 0.35 <= lower[2] and upper[2] <= 0.45
    again = plotting.bootstrap(HAND, plotting.summary, reps=200, seed=0)
    np.testing.assert_array_equal(again[1], [lower, upper])
    same_tasks = np.array([[0.5, 0.5], [0.5, 0.5]])  # No spread over seeds: no width.
    np.testing.assert_allclose(plotting.bootstrap(same_tasks, plotting.summary, reps=20)[1], 0.5)


def test_performance_profile_fractions():
    np.testing.assert_allclose(plotting.profile(HAND, np.array([0, 0.2, 0.35, 1.0])), [7 / 8, 4 / 8, 3 / 8, 0])
    point, (lower, upper) = plotting.bootstrap(HAND, plotting.profile, reps=200, seed=0)
    assert point.shape == lower.shape == plotting.TAUS.shape
    assert point[20] == 0.5 and plotting.TAUS[20] == 0.2  # Above .2: .3, .4, 1, 1.
    assert np.all(lower <= point) and np.all(point <= upper)
    # Only task 3's two 1s lie above .95 in every resample; none lies above 1.
    assert lower[95] == upper[95] == 2 / 8 and lower[-1] == upper[-1] == 0


def test_aggregate_table_of_runs_by_hand(tmp_path):
    for task, scores in enumerate(HAND.T):
        for seed, score in enumerate(scores):
            write_run(tmp_path / "logdir", f"dmc_task{task}", "mine", seed, [0, 100_000], [0, 1000 * score])
    write_run(tmp_path / "logdir", "dmc_task0", "fewer", 0, [100_000], [500])
    args = ["--indir", str(tmp_path / "logdir"), "--outdir", str(tmp_path), "--table", "--curves", "--table_steps"]
    assert plotting.main(args + ["1e5", "--bootstrap_reps", "100"]) == 0
    _, rows = table_rows((tmp_path / "curves_aggregates.md").read_text())
    mine = {name: parse_interval(rows["mine"][name]) for name in plotting.AGGREGATES}
    assert rows["mine"]["n"] == "4 × 2" and rows["fewer"]["n"] == "1 × 1"
    assert [mine[name][0] for name in plotting.AGGREGATES] == [0.275, 0.25, 0.4]
    assert all(lower <= point <= upper for point, lower, upper in mine.values())
    assert rows["fewer"]["IQM"] == "0.500 [0.500, 0.500]"  # A method over the tasks it has.


def test_score_matrix_normalises_and_keeps_as_many_seeds_in_every_task(capsys):
    def run(task, seed, value, last=1e5):
        return {"task": task, "method": "m", "seed": str(seed), "xs": np.array([0, last]), "ys": np.array([0, value])}

    runs = [run("a", 1, 400), run("a", 0, 200), run("a", 2, 900), run("b", 0, 600), run("b", 1, 800)]
    runs += [run("c", 0, 1000, last=2e4)]  # No value at 1e5 (past one evaluation interval): task c is left out.
    scores, dropped = plotting.score_matrix(runs, 1e5)
    np.testing.assert_allclose(scores, [[0.2, 0.6], [0.4, 0.8]])  # Seeds 0 and 1 of a and b; a's seed 2 left out.
    assert dropped == 1
    assert plotting.score_matrix(runs, 1e6) == (None, 0)
    results = plotting.estimates(runs, [], [1e5, 1e6], reps=10)
    assert "warning: m: left out 1 seed values at 100k: each task keeps 2" in capsys.readouterr().err
    assert results["m", 1e6] is None and results["m", 1e5][0].shape == (2, 2)
    rows = table_rows(plotting.aggregates_table(results, [1e5, 1e6]))[1]
    assert rows["m"]["n"] == "0" and rows["m"]["IQM"] == "–"  # The last row, at 1M, has no value.
