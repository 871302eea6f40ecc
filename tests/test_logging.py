import io
import json
import re
import time

import imageio.v3 as iio
import numpy as np
import tensorflow as tf

import tools

AGENT = {"model_loss", "value_loss", "actor_loss", "div", "image_loss", "reward_loss", "prior_ent", "post_ent"}
AGENT |= {"action_ent", "model_grad_norm", "value_grad_norm", "actor_grad_norm", "expl_amount"}
SIM = {"train/return", "train/length", "test/return", "test/length", "episodes", "fps"}


def read_events(logdir):
    """Scalars {tag: [values]} and images {tag: [encoded bytes]} from every event file of a run."""
    scalars, images = {}, {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.HasField("image"):
                    images.setdefault(value.tag, []).append(value.image.encoded_image_string)
                elif value.HasField("tensor"):
                    scalars.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    return scalars, images


def test_metrics_jsonl_has_every_metric(trained_run):
    logdir = trained_run[0]
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    assert AGENT | SIM | {"step"} <= keys
    assert all(np.isfinite(v) for row in rows for v in row.values())


def test_event_files_hold_scalars_and_gifs(trained_run):
    logdir = trained_run[0]
    scalars, images = read_events(logdir)
    assert {f"agent/{k}" for k in AGENT} <= set(scalars), sorted(scalars)
    assert {f"sim/{k}" for k in SIM} <= set(scalars), sorted(scalars)
    openl = iio.imread(images["agent/openl"][0], index=None)
    # batch_length frames; truth, model and error rows of 64 pixels; the batch's 3 sequences side by side.
    assert openl.shape[:3] == (8, 3 * 64, 3 * 64)
    videos = [iio.imread(video, index=None) for video in images["sim/test/video"]]
    assert len(videos) == 3 and all(video.shape[1:3] == (64, 64) for video in videos)
    # The reset frame and 20 agent steps (40 env steps); GIF encoding merges repeated frames.
    assert all(10 < len(video) <= 21 for video in videos)
    assert videos[-1].std() > 0


def test_long_videos_are_subsampled_not_dropped(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        tools.video_summary("long", np.random.randint(0, 255, (2, 501, 8, 8, 3), np.uint8), 0, max_frames=200)
    writer.close()
    _, images = read_events(tmp_path)
    frames = iio.imread(images["long"][0], index=None)
    assert 100 < len(frames) <= 200 and frames.shape[1:3] == (8, 16)


def test_interrupted_metrics_file_is_read_by_plotting(trained_run, tmp_path):
    import plotting

    path = tmp_path / "metrics.jsonl"
    path.write_text((trained_run[0] / "metrics.jsonl").read_text() + '{"step": 320, "test/ret')
    xs, ys = plotting.load_run(path, "step", "test/return")
    assert list(xs) == [80, 160, 240] and np.isfinite(ys).all()


def test_grad_norms_average_over_the_steps_not_skipped(tmp_path):
    logger = tools.Logger(tmp_path)
    for value in (2.0, np.inf, 4.0):  # A float16 step skipped in the middle.
        logger.scalar("model_grad_norm", value)
        logger.scalar("model_loss", value)
    logger.scalar("value_grad_norm", np.nan)
    logger.write(100)
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["model_grad_norm"] == 3.0
    assert row["model_loss"] == np.inf  # Other metrics keep every value.
    assert np.isnan(row["value_grad_norm"])  # Nothing finite: it shows.


def test_progress_lines_give_done_rate_and_time_left():
    stream = io.StringIO()  # Not a terminal: whole lines, each at least `every` seconds apart.
    progress = tools.Progress("Training", 4, "train steps", every=0.0, stream=stream)
    for _ in range(4):
        time.sleep(0.01)
        progress()
    progress.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4 and lines[0].startswith("Training: 1/4 train steps, ") and "\r" not in stream.getvalue()
    assert re.fullmatch(r"Training: 3/4 train steps, [\d.e+]+ train steps/s, \d+ s left", lines[2]), lines[2]
    quiet = io.StringIO()
    tools.Progress("Training", 4, "train steps", every=60.0, stream=quiet)(4)
    assert quiet.getvalue() == ""
    assert [tools.duration(s) for s in (45, 600, 3 * 3600, 36 * 86400)] == ["45 s", "10 min", "3 h", "36 d"]


def test_log_lines_say_the_step_of_steps_the_rate_and_the_time_left(tmp_path, capsys):
    logger = tools.Logger(tmp_path, step=1000, steps=10**6)
    time.sleep(0.05)
    logger.scalar("model_loss", 1.0)
    logger.write(2000, fps=True)
    out = capsys.readouterr().out
    assert out.startswith("[2000/1000000] model_loss 1 / fps ") and " env steps/s since the last line, " in out
    assert out.rstrip().endswith("to --steps at that rate")
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert set(row) == {"step", "time", "model_loss", "fps"}  # The terminal's note is not in metrics.jsonl.
