import hashlib
import json

import imageio
import imageio.v3 as iio
from conftest import run_here


def digest(logdir):
    """Content hash of every file of the run but what --eval_only writes (eval.jsonl, eval/)."""
    files = sorted(p for p in logdir.rglob("*") if p.is_file() and p.relative_to(logdir).parts[0] not in EVAL)
    return {str(p.relative_to(logdir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


EVAL = ("eval.jsonl", "eval")


def test_eval_only_writes_scores_and_videos_and_changes_nothing(trained_run):
    logdir = trained_run[0]
    before = digest(logdir)
    output = run_here(logdir, "--eval_only", "True", "--eval_episodes", "2")[1]
    assert digest(logdir) == before
    rows = [json.loads(line) for line in (logdir / "eval.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in rows] == [0, 1] and {r["step"] for r in rows} == {240}
    assert all(r["length"] == 40 for r in rows)
    # Its first test episode is the one the training run played at 240: same weights, resets and noise.
    tests = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["return"] == [r["test/return"] for r in tests if "test/return" in r and r["step"] == 240][-1]
    assert "Evaluated checkpoint of step 240 over 2 episodes" in output and "±" in output
    for index in range(2):
        frames = imageio.v2.mimread(logdir / "eval" / f"240-{index}.mp4", memtest=False)
        assert frames[0].shape == (64, 64, 3) and len(frames) == 21
    strip = iio.imread(logdir / "eval" / "240-openl.png")
    assert strip.shape[0] == 2 * 3 * 64  # Two episodes, each truth / model / error.


def test_eval_only_without_checkpoint_exits_2(tmp_path):
    code, output = run_here(tmp_path / "empty", "--eval_only", "True", check=False)
    assert code == 2 and "no checkpoint" in output
    assert not (tmp_path / "empty").exists()
