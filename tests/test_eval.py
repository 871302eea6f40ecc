import hashlib
import json

import imageio
import imageio.v3 as iio
from conftest import TINY, run_dreamer


def digest(logdir):
    """Content hash of every file of the training state: episodes, checkpoints, config."""
    files = sorted(p for p in logdir.rglob("*") if p.is_file() and p.parts[-2] in ("episodes", "checkpoints"))
    files.append(logdir / "config.json")
    return {str(p.relative_to(logdir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_eval_only_writes_scores_and_videos_and_changes_nothing(trained_run):
    logdir = trained_run[0]
    before = digest(logdir)
    result = run_dreamer(logdir, *TINY, "--eval_only", "True", "--eval_episodes", "2")
    assert digest(logdir) == before
    rows = [json.loads(line) for line in (logdir / "eval.jsonl").read_text().splitlines()]
    assert [r["episode"] for r in rows] == [0, 1] and {r["step"] for r in rows} == {1200}
    assert all(r["length"] == 200 for r in rows)
    assert "Evaluated checkpoint of step 1200 over 2 episodes" in result.stdout and "±" in result.stdout
    for index in range(2):
        frames = imageio.v2.mimread(logdir / "eval" / f"1200-{index}.mp4", memtest=False)
        assert frames[0].shape == (64, 64, 3) and len(frames) == 101
    strip = iio.imread(logdir / "eval" / "1200-openl.png")
    assert strip.shape[0] == 2 * 3 * 64  # Two episodes, each truth / model / error.


def test_eval_only_without_checkpoint_exits_2(tmp_path):
    result = run_dreamer(tmp_path / "empty", *TINY, "--eval_only", "True", check=False)
    assert result.returncode == 2 and "no checkpoint" in result.stdout
    assert not (tmp_path / "empty").exists()
