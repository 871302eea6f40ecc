import concurrent.futures
import functools
import multiprocessing
import os
import pathlib
import sys
import time
import types

import numpy as np
import pytest
from gymnasium import spaces

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import wrappers  # noqa: E402

# The 20 continuous control tasks of the paper.
DMC_TASKS = [
    "acrobot_swingup",
    "cartpole_balance",
    "cartpole_balance_sparse",
    "cartpole_swingup",
    "cartpole_swingup_sparse",
    "cheetah_run",
    "cup_catch",
    "finger_spin",
    "finger_turn_easy",
    "finger_turn_hard",
    "hopper_hop",
    "hopper_stand",
    "pendulum_swingup",
    "quadruped_run",
    "quadruped_walk",
    "reacher_easy",
    "reacher_hard",
    "walker_run",
    "walker_stand",
    "walker_walk",
]


def clean(fn, *args):
    # Rendering MuJoCo with Mesa segfaults in a process that imported TensorFlow,
    # which other test files do; so render in a fresh spawned child.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def rollout(env, steps, seed=0):
    rng = np.random.RandomState(seed)
    space = env.action_space
    transitions = [(env.reset(), 0.0, False, 1.0)]
    for _ in range(steps):
        if isinstance(space, wrappers.OneHotBox):
            action = np.eye(space.shape[0], dtype=np.float32)[rng.randint(space.shape[0])]
        else:
            action = rng.uniform(space.low, space.high).astype(np.float32)
        obs, reward, done, info = env.step(action)
        transitions.append((obs, reward, done, float(info["discount"])))
        if done:
            break
    return transitions


def assert_same(a, b):
    assert len(a) == len(b)
    for (obs1, *rest1), (obs2, *rest2) in zip(a, b):
        assert obs1.keys() == obs2.keys()
        for key in obs1:
            np.testing.assert_array_equal(obs1[key], obs2[key], err_msg=key)
        assert rest1 == rest2


class EchoEnv:
    """Observes the action it receives, as {"action": array}; gives no discount."""

    obs_space = {"action": spaces.Box(-np.inf, np.inf, (3,), np.float32)}
    action_space = spaces.Box(np.array([-2, 0, -np.inf], np.float32), np.array([4, 10, np.inf], np.float32))

    def reset(self):
        return {"action": np.zeros(3, np.float32)}

    def step(self, action):
        return {"action": np.asarray(action)}, 1.0, False, {}


# Functions run in clean children.


def _all_tasks():
    results = {}
    for name in DMC_TASKS:
        env = wrappers.DeepMindControl(name, seed=0)
        obs = env.reset()
        obs, reward, done, info = env.step(env.action_space.sample())
        space = env.obs_space
        shapes_match = all(obs[k].shape == space[k].shape for k in space)
        image = obs["image"]
        results[name] = (image.shape, image.dtype, env._camera, shapes_match, info)
        env.close()
    return results


def _action_repeat(configs):
    results = []
    for task, repeat, steps in configs:
        runs = {}
        for render_every in (True, False):
            env = wrappers.DeepMindControl(task, seed=0)
            env = wrappers.TimeLimit(wrappers.ActionRepeat(env, repeat, render_every), steps)
            runs[render_every] = rollout(env, steps + 1)
        results.append(runs)
    return results


def _normalize_actions():
    env = wrappers.NormalizeActions(wrappers.DeepMindControl("walker_walk", seed=0))
    inner = env._env._env
    env.reset()
    env.step(np.ones(6, np.float32))
    high = inner.physics.data.ctrl.copy()
    env.step(-np.ones(6, np.float32))
    low = inner.physics.data.ctrl.copy()
    spec = inner.action_spec()
    return env.action_space, high, low, spec.minimum, spec.maximum


def _collect_dmc():
    ctor = functools.partial(wrappers.make_env, "dmc_cartpole_balance", time_limit=10)
    env = wrappers.Collect(wrappers.Async(ctor, "none"), precision=16)
    env.reset()
    done = False
    while not done:
        _, _, done, info = env.step(np.zeros(1, np.float32))
    return {k: (v.shape, v.dtype) for k, v in info["episode"].items()}


