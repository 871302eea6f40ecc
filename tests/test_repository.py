"""Run state never goes into git: every clone downloads the history, and the history keeps whatever was once added."""

import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUN_STATE = re.compile(
    r"(^|/)(logdir|checkpoints|episodes|eval)/|\.npz$|events\.out\.tfevents|ckpt-\d+|(^|/)(metrics|eval)\.jsonl$"
    r"|(^|/)(lock|pending\.json|config\.json)$"
)


def tracked_files():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [name for name in out.decode().split("\0") if name]


def test_no_run_state_is_tracked():
    files = tracked_files()
    assert "dreamer.py" in files
    assert not [name for name in files if RUN_STATE.search(name)]


def test_no_large_file_is_tracked():
    big = [name for name in tracked_files() if (ROOT / name).is_file() and (ROOT / name).stat().st_size > 1 << 20]
    assert not big, f"{big}: over 1 MiB; figures and curves stay small, run folders stay out of git"


def test_run_folders_are_ignored():
    out = subprocess.run(
        ["git", "check-ignore", "logdir/x/dreamer/0/checkpoints/ckpt-5.index", "run/episodes/a.npz", "plots/x.png"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert len(out.stdout.split()) == 3, out.stdout
