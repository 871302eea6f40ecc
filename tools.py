import contextlib
import dataclasses
import errno
import io
import itertools
import json
import os
import pathlib
import re
import shutil
import sys
import tempfile
import time
import warnings

import imageio
import imageio.v3 as iio
import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions


class AttrDict(dict):
    __getattr__ = dict.__getitem__
    __setattr__ = dict.__setitem__


# Episode store.


def save_episodes(directory, episodes):
    """Write episodes as <index>-<length>.npz, numbered on from the folder's last; a kill or a full disk never
    leaves a partial file under a final name."""
    directory = pathlib.Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    # Numbered, not timestamped: the order (the store's age order) is the save order, whatever the clock says.
    numbers = [episode_order(f)[1] for f in directory.glob("*.npz") if episode_order(f)[0]]
    first = max(numbers, default=-1) + 1
    filenames = []
    for index, episode in enumerate(episodes, first):
        filename = directory / f"{index:06d}-{len(episode['reward'])}.npz"
        with io.BytesIO() as buffer:
            np.savez_compressed(buffer, **episode)
            data = buffer.getvalue()
        temp = filename.with_suffix(".tmp")
        with named(temp, remove=True), temp.open("wb") as f:
            f.write(data)
        temp.rename(filename)
        filenames.append(filename)
    return filenames


def write_atomic(path, text):
    """Write a file (text or bytes) whole or not at all: a kill or a full disk leaves the old one."""
    temp = pathlib.Path(path).with_suffix(".tmp")
    with named(temp, remove=True):
        temp.write_bytes(text) if isinstance(text, bytes) else temp.write_text(text)
    temp.rename(path)


