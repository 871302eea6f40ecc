"""Policy export (export.py, --export): a SavedModel whose actions are the agent's, called from TensorFlow alone."""

import contextlib
import hashlib
import io
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import GYM, ROOT, run_here

import configs
import dreamer
import runtime

# Four steps of two episodes side by side: both start at step 0, the second again at step 2.
RESETS = np.array([[True, True], [False, False], [False, True], [False, False]])
IMAGES = np.random.RandomState(0).randint(0, 256, (*RESETS.shape, 64, 64, 3)).astype(np.uint8)

# Runs in a fresh process that imports TensorFlow and NumPy only: every function of the SavedModel over IMAGES.
CALLER = """
import sys

import numpy as np
import tensorflow as tf

path, inputs, outputs = sys.argv[1:]
policy, data = tf.saved_model.load(path), np.load(inputs)


def actions(function, state, **extra):
    states = []
    for image, reset in zip(data["images"], data["resets"]):
        state = function(image=image, reset=reset, **extra, **state)
        states.append({k: v.numpy() for k, v in state.items()})
    return {k: np.stack([s[k] for s in states]) for k in states[0]}


state = policy.initial_state(len(data["resets"][0]))
signature_state = policy.signatures["initial_state"](batch=tf.constant(len(data["resets"][0])))
other = dict(state, seed=tf.constant([1, 2, 0]))
results = dict(initial_seed=state["seed"].numpy())
results.update({f"step_{k}": v for k, v in actions(policy.step, state).items()})
results["signature"] = actions(policy.signatures["step"], signature_state)["action"]
results["sample"] = actions(policy.sample, state, expl_amount=0.0)["action"]
results["sample_again"] = actions(policy.signatures["sample"], signature_state, expl_amount=tf.constant(0.0))["action"]
results["sample_other_seed"] = actions(policy.sample, other, expl_amount=0.0)["action"]
results["explore"] = actions(policy.sample, state, expl_amount=0.3)["action"]
project = {"dreamer", "export", "models", "tools", "wrappers", "cluster", "configs", "runtime"} & set(sys.modules)
assert not project, project
np.savez(outputs, **results)
"""


def run_export(logdir, *flags):
    """dreamer.py's main() in this process on the GYM flags and `flags`: (exit code, what it printed)."""
    output, code = io.StringIO(), 0
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            dreamer.main(configs.parse_config(["--logdir", str(logdir), *GYM, *flags]))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            print(e.code if isinstance(e.code, str) else "", file=sys.stderr)
    return code, output.getvalue()


