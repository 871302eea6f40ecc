import atexit
import contextlib
import difflib
import functools
import importlib
import json
import multiprocessing
import os
import pickle
import re
import signal
import sys
import threading
import traceback
import types

import numpy as np
from gymnasium import spaces

# Task prefixes that make_env knows (each checked in check_task). Your own environment: register it with
# Gymnasium and use gym_<EnvId>.
SUITES = ("dmc", "atari", "gym")


def check_task(task):
    """Raise ValueError saying what is wrong with a task name and how to fix it (renders nothing: no GL context)."""
    suite, _, name = task.partition("_")
    if suite not in SUITES or not name:
        prefixes = ", ".join(f"{s}_" for s in SUITES)
        raise ValueError(
            f"Unknown task {task!r}; use dmc_<domain>_<task> (e.g. dmc_walker_walk), atari_<game> (e.g. "
            f"atari_pong) or gym_<EnvId> (e.g. gym_CartPole-v1); valid prefixes: {prefixes}"
        )
    try:
        if suite == "dmc":
            dmc_task(name)
        elif suite == "atari":
            atari_id(name)
    except RuntimeError as e:  # A missing or broken optional dependency.
        raise ValueError(str(e)) from None


def make_env(
    task,
    action_repeat=2,
    time_limit=1000,
    seed=None,
    life_done=False,
    render_every=False,
    env_modules=(),
    env_kwargs=None,
):
    suite, _, name = task.partition("_")
    if suite == "dmc" and name:
        dmc_task(name)  # Raises ValueError before the TensorFlow guard does.
        env = DeepMindControl(name, seed=seed)
        env = ActionRepeat(env, action_repeat, render_every)
        env = NormalizeActions(env)
    elif suite == "atari" and name:
        env = Atari(name, action_repeat, life_done=life_done, seed=seed)
        env = OneHotAction(env)
    elif suite == "gym" and name:
        env = Gym(name, seed=seed, env_modules=env_modules, env_kwargs=env_kwargs)
        env = ActionRepeat(env, action_repeat, render_every)
        env = OneHotAction(env) if isinstance(env.action_space, spaces.Discrete) else NormalizeActions(env)
    else:
        raise ValueError(
            f"Unknown task '{task}': expected 'dmc_<domain>_<task>' (e.g. dmc_walker_walk), "
            "'atari_<game>' (e.g. atari_pong) or 'gym_<EnvId>' (e.g. gym_CartPole-v1); "
            "valid prefixes are dmc_, atari_ and gym_."
        )
    return TimeLimit(env, time_limit / action_repeat)


def _dmc_suite():
    os.environ.setdefault("MUJOCO_GL", "egl")
    backend = os.environ["MUJOCO_GL"]
    if _tensorflow_loaded() and "dm_control.suite" not in sys.modules:
        # Only look up tasks here: loading Mesa's EGL beside TensorFlow aborts the process at exit.
        os.environ["MUJOCO_GL"] = "disable"
    try:
        from dm_control import suite
    except Exception as e:
        raise RuntimeError(_gl_message(e)) from None
    finally:
        os.environ["MUJOCO_GL"] = backend
    return suite


def _tensorflow_loaded():
    return "tensorflow" in sys.modules and os.environ.get("DREAMER_ALLOW_TF_RENDER") != "1"


def _gl_message(error):
    return (
        f"Could not set up MuJoCo rendering with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} "
        f"({type(error).__name__}: {error}). For headless EGL install Mesa "
        "(apt-get install libegl1 libgl1-mesa-dri), or use software rendering "
        "with MUJOCO_GL=osmesa (apt-get install libosmesa6)."
    )


def dmc_task(name):
    suite = _dmc_suite()
    for domain, task in suite.ALL_TASKS:
        alias = "cup" if domain == "ball_in_cup" else domain
        if name in (f"{domain}_{task}", f"{alias}_{task}"):
            return domain, task
    valid = ", ".join(f"{d}_{t}" for d, t in suite.ALL_TASKS)
    raise ValueError(
        f"Unknown DMC task '{name}': this domain/task is not in dm_control's suite. "
        f"Valid tasks (prefix them with dmc_): {valid}."
    )


