"""A full disk ends a run with one line and exit code 3 (runtime.DISK_FULL), leaves nothing half written under a
final name, and the same command resumes once space is freed. The writes fail for real: through links to /dev/full
(where every write fails with ENOSPC) at paths the run writes, and on a small tmpfs where this process may mount
one (else that test runs on /dev/full too)."""

import contextlib
import errno
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import GYM, ROOT, run_here

import configs
import dreamer
import runtime
import tools

DEV_FULL = pathlib.Path("/dev/full")
pytestmark = pytest.mark.skipif(not DEV_FULL.exists(), reason="no /dev/full")
LINE = re.compile(r"^\S+: error: no space left on device writing (\S+) \(([^()]*)\)\. (.*)$")
AGAIN = "once space is freed: run the same command again."


def full(path):
    """Writes to `path` fail with ENOSPC from now on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(DEV_FULL)


def error(code, output):
    """The run's exit code 3 and its one error line, without a traceback: (the path written, what follows)."""
    assert code == runtime.DISK_FULL and "Traceback" not in output, output[-3000:]
    lines = [line for line in output.splitlines() if ": error: " in line]
    assert len(lines) == 1, lines
    match = LINE.match(lines[0])
    assert match, lines[0]
    return match.group(1), match.group(3)


def resumes(logdir, step):
    return f"The run resumes from checkpoint {step} ({logdir / 'checkpoints'}) {AGAIN}"


def assert_whole(logdir):
    """Nothing half written under a final name: every episode, metrics line and listed checkpoint reads back, no
    temporary file is left, and the checkpoint folder holds only the listed checkpoints."""
    assert not [p for p in logdir.rglob("*") if p.suffix == ".tmp" or p.name.endswith("_temp")]
    for path in (logdir / "episodes").glob("*.npz"):
        with np.load(path) as episode:
            assert len(episode["reward"]) == tools.episode_length(path) + 1
    text = (logdir / "metrics.jsonl").read_text()
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())
    listed = runtime.checkpoint_paths(logdir / "checkpoints")
    assert listed and not any(runtime.unreadable(path) for path in listed)
    names = {pathlib.Path(path).name for path in listed}
    files = {p.name.split(".")[0] for p in (logdir / "checkpoints").iterdir()} - {"checkpoint", "pending"}
    assert files == names
    return [int(path.rsplit("-", 1)[1]) for path in listed]


def copy(trained_run, tmp_path):
    """The trained run of 240 env steps (checkpoints of 160 and 240), but for what another test's --eval_only wrote."""
    logdir = tmp_path / "run"
    shutil.copytree(trained_run[0], logdir, ignore=shutil.ignore_patterns("eval", "eval.jsonl"))
    return logdir


def test_a_full_disk_ends_the_run_in_one_line_and_the_rerun_resumes_from_its_last_checkpoint(trained_run, tmp_path):
    """In turn, the next episode's file, a line of metrics.jsonl and the checkpoint at 320 cannot be written."""
    logdir = copy(trained_run, tmp_path)
    episode = logdir / "episodes" / "000006-21.tmp"
    full(episode)
    path, after = error(*run_here(logdir, "--steps", "320", check=False))
    assert path == str(episode) and after == resumes(logdir, 240)
    assert not episode.exists() and tools.count_episodes(logdir / "episodes") == 6  # The link went with the file.
    assert assert_whole(logdir) == [160, 240]

    metrics = logdir / "metrics.jsonl"
    lines = metrics.read_bytes()
    metrics.unlink()
    full(metrics)
    path, after = error(*run_here(logdir, "--steps", "320", check=False))
    assert path == str(metrics) and after == resumes(logdir, 240)
    metrics.unlink()
    metrics.write_bytes(lines)
    assert tools.count_episodes(logdir / "episodes") == 7  # Its line was to follow the episode's file.

    checkpoint = logdir / "checkpoints" / "ckpt-320.index"
    full(checkpoint)  # TensorFlow writes the data, then fails on the index.
    path, after = error(*run_here(logdir, "--steps", "320", check=False))
    assert path == str(checkpoint) and after == resumes(logdir, 240)
    assert assert_whole(logdir) == [160, 240]  # The data of ckpt-320 is gone too.

    output = run_here(logdir, "--steps", "320")[1]
    assert f"Loaded checkpoint {logdir / 'checkpoints' / 'ckpt-240'}." in output
    assert "Saved checkpoint" in output and assert_whole(logdir) == [240, 320]
    assert tools.count_episodes(logdir / "episodes") == 8


def test_a_full_disk_before_the_first_checkpoint(tmp_path):
    """config.json, then the prefill's second episode: the rerun prefills on from the first."""
    logdir = tmp_path / "run"
    full(logdir / "config.tmp")
    path, after = error(*run_here(logdir, "--steps", "80", check=False))
    assert path == str(logdir / "config.tmp") and after == f"Nothing of the run is on disk yet; it starts {AGAIN}"
    assert sorted(p.name for p in logdir.iterdir()) == ["lock"]

    full(logdir / "episodes" / "000001-21.tmp")
    path, after = error(*run_here(logdir, "--steps", "80", check=False))
    episodes = logdir / "episodes"
    assert path == str(episodes / "000001-21.tmp")
    assert after == f"The run resumes from its 1 episode on disk (40 env steps in {episodes}) {AGAIN}"
    assert [p.name for p in episodes.iterdir()] == ["000000-21.npz"]

    output = run_here(logdir, "--steps", "80")[1]
    assert "Prefill dataset with 40 steps." in output and assert_whole(logdir) == [80]


