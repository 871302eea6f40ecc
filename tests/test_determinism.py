"""--deterministic: the same seed gives the same run, also when it is split at a checkpoint and resumed."""

import json
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, TINY, run_dreamer

WALL_CLOCK = ("time", "fps")


def metrics(logdir):
    lines = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in WALL_CLOCK} for line in lines]


def episodes(logdir):
    files = sorted((logdir / "episodes").glob("*.npz"))
    return [f.name for f in files], [dict(np.load(f)) for f in files]


def weights(logdir):
    reader = tf.train.load_checkpoint(str(logdir / "checkpoints"))
    names = [name for name, _ in tf.train.list_variables(str(logdir / "checkpoints"))]
    return {name: reader.get_tensor(name) for name in names if "save_counter" not in name}


def assert_same_run(first, second):
    assert metrics(first) == metrics(second)
    names, arrays = episodes(first)
    other_names, other_arrays = episodes(second)
    assert names == other_names
    for ours, theirs in zip(arrays, other_arrays):
        assert ours.keys() == theirs.keys()
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    ours, theirs = weights(first), weights(second)
    assert ours.keys() == theirs.keys()
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The run of the `trained_run` fixture (800 env steps, then resumed to 1200) in one go."""
    logdir = tmp_path_factory.mktemp("straight")
    run_dreamer(logdir, *TINY, "--steps", "1200", "--deterministic", "True")
    return logdir


def test_split_run_equals_uninterrupted_run(trained_run, straight):
    split = trained_run[0]
    assert json.loads((split / "config.json").read_text())["deterministic"] == "True"  # The default on CPU.
    assert "Loaded checkpoint" in trained_run[2]  # It did resume.
    steps = [line["step"] for line in metrics(straight)]
    assert max(steps) >= 1200 and any("model_loss" in line for line in metrics(straight))
    assert_same_run(split, straight)


def test_run_stopped_by_sigterm_and_resumed_equals_uninterrupted_run(tmp_path):
    """SIGTERM in the burst at env step 600: the run goes on through the evaluation at 700 (its chunks do not end
    with episodes) to the end of the episode under way at 800, checkpoints and exits; run again, it goes on to the
    same run as the one never stopped."""
    flags = [*TINY, "--eval_every", "300", "--steps", "1000"]
    run_dreamer(tmp_path / "straight", *flags)
    logdir = tmp_path / "stopped"
    command = [sys.executable, str(ROOT / "dreamer.py"), "--logdir", str(logdir), *flags]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("Training for") and len([x for x in lines if x.startswith("Training for")]) == 2:
            process.send_signal(signal.SIGTERM)
    output = "".join(lines)
    assert process.wait() == 0, output[-3000:]
    assert "Stopping after the train steps and episodes under way" in output
    assert "Saved checkpoint" in output.split("Stopping after")[1].split("Stopped at env step 800;")[0]  # At 700.
    resumed = run_dreamer(logdir, *flags).stdout
    assert f"Loaded checkpoint {logdir}/checkpoints/ckpt-800" in resumed
    assert_same_run(logdir, tmp_path / "straight")


def test_two_resumes_after_kill_9_are_identical(tmp_path):
    """kill -9 in the burst at env step 600: the checkpoint of 400 and the episodes to 600 are left. Two copies
    of that logdir, resumed, are the same run (neither is the uninterrupted one)."""
    command = [sys.executable, str(ROOT / "dreamer.py"), "--logdir", str(tmp_path / "a"), *TINY, "--steps", "1e6"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = 0
    for line in process.stdout:
        seen += line.startswith("Training for")
        if seen == 2:
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert (tmp_path / "a" / "checkpoints" / "ckpt-400.index").exists()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for copy in ("a", "b"):
        resumed = run_dreamer(tmp_path / copy, *TINY, "--steps", "800").stdout
        assert "Loaded checkpoint" in resumed and "ckpt-400" in resumed
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_another_seed_gives_other_episodes(tmp_path, straight):
    run_dreamer(tmp_path, *TINY, "--steps", "400", "--seed", "1")
    ours, theirs = episodes(straight)[1][:2], episodes(tmp_path)[1]
    assert len(theirs) == 2
    for a, b in zip(ours, theirs):
        assert not np.array_equal(a["action"], b["action"])
        assert not np.array_equal(a["position"][0], b["position"][0])  # Another initial state too.


def test_parallel_envs_give_the_same_run_twice(tmp_path):
    flags = [*TINY, "--steps", "800", "--envs", "2", "--deterministic", "True"]
    run_dreamer(tmp_path / "a", *flags)
    run_dreamer(tmp_path / "b", *flags)
    assert len(episodes(tmp_path / "a")[0]) == 4
    assert_same_run(tmp_path / "a", tmp_path / "b")