def append_line(path, line):
    """Append a line to a text file whole or not at all: a write that fails (a full disk) is cut off again, so
    that the next line does not continue a torn one."""
    data = (line + "\n").encode()
    with named(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


@contextlib.contextmanager
def named(path, remove=False):
    """Writes to `path`: an OSError raised within names it (one from a write names no file), and with `remove`
    the (temporary) file is deleted, so that a failed write leaves nothing behind."""
    try:
        yield
    except OSError as e:
        if remove:
            with contextlib.suppress(OSError):
                pathlib.Path(path).unlink(missing_ok=True)
        if e.filename is None:
            e.filename = str(path)
        raise


def episode_order(filename):
    """Sort key in save order: numbered names (<index>-<length>) after older <timestamp>-<uuid>-<length> ones."""
    stem = pathlib.Path(filename).stem
    first = stem.split("-", 1)[0]
    return (1, int(first), stem) if first.isdigit() else (0, 0, stem)


def keyed_random(*key):
    """A NumPy RandomState given by a key of non-negative ints (seed, counters), the same after a restart."""
    return np.random.RandomState(np.random.SeedSequence(key).generate_state(4))


def keyed_seed(*key):
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def episode_length(filename):
    """Transitions in an episode file, read from its name: the first entry is the reset observation."""
    return int(pathlib.Path(filename).stem.rsplit("-", 1)[-1]) - 1


def count_steps(directory, action_repeat):
    """Env steps (frames, action repeat included) on disk, from file names alone."""
    directory = pathlib.Path(directory).expanduser()
    return action_repeat * sum(episode_length(f) for f in directory.glob("*.npz"))


def count_episodes(directory):
    directory = pathlib.Path(directory).expanduser()
    return len(list(directory.glob("*.npz")))


class EpisodeStore:
    """The newest `capacity` agent steps of an episode folder, held in memory.

    Files stay on disk; only the in-memory cache is bounded, oldest episodes evicted first.
    """

    def __init__(self, directory, capacity=None, seed=0):
        self._directory = pathlib.Path(directory).expanduser()
        self._capacity = capacity
        self._seed = seed
        self._random = np.random.RandomState(seed)
        self._episodes = {}  # filename -> episode, insertion order is age order.
        self._seen = set()
        self._steps = 0
        self._eligible = {}  # chunk length -> episodes at least that long

    def __len__(self):
        return len(self._episodes)

    @property
    def steps(self):
        return self._steps

    def update(self):
        """Load episodes added to the folder since the last call, newest first, up to the capacity."""
        new = sorted(set(self._directory.glob("*.npz")) - self._seen, key=episode_order, reverse=True)
        loaded = []
        budget = self._capacity
        for filename in new:
            self._seen.add(filename)
            if budget is not None and budget <= 0:
                continue
            try:
                with filename.open("rb") as f:
                    data = np.load(f)
                    episode = {k: data[k] for k in data.keys()}
            except Exception as e:
                warnings.warn(f"Skipping unreadable episode {filename.name}: {e}")
                continue
            loaded.append((filename, episode))
            if budget is not None:
                budget -= episode_length(filename)
        if not loaded:
            return 0
        # A new dict, swapped in whole: a data pipeline thread may still be sampling from the old one.
        episodes, steps = dict(self._episodes), self._steps
        for filename, episode in reversed(loaded):
            episodes[filename] = episode
            steps += episode_length(filename)
        while self._capacity and steps > self._capacity and len(episodes) > 1:
            filename = next(iter(episodes))
            del episodes[filename]
            steps -= episode_length(filename)
        self._episodes, self._steps, self._eligible = episodes, steps, {}
        return len(loaded)

    def sample(self, length, balance=False, random=None):
        """A chunk of `length` consecutive steps from a uniformly chosen episode."""
        random = self._random if random is None else random
        episodes, keys = self._episodes, self._long_enough(length)
        if not keys:
            raise ValueError(f"No episode of at least {length} steps in {self._directory}.")
        episode = episodes[keys[random.randint(len(keys))]]
        total = len(episode["reward"])
        available = total - length
        if balance:  # Favour chunks that end at the episode's last step.
            index = min(random.randint(0, total), available)
        else:
            index = random.randint(0, available + 1)
        return {k: v[index : index + length] for k, v in episode.items()}

    @property
    def longest(self):
        """Steps of the longest episode held (0 if none)."""
        return max((len(episode["reward"]) for episode in self._episodes.values()), default=0)

    def _long_enough(self, length):
        # Cached per update: sampling runs for every chunk of every batch, the folder changes rarely.
        eligible = self._eligible
        if length not in eligible:
            eligible[length] = [k for k in self._episodes if episode_length(k) + 1 >= length]
        return eligible[length]

    def batches(self, batch_size, length, balance=False, start=None):
        """Batches from the folder as it grows; or, given `start`, batch k >= start drawn with a random state of
        (seed, k) from the episodes held now (the caller updates the store): the same batches whenever it runs."""
        for index in itertools.count(start or 0):
            if start is None:
                self.update()
            random = None if start is None else keyed_random(self._seed, index)
            chunks = [self.sample(length, balance, random) for _ in range(batch_size)]
            yield {k: np.stack([c[k] for c in chunks]) for k in chunks[0]}


def make_dataset(store, config, start=None):
    """Batches of `batch_size` chunks, preprocessed and prefetched; a strategy splits each one across replicas.

    With `start`, the batches from that index on of the episodes in the folder now (see EpisodeStore.batches)."""
    store.update()
    example = next(store.batches(config.batch_size, config.batch_length, config.dataset_balance))
    signature = {k: tf.TensorSpec(v.shape, v.dtype) for k, v in example.items()}
    generator = lambda: store.batches(config.batch_size, config.batch_length, config.dataset_balance, start)
    dataset = tf.data.Dataset.from_generator(generator, output_signature=signature)
    dataset = dataset.map(lambda x: preprocess(x, config))
    # Every worker samples its own batches (its store has its own seed): sharding would only discard some.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    # Nothing here is tuned, and with autotuning on, dropping the iterator of the last burst waits 1-3 s for
    # tf.data's tuning thread, before every burst.
    options.autotune.enabled = False
    return dataset.with_options(options).prefetch(4)


def preprocess(obs, config):
    obs = obs.copy()
    obs["image"] = tf.cast(obs["image"], tf.float32) / 255.0 - 0.5
    if "reward" in obs:
        clip = dict(none=lambda x: x, tanh=tf.tanh)[config.clip_rewards]
        obs["reward"] = clip(tf.cast(obs["reward"], tf.float32))
    for key in ("action", "discount"):
        if key in obs:
            obs[key] = tf.cast(obs[key], tf.float32)
    return obs


class Every:
    """A schedule in env steps: due at the first step, then at the first step at or after each multiple of `every`.
    Its next due step is a variable, for the checkpoint."""

    def __init__(self, every):
        self.every = every
        self.next = tf.Variable(0, dtype=tf.int64, trainable=False)

    @property
    def started(self):
        return self.next.numpy() > 0

    def due(self, step):
        return step >= self.next.numpy()

    def done(self, step):
        self.next.assign((step // self.every + 1) * self.every)


# Simulation.


@dataclasses.dataclass
class Simulation:
    """Where `simulate` left the environments, for the next call: which await a reset, the agent steps of their
    episodes under way, their last observations and the agent's state; and what the call did."""

    done: np.ndarray
    length: np.ndarray
    obs: list
    agent: object = None
    steps: int = 0  # Agent steps the call took, but for those of episodes that crashed.
    episodes: int = 0  # Episodes the call finished.
    stopped: bool = False  # Whether `stop()` ended it before its steps or episodes.

    @classmethod
    def start(cls, envs):
        return cls(np.ones(len(envs), bool), np.zeros(len(envs), np.int32), [None] * len(envs))


def simulate(agent, envs, steps=0, episodes=0, state=None, reset_seed=None, stop=None, on_step=None):
    """Step `envs` with `agent` for `steps` agent steps or `episodes` episodes, from `state` (a Simulation).

    `reset_seed(i, step)` seeds env i's reset at agent step `step` of this call; `on_step()` runs after every step
    of all envs. Once `stop()` is true, the call returns where an episode ends (with none under way when all end
    together, as fixed-length ones do). An episode that crashed (`info["crashed"]`, see wrappers.Collect) counts
    neither as an episode nor in the steps."""
    state = dataclasses.replace(state or Simulation.start(envs), steps=0, episodes=0, stopped=False)
    while (steps and state.steps < steps) or (episodes and state.episodes < episodes):
        if stop and state.done.any() and stop():
            state.stopped = True
            break
        if state.done.any():
            indices = np.flatnonzero(state.done)
            seeds = [{} if reset_seed is None else {"seed": reset_seed(i, state.steps)} for i in indices]
            promises = [envs[i].reset(blocking=False, **kw) for i, kw in zip(indices, seeds)]
            for index, promise in zip(indices, promises):
                state.obs[index] = promise()
        batch = {k: np.stack([o[k] for o in state.obs]) for k in state.obs[0]}
        action, state.agent = agent(batch, state.done, state.agent)
        promises = [e.step(a, blocking=False) for e, a in zip(envs, np.asarray(action))]
        obs, _, done, info = zip(*[p() for p in promises])
        state.obs, state.done = list(obs), np.stack(done)
        crashed = np.array([bool(i.get("crashed")) for i in info])
        state.episodes += int((state.done & ~crashed).sum())
        state.length += 1
        state.steps += len(envs) - int(state.length[crashed].sum())  # A crashed episode's steps are dropped.
        state.length *= 1 - state.done
        if on_step:
            on_step()
    return state


class Progress:
    """Progress of long work on the terminal (stderr, never metrics.jsonl): done of total, rate and time left, redrawn
    in place on a terminal at most every half second, a line every `every` seconds where stderr is a file or pipe."""

    def __init__(self, what, total, unit, every=10.0, stream=None):
        self._what, self.total, self._unit = what, total, unit
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._every = 0.5 if self._tty else every
        self._start = self._last = time.time()
        self.done = 0

    def __call__(self, amount=1):
        self.done += amount
        if time.time() - self._last >= self._every:
            self._last = time.time()
            rate = self.done / (self._last - self._start)
            left = f"{duration((self.total - self.done) / rate)} left" if rate else "starting"
            text = f"{self._what}: {self.done}/{self.total} {self._unit}, {rate:.3g} {self._unit}/s, {left}"
            self._stream.write(f"\r\033[K{text}\r" if self._tty else f"{text}\n")  # Later lines overwrite it.
            self._stream.flush()

    def close(self):
        if self._tty and self._last > self._start:
            self._stream.write("\r\033[K")
            self._stream.flush()


def duration(seconds):
    """`seconds` as a rounded duration: 45 s, 12 min, 3.4 h, 5.2 d."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.2g} {unit}" if unit != "min" else f"{seconds / size:.0f} min"
    return f"{seconds:.0f} s"


# Distributions.


class TanhBijector(tfp.bijectors.Bijector):
    def __init__(self, validate_args=False, name="tanh"):
        super().__init__(forward_min_event_ndims=0, validate_args=validate_args, name=name)

    def _forward(self, x):
        return tf.nn.tanh(x)

    def _inverse(self, y):
        # Clip so that atanh stays finite for samples that saturated to +-1 in float32.
        y = tf.where(tf.abs(y) <= 1.0, tf.clip_by_value(y, -0.99999997, 0.99999997), y)
        return tf.atanh(y)

    def _forward_log_det_jacobian(self, x):
        log2 = tf.math.log(tf.constant(2.0, dtype=x.dtype))
        return 2.0 * (log2 - x - tf.nn.softplus(-2.0 * x))


class SampleDist:
    """Mode and entropy of a distribution without closed forms, estimated from samples (stateless with a `seed`)."""

    def __init__(self, dist, samples=100):
        self._dist = dist
        self._samples = samples

    def __getattr__(self, name):
        return getattr(self._dist, name)

    def mode(self, seed=None):
        sample = self._dist.sample(self._samples, seed=seed)
        logprob = self._dist.log_prob(sample)
        # Pick, for every batch element, its own most likely sample.
        index = tf.argmax(logprob, 0)
        sample = tf.experimental.numpy.moveaxis(sample, 0, -2)
        return tf.gather(sample, index, axis=-2, batch_dims=len(index.shape))

    def entropy(self, seed=None):
        sample = self._dist.sample(self._samples, seed=seed)
        return -tf.reduce_mean(self._dist.log_prob(sample), 0)


class OneHotDist(tfd.OneHotCategorical):
    """One-hot categorical whose samples pass straight-through gradients to the probabilities."""

    def __init__(self, logits=None, probs=None, dtype=tf.float32, **kwargs):
        super().__init__(logits=logits, probs=probs, dtype=dtype, **kwargs)

    def mode(self, seed=None):  # No sampling: `seed` as for SampleDist.
        return tf.one_hot(tf.argmax(self.logits_parameter(), -1), self.event_shape_tensor()[0], dtype=self.dtype)

    def sample(self, sample_shape=(), seed=None, name="sample"):
        sample = tf.stop_gradient(super().sample(sample_shape, seed, name))
        probs = self.probs_parameter()
        return sample + tf.cast(probs - tf.stop_gradient(probs), sample.dtype)

    def entropy(self, seed=None):
        return super().entropy()


def lambda_return(reward, value, pcont, bootstrap, lambda_, axis):
    """TD(lambda) returns of the paper (eq. 6): V_lambda = r + gamma ((1 - lambda) v' + lambda V_lambda')."""
    # lambda=1 gives the discounted Monte Carlo return, lambda=0 the one-step return.
    assert reward.shape.ndims == value.shape.ndims, (reward.shape, value.shape)
    if isinstance(pcont, (int, float)):
        pcont = pcont * tf.ones_like(reward)
    dims = list(range(reward.shape.ndims))
    dims = [axis] + dims[1:axis] + [0] + dims[axis + 1 :]
    if axis != 0:
        reward = tf.transpose(reward, dims)
        value = tf.transpose(value, dims)
        pcont = tf.transpose(pcont, dims)
    if bootstrap is None:
        bootstrap = tf.zeros_like(value[-1])
    next_values = tf.concat([value[1:], bootstrap[None]], 0)
    inputs = reward + pcont * next_values * (1 - lambda_)
    returns = tf.scan(
        lambda agg, cur: cur[0] + cur[1] * lambda_ * agg,
        (inputs, pcont),
        bootstrap,
        reverse=True,
    )
    if axis != 0:
        returns = tf.transpose(returns, dims)
    return returns


# Optimization.


class Optimizer:
    """Adam with global-norm clipping, decoupled weight decay and, for float16, dynamic loss scaling.

    Under a tf.distribute strategy the gradients are averaged over all replicas before clipping, so that the
    update is that of the global batch whatever the number of replicas (Keras would clip each replica's own).
    """

    def __init__(self, name, variables, lr, eps, clip=None, wd=0.0, wd_pattern=r".*", precision=32):
        self._name = name
        self._variables = variables
        self._clip = clip
        self._wd = wd
        self._wd_pattern = wd_pattern
        self.opt = keras.optimizers.Adam(lr, epsilon=eps)
        self._scaled = str(precision) == "16"
        if self._scaled:
            self.opt = keras.optimizers.LossScaleOptimizer(self.opt)
        self.opt.build(variables)

    def __call__(self, tape, loss):
        with tape:
            scaled = self.opt.scale_loss(loss) if self._scaled else loss
        grads = tape.gradient(scaled, self._variables)
        context = tf.distribute.get_replica_context()
        grads = context.all_reduce(tf.distribute.ReduceOp.MEAN, grads)
        scale = tf.cast(self.opt.dynamic_scale, tf.float32) if self._scaled else 1.0
        norm = tf.linalg.global_norm(grads) / scale
        if self._clip:  # Non-finite float16 gradients stay non-finite: the loss scale optimizer skips them.
            grads, _ = tf.clip_by_global_norm(grads, self._clip * scale, use_norm=norm * scale)
        if self._wd:
            context.merge_call(self._apply_weight_decay)
        # Keras sums the gradients over replicas once more; they are already the same on every replica.
        replicas = context.num_replicas_in_sync
        self.opt.apply([g / replicas for g in grads] if replicas > 1 else grads, self._variables)
        metrics = {f"{self._name}_grad_norm": norm}
        if self._scaled:  # So that float16 trouble can be read off TensorBoard: the scale falls, steps are skipped.
            metrics[f"{self._name}_loss_scale"] = scale
            metrics[f"{self._name}_skipped"] = 1.0 - tf.cast(tf.math.is_finite(norm), tf.float32)
        return metrics

    def _apply_weight_decay(self, strategy):
        for var in self._variables:
            if re.search(self._wd_pattern, f"{self._name}/{var.path}"):
                strategy.extended.update(var.value, lambda v: v.assign((1 - self._wd) * v), group=False)


def replica_noise(seed, shape, kind="normal"):
    """Stateless noise for this replica's rows of the global batch, `shape` being the replica's own.

    Every replica draws the noise of the whole global batch from the same seed and keeps its rows, so a
    train step samples the same latents and actions however the batch is split across replicas.
    """
    context = tf.distribute.get_replica_context()
    rows, replicas = shape[0], context.num_replicas_in_sync
    full = [rows * replicas, *shape[1:]]
    if kind == "normal":
        noise = tf.random.stateless_normal(full, seed)
    else:  # Uniform in (0, 1), for Gumbel samples.
        noise = tf.random.stateless_uniform(full, seed, minval=1e-6, maxval=1.0 - 1e-6)
    if replicas == 1:
        return noise
    start = tf.cast(context.replica_id_in_sync_group, tf.int32) * rows
    return noise[start : start + rows]


def replica_mean(value):
    """The mean of `value` over all replicas (the value itself without a strategy)."""
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.MEAN, value)


# Summaries.


def encode_gif(frames, fps=20):
    """uint8 frames [T, H, W, C] to GIF bytes, with imageio (no ffmpeg binary)."""
    if frames.shape[-1] == 1:
        frames = frames[..., 0]
    return iio.imwrite("<bytes>", frames, extension=".gif", duration=1000 / fps, loop=0)


def write_video(path, frames, fps=30):
    """uint8 frames [T, H, W, C] as an mp4 (imageio-ffmpeg ships its own ffmpeg binary), whole or not at all. As
    ffmpeg's own write errors pass silently, it writes to a temporary folder, where its file is checked."""
    frames = np.asarray(frames)
    with tempfile.TemporaryDirectory() as temp:
        video = pathlib.Path(temp) / "video.mp4"
        imageio.v2.mimwrite(video, frames, fps=fps, macro_block_size=1)
        if not mp4_complete(video):  # ffmpeg printed why: most likely a full disk.
            full = shutil.disk_usage(temp).free < frames.nbytes
            raise OSError(errno.ENOSPC if full else errno.EIO, "ffmpeg wrote an incomplete mp4", str(video))
        data = video.read_bytes()
    write_atomic(path, data)


def mp4_complete(path):
    """Whether an mp4's top-level boxes fill the file exactly and include the index ('moov', written last)."""
    size, offset, boxes = os.path.getsize(path), 0, set()
    with open(path, "rb") as f:
        while offset + 8 <= size:
            f.seek(offset)
            header = f.read(16)
            length, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if length == 1:  # A 64-bit size follows.
                length = int.from_bytes(header[8:16], "big")
            elif length == 0:  # To the end of the file.
                length = size - offset
            if length < 8:
                return False
            boxes.add(kind)
            offset += length
    return offset == size and b"moov" in boxes


def write_strip(path, video, columns=10):
    """Open-loop video [B, T, H, W, C] as one PNG: `columns` frames per sequence, sequences stacked; whole or not
    at all."""
    video = np.asarray(video)
    frames = video[:, :: max(1, video.shape[1] // columns)][:, :columns]
    B, T, H, W, C = frames.shape
    image = frames.transpose((0, 2, 1, 3, 4)).reshape((B * H, T * W, C))
    write_atomic(path, iio.imwrite("<bytes>", image, extension=".png"))


def video_summary(name, video, step, max_frames=200, fps=20):
    """Batch of videos [B, T, H, W, C] in [0, 1] or uint8 as one GIF, tiled along the width."""
    video = np.asarray(video)
    if np.issubdtype(video.dtype, np.floating):
        video = np.clip(255 * video, 0, 255).astype(np.uint8)
    B, T, H, W, C = video.shape
    if T > max_frames:  # Subsample long episodes rather than dropping them.
        video = video[:, :: int(np.ceil(T / max_frames))]
        T = video.shape[1]
    frames = video.transpose((1, 2, 0, 3, 4)).reshape((T, H, B * W, C))
    summary = tf.compat.v1.Summary()
    image = tf.compat.v1.Summary.Image(height=H, width=B * W, colorspace=C)
    image.encoded_image_string = encode_gif(frames, fps)
    summary.value.add(tag=name, image=image)
    summary = summary.SerializeToString()
    tf.summary.experimental.write_raw_pb(summary, step)
    return len(summary)


class Logger:
    """metrics.jsonl lines, TensorBoard scalars (agent/..., sim/...) and GIFs, flushed at every write."""

    SIM = ("episodes", "fps")

    def __init__(self, logdir, step=0, steps=None):
        self._logdir, self._steps = pathlib.Path(logdir), steps  # `steps`: the run's --steps, for the terminal.
        others = set(self._logdir.glob("events.out.tfevents.*"))
        self._writer = tf.summary.create_file_writer(str(logdir), max_queue=1000, flush_millis=20000)
        self._writer.flush()  # Its file, made now.
        ours = set(self._logdir.glob("events.out.tfevents.*")) - others
        self._events = ours.pop() if len(ours) == 1 else None
        self._scalars = {}
        self._videos = {}
        self._last_step = step
        self._last_time = time.time()

    def scalar(self, name, value):
        self._scalars.setdefault(name, []).append(float(value))

    def video(self, name, value):
        self._videos[name] = np.asarray(value)

    def write(self, step, fps=False):
        """Average the scalars added since the last write."""
        scalars, note = {k: self._mean(k, v) for k, v in self._scalars.items()}, ""
        if fps:
            seconds = time.time() - self._last_time
            scalars["fps"] = (step - self._last_step) / seconds if seconds else 0.0
            self._last_step, self._last_time = step, time.time()
            if self._steps and scalars["fps"] > 0:  # The terminal's, not metrics.jsonl's.
                left = duration(max(0, self._steps - step) / scalars["fps"])
                note = f" | {scalars['fps']:.3g} env steps/s since the last line, {left} to --steps at that rate"
        self.log(step, scalars, self._videos, note)
        self._scalars, self._videos = {}, {}

    @staticmethod
    def _mean(name, values):
        """Gradient norms average over their finite values: a float16 step whose gradients overflowed is skipped
        (counted in *_skipped) and would make the mean inf. With none finite, the mean is inf or NaN."""
        values = np.asarray(values, np.float64)
        finite = values[np.isfinite(values)]
        return float(np.mean(finite if name.endswith("_grad_norm") and finite.size else values))

    def log(self, step, scalars, videos=None, note=""):
        """Write these values now, as their own line (`note`: only on the terminal)."""
        if scalars:
            line = json.dumps({"step": int(step), "time": round(time.time(), 1), **scalars})
            append_line(self._logdir / "metrics.jsonl", line)
            where = f"{step}/{self._steps}" if self._steps else f"{step}"
            print(f"[{where}] " + " / ".join(f"{k} {v:.4g}" for k, v in scalars.items()) + note, flush=True)
        size = self._events_size()
        with self._writer.as_default():
            for name, value in scalars.items():
                sim = "/" in name or name in self.SIM
                tf.summary.scalar(f"sim/{name}" if sim else f"agent/{name}", value, step)
            written = sum(video_summary(name, value, step) for name, value in (videos or {}).items())
        self._writer.flush()
        # TensorFlow drops a record longer than its file's buffer that does not fit without an error (only what
        # stays in the buffer fails the flush): GIFs that did not make it.
        if written and size is not None and (self._events_size() or 0) - size < written:
            full = shutil.disk_usage(self._logdir).free < written
            raise OSError(errno.ENOSPC if full else errno.EIO, "TensorFlow could not write the GIFs", str(self._events))

    def _events_size(self):
        with contextlib.suppress(OSError):
            return self._events.stat().st_size if self._events else None
        return None

    @property
    def pending(self):
        """Scalars added since the last write, to carry across a restart."""
        return {k: list(v) for k, v in self._scalars.items()}

    @pending.setter
    def pending(self, scalars):
        self._scalars = {k: list(v) for k, v in scalars.items()}

    def close(self):
        self._writer.flush()
        self._writer.close()
