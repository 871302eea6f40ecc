"""Small Gymnasium environments for the tests, registered on import: `--env_module gym_envs` (from tests/)."""

import os
import pathlib
import signal

import gymnasium
import numpy as np
from gymnasium import spaces


class PixelReach(gymnasium.Env):
    """Image observations (48x48 RGB) and a Box action in [0, 2]^2; the reward is the sum of the action."""

    def __init__(self):
        self.observation_space = spaces.Box(0, 255, (48, 48, 3), np.uint8)
        self.action_space = spaces.Box(0.0, 2.0, (2,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self._state = self.np_random.uniform(0, 2, 2)
        return self._image(), {}

    def step(self, action):
        assert self.action_space.contains(action), action
        self._state = np.asarray(action, np.float64)
        return self._image(), float(np.sum(action)), False, False, {}

    def _image(self):
        image = np.zeros((48, 48, 3), np.uint8)
        x, y = (self._state / 2 * 47).astype(int)
        image[y, x] = 255
        return image


class Crashing(PixelReach):
    """PixelReach that crashes in the episodes whose indices are in `crash`, counted across restarts by the lines of
    the file `count` (one per reset): at their 5th step or (`where` "reset") in their reset, by raising or (`how`
    "kill") by killing its process, as a segfault or the OOM killer would."""

    def __init__(self, count, crash=(), how="raise", where="step"):
        super().__init__()
        self._count, self._crash, self._how, self._where = pathlib.Path(count), set(crash), how, where

    def reset(self, seed=None, options=None):
        with self._count.open("a") as f:
            f.write("reset\n")
        self._episode, self._steps = len(self._count.read_text().splitlines()) - 1, 0
        if self._where == "reset":
            self._crash_if_due()
        return super().reset(seed=seed, options=options)

    def step(self, action):
        self._steps += 1
        if self._where == "step" and self._steps == 5:
            self._crash_if_due()
        return super().step(action)

    def _crash_if_due(self):
        if self._episode in self._crash:
            if self._how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("simulator lost")


class Signalling(PixelReach):
    """PixelReach that sends SIGTERM to its own process at the `at`-th step of all its instances, counted by the
    lines of the file `count`: a stop signal at a known point of a run whose environments step in its process."""

    def __init__(self, count, at):
        super().__init__()
        self._count, self._at = pathlib.Path(count), at

    def step(self, action):
        with self._count.open("a") as f:
            f.write("step\n")
        if len(self._count.read_text().splitlines()) == self._at:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().step(action)


class VectorDiscrete(gymnasium.Env):
    """Vector observations, Discrete(3, start=1) actions and 40x30 render() frames; reward 1 for action 3."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, render_mode=None):
        self.render_mode = render_mode
        self.observation_space = spaces.Box(-1, 1, (4,), np.float32)
        self.action_space = spaces.Discrete(3, start=1)
        self.actions = []

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self._obs = self.np_random.uniform(-1, 1, 4).astype(np.float32)
        return self._obs, {}

    def step(self, action):
        assert self.action_space.contains(action), action
        self.actions.append(int(action))
        self._obs = np.roll(self._obs, 1)
        return self._obs, float(action == 3), False, False, {}

    def render(self):
        frame = np.zeros((30, 40, 3), np.uint8)
        frame[..., 0] = int((self._obs[0] + 1) * 127)
        return frame


class Terminating(gymnasium.Env):
    """A Dict observation with grayscale `pixels` and a `position`; it terminates when the position leaves [-1, 1]."""

    def __init__(self, speed=0.5):  # Make it slower with --env_kwargs.
        self.observation_space = spaces.Dict(
            pixels=spaces.Box(0, 255, (64, 64, 1), np.uint8),
            position=spaces.Box(-np.inf, np.inf, (1,), np.float32),
        )
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self._speed = speed

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self._position = 0.0
        return self._obs(), {}

    def step(self, action):
        self._position += self._speed * (float(action[0]) + 0.5)  # Drifts right: ends within a few steps.
        terminated = abs(self._position) > 1
        return self._obs(), 1.0, terminated, False, {}

    def _obs(self):
        pixels = np.full((64, 64, 1), int(np.clip(self._position + 1, 0, 2) * 100), np.uint8)
        return {"pixels": pixels, "position": np.array([self._position], np.float32)}


class NoImage(gymnasium.Env):
    """Vector observations and no render modes: nothing to learn from pixels."""

    def __init__(self, render_mode=None):
        self.observation_space = spaces.Box(-1, 1, (3,), np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, False, False, {}

    def render(self):
        return None


class MultiAction(PixelReach):
    """Images, but MultiDiscrete actions."""

    def __init__(self):
        super().__init__()
        self.action_space = spaces.MultiDiscrete([2, 3])


class HugeBounds(PixelReach):
    """Images, but a Box of ±float32 max, as some environments write "unbounded": no span to rescale."""

    def __init__(self):
        super().__init__()
        self.action_space = spaces.Box(-3.4e38, 3.4e38, (2,), np.float32)


gymnasium.register("PixelReach-v0", entry_point=PixelReach)
gymnasium.register("Crashing-v0", entry_point=Crashing)
gymnasium.register("Signalling-v0", entry_point=Signalling)
gymnasium.register("VectorDiscrete-v0", entry_point=VectorDiscrete, max_episode_steps=30)
gymnasium.register("Terminating-v0", entry_point=Terminating)
gymnasium.register("NoImage-v0", entry_point=NoImage)
gymnasium.register("MultiAction-v0", entry_point=MultiAction)
gymnasium.register("HugeBounds-v0", entry_point=HugeBounds)
