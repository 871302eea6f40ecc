"""Bad input and faults end in a message (exit 2) or are worked around: never a traceback, never lost work.
(Bad task names: test_bad_flags_exit_2_before_writing in test_dreamer.py.)"""

import json
import os
import shutil
import signal
import subprocess
import sys
import functools
import multiprocessing
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import GYM, ROOT, TINY, run_dreamer, run_here

import tools
import wrappers


def evaluated_steps(logdir):
    return [
        r["step"] for r in map(json.loads, (logdir / "metrics.jsonl").read_text().splitlines()) if "test/return" in r
    ]


def test_prefill_shorter_than_an_episode_runs_to_its_end(tmp_path):
    # Episodes of 20 agent steps, a prefill of 10: the first episode ends after it.
    output = run_here(tmp_path, "--time_limit", "40", "--prefill", "20", "--steps", "40")[1]
    assert "Prefill continues until an episode of at least --batch_length 8 steps is complete." in output
    assert [tools.episode_length(f) for f in (tmp_path / "episodes").glob("*.npz")] == [20]
    assert evaluated_steps(tmp_path) == [40] and (tmp_path / "checkpoints" / "ckpt-40.index").exists()


def test_unreadable_episode_that_the_prefill_counted_on_exits_2(tmp_path):
    """File names count the steps on disk: here they promise a prefill done, with an episode long enough to
    sample sequences from, but that episode does not read back."""
    entries = 5
    episode = {"image": np.zeros((entries, 64, 64, 3), np.uint8), "action": np.zeros((entries, 1), np.float32)}
    episode.update(reward=np.zeros(entries, np.float32), discount=np.ones(entries, np.float32))
    tools.save_episodes(tmp_path / "episodes", [episode])
    (tmp_path / "episodes" / "000001-301.npz").write_bytes(b"not an archive")
    with pytest.warns(UserWarning, match="Skipping unreadable episode 000001-301.npz"):
        code, output = run_here(tmp_path, check=False)
    assert code == 2 and "Traceback" not in output, output[-3000:]
    assert "has --batch_length 8 steps; move unreadable ones (named above) out of it" in output
    assert (tmp_path / "episodes" / "000001-301.npz").read_bytes() == b"not an archive"
    assert not (tmp_path / "checkpoints").exists()


def test_steps_is_the_limit_and_the_last_evaluation_falls_there(tmp_path):
    flags = ["--steps", "100", "--eval_every", "160"]
    run_here(tmp_path, *flags)
    # The episode under way at 100 env steps ends at 120: at most one episode past --steps.
    assert tools.count_steps(tmp_path / "episodes", 2) == 120
    assert evaluated_steps(tmp_path) == [80, 120]
    checkpoints = sorted(os.listdir(tmp_path / "checkpoints"))
    again = run_here(tmp_path, *flags)[1]
    assert "Already 120 of --steps 100 env steps" in again and "Start evaluation" not in again
    assert evaluated_steps(tmp_path) == [80, 120] and sorted(os.listdir(tmp_path / "checkpoints")) == checkpoints


def test_corrupt_checkpoint_is_skipped_and_kept(trained_run, tmp_path):
    logdir = tmp_path / "run"
    shutil.copytree(trained_run[0], logdir)
    (logdir / "eval.jsonl").unlink(missing_ok=True)  # Another test may have evaluated the trained run.
    directory = logdir / "checkpoints"
    newest = directory / "ckpt-240.data-00000-of-00001"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # A copy interrupted half way.
    corrupt = newest.read_bytes()
    output = run_here(logdir, "--steps", "320")[1]
    assert f"Skipping corrupt checkpoint {directory}/ckpt-240 (IndexError: Read less bytes" in output
    assert f"Loaded checkpoint {directory}/ckpt-160." in output and "Training for 1 steps." in output
    assert f"Moved the corrupt checkpoint {directory}/ckpt-240 to {directory}/corrupt." in output
    # The checkpoint of 160 had not evaluated 240: the weights it resumes with are evaluated there again.
    assert evaluated_steps(logdir) == [80, 160, 240, 240, 320]
    kept = directory / "corrupt" / newest.name
    assert kept.read_bytes() == corrupt  # As it was, out of the rotation and of the way of the new ckpt-240.
    state = tf.train.get_checkpoint_state(directory).all_model_checkpoint_paths
    assert [p.rsplit("/", 1)[1] for p in state] == ["ckpt-240", "ckpt-320"]
    assert str(directory) not in (directory / "checkpoint").read_text()  # Relative: the run folder may be moved.
    # None of them reads back: --eval_only (as training) exits 2 naming them.
    for path in directory.glob("ckpt-*.data-*"):
        path.write_bytes(b"")
    code, output = run_here(logdir, "--eval_only", "True", check=False)
    assert code == 2 and f"error: no checkpoint in {directory} reads back whole" in output
    assert "ckpt-240 (" in output and "ckpt-320 (" in output and "Traceback" not in output
    assert not (logdir / "eval.jsonl").exists()


