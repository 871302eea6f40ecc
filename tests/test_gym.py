"""Gymnasium environments through --task gym_<EnvId>: the small ones of gym_envs.py and MiniGrid, end to end."""

import functools
import json

import numpy as np
import pytest
from conftest import run_here

import configs
import dreamer
import wrappers


def run_gym(logdir, *flags):
    """A run in this process (conftest's GYM flags, without images in TensorBoard, then `flags`); its output."""
    return run_here(logdir, "--log_images", "False", *flags)[1]


def episodes(logdir):
    return [dict(np.load(path)) for path in sorted((logdir / "episodes").glob("*.npz"))]


def scores(logdir):
    return [
        r["test/return"]
        for r in map(json.loads, (logdir / "metrics.jsonl").read_text().splitlines())
        if "test/return" in r
    ]


def test_pixel_observations_and_rescaled_box_actions(tmp_path):
    run_gym(tmp_path, "--task", "gym_PixelReach-v0", "--env_module", "gym_envs", "--steps", "120")
    assert scores(tmp_path)
    for episode in episodes(tmp_path):
        assert episode["image"].shape == (21, 64, 64, 3) and episode["image"].dtype == np.uint8
        assert set(episode) == {"image", "action", "reward", "discount"}
        action = episode["action"][1:]
        assert action.shape == (20, 2) and np.abs(action).max() <= 1
        # The environment got the actions rescaled from [-1, 1] to its [0, 2] (and its reward is their sum).
        np.testing.assert_allclose(episode["reward"][1:], 2 * (action + 1).sum(-1), rtol=1e-5)


@pytest.fixture(scope="module")
def discrete_run(tmp_path_factory):
    """VectorDiscrete with two environments, resumed, then evaluated: (logdir, outputs)."""
    logdir = tmp_path_factory.mktemp("discrete")
    flags = ["--task", "gym_VectorDiscrete-v0", "--env_module", "gym_envs", "--envs", "2"]
    first = run_gym(logdir, *flags, "--steps", "120")
    second = run_gym(logdir, *flags, "--steps", "200")
    third = run_gym(logdir, *flags, "--eval_only", "True", "--eval_episodes", "2")
    return logdir, (first, second, third)


def test_discrete_actions_render_frames_and_vector_observations(discrete_run):
    logdir, (first, _, _) = discrete_run
    assert "has discrete actions: --action_dist onehot, --expl epsilon_greedy" in first
    config = json.loads((logdir / "config.json").read_text())
    assert config["action_dist"] == "onehot" and config["expl"] == "epsilon_greedy"
    for episode in episodes(logdir):
        # Registered with max_episode_steps=30: truncated after 15 agent steps, not a terminal state.
        assert len(episode["reward"]) == 16 and episode["discount"][-1] == 1
        assert episode["obs"].shape == (16, 4) and episode["image"].shape == (16, 64, 64, 3)
        # The 40x30 render() frames, resized: their red channel is the first observation entry.
        np.testing.assert_allclose(episode["image"][:, 32, 32, 0], (episode["obs"][:, 0] + 1) * 127, atol=2)
        action = episode["action"][1:]
        assert action.shape == (15, 3) and (action.sum(-1) == 1).all()
        # One-hot index 2 is Discrete(3, start=1)'s action 3, the one rewarded (once per repeated step).
        np.testing.assert_array_equal(episode["reward"][1:], 2 * action[:, 2])


def test_discrete_run_resumes_and_evaluates(discrete_run):
    logdir, (first, second, third) = discrete_run
    assert "Prefill dataset" in first and "Prefill dataset" not in second and "Loaded checkpoint" in second
    rows = [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "test/return" in r]
    # From the end of the prefill (two 30-step episodes on disk) to --steps, each evaluation one line over a test
    # episode per environment.
    assert steps[0] == 60 and steps[-1] >= 200 and steps == sorted(set(steps))
    assert all(r["test/episodes"] == 2 for r in rows if "test/return" in r)
    rows = [json.loads(line) for line in (logdir / "eval.jsonl").read_text().splitlines()]
    assert "Loaded checkpoint" in third and [r["episode"] for r in rows] == [0, 1]
    assert all(r["length"] == 30 for r in rows) and (logdir / "eval" / f"{rows[0]['step']}-0.mp4").exists()


