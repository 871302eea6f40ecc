"""benchmarks/learning_table.py: the learning check's curves and table from run folders."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def write_run(folder, returns):
    folder.mkdir(parents=True)
    rows = [{"step": 1000, "train/return": 1.0, "time": 0.0}]
    rows += [
        {"step": 5000 * (i + 1), "test/return": r, "test/return_std": 2.0, "time": 1.0} for i, r in enumerate(returns)
    ]
    text = "\n".join(json.dumps(r) for r in rows) + '\n{"step": 99'  # The last line cut short by a kill.
    (folder / "metrics.jsonl").write_text(text)


def test_table_and_curves(tmp_path):
    runs = tmp_path / "dmc_walker_stand"
    write_run(runs / "dreamer" / "0", [100, 200, 300, 400, 500, 600])
    write_run(runs / "dreamer" / "1", [100, 200, 300, 400, 500, 700])
    write_run(runs / "no_value" / "0", [50, 60])
    curves = tmp_path / "curves.json"
    old = [
        dict(task="dmc_walker_stand", method="dreamer-32", seed=0, xs=[5000], ys=[1.0]),
        dict(task="x", method="y", seed=0),
    ]
    curves.write_text(json.dumps(old))
    levels = tmp_path / "levels.json"
    levels.write_text(json.dumps({"dmc_walker_stand": {"random policy": 130}, "other": {"random policy": 1}}))
    out = subprocess.run(
        [sys.executable, "benchmarks/learning_table.py", "--runs", str(runs), "--curves", str(curves)]
        + ["--levels", str(levels), "--window", "25000", "30000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]): line for line in out.splitlines()}
    assert rows[("dreamer-32", "0")].rstrip(" |").endswith("(2)")
    assert "550 [" in rows[("dreamer-32", "0")]  # 500 and 600
    assert "575 [" in rows[("**dreamer-32**", "0, 1")]  # 500, 600, 500, 700
    assert rows[("no_value", "0")].rstrip(" |").endswith("—")  # no evaluation in the window
    assert rows[("random policy", "")].rstrip(" |").endswith("130")
    merged = json.loads(curves.read_text())
    assert [(c["task"], c["method"], c["seed"]) for c in merged] == [
        ("x", "y", 0),
        ("dmc_walker_stand", "dreamer-32", 0),
        ("dmc_walker_stand", "dreamer-32", 1),
        ("dmc_walker_stand", "no_value", 0),
    ]
    assert merged[1]["ys"] == [100, 200, 300, 400, 500, 600] and merged[1]["std"] == [2.0] * 6


def test_methods_pick_and_order_the_rows(tmp_path):
    runs = tmp_path / "dmc_walker_stand"
    write_run(runs / "dreamer" / "0", [100, 200])
    write_run(runs / "contrastive" / "0", [50, 60])
    write_run(runs / "no_value" / "0", [70, 80])
    out = subprocess.run(
        [sys.executable, "benchmarks/learning_table.py", "--runs", str(runs), "--methods", "no_value", "dreamer-32"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert [line.split("|")[1].strip() for line in out.splitlines()[2:]] == ["no_value", "dreamer-32"]