def test_second_training_run_on_a_logdir_exits_2_and_the_lock_dies_with_the_first(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    command = [sys.executable, str(ROOT / "dreamer.py"), "--logdir", str(tmp_path), *GYM, "--steps", "1e6"]
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        lock = tmp_path / "lock"
        for _ in range(600):  # Until it holds the lock and has written its config and event file.
            assert first.poll() is None
            if list(tmp_path.glob("events.*")):
                break
            time.sleep(0.5)
        assert f"pid {first.pid} on" in lock.read_text()
        config = (tmp_path / "config.json").read_text()
        code, output = run_here(tmp_path, "--steps", "80", check=False)
        assert code == 2 and f"is in use by a training run (pid {first.pid} on" in output
        assert first.poll() is None and f"pid {first.pid} on" in lock.read_text()
        assert (tmp_path / "config.json").read_text() == config and len(list(tmp_path.glob("events.*"))) == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    run_here(tmp_path, "--steps", "80")  # The OS dropped the lock.
    assert f"pid {os.getpid()} on" in lock.read_text()


def test_environment_that_cannot_start_exits_2_in_one_paragraph(tmp_path):
    result = run_dreamer(tmp_path / "run", *TINY, check=False, env={**os.environ, "MUJOCO_GL": "nonsense"})
    assert result.returncode == 2 and "Traceback" not in result.stdout
    assert (
        "error: the train environment of --task dmc_cartpole_balance could not start: RuntimeError: Could not set up "
        "MuJoCo rendering with MUJOCO_GL='nonsense'" in result.stdout
    )
    assert not (tmp_path / "run").exists()


def test_a_second_stop_signal_raises_only_where_the_run_waits_on_its_environments():
    """Raised inside TensorFlow, a KeyboardInterrupt can leave a scope half-entered and break the checkpoint that
    follows: inside the agent's calls a second signal waits for their end; outside a wait, for the next one."""
    import runtime

    stop, handlers = runtime.Stop(), {s: signal.getsignal(s) for s in runtime.STOP_SIGNALS}
    signal_self = lambda signum: (os.kill(os.getpid(), signum), time.sleep(0.05))
    stop.install()
    try:
        signal_self(signal.SIGTERM)  # The first asks for a stop where the run's state is whole.
        assert stop() and not stop.now()
        with stop.interruptible(False):
            signal_self(signal.SIGTERM)  # Outside any wait: nothing raised...
        assert stop.now()
        steps = []
        with pytest.raises(KeyboardInterrupt):
            with stop.interruptible():  # ...until the next wait on the environments.
                steps.append("wait")
        assert steps == []

        stop.signals = 1
        with pytest.raises(KeyboardInterrupt):
            with stop.interruptible(), stop.interruptible(False):  # The agent's call within a wait ends first.
                signal_self(signal.SIGINT)
                steps.append("agent")
        assert steps == ["agent"]

        stop.signals = 1
        with pytest.raises(KeyboardInterrupt):
            with stop.interruptible():
                signal_self(signal.SIGINT)  # In a wait: at once.
                steps.append("wait")
        assert steps == ["agent"]
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)

    # A third ends the process, as kill -9 would: for a run that hangs where a signal cannot reach.
    code = "import os, signal, time, runtime\nruntime.STOP.install()\nfor _ in range(3):\n"
    code += "    os.kill(os.getpid(), signal.SIGTERM)\n    time.sleep(0.1)\nprint('survived')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGTERM and "survived" not in result.stdout


