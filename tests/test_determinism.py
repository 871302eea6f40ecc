"""--deterministic: the same seed gives the same run, also when it is split at a checkpoint and resumed."""

import json

import numpy as np
import pytest
from conftest import assert_same_run, episodes, metrics, run_here


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The run of the `trained_run` fixture (160 env steps, then resumed to 240) in one go."""
    logdir = tmp_path_factory.mktemp("straight")
    run_here(logdir, "--steps", "240", "--deterministic", "True")
    return logdir


def test_split_run_equals_uninterrupted_run(trained_run, straight):
    split = trained_run[0]
    assert json.loads((split / "config.json").read_text())["deterministic"] == "True"  # conftest's GYM flags.
    assert "Loaded checkpoint" in trained_run[2]  # It did resume.
    steps = [line["step"] for line in metrics(straight)]
    assert max(steps) >= 240 and any("model_loss" in line for line in metrics(straight))
    assert_same_run(split, straight)


def test_another_seed_gives_other_episodes(tmp_path, straight):
    run_here(tmp_path, "--steps", "80", "--seed", "1")
    ours, theirs = episodes(straight)[1][:2], episodes(tmp_path)[1]
    assert len(theirs) == 2
    for a, b in zip(ours, theirs):
        assert not np.array_equal(a["action"], b["action"])
        assert not np.array_equal(a["image"][0], b["image"][0])  # Another initial state too.


def test_parallel_envs_give_the_same_run_twice(tmp_path):
    flags = ["--steps", "240", "--envs", "2", "--deterministic", "True"]
    run_here(tmp_path / "a", *flags)
    run_here(tmp_path / "b", *flags)
    assert len(episodes(tmp_path / "a")[0]) == 6  # Two at a time: the prefill's, then one pair per evaluation.
    assert_same_run(tmp_path / "a", tmp_path / "b")