def _make_env_unknown_dmc():
    with pytest.raises(ValueError) as error:
        wrappers.make_env("dmc_walker_fly")
    return str(error.value)


def _tf_guard():
    sys.modules["tensorflow"] = types.ModuleType("tensorflow")  # Only its presence.
    errors = []
    for ctor in (
        lambda: wrappers.DeepMindControl("walker_walk"),
        lambda: wrappers.make_env("dmc_walker_walk"),
    ):
        with pytest.raises(RuntimeError) as error:
            ctor()
        errors.append(str(error.value))
    return errors


def _tf_allowed():
    sys.modules["tensorflow"] = types.ModuleType("tensorflow")
    os.environ["DREAMER_ALLOW_TF_RENDER"] = "1"
    return wrappers.DeepMindControl("walker_walk").reset()["image"].shape


def _async_dmc():
    ctor = functools.partial(wrappers.make_env, "dmc_walker_walk", time_limit=30, seed=3)
    results = {}
    for strategy in ("none", "thread", "process"):
        env = wrappers.Async(ctor, strategy)
        results[strategy] = rollout(env, 20), env.obs_space, env.action_space
        env.close()
    return results


# DeepMindControl.


def test_dmc_all_tasks():
    results = clean(_all_tasks)
    assert sorted(results) == sorted(DMC_TASKS) and len(results) == 20
    for name, (shape, dtype, camera, shapes_match, info) in results.items():
        assert shape == (64, 64, 3) and dtype == np.uint8, name
        assert camera == (2 if name.startswith("quadruped") else 0), name
        assert shapes_match, name
        assert info["discount"].dtype == np.float32, name


@pytest.fixture(scope="module")
def action_repeat_runs():
    return clean(_action_repeat, [("walker_walk", 2, 100), ("cheetah_run", 4, 25)])


def test_action_repeat_lazy_render_matches_render_every(action_repeat_runs):
    for runs, steps in zip(action_repeat_runs, (100, 25)):
        every, lazy = runs[True], runs[False]
        assert len(lazy) == steps + 1 and lazy[-1][2]
        assert_same(every, lazy)
        assert len({t[1] for t in lazy}) > 2  # Rewards actually vary.


def test_normalize_actions_dmc():
    space, high, low, minimum, maximum = clean(_normalize_actions)
    assert (space.low == -1).all() and (space.high == 1).all()
    np.testing.assert_allclose(high, maximum)
    np.testing.assert_allclose(low, minimum)


def test_normalize_actions_masks_infinite_bounds():
    env = wrappers.NormalizeActions(EchoEnv())
    np.testing.assert_array_equal(env.action_space.low, [-1, -1, -np.inf])
    np.testing.assert_array_equal(env.action_space.high, [1, 1, np.inf])
    obs = env.step(np.array([-1, 1, 7], np.float32))[0]
    np.testing.assert_allclose(obs["action"], [-2, 10, 7])
    obs = env.step(np.array([0, 0, -3], np.float32))[0]
    np.testing.assert_allclose(obs["action"], [1, 5, -3])


def test_collect_dmc_precision():
    dtypes = clean(_collect_dmc)
    assert dtypes["image"] == ((6, 64, 64, 3), np.uint8)
    assert dtypes["position"] == ((6, 3), np.float16)
    assert dtypes["action"] == ((6, 1), np.float16)
    assert dtypes["reward"] == ((6,), np.float16)
    assert dtypes["discount"] == ((6,), np.float16)


def test_make_env_unknown_dmc_task():
    message = clean(_make_env_unknown_dmc)
    assert "walker_fly" in message and "not in dm_control's suite" in message
    assert "walker_walk" in message