def test_a_full_disk_in_eval_only_and_export_writes_nothing(trained_run, tmp_path):
    logdir = copy(trained_run, tmp_path)
    video = logdir / "eval" / "240-0.tmp"  # The mp4's temporary name.
    full(video)
    path, after = error(*run_here(logdir, "--eval_only", "True", check=False))
    assert path == str(video) and after.startswith("The run is as it was, and eval.jsonl has no line of this ")
    assert not (logdir / "eval.jsonl").exists() and not list((logdir / "eval").iterdir())

    target = tmp_path / "policy"
    full(tmp_path / f".policy.partial-{os.getpid()}" / "variables" / "variables.index")
    output, code = io.StringIO(), 0
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            dreamer.main(configs.parse_config(["--logdir", str(logdir), *GYM, "--export", str(target)]))
        except SystemExit as e:
            code = e.code
    path, after = error(code, output.getvalue())
    assert (
        path.endswith("variables.index")
        and after == f"Nothing was written to {target}: free space and run the same command again."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 2.5 MiB, where this process may mount one (as root, outside most containers), else None."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=2560k", "tmpfs", str(disk)]
    mounted = bool(shutil.which("mount")) and subprocess.run(mount, capture_output=True).returncode == 0
    try:
        yield disk if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], check=True)


def test_dreamer_py_on_a_full_disk_exits_3_in_one_line_and_the_same_command_resumes(tmp_path, small_disk):
    """A real process on a tmpfs too small for its third checkpoint (wherever it fills up first), or, where none
    can be mounted, whose checkpoint at 240 is written to /dev/full."""
    logdir = (small_disk or tmp_path) / "run"
    if small_disk is None:
        full(logdir / "checkpoints" / "ckpt-240.index")
    flags = ["--steps", "400"]
    command = [sys.executable, str(ROOT / "dreamer.py"), "--logdir", str(logdir), *GYM, *flags]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    # TensorFlow's own lines and progress lines aside, the standard error holds one line.
    other = r"[IWEF]\d{4} |WARNING: All log|[\w ()]+: \d+/\d+ "
    stderr = [line for line in result.stderr.splitlines() if not re.match(other, line)]
    assert len(stderr) == 1, result.stderr[-3000:]
    path, after = error(result.returncode, stderr[0] + "\n" + result.stdout)
    step = int(re.fullmatch(rf"The run resumes from checkpoint (\d+) \(.*\) {AGAIN}", after).group(1))
    assert path.startswith(str(logdir)) and step in assert_whole(logdir) and step >= 80
    assert "Traceback" not in result.stdout

    if small_disk:  # Free space: a larger disk.
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    output = run_here(logdir, *flags)[1]
    assert f"Loaded checkpoint {logdir / 'checkpoints' / f'ckpt-{step}'}." in output
    assert assert_whole(logdir)[-1] == 400


def test_a_line_cut_off_by_a_full_disk_is_removed(small_disk):
    """The kernel writes what fits of a line: append_line cuts it off again, for the next line to start whole."""
    if small_disk is None:
        pytest.skip("no tmpfs can be mounted here")
    path = small_disk / "metrics.jsonl"
    tools.append_line(path, '{"step": 0}')
    with pytest.raises(OSError), open(small_disk / "filler", "wb") as f:
        while True:
            f.write(bytes(2**16))
    with pytest.raises(OSError) as raised:
        tools.append_line(path, json.dumps({"step": 1, "text": "x" * 10000}))
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert path.read_text() == '{"step": 0}\n'


def test_a_gif_that_does_not_fit_is_a_full_disk_naming_the_events_file(small_disk):
    """TensorFlow's event writer drops a record longer than its buffer that does not fit without an error (what
    it still buffers fails its flush): the Logger checks that its file grew."""
    if small_disk is None:
        pytest.skip("no tmpfs can be mounted here")
    logger = tools.Logger(small_disk)
    (events,) = small_disk.glob("events.out.tfevents.*")
    with pytest.raises(OSError), open(small_disk / "filler", "wb") as f:
        while True:
            f.write(bytes(2**16))
    video = np.random.RandomState(0).randint(0, 256, (1, 50, 64, 64, 3), np.uint8)
    with pytest.raises(OSError) as raised:
        logger.log(0, {}, {"agent/openl": video})
    assert runtime.no_space(raised.value) == ("no space left on device", str(events))
    (small_disk / "filler").unlink()
    logger.close()


def test_a_checkpoint_that_cannot_be_written_leaves_the_last_one_and_its_pending_scalars(tmp_path):
    variable = tf.Variable(1.0)
    checkpoints = runtime.Checkpoints(tmp_path / "checkpoints", {"v": variable}, tmp_path)
    checkpoints.save(1, pending={"loss": [1.0]})
    variable.assign(2.0)
    full(tmp_path / "checkpoints" / "ckpt-2.index")
    with pytest.raises(tf.errors.OpError) as raised:
        checkpoints.save(2, pending={"loss": [2.0]})
    assert runtime.no_space(raised.value) == ("no space left on device", str(tmp_path / "checkpoints" / "ckpt-2.index"))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "checkpoint",
        "ckpt-1.data-00000-of-00001",
        "ckpt-1.index",
        "pending.json",
    ]
    restored = runtime.Checkpoints(tmp_path / "checkpoints", {"v": variable}, tmp_path)
    assert restored.restore() == (1, set(), {"loss": [1.0]}) and variable.numpy() == 1.0
