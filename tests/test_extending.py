"""docs/extending.md's examples, its code blocks run as they are: registered, trained, resumed and checkpointed."""

import json
import re
import types

import numpy as np
import pytest
from conftest import ROOT, checkpoint_keys, run_here

import configs
import models


def examples():
    """The page's Python code blocks, each executed as a module of its own."""
    text = (ROOT / "docs" / "extending.md").read_text()
    modules = []
    for index, code in enumerate(re.findall(r"```python\n(.*?)```", text, re.S)):
        module = types.ModuleType(f"extending_example_{index}")
        exec(compile(code, f"docs/extending.md, example {index}", "exec"), module.__dict__)
        modules.append(module)
    return modules


@pytest.fixture
def registered(monkeypatch):
    """The registries as the examples leave them, restored after the test."""
    monkeypatch.setattr(models, "BEHAVIORS", dict(models.BEHAVIORS))
    monkeypatch.setattr(models, "REPRESENTATIONS", dict(models.REPRESENTATIONS))
    examples()
    return models


def keys(logdir):
    return checkpoint_keys(logdir / "checkpoints")


def test_the_examples_register_with_their_flags(registered, tmp_path):
    assert "random_shooting" in registered.BEHAVIORS and "inverse_dynamics" in registered.REPRESENTATIONS
    help_text = configs.make_parser().format_help()
    for flag in ("--shooting_candidates", "--shooting_horizon", "--inverse_scale", "random_shooting: the first"):
        assert flag in help_text
    code, output = run_here(tmp_path, "--behavior", "random_shooting", "--shooting_candidates", "0", check=False)
    assert code == 2 and "argument --shooting_candidates: must be positive, got 0" in output


def test_random_shooting_trains_resumes_and_checkpoints_no_behaviour(registered, tmp_path):
    flags = ["--behavior", "random_shooting", "--shooting_candidates", "16", "--shooting_horizon", "3"]
    run_here(tmp_path, *flags, "--steps", "120")
    resumed = run_here(tmp_path, *flags, "--steps", "160")[1]
    assert "Loaded checkpoint" in resumed and "random_shooting" in (tmp_path / "config.json").read_text()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "test/return" in r] == [80, 120, 160]
    assert "model_loss" in set().union(*rows) and "actor_loss" not in set().union(*rows)
    assert not {"actor", "value", "actor_opt", "value_opt"} & keys(tmp_path)
    code, output = run_here(tmp_path, *flags, "--behavior", "planet", "--steps", "200", check=False)
    assert code == 2 and "--behavior random_shooting (not planet)" in output


def test_inverse_dynamics_trains_its_head_into_the_checkpoint(registered, tmp_path):
    run_here(tmp_path, "--representation", "inverse_dynamics", "--inverse_scale", "2", "--steps", "120")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["inverse_loss"] for r in rows if "inverse_loss" in r]
    assert losses and np.isfinite(losses).all()
    assert {"inverse_head", "actor", "value", "model_opt"} <= keys(tmp_path) and "image_opt" not in keys(tmp_path)