def test_tensorflow_guard():
    errors = clean(_tf_guard)
    shape = clean(_tf_allowed)
    for message in errors:
        assert "TensorFlow" in message and "segfault" in message
        assert "--parallel process" in message and "DREAMER_ALLOW_TF_RENDER=1" in message
    assert shape == (64, 64, 3)


def test_async_dmc_strategies_agree():
    results = clean(_async_dmc)
    none, _, action_space = results["none"]
    assert action_space.shape == (6,)
    for strategy in ("thread", "process"):
        assert_same(none, results[strategy][0])
        assert results[strategy][1].keys() == results["none"][1].keys()


# Generic wrappers.


def test_time_limit_boundary():
    env = wrappers.TimeLimit(EchoEnv(), 3)
    with pytest.raises(AssertionError):
        env.step(np.zeros(3))
    env.reset()
    assert not env.step(np.zeros(3))[2] and not env.step(np.zeros(3))[2]
    _, _, done, info = env.step(np.zeros(3))
    assert done and info["discount"] == 1 and info["discount"].dtype == np.float32
    with pytest.raises(AssertionError):
        env.step(np.zeros(3))
    env.reset()
    assert not env.step(np.zeros(3))[2]


def test_time_limit_atari():
    env = wrappers.make_env("atari_pong", action_repeat=4, time_limit=20, seed=0)
    transitions = rollout(env, 100)
    assert len(transitions) == 6 and transitions[-1][2:] == (True, 1.0)
    assert not any(t[2] for t in transitions[:-1])


def test_one_hot_action():
    env = wrappers.OneHotAction(wrappers.Atari("pong", seed=0))
    raw = wrappers.Atari("pong", seed=0)
    space = env.action_space
    assert space.shape == (6,) and space.dtype == np.float32
    space.seed(0)
    for _ in range(20):
        sample = space.sample()
        assert sample.dtype == np.float32 and sample.sum() == 1 and sample.max() == 1
        assert space.contains(sample)
    np.testing.assert_array_equal(env.reset()["image"], raw.reset()["image"])
    for index in (2, 3, 3, 0, 5):
        obs, reward, done, _ = env.step(np.eye(6, dtype=np.float32)[index])
        obs2, reward2, done2, _ = raw.step(index)
        np.testing.assert_array_equal(obs["image"], obs2["image"])
    bad = [np.full(6, 0.5), np.zeros(6), np.ones(6), np.eye(6)[0][:4], np.eye(6)[:2]]
    for action in bad:
        with pytest.raises(ValueError, match="onehot"):
            env.step(action)


# Atari.


@pytest.mark.parametrize("grayscale", [False, True])
def test_atari_pong(grayscale):
    env = wrappers.OneHotAction(wrappers.Atari("pong", 4, grayscale=grayscale, seed=1))  # As make_env wraps it.
    channels = 1 if grayscale else 3
    assert env.obs_space["image"].shape == (64, 64, channels)
    obs = env.reset()
    assert obs["image"].shape == (64, 64, channels) and obs["image"].dtype == np.uint8
    obs, reward, done, info = env.step(np.eye(6, dtype=np.float32)[1])
    assert obs["image"].shape == (64, 64, channels) and obs["image"].dtype == np.uint8
    assert isinstance(reward, float) and not done and info["discount"] == 1
    with pytest.raises(ValueError, match="onehot"):
        env.step(np.array([0, 1, 1, 0, 0, 0], np.float32))


def test_atari_seeded_trajectories_match():
    make = functools.partial(wrappers.make_env, "atari_pong", time_limit=200, seed=5)
    a, b = rollout(make(), 40), rollout(make(), 40)
    assert_same(a, b)
    assert any(t[0]["image"].std() > 0 for t in a)


def _dmc_seeded_resets():
    env = wrappers.make_env("dmc_cartpole_swingup", seed=0)
    first = env.reset(seed=3)
    for _ in range(5):
        env.step(np.ones(1, np.float32))
    return first, env.reset(seed=3), env.reset(seed=4)