def digest(*folders):
    """Every path under the folders, with the content hash of the files."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
        for folder in folders
        for p in sorted(pathlib.Path(folder).rglob("*"))
    }


def agent_actions(logdir, flags):
    """The actions and latent states of the agent of logdir's latest checkpoint on IMAGES, as its test episodes act
    (training=False), and the agent."""
    config = configs.parse_config(["--logdir", str(logdir), *GYM, *flags])
    runtime.setup(config)
    with dreamer.environments(config, "test") as (envs,):
        spaces = envs[0].obs_space["image"].shape, envs[0].action_space.shape[0]
    trainer = dreamer.make_trainer(config, None, None, *spaces)
    agent = trainer.agent
    agent.step = trainer.load()
    state, states = None, []
    for image, reset in zip(IMAGES, RESETS):
        action, state = agent({"image": image}, reset, state, training=False)
        states.append({**state[0], "action": action})
    return {k: np.stack([s[k] for s in states]) for k in states[0]}, agent


def call_from_tensorflow_alone(path, tmp_path):
    np.savez(tmp_path / "inputs.npz", images=IMAGES, resets=RESETS)
    command = [sys.executable, "-c", CALLER, str(path), str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz")]
    # In tmp_path, where none of the project's modules could be imported.
    result = subprocess.run(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert result.returncode == 0, result.stdout[-5000:]
    return dict(np.load(tmp_path / "outputs.npz"))


def saved_variables(path):
    import tensorflow as tf

    names = [name for name, _ in tf.train.list_variables(str(path / "variables" / "variables"))]
    reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
    return {name.split("/.ATTRIBUTES")[0]: reader.get_tensor(name) for name in names if "/.ATTRIBUTES" in name}


def check_export(logdir, flags, tmp_path, step):
    path = tmp_path / "policy"
    path.mkdir()  # An empty folder: the SavedModel takes its place.
    before = digest(logdir)
    code, output = run_export(logdir, *flags, "--export", str(path))
    assert code == 0, output[-5000:]
    assert f"Exported the policy of checkpoint {step} to {path}" in output
    assert digest(logdir) == before and os.listdir(tmp_path) == ["policy"]
    assert {"saved_model.pb", "variables"} <= set(os.listdir(path))

    expected, agent = agent_actions(logdir, flags)
    # Every weight of the layers the policy reads is in the SavedModel, with the checkpoint's value (and nothing else:
    # not the GRU cell's dropout seed, which the policy never reads).
    layers = {k: v for k, v in agent.modules.items() if k != "image_head"}
    saved = saved_variables(path)
    assert len(saved) == sum(len(layer.trainable_variables) for layer in layers.values())
    for name, value in saved.items():
        networks, first, *attributes = name.split("/")
        assert networks == "networks", name
        variable = layers[first]
        for attribute in attributes:
            variable = variable[int(attribute)] if attribute.isdigit() else getattr(variable, attribute)
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=name)

    results = call_from_tensorflow_alone(path, tmp_path)
    # initial_state() starts from the noise of the checkpoint's evaluation: (seed, env step, call).
    np.testing.assert_array_equal(results["initial_seed"], [0, step, 0])
    np.testing.assert_array_equal(results["step_seed"][:, 2], np.arange(1, len(RESETS) + 1))
    np.testing.assert_array_equal(results["step_seed"][:, :2], [[0, step]] * len(RESETS))
    for key, value in expected.items():  # The actions, and the latent states they come from.
        np.testing.assert_allclose(results[f"step_{key}"], value, rtol=1e-5, atol=1e-5, err_msg=key)
    np.testing.assert_array_equal(results["signature"], results["step_action"])
    # Sampled actions: the same for the same seed, others for another.
    np.testing.assert_array_equal(results["sample_again"], results["sample"])
    assert np.abs(results["sample_other_seed"] - results["sample"]).max() > 1e-3
    assert np.abs(results["explore"] - results["sample"]).max() > 1e-3
    assert np.abs(results["explore"]).max() <= 1
    return results


def test_exported_policy_acts_as_the_agent_from_tensorflow_alone(trained_run, tmp_path):
    results = check_export(trained_run[0], [], tmp_path, 240)
    assert np.abs(results["sample"] - results["step_action"]).max() > 1e-3  # The actor's samples, not its mode.


def test_exported_planet_policy_plans_as_the_agent(tmp_path):
    flags = ["--configs", "debug", "planet"]
    run_here(tmp_path / "run", *flags, "--steps", "80")
    (tmp_path / "export").mkdir()
    check_export(tmp_path / "run", flags, tmp_path / "export", 80)


def bad_path(case, tmp_path):
    """An --export path of `case`, made in tmp_path."""
    path = tmp_path / "policy"
    if case == "file":
        path.write_text("")
    elif case == "non_empty":
        path.mkdir()
        (path / "saved_model.pb").write_text("")
    elif case == "under_a_file":
        (tmp_path / "file").write_text("")
        path = tmp_path / "file" / "policy"
    elif case == "unwritable":
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o555)
        if os.access(folder, os.W_OK):  # As root: a read-only file system instead.
            folder = pathlib.Path("/proc/sys")
            if os.access(folder, os.W_OK):
                pytest.skip("no folder this user cannot write in")
        path = folder / "policy"
    return path


BAD = dict(
    file=([], "is a file; pass a new folder"),
    non_empty=([], "is not empty; pass a new or empty folder"),
    under_a_file=([], "is a file, so"),
    unwritable=([], "cannot write in"),
    eval_only=(["--eval_only", "True"], "not with --eval_only"),
)


@pytest.mark.parametrize("case", list(BAD))
def test_export_to_a_bad_path_exits_2_and_writes_nothing(trained_run, tmp_path, case):
    flags, message = BAD[case]
    path = bad_path(case, tmp_path)
    before = digest(tmp_path, trained_run[0])
    code, output = run_export(trained_run[0], *flags, "--export", str(path))
    assert code == 2 and "argument --export: " in output and message in output, output[-3000:]
    assert digest(tmp_path, trained_run[0]) == before
    if case == "unwritable":
        assert not path.exists()


@pytest.mark.parametrize("logdir", ["missing", "empty"])
def test_export_without_checkpoint_exits_2_and_writes_nothing(tmp_path, logdir):
    (tmp_path / "empty").mkdir()
    before = digest(tmp_path)
    code, output = run_export(tmp_path / logdir, "--export", str(tmp_path / "policy"))
    assert code == 2 and "argument --export: no checkpoint in" in output, output[-3000:]
    assert digest(tmp_path) == before


def usage_example():
    """The example of docs/usage.md's "Exporting a trained policy": its indented code block."""
    text = (ROOT / "docs" / "usage.md").read_text().split("## Exporting a trained policy")[1].split("\n## ")[0]
    blocks = re.findall(r"\n\n((?:(?:    .*)?\n)+)", text + "\n\n")
    return textwrap.dedent(next(block for block in blocks if "tf.saved_model.load" in block))


def test_usage_example_runs_a_dm_control_episode(trained_run, tmp_path):
    """The example with an export of the PixelReach run (64x64 images, two actions, as reacher's)."""
    code, output = run_export(trained_run[0], "--export", str(tmp_path / "policy"))
    assert code == 0, output[-3000:]
    (tmp_path / "run_policy.py").write_text(usage_example())
    command = [sys.executable, "run_policy.py", "policy", "reacher", "easy"]
    result = subprocess.run(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert result.returncode == 0 and re.search(r"^Return \d+\.\d$", result.stdout, re.M), result.stdout[-3000:]