def atari_id(name):
    """The gymnasium id of atari_<name>, e.g. ALE/MontezumaRevenge-v5 for montezuma_revenge."""
    try:
        import ale_py
        import gymnasium
    except ImportError as e:
        raise RuntimeError(f"Atari needs `pip install gymnasium ale-py` (see requirements.txt): {e}") from None
    gymnasium.register_envs(ale_py)
    game = "".join(word.title() for word in name.split("_"))
    if f"ALE/{game}-v5" in gymnasium.registry:
        return f"ALE/{game}-v5"
    games = [k[4:-3] for k in gymnasium.registry if k.startswith("ALE/") and k.endswith("-v5") and "-" not in k[4:-3]]
    if not games:
        raise RuntimeError(
            f"ale-py {ale_py.__version__} registers no Atari games: install ale-py 0.9 or newer, which ships the ROMs "
            "(`pip install -U ale-py`)"
        )
    known = ", ".join(re.sub(r"(?<!^)(?=[A-Z])", "_", g).lower() for g in sorted(games))
    raise ValueError(
        f"Unknown Atari game {name!r} (no ALE/{game}-v5 in ale-py); known games (as atari_<game>): {known}"
    )


class DeepMindControl:
    def __init__(self, name, size=(64, 64), camera=None, seed=None):
        if _tensorflow_loaded():
            raise RuntimeError(
                "Refusing to render MuJoCo in a process that imported TensorFlow: with "
                "Mesa's EGL this segfaults (TensorFlow's LLVM clashes with Mesa's). Run "
                "environments in worker processes (Async(ctor, 'process'), i.e. "
                "--parallel process, the default), or set DREAMER_ALLOW_TF_RENDER=1 if "
                "your GL driver is not Mesa (e.g. NVIDIA EGL)."
            )
        domain, task = dmc_task(name)
        self._env = _dmc_suite().load(domain, task, task_kwargs={"random": seed})
        self._size = tuple(size)
        self._camera = (2 if domain == "quadruped" else 0) if camera is None else camera
        self._obs = None
        try:
            self.render()
        except Exception as e:
            raise RuntimeError(_gl_message(e)) from None

    @property
    def obs_space(self):
        obs_space = {
            key: spaces.Box(-np.inf, np.inf, spec.shape or (1,), spec.dtype)
            for key, spec in self._env.observation_spec().items()
        }
        obs_space["image"] = spaces.Box(0, 255, self._size + (3,), np.uint8)
        return obs_space

    @property
    def action_space(self):
        spec = self._env.action_spec()
        low, high = spec.minimum.astype(np.float32), spec.maximum.astype(np.float32)
        return spaces.Box(low, high, dtype=np.float32)

    def step(self, action, render=True):
        time_step = self._env.step(action)
        self._store(time_step)
        obs = self.observe() if render else dict(self._obs)
        reward = float(time_step.reward or 0.0)
        info = {"discount": np.array(time_step.discount, np.float32)}
        return obs, reward, time_step.last(), info

    def reset(self, seed=None):
        if seed is not None:  # The task draws the initial state from its own random state.
            self._env.task.random.seed(seed)
        self._store(self._env.reset())
        return self.observe()

    def observe(self):
        return {**self._obs, "image": self.render()}

    def render(self):
        return self._env.physics.render(*self._size, camera_id=self._camera)

    def close(self):
        self._env.close()

    def _store(self, time_step):
        # 0-d entries become (1,) so that they batch like the others.
        self._obs = {k: np.asarray(v).reshape(np.shape(v) or (1,)) for k, v in time_step.observation.items()}


