"""--deterministic across a stop: a run stopped by SIGTERM or killed, then resumed, repeats (a file of its own, so
that the two test workers share the long runs evenly)."""

import shutil
import signal
import subprocess
import sys

from conftest import ROOT, TINY, assert_same_run, run_dreamer


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
