import contextlib
import io
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Small networks and short episodes (the debug preset): a real run of dreamer.py in about half a minute on 2 cores.
TINY = "--configs debug --task dmc_cartpole_balance --precision 32".split()


# PixelReach (tests/gym_envs.py) stepped in the test process: a run of 240 env steps in seconds. Episodes of 40 env
# steps, a prefill of 80, an evaluation and a checkpoint every 80, a train step every 40 (2 to pretrain).
GYM = "--configs debug --precision 32 --task gym_PixelReach-v0 --env_module gym_envs --parallel none --time_limit 40"
GYM += " --deterministic True"
GYM += " --prefill 80 --pretrain 2 --train_every 40 --train_steps 1 --eval_every 80 --log_every 80"
GYM = GYM.split()


def run_here(logdir, *flags, check=True):
    """dreamer.py's run in this process, as its main() runs it but for the stop signals' handlers (the GYM flags
    first, then `flags`); returns (exit code, what it printed)."""
    import configs  # Not at the top: test_wrappers.py renders in processes that never import TensorFlow.
    import dreamer
    import runtime

    output, code = io.StringIO(), 0
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            config = configs.parse_config(["--logdir", str(logdir), *GYM, *flags])
            runtime.setup(config)
            runtime.STOP.signals = 0
            dreamer.evaluate(config) if config.eval_only else dreamer.train(config)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            print(e.code if isinstance(e.code, str) else "", file=sys.stderr)
        finally:
            runtime.STOP.signals = 0
    if check and code:
        raise AssertionError(f"the run exited with {code}:\n{output.getvalue()[-5000:]}")
    return code, output.getvalue()


def run_dreamer(logdir, *flags, check=True, env=None):
    """`python dreamer.py` in a fresh process; returns the CompletedProcess with stdout and stderr together."""
    command = [sys.executable, str(ROOT / "dreamer.py"), "--logdir", str(logdir), *flags]
    result = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"dreamer.py exited with {result.returncode}:\n{result.stdout[-5000:]}")
    return result


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A tiny real training run of 160 env steps, then resumed to 240 (the GYM flags, in this process): (logdir,
    first output, second output, the checkpoint state after the first)."""
    logdir = tmp_path_factory.mktemp("run") / "gym_PixelReach-v0" / "dreamer" / "0"
    first = run_here(logdir, "--steps", "160")[1]
    checkpoint = (logdir / "checkpoints" / "checkpoint").read_text()
    second = run_here(logdir, "--steps", "240")[1]
    return logdir, first, second, checkpoint


# Comparing two runs (test_determinism.py, test_stop_resume.py).
WALL_CLOCK = ("time", "fps")


def metrics(logdir):
    lines = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in WALL_CLOCK} for line in lines]


def episodes(logdir):
    files = sorted((logdir / "episodes").glob("*.npz"))
    return [f.name for f in files], [dict(np.load(f)) for f in files]


def weights(logdir):
    import tensorflow as tf  # Not at the top: test_wrappers.py renders in processes that never import it.

    reader = tf.train.load_checkpoint(str(logdir / "checkpoints"))
    names = [name for name, _ in tf.train.list_variables(str(logdir / "checkpoints"))]
    # The object graph names Keras' layers, which are numbered on within a process.
    skip = ("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH")
    return {name: reader.get_tensor(name) for name in names if not name.startswith(skip)}


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


def checkpoint_keys(directory):
    """The names of the objects the newest checkpoint in `directory` holds (its root's children)."""
    import tensorflow as tf  # Not at the top: test_wrappers.py renders in processes that never import it.
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(directory))
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    return {child.local_name for child in graph.nodes[0].children} - {"save_counter"}