def test_seeded_reset_repeats_the_initial_state():
    first, again, other = clean(_dmc_seeded_resets)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    assert not np.array_equal(first["position"], other["position"])
    env = wrappers.make_env("atari_pong", time_limit=200, seed=0)
    runs = []
    for seed in (7, 7, 8):
        env.reset(seed=seed)
        runs.append([env.step(np.eye(6, dtype=np.float32)[t % 6])[0]["image"] for t in range(60)])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_make_env_unknown_task():
    for task in ("foo_bar", "dmc", "walker_walk"):
        with pytest.raises(ValueError, match="dmc_") as error:
            wrappers.make_env(task)
        assert "atari_" in str(error.value)
    with pytest.raises(ValueError, match="Unknown Atari game"):
        wrappers.make_env("atari_nosuchgame")


# Collect and Async.


@pytest.mark.parametrize("precision", [16, 32])
def test_collect(precision):
    episodes = []
    ctor = functools.partial(wrappers.make_env, "atari_pong", 4, 28, seed=0)
    env = wrappers.Collect(wrappers.Async(ctor, "none"), [episodes.append], precision)
    for _ in range(2):
        obs = env.reset()
        assert obs["image"].dtype == np.uint8
        steps, done = 0, False
        while not done:
            promise = env.step(np.eye(6, dtype=np.float32)[steps % 6], blocking=False)
            _, reward, done, info = promise()
            steps += 1
    float_ = np.float16 if precision == 16 else np.float32
    assert len(episodes) == 2 and episodes[-1] is info["episode"] and steps == 7
    for episode in episodes:
        assert {k: len(v) for k, v in episode.items()} == dict.fromkeys(episode, 8)
        assert set(episode) == {"image", "action", "reward", "discount"}
        assert episode["image"].dtype == np.uint8
        assert all(episode[k].dtype == float_ for k in ("action", "reward", "discount"))
        assert (episode["action"][0] == 0).all() and (episode["action"][1:].sum(1) == 1).all()
        assert episode["reward"][0] == 0 and (episode["discount"] == 1).all()
    with pytest.raises(AssertionError):
        env.step(np.eye(6, dtype=np.float32)[0])


def test_async_atari_strategies_agree():
    ctor = functools.partial(wrappers.make_env, "atari_pong", time_limit=120, seed=2)
    reference = rollout(wrappers.Async(ctor, "none"), 30)
    for strategy in ("thread", "process"):
        env = wrappers.Async(ctor, strategy)
        assert env.action_space.shape == (6,) and "image" in env.obs_space
        assert_same(reference, rollout(env, 30))
        env.close()


@pytest.mark.parametrize("strategy", ["thread", "process"])
def test_async_ctor_error_carries_traceback(strategy):
    env = wrappers.Async(functools.partial(wrappers.make_env, "atari_nosuchgame"), strategy)
    with pytest.raises(RuntimeError) as error:
        env.reset()
    message = str(error.value)
    assert "Traceback" in message and "Unknown Atari game" in message
    assert "make_env" in message and "ValueError" in message
    start = time.perf_counter()
    env.close()
    assert time.perf_counter() - start < 2


def test_async_step_error_and_worker_death():
    env = wrappers.Async(functools.partial(wrappers.make_env, "atari_pong"), "process")
    env.reset()
    with pytest.raises(RuntimeError, match="(?s)Traceback.*OneHotAction.*onehot"):
        env.step(np.ones(6, np.float32))
    env.step(np.eye(6, dtype=np.float32)[0])  # The worker keeps serving.
    start = time.perf_counter()
    env.close()
    assert time.perf_counter() - start < 2
    dead = wrappers.Async(functools.partial(os._exit, 3), "process")
    with pytest.raises(RuntimeError, match="exit code 3"):
        dead.reset()
    start = time.perf_counter()
    dead.close()
    assert time.perf_counter() - start < 2


def test_async_unknown_strategy():
    with pytest.raises(ValueError, match="'none', 'thread', 'process'"):
        wrappers.Async(EchoEnv, "fork")