def test_terminations_end_with_discount_zero(tmp_path):
    flags = ["--task", "gym_Terminating-v0", "--env_module", "gym_envs", "--env_kwargs", '{"speed": 0.08}']
    flags += ["--action_repeat", "1", "--pcont", "True", "--prefill", "60", "--eval_every", "40", "--steps", "100"]
    run_gym(tmp_path, *flags)
    assert scores(tmp_path)
    ended = 0
    for episode in episodes(tmp_path):
        # The Dict observation's grayscale `pixels` as RGB, its `position` stored beside.
        image, position = episode["image"], episode["position"][:, 0]
        assert image.shape[1:] == (64, 64, 3) and (image[..., 0] == image[..., 2]).all()
        terminated = abs(position[-1]) > 1
        assert episode["discount"][-1] == (0 if terminated else 1) and (episode["discount"][:-1] == 1).all()
        assert terminated or len(position) == 41
        ended += terminated
    assert ended


def test_minigrid_from_its_render_frames(tmp_path):
    kwargs = '{"render_mode": "rgb_array", "tile_size": 8}'
    flags = ["--task", "gym_MiniGrid-Empty-5x5-v0", "--env_module", "minigrid", "--env_kwargs", kwargs]
    output = run_gym(tmp_path, *flags, "--steps", "120")
    assert "has discrete actions" in output and scores(tmp_path)
    episode = episodes(tmp_path)[0]
    assert episode["image"].shape[1:] == (64, 64, 3) and len(np.unique(episode["image"])) > 2
    # The symbolic 7x7 view is stored under another name; the mission text is not stored.
    assert episode["obs_image"].shape[1:] == (7, 7, 3) and episode["direction"].shape[1:] == (1,)
    assert episode["action"].shape[1:] == (7,)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--env_module", "gym_envs,no_such_module"], "argument --env_module: cannot import 'no_such_module'"),
        (["--env_kwargs", "{speed: 1}"], "argument --env_kwargs: '{speed: 1}' is not JSON"),
        (["--env_kwargs", "[1, 2]"], "argument --env_kwargs: expected a JSON object"),
        (["--task", "gym_PixelReach-v1"], "no Gymnasium environment 'PixelReach-v1' is registered"),
        (["--task", "gym_pixelreach"], "(closest: PixelReach-v0"),
        (["--task", "dmc_walker_walk"], "only gym_<EnvId> tasks take them"),
    ],
)
def test_bad_gym_flags_exit_2_before_writing(tmp_path, capsys, flags, message):
    logdir = tmp_path / "run"
    argv = ["--logdir", str(logdir), "--task", "gym_PixelReach-v0", "--env_module", "gym_envs", *flags]
    with pytest.raises(SystemExit) as error:
        configs.parse_config(argv)
    assert error.value.code == 2 and message in capsys.readouterr().err
    assert not logdir.exists()


def test_env_module_that_raises_exits_2(tmp_path, capsys, monkeypatch):
    (tmp_path / "raising_envs.py").write_text("raise RuntimeError('no licence key')\n")
    monkeypatch.chdir(tmp_path)  # Modules are importable from the working directory.
    with pytest.raises(SystemExit) as error:
        configs.parse_config(["--logdir", "run", "--task", "gym_PixelReach-v0", "--env_module", "raising_envs"])
    assert error.value.code == 2
    assert "cannot import 'raising_envs' (RuntimeError: no licence key)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_environment_without_image_exits_2_before_writing(tmp_path, capsys):
    logdir = tmp_path / "run"
    config = configs.parse_config(["--logdir", str(logdir), "--task", "gym_NoImage-v0", "--env_module", "gym_envs"])
    with pytest.raises(SystemExit) as error:
        dreamer.train(config)  # Its workers make the environment and find no image.
    err = capsys.readouterr().err
    assert error.value.code == 2 and "Traceback" not in err
    assert "gym_NoImage-v0 offers no image to learn from" in err and "render() returned None" in err
    assert not logdir.exists()


@pytest.mark.parametrize("env_id, space", [("MultiAction-v0", r"MultiDiscrete\(\[2 3\]\)"), ("HugeBounds-v0", "Box")])
def test_unsupported_action_space_is_named(env_id, space):
    make = functools.partial(wrappers.make_env, f"gym_{env_id}", env_modules=("gym_envs",))
    env = wrappers.Async(make, "process")
    with pytest.raises(wrappers.EnvError, match=rf"action space {space}.*, which Dreamer does not take"):
        env.access("action_space")
    env.close()