class Atari:
    LOCK = threading.Lock()

    def __init__(
        self,
        name,
        action_repeat=4,
        size=(64, 64),
        grayscale=False,
        noops=30,
        life_done=False,
        sticky_actions=True,
        seed=None,
    ):
        env_id = atari_id(name)
        import gymnasium

        with self.LOCK:
            self._env = gymnasium.make(
                env_id,
                frameskip=1,
                repeat_action_probability=0.25 if sticky_actions else 0.0,
                full_action_space=False,
            )
        self._ale = self._env.unwrapped.ale
        self._repeat, self._size, self._grayscale = (
            action_repeat,
            tuple(size),
            grayscale,
        )
        self._noops, self._life_done, self._seed = noops, life_done, seed
        self._random = np.random.RandomState(seed)
        self._lives = None

    @property
    def obs_space(self):
        shape = self._size + (1 if self._grayscale else 3,)
        return {"image": spaces.Box(0, 255, shape, np.uint8)}

    @property
    def action_space(self):
        return self._env.action_space

    def reset(self, seed=None):
        if seed is not None:
            self._seed, self._random = seed, np.random.RandomState(seed)
        with self.LOCK:
            frame, _ = self._env.reset(seed=self._seed)
        self._seed = None  # Seed this reset only; later ones continue the RNG.
        for _ in range(self._random.randint(1, self._noops + 1)):
            frame, _, terminated, truncated, _ = self._env.step(0)
            if terminated or truncated:
                with self.LOCK:
                    frame, _ = self._env.reset()
        self._lives = self._ale.lives()
        return {"image": self._process(frame, frame)}

    def step(self, action):
        total, frames, terminal = 0.0, [], False
        for _ in range(self._repeat):
            frame, reward, terminated, truncated, _ = self._env.step(action)
            total += reward
            frames = frames[-1:] + [frame]
            if self._life_done:
                lives = self._ale.lives()
                terminated = terminated or lives < self._lives
                self._lives = lives
            terminal = terminated
            if terminated or truncated:
                break
        obs = {"image": self._process(frames[0], frames[-1])}
        info = {"discount": np.array(0.0 if terminal else 1.0, np.float32)}
        return obs, total, terminal or truncated, info

    def close(self):
        self._env.close()

    def _process(self, previous, current):
        from PIL import Image

        image = Image.fromarray(np.maximum(previous, current))
        if self._grayscale:
            image = image.convert("L")
        image = image.resize(self._size[::-1], Image.Resampling.BILINEAR)
        image = np.asarray(image, np.uint8)
        return image[..., None] if self._grayscale else image


class EnvError(ValueError):
    """An environment that cannot be made as the flags ask; its message names the problem and the fix."""


def gym_modules(text):
    return tuple(name.strip() for name in text.split(",") if name.strip())


def gym_kwargs(text):
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as e:
        raise EnvError(
            f"argument --env_kwargs: {text!r} is not JSON ({e}); pass an object, e.g. "
            """'{"render_mode": "rgb_array"}'"""
        ) from None
    if not isinstance(kwargs, dict):
        raise EnvError(
            f"argument --env_kwargs: expected a JSON object of keyword arguments for gymnasium.make, "
            f"got {type(kwargs).__name__} {text!r}"
        )
    return kwargs


def gym_import(env_modules):
    """Gymnasium, after importing the modules that register a user's environments."""
    if os.getcwd() not in sys.path:  # A user's module is importable from where they run, as for `python -m`.
        sys.path.append(os.getcwd())
    for name in env_modules:
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 (ImportError, or whatever the module raises as it runs)
            raise EnvError(
                f"argument --env_module: cannot import {name!r} ({type(e).__name__}: {e}); pass a module that "
                "imports without error, installed in this Python or importable from the working directory"
            ) from None
    import gymnasium

    return gymnasium


