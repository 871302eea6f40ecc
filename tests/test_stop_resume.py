"""--deterministic across a stop: a run stopped by SIGTERM or killed, then resumed, repeats."""

import json
import os
import shutil
import signal
import subprocess
import sys

from conftest import GYM, ROOT, assert_same_run, run_dreamer, run_here

import runtime


def test_run_stopped_by_sigterm_and_resumed_equals_uninterrupted_run(trained_run, tmp_path):
    """SIGTERM at env step 100 (the 140th: 80 of the prefill, 40 of the test episode at 80): the run goes on to
    the end of the episode under way at 120, saves a checkpoint and returns; run again, it goes on to the same run
    as the one never stopped (PixelReach's, which Signalling is but for the signal)."""
    kwargs = json.dumps({"count": str(tmp_path / "count"), "at": 140})
    flags = ["--task", "gym_Signalling-v0", "--env_kwargs", kwargs, "--steps", "240"]
    handlers = {s: signal.getsignal(s) for s in runtime.STOP_SIGNALS}
    runtime.STOP.install()
    try:
        _, output = run_here(tmp_path / "stopped", *flags)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    assert "Stopped at env step 120; run the command again to resume." in output
    assert output.rindex("Saved checkpoint") > output.rindex("Train episode")  # After the episode under way.
    assert (tmp_path / "stopped" / "checkpoints" / "ckpt-120.index").exists()
    resumed = run_here(tmp_path / "stopped", *flags)[1]
    assert f"Loaded checkpoint {tmp_path}/stopped/checkpoints/ckpt-120" in resumed
    assert_same_run(tmp_path / "stopped", trained_run[0])


def test_two_resumes_after_kill_9_are_identical(tmp_path):
    """kill -9 in the burst at env step 120: the checkpoint of 80 and the episodes to 120 are left. Two copies
    of that logdir, resumed, are the same run."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    command = [sys.executable, str(ROOT / "dreamer.py"), "--logdir", str(tmp_path / "a"), *GYM, "--steps", "1e6"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = 0
    for line in process.stdout:
        seen += line.startswith("Training for")
        if seen == 2:
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert (tmp_path / "a" / "checkpoints" / "ckpt-80.index").exists()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for copy in ("a", "b"):
        resumed = run_dreamer(tmp_path / copy, *GYM, "--steps", "240", env=env).stdout
        assert "Loaded checkpoint" in resumed and "ckpt-80" in resumed
    assert_same_run(tmp_path / "a", tmp_path / "b")