def crashing(tmp_path, **kwargs):
    """The constructor of gym_envs.Crashing, with episodes of 20 steps."""
    kwargs = {"count": str(tmp_path / "count"), **kwargs}
    return functools.partial(wrappers.make_env, "gym_Crashing-v0", 1, 20, env_modules=["gym_envs"], env_kwargs=kwargs)


@pytest.mark.parametrize(
    "strategy, how, where, crash",
    [
        ("process", "kill", "step", [1]),
        ("process", "raise", "step", [1, 2, 4, 5]),  # Two in a row, twice: each finished episode clears the count.
        ("thread", "raise", "reset", [1, 2]),
        ("none", "raise", "step", [1]),
    ],
)
def test_environment_that_crashes_is_restarted_and_its_episode_dropped(tmp_path, capsys, strategy, how, where, crash):
    episodes = []
    env = wrappers.Async(crashing(tmp_path, crash=crash, how=how, where=where), strategy)
    env = wrappers.Collect(env, [episodes.append])
    agent = lambda obs, done, state: (np.zeros((len(done), 2), np.float32), state)
    try:
        state = tools.simulate(agent, [env], episodes=3)
    finally:
        env.close()
    assert not multiprocessing.active_children()  # The crashed workers too are gone.
    assert (state.steps, state.episodes) == (60, 3) and [len(episode["reward"]) for episode in episodes] == [21, 21, 21]
    assert len((tmp_path / "count").read_text().splitlines()) == 3 + len(crash)  # Each crash, a fresh episode.
    died = "The environment worker died (exit code -9). It was killed by SIGKILL."
    reason = died if how == "kill" else "RuntimeError: simulator lost"
    dropped = 4 if where == "step" else 0
    crashed = f"The environment crashed: restarting it, dropping its episode under way ({dropped} agent steps). "
    assert capsys.readouterr().out == (crashed + reason + "\n") * len(crash)


def test_environment_that_keeps_crashing_stops_the_run_with_a_checkpoint_to_resume_from(tmp_path):
    """The train episodes 3 to 5 crash (0 and 1 are the prefill's, 2 the evaluation's): after the third crash in a
    row the run saves a checkpoint and exits 1. --eval_only gives up likewise (episodes 6 to 8). The same command,
    with one crash more (9), resumes the run: on the evaluation schedule of the disk's steps."""
    kwargs = json.dumps({"count": str(tmp_path / "count"), "crash": [3, 4, 5, 6, 7, 8, 9]})
    flags = ["--task", "gym_Crashing-v0", "--env_kwargs", kwargs, "--steps", "160", "--log_images", "False"]
    logdir = tmp_path / "run"
    code, output = run_here(logdir, *flags, check=False)
    assert code == 1, output[-3000:]
    # The one traceback is the environment's, printed once, when the run gives up.
    assert output.count("Traceback") == 1 and 'gym_envs.py", line' in output
    crashed = "The environment crashed: restarting it, dropping its episode under way (2 agent steps). RuntimeError: "
    assert output.count(crashed + "simulator lost") == 2
    assert (
        "error: the environment crashed 3 times without finishing an episode in between; the last time: "
        "RuntimeError: simulator lost. Fix the environment and run the command again: the training so far is in the "
        "checkpoint, and the rerun resumes from it." in output
    )
    assert "Saved checkpoint" in output.split(crashed)[-1]
    assert len(list((logdir / "episodes").glob("*.npz"))) == 2  # The prefill's; no crashed episode.

    code, evaluated = run_here(logdir, *flags, "--eval_only", "True", check=False)
    assert code == 1 and "run the command again: nothing was written." in evaluated
    assert not (logdir / "eval.jsonl").exists() and not (logdir / "eval").exists()

    resumed = run_here(logdir, *flags)[1]
    assert "Loaded checkpoint" in resumed and resumed.count("The environment crashed") == 1
    assert evaluated_steps(logdir) == [80, 160] and (logdir / "checkpoints" / "ckpt-160.index").exists()
    assert sorted(tools.episode_length(f) for f in (logdir / "episodes").glob("*.npz")) == [20] * 4