def gym_check(env_id, env_module="", env_kwargs="{}"):
    """Check the flags of a gym_<EnvId> task without making the environment (safe beside TensorFlow)."""
    gym_kwargs(env_kwargs)
    modules = gym_modules(env_module)
    gymnasium = gym_import(modules)
    try:
        gymnasium.spec(env_id)
    except gymnasium.error.Error:
        ids = {key.lower(): key for key in gymnasium.registry}
        close = [ids[key] for key in difflib.get_close_matches(env_id.lower(), ids, n=5, cutoff=0.5)]
        after = f" after importing {', '.join(modules)}" if modules else ""
        raise EnvError(
            f"argument --task: no Gymnasium environment {env_id!r} is registered{after}"
            + (f" (closest: {', '.join(close)})" if close else "")
            + "; register yours with gymnasium.register(id, entry_point=...) in a module that you pass with "
            "--env_module, or pass the package that registers it (e.g. --env_module ale_py for ALE/...)"
        ) from None


class Gym:
    """A Gymnasium environment seen through 64x64 frames: its image observation, the image entry of its Dict
    observation, or else render() with render_mode rgb_array. Other observation entries are passed along."""

    IMAGE_KEYS = ("image", "pixels", "rgb")
    RESERVED = ("image", "action", "reward", "discount")  # Keys that the episodes use for themselves.

    def __init__(self, env_id, size=(64, 64), seed=None, env_modules=(), env_kwargs=None):
        gymnasium = gym_import(env_modules)
        kwargs = dict(env_kwargs or {})
        self._id, self._size, self._seed, self._obs = env_id, tuple(size), seed, None
        self._env = self._make(gymnasium, kwargs)
        self._check_actions(self._env.action_space)
        space = self._env.observation_space
        # Asking for rgb_array frames explicitly prefers them (e.g. MiniGrid's `image` is a 7x7 symbolic grid).
        self._render = kwargs.get("render_mode") == "rgb_array"
        self._key = None if self._render else _image_key(space)  # None: the observation itself.
        if not self._render and self._key is False:
            if kwargs.get("render_mode") is not None:
                raise EnvError(self._no_image(f"--env_kwargs asks for render_mode {kwargs['render_mode']!r}"))
            self._env.close()
            self._env = self._make(gymnasium, {**kwargs, "render_mode": "rgb_array"})
            self._render, self._key = True, None
        if self._render:
            self._env.reset(seed=seed)
            frame = self._env.render()
            if not _image_shaped(np.shape(frame), (1, 3, 4)):
                raise EnvError(self._no_image(f"render() returned {_describe(frame)}"))
        image = None if self._render else space if self._key is None else space[self._key]
        floats = isinstance(image, spaces.Box) and np.issubdtype(image.dtype, np.floating)
        self._scale = 255 if floats and image.high.max() <= 1 else 1  # Float images in [0, 1].
        if isinstance(space, spaces.Dict):
            self._extra = {k: v for k, v in space.spaces.items() if k != self._key and _numeric(v)}
        else:
            self._extra = {"obs": space} if self._render and _numeric(space) else {}

    def _make(self, gymnasium, kwargs):
        try:
            return gymnasium.make(self._id, **kwargs)
        except TypeError as e:
            raise EnvError(f"argument --env_kwargs: gymnasium.make({self._id!r}, **{kwargs}) failed ({e})") from None

    def _no_image(self, render):
        return (
            f"gym_{self._id} offers no image to learn from: its observation space {self._env.observation_space} is "
            "not an image (HxWxC, C 1 or 3), has no image entry (image, pixels, rgb or the only HxWxC Box), and "
            f"{render}. Dreamer learns from pixels: give the environment an image observation or an rgb_array "
            "render mode"
        )

    def _check_actions(self, space):
        if isinstance(space, spaces.Box) and len(space.shape) == 1:
            with np.errstate(over="ignore", invalid="ignore"):  # Bounds of ±inf, or ±float32 max: no span.
                if np.isfinite(space.high - space.low).all():
                    return
        if isinstance(space, spaces.Discrete):
            return
        raise EnvError(
            f"gym_{self._id} has the action space {space}, which Dreamer does not take: use a Box (1-D, finite "
            "bounds less than its dtype's range apart) or a Discrete (e.g. wrap the environment to flatten its "
            "actions or bound them, and register the wrapped one)"
        )

    @property
    def obs_space(self):
        extra = {_key(k): v for k, v in self._extra.items()}
        return {"image": spaces.Box(0, 255, self._size + (3,), np.uint8), **extra}

    @property
    def action_space(self):
        return self._env.action_space

    def reset(self, seed=None):
        self._obs, _ = self._env.reset(seed=self._seed if seed is None else seed)
        self._seed = None  # Without a seed per episode, seed the first reset only; later ones continue the RNG.
        return self.observe()

    def step(self, action, render=True):
        space = self._env.action_space
        if isinstance(space, spaces.Discrete):
            action = space.start + int(action)
        else:  # Rescaled actions can leave the bounds by a rounding error.
            action = np.clip(action, space.low, space.high).astype(space.dtype)
        self._obs, reward, terminated, truncated, _ = self._env.step(action)
        # A truncated episode (a time limit) ends without a terminal state.
        info = {"discount": np.array(0.0 if terminated else 1.0, np.float32)}
        return self.observe() if render else {}, float(reward), terminated or truncated, info

    def observe(self):
        obs = self._obs if isinstance(self._obs, dict) else {"obs": self._obs}
        extra = {_key(k): np.asarray(obs[k]).reshape(np.shape(obs[k]) or (1,)) for k in self._extra}
        if self._render:
            image = self._env.render()
        else:
            image = self._obs if self._key is None else self._obs[self._key]
        return {"image": _frame(image, self._size, self._scale), **extra}

    def close(self):
        self._env.close()


def _image_shaped(shape, channels=(1, 3)):
    return len(shape) == 3 and shape[-1] in channels and min(shape[:2]) > 1


def _image_key(space):
    """Where an observation space keeps its image: None for the observation itself, a Dict key, or False."""
    image = lambda s: isinstance(s, spaces.Box) and _image_shaped(s.shape)
    if image(space):
        return None
    if isinstance(space, spaces.Dict):
        named = [k for k in Gym.IMAGE_KEYS if image(space.spaces.get(k))]
        shaped = [k for k, s in space.spaces.items() if image(s)]
        if named or len(shaped) == 1:
            return (named or shaped)[0]
    return False


def _numeric(space):
    return isinstance(space, (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary))


def _key(key):
    return f"obs_{key}" if key in Gym.RESERVED else key


def _describe(value):
    return f"an array of shape {np.shape(value)}" if isinstance(value, np.ndarray) else repr(value)[:80]


def _frame(image, size, scale=1):
    """A uint8 HxWx3 frame of `size`; grayscale is repeated to three channels."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(image * scale, 0, 255).astype(np.uint8)
    image = image[..., :3] if image.shape[-1] >= 3 else image[..., 0]
    if image.shape[:2] != size:
        image = np.asarray(Image.fromarray(image).resize(size[::-1], Image.Resampling.BILINEAR))
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, -1)


class Wrapper:
    def __init__(self, env):
        self._env = env

    def __getattr__(self, name):
        if name.startswith("__"):  # Keeps pickle and copy from recursing.
            raise AttributeError(name)
        return getattr(self._env, name)


class ActionRepeat(Wrapper):
    def __init__(self, env, amount, render_every=False):
        super().__init__(env)
        self._amount = amount
        # Only the last frame reaches the agent, so skip rendering the others.
        self._lazy = not render_every and hasattr(env, "observe")

    def step(self, action):
        done, total, current = False, 0.0, 0
        while current < self._amount and not done:
            if self._lazy:
                obs, reward, done, info = self._env.step(action, render=False)
            else:
                obs, reward, done, info = self._env.step(action)
            total += reward
            current += 1
        if self._lazy:
            obs = self._env.observe()
        return obs, total, done, info


class NormalizeActions(Wrapper):
    def __init__(self, env):
        super().__init__(env)
        space = env.action_space
        self._mask = np.isfinite(space.low) & np.isfinite(space.high)
        self._low = np.where(self._mask, space.low, -1)
        self._high = np.where(self._mask, space.high, 1)

    @property
    def action_space(self):
        space = self._env.action_space
        low = np.where(self._mask, -1, space.low).astype(np.float32)
        high = np.where(self._mask, 1, space.high).astype(np.float32)
        return spaces.Box(low, high, dtype=np.float32)

    def step(self, action):
        original = (action + 1) / 2 * (self._high - self._low) + self._low
        return self._env.step(np.where(self._mask, original, action))


class TimeLimit(Wrapper):
    def __init__(self, env, duration):
        super().__init__(env)
        self._duration, self._step = duration, None

    def step(self, action):
        assert self._step is not None, "Must reset environment."
        obs, reward, done, info = self._env.step(action)
        self._step += 1
        if self._step >= self._duration:
            done = True
            info.setdefault("discount", np.array(1.0, np.float32))
            self._step = None
        return obs, reward, done, info

    def reset(self, **kwargs):
        self._step = 0
        return self._env.reset(**kwargs)


class OneHotBox(spaces.Box):
    def __init__(self, n, seed=None):
        super().__init__(0, 1, (n,), np.float32, seed)

    def sample(self, mask=None, probability=None):
        action = np.zeros(self.shape, np.float32)
        action[self.np_random.integers(self.shape[0])] = 1
        return action

    def contains(self, x):
        x = np.asarray(x)
        return x.shape == self.shape and np.isin(x, (0, 1)).all() and x.sum() == 1


class OneHotAction(Wrapper):
    def __init__(self, env):
        super().__init__(env)
        self._space = OneHotBox(env.action_space.n)

    @property
    def action_space(self):
        return self._space

    def step(self, action):
        if not self._space.contains(action):
            raise ValueError(
                f"OneHotAction expects a one-hot vector of length {self._space.shape[0]}, "
                f"got {action!r}. For discrete actions the actor must use action_dist onehot."
            )
        return self._env.step(int(np.argmax(action)))


class Collect(Wrapper):
    """Hands each finished episode to the callbacks. An environment that crashes (its worker died or raised) is
    restarted and its episode under way dropped: the step reports it done with `info["crashed"]`. After
    `max_crashes` crashes without a finished episode between them, the WorkerError is raised."""

    def __init__(self, env, callbacks=(), precision=32, max_crashes=3):
        super().__init__(env)
        self._callbacks, self._precision, self._episode = callbacks, precision, None
        self._max_crashes, self._crashes, self._obs = max_crashes, 0, None

    def step(self, action, blocking=True):
        assert self._episode is not None, "Must reset environment."
        promise = self._call("step", action)

        def receive():
            try:
                obs, reward, done, info = promise()
            except (WorkerError, EnvError) as e:
                self._crashed(e)
                return self._obs, 0.0, True, {"crashed": True}
            obs = self._obs = {k: self._convert(v) for k, v in obs.items()}
            discount = info.get("discount", np.array(1 - float(done)))
            transition = {
                **obs,
                "action": action,
                "reward": reward,
                "discount": discount,
            }
            self._episode.append(transition)
            if done:
                episode = {k: [t[k] for t in self._episode] for k in self._episode[0]}
                episode = {k: self._convert(v) for k, v in episode.items()}
                self._episode, self._crashes = None, 0
                info["episode"] = episode
                for callback in self._callbacks:
                    callback(episode)
            return obs, reward, done, info

        return receive() if blocking else receive

    def reset(self, blocking=True, **kwargs):
        promise = self._reset(kwargs)

        def receive():
            nonlocal promise
            while True:
                try:
                    obs = promise()
                    break
                except (WorkerError, EnvError) as e:
                    self._crashed(e)
                    promise = self._reset(kwargs)
            obs = self._obs = {k: self._convert(v) for k, v in obs.items()}
            space = self._env.action_space
            action = np.zeros(space.shape, space.dtype)
            self._episode = [{**obs, "action": action, "reward": 0.0, "discount": 1.0}]
            return obs

        return receive() if blocking else receive

    def _reset(self, kwargs):
        if self._crashes and kwargs.get("seed") is not None:  # Another seed, in case the seed is what crashes it.
            kwargs = {**kwargs, "seed": (kwargs["seed"] + self._crashes) % 2**31}
        return self._call("reset", **kwargs)

    def _crashed(self, error):
        steps = len(self._episode) - 1 if self._episode else 0
        self._episode, self._crashes = None, self._crashes + 1
        text = str(error).strip()
        reason = (text.splitlines() or [type(error).__name__])[-1]
        if self._crashes >= self._max_crashes:
            print(text, flush=True)  # The environment's traceback, to find what crashes it.
            raise WorkerError(
                f"the environment crashed {self._crashes} times without finishing an episode in between; "
                f"the last time: {reason}"
            ) from error
        print(
            f"The environment crashed: restarting it, dropping its episode under way ({steps} agent steps). {reason}",
            flush=True,
        )
        try:
            self._env.restart()
        except Exception as e:  # noqa: BLE001 (no process or thread to be had, e.g. out of memory)
            raise WorkerError(f"the environment crashed and could not restart: {type(e).__name__}: {e}") from e

    def _call(self, name, *args, **kwargs):
        if isinstance(self._env, Async):
            return getattr(self._env, name)(*args, blocking=False, **kwargs)
        result = getattr(self._env, name)(*args, **kwargs)
        return lambda: result

    def _convert(self, value):
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.floating):
            return value.astype(np.float16 if self._precision == 16 else np.float32)
        if np.issubdtype(value.dtype, np.signedinteger):
            return value.astype(np.int32)
        return value  # uint8, bool and others keep their dtype.


class WorkerError(RuntimeError):
    pass


_ACCESS, _CALL, _RESULT, _EXCEPTION, _CLOSE, _ENV_ERROR = range(6)


class Async:
    def __init__(self, ctor, strategy="process"):
        if strategy not in ("none", "thread", "process"):
            raise ValueError(f"Unknown strategy '{strategy}': valid ones are 'none', 'thread', 'process'.")
        self._ctor, self._strategy, self._cache = ctor, strategy, {}
        self._start()
        if strategy != "none":
            atexit.register(self.close)

    def _start(self):
        self._error = None
        if self._strategy == "none":
            self._env = self._ctor()
        elif self._strategy == "thread":
            ours, conn = multiprocessing.Pipe()
            worker = threading.Thread(target=_worker, args=(conn, self._ctor), daemon=True)
            worker.start()
            self._conn, self._worker = ours, worker
        else:
            context = multiprocessing.get_context("spawn")
            ours, conn = context.Pipe()
            worker = context.Process(target=_worker, args=(conn, self._ctor), daemon=True)
            try:
                _start_without_main(worker, self._ctor)
            finally:
                conn.close()  # So that a dead worker shows up as EOF.
            self._conn, self._worker = ours, worker
        self._closed = False  # Only once it runs: close() joins it.

    def restart(self):
        """A fresh environment from the same constructor, in a fresh worker (the spaces stay cached). In process
        (strategy none) a constructor that fails is reported at the next call, as a worker reports it."""
        self.close(timeout=1)
        try:
            self._start()
        except Exception:  # noqa: BLE001 (whatever the environment raises)
            if self._strategy != "none":
                raise
            self._error, self._closed = WorkerError(f"Error in the environment:\n{traceback.format_exc()}"), False

    @property
    def obs_space(self):
        return self.access("obs_space")

    @property
    def action_space(self):
        return self.access("action_space")

    def access(self, name):
        if name not in self._cache:
            if self._strategy == "none":
                self._cache[name] = getattr(self._env, name)
            else:
                self._cache[name] = self._request(_ACCESS, name)()
        return self._cache[name]

    def call(self, name, *args, blocking=True, **kwargs):
        if self._strategy == "none":
            try:
                if self._error:  # Its restart failed.
                    raise self._error
                result = getattr(self._env, name)(*args, **kwargs)
            except WorkerError as e:
                error = e
            except Exception:  # noqa: BLE001 (whatever the environment raises, as a worker would report it)
                error = WorkerError(f"Error in the environment:\n{traceback.format_exc()}")
            else:
                return result if blocking else (lambda: result)
            if blocking:
                raise error from None
            return functools.partial(_raise, error)
        promise = self._request(_CALL, (name, args, kwargs))
        return promise() if blocking else promise

    def step(self, action, blocking=True):
        return self.call("step", action, blocking=blocking)

    def reset(self, blocking=True, **kwargs):
        return self.call("reset", blocking=blocking, **kwargs)

    def close(self, timeout=5):
        if self._closed:
            return
        self._closed = True
        if self._strategy == "none":
            with contextlib.suppress(Exception):  # It may be what crashed.
                getattr(self._env, "close", lambda: None)()
            return
        try:
            self._conn.send((_CLOSE, None))
        except OSError:
            pass
        self._worker.join(timeout)
        if self._strategy == "process" and self._worker.is_alive():
            self._worker.terminate()
            self._worker.join(1)
            if self._worker.is_alive():
                self._worker.kill()
                self._worker.join(1)
        self._conn.close()

    def _request(self, message, payload):
        if self._closed:
            raise WorkerError("The environment worker is closed.")
        try:
            self._conn.send((message, payload))
        except OSError:
            pass  # The worker is gone; receive() reports why.
        return self._receive

    def _receive(self):
        try:
            message, payload = self._conn.recv()
        except (EOFError, OSError):
            raise WorkerError(self._death_message()) from None
        if message == _EXCEPTION:
            raise WorkerError(f"Error in the environment worker:\n{payload}")
        if message == _ENV_ERROR:  # Bad flags: the message without the worker's traceback.
            raise EnvError(payload)
        return payload

    def _death_message(self):
        self._worker.join(1)
        code = getattr(self._worker, "exitcode", None)
        message = f"The environment worker died (exit code {code})."
        if code is not None and code < 0:
            message += f" It was killed by {signal.Signals(-code).name}."
        if code == -signal.SIGSEGV:
            message += " If it was rendering, check it did not import TensorFlow."
        return message


def _raise(error):
    raise error


def _start_without_main(process, ctor):
    # A spawned child re-imports the main script (e.g. dreamer.py and with it
    # TensorFlow, which breaks rendering); skip that unless the ctor lives there.
    if b"__main__" in pickle.dumps(ctor):
        return process.start()
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        process.start()
    finally:
        sys.modules["__main__"] = main


def _worker(conn, ctor):
    # The main process decides when workers stop (close()); a Ctrl-C or a polite kill sent to the
    # whole process group must not kill them while it writes its checkpoint.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    env, error = None, None
    try:
        env = ctor()
    except EnvError as e:
        error = (_ENV_ERROR, str(e))
    except Exception:
        error = (_EXCEPTION, traceback.format_exc())
    try:
        while True:
            try:
                message, payload = conn.recv()
            except (EOFError, KeyboardInterrupt):
                break
            if message == _CLOSE:
                break
            if error:  # The ctor failed: answer every request with its error.
                conn.send(error)
                continue
            try:
                if message == _ACCESS:
                    result = getattr(env, payload)
                else:
                    name, args, kwargs = payload
                    result = getattr(env, name)(*args, **kwargs)
                conn.send((_RESULT, result))
            except Exception:
                conn.send((_EXCEPTION, traceback.format_exc()))
    finally:
        if env is not None and hasattr(env, "close"):
            try:
                env.close()
            except Exception:
                pass
        conn.close()
