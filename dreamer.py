"""Dreamer: learning behaviors by latent imagination (Hafner et al., 2019, arXiv:1912.01603)."""

import contextlib
import functools
import itertools
import json
import pathlib
import signal
import sys

import numpy as np

import wrappers

# Environment workers are started with `spawn`, which re-imports this file as __mp_main__. They render
# MuJoCo through Mesa, which segfaults in a process that has loaded TensorFlow, so only the main
# process imports it.
if __name__ != "__mp_main__":
    import runtime  # First: it imports TensorFlow without its start-up notices.

    import tensorflow as tf
    import tensorflow_probability as tfp

    import cluster
    import configs
    import export
    import models
    import tools
    from runtime import STOP, exit_2

    tfd = tfp.distributions


class Dreamer:
    """The agent: a world model and a behaviour (models.BEHAVIORS[--behavior]), one compiled policy and one compiled
    train step. Under a tf.distribute `strategy` the train step runs on every replica with its share of each global
    batch of the spec of `dataset` (None: an agent that only acts), and its losses and updates are the global
    batch's. The policy's noise is keyed by `step`, the env step its caller keeps."""

    def __init__(self, config, dataset, image_shape, act_dim, strategy=None):
        self._c = c = config
        self._act_dim = act_dim
        self.step = 0
        self.strategy = strategy or tf.distribute.get_strategy()
        self._test = (None, 0)  # Env step of the current evaluation, policy calls in it.
        with self.strategy.scope():
            self.world_model = models.WorldModel(c, image_shape, act_dim)
            self.behavior = models.BEHAVIORS[c.behavior](c, self.world_model, act_dim)
        # What the checkpoint, the parameter counts and the multi-worker digest read.
        names = set(self.world_model.modules) | set(self.world_model.optimizers) | {"next_train", "next_log"}
        names |= {"next_eval", "last_eval"}  # The trainer's.
        taken = names & (set(self.behavior.modules) | set(self.behavior.optimizers))
        if taken:
            raise ValueError(f"{type(self.behavior).__name__}: {', '.join(sorted(taken))} taken; rename them")
        self.modules = {**self.world_model.modules, **self.behavior.modules}
        self.optimizers = {**self.world_model.optimizers, **self.behavior.optimizers}
        counts = dict(model=sum(models.count_params(m) for m in self.world_model.modules.values()))
        counts.update({name: models.count_params(m) for name, m in self.behavior.modules.items()})
        for name, count in counts.items():
            print(f"Found {count} {name} parameters.")
        latent = self.world_model.dynamics.initial(1)
        state = {k: tf.TensorSpec([None, v.shape[-1]], v.dtype) for k, v in latent.items()}
        state = (state, tf.TensorSpec([None, act_dim], tf.float32))
        scalar = lambda dtype: tf.TensorSpec([], dtype)
        image, reset = tf.TensorSpec([None, *image_shape], tf.uint8), tf.TensorSpec([None], tf.bool)
        signature = [image, reset, state, scalar(tf.bool), scalar(tf.float32), tf.TensorSpec([3], tf.int32)]
        self.policy = tf.function(self._policy, input_signature=signature)
        self._openl = tf.function(self.world_model.openl)
        if dataset is not None:
            spec = self.strategy.experimental_distribute_dataset(dataset).element_spec
            self.train = tf.function(self._train, input_signature=[spec], jit_compile=c.jit)

    def trackables(self):
        """The networks and optimizers, by their names in the checkpoint."""
        return {**self.modules, **{name: opt.opt for name, opt in self.optimizers.items()}}

    def __call__(self, obs, reset, state=None, training=True):
        """The policy: actions for a batch of observations (`reset` marks the first of an episode)."""
        if state is None:
            latent = self.world_model.dynamics.initial(len(reset))
            state = (latent, tf.zeros((len(reset), self._act_dim), tf.float32))
        amount = self.expl_amount() if training else self._c.eval_noise
        action, state = self.policy(obs["image"], reset, state, training, amount, self._policy_seed(training))
        return action.numpy(), state

    def _policy_seed(self, training):
        """(seed, env step, 0) when collecting; (seed, env step, n) for the n-th policy call of an evaluation."""
        if training:
            return np.array([self._c.seed, self.step, 0], np.int32)
        step, calls = self._test if self._test[0] == self.step else (self.step, 0)
        self._test = (step, calls + 1)
        return np.array([self._c.seed, step, calls + 1], np.int32)

    def expl_amount(self):
        amount = self._c.expl_amount
        if self._c.expl_decay:
            amount *= 0.5 ** (self.step / self._c.expl_decay)
        return max(self._c.expl_min, amount)

    def _train(self, data):
        # Stateless noise from the run's seed and the update count: the same samples on resume and for any
        # number of replicas. (A float16 step skipped for non-finite gradients is retried with its noise.)
        updates = tf.cast(self.optimizers["model_opt"].opt.iterations, tf.int64)
        seed = tf.stack([tf.constant(self._c.seed, tf.int64), updates])
        metrics = self.strategy.run(self._train_replica, (data, seed))
        return {k: self.strategy.reduce("MEAN", v, axis=None) for k, v in metrics.items()}

    def _train_replica(self, data, seed):
        """One train step in the paper's order. As in the paper's code, all gradients are taken at the weights the
        step starts with: behaviour is learned from the world model before its update is applied."""
        wm = self.world_model
        with tf.GradientTape(persistent=len(wm.optimizers) > 1) as model_tape:
            model_loss, post, metrics = wm.loss(data, tf.random.split(seed)[0])
        metrics.update(self.behavior.train(post, seed))
        metrics.update(wm.train(model_tape, model_loss))
        return metrics

    def _policy(self, image, reset, state, training, amount, seed):
        # Stateless noise from (seed, env step, call): the same actions on resume (see _policy_seed).
        seed = tf.random.experimental.stateless_fold_in(seed[:2], seed[2])
        latent_seed, action_seed, expl_seed = tf.unstack(tf.random.split(seed, 3))
        mask = 1.0 - tf.cast(reset, tf.float32)[:, None]
        state = tf.nest.map_structure(lambda x: x * tf.cast(mask, x.dtype), state)
        latent, action = state
        embed = self.world_model.encoder(tools.preprocess({"image": image}, self._c)["image"])
        noise = tf.random.stateless_normal(tf.shape(latent["stoch"]), latent_seed)
        latent, _ = self.world_model.dynamics.obs_step(latent, action, embed, noise)
        action = self._exploration(self.behavior.policy(latent, training, action_seed), amount, expl_seed)
        return action, (latent, action)

    def _exploration(self, action, amount, seed):
        expl = self._c.expl
        if expl == "additive_gaussian":
            return tf.clip_by_value(tfd.Normal(action, amount).sample(seed=seed), -1, 1)
        if expl == "completely_random":
            return tf.where(amount > 0, tf.random.stateless_uniform(tf.shape(action), seed, -1, 1), action)
        if expl == "epsilon_greedy":
            choice_seed, coin_seed = tf.unstack(tf.random.split(seed))
            indices = tfd.Categorical(logits=tf.zeros_like(action)).sample(seed=choice_seed)
            random = tf.one_hot(indices, self._act_dim, dtype=action.dtype)
            coin = tf.random.stateless_uniform(tf.shape(action)[:1], coin_seed)
            return tf.where(coin[:, None] < amount, random, action)
        raise NotImplementedError(expl)

    def openl(self, episodes):
        """Open-loop predictions for up to 6 episodes: truth, model and error rows, as uint8 video."""
        length = min([self._c.batch_length] + [len(e["reward"]) for e in episodes[:6]])
        data = {k: np.stack([e[k][:length] for e in episodes[:6]]) for k in ("image", "action", "reward")}
        video = self._openl(tools.preprocess(data, self._c)).numpy()
        return (255 * video).astype(np.uint8)


class Trainer:
    """What a run keeps around the agent's train step: the schedules of train bursts, log lines and evaluations (in
    the checkpoint beside the agent), the batches, the log lines, the multi-worker handshake and the checkpoints.
    `dataset` may be a function of the index of a first batch that returns the batches from there: a fresh one at
    every training burst, so that no batch is drawn ahead of the burst that takes it (--deterministic)."""

    def __init__(self, config, agent, logger=None, dataset=None):
        c = self._c = config
        self.agent, self._logger = agent, logger
        with agent.strategy.scope():
            self.train_every, self.log_every = tools.Every(c.train_every), tools.Every(c.log_every)
            self.eval_every = tools.Every(c.eval_every)
            self.evaluated = tf.Variable(-1, dtype=tf.int64, trainable=False)  # Env step of the last evaluation.
        self._datasets, self.batches = (dataset, None) if callable(dataset) else (None, None)
        if dataset is not None and not callable(dataset):
            self.batches = iter(agent.strategy.experimental_distribute_dataset(dataset))
        self.handshake = cluster.Handshake(agent.strategy)
        self.checkpoints = runtime.Checkpoints(config.logdir / "checkpoints", self.trackables(), config.logdir)

    def trackables(self):
        schedules = dict(next_train=self.train_every.next, next_log=self.log_every.next)
        schedules.update(next_eval=self.eval_every.next, last_eval=self.evaluated)
        return {**self.agent.trackables(), **schedules}

    def burst(self):
        """The train steps due now (--pretrain the first time), then a line of scalars if one is due."""
        c, agent = self._c, self.agent
        steps = c.train_steps if self.train_every.started else c.pretrain
        print(f"Training for {steps} steps.", flush=True)
        if self._datasets:  # From the episodes on disk now, batch k keyed by k: as any restart would draw them.
            start = int(agent.optimizers["model_opt"].opt.iterations.numpy())
            self.batches = iter(agent.strategy.experimental_distribute_dataset(self._datasets(start)))
        progress = tools.Progress("Training", steps, "train steps")
        for _ in range(steps):
            if STOP.now():  # Between steps: a multi-worker chief never promises a step it does not take.
                break
            self.handshake(True)
            data = next(self.batches)
            metrics = agent.train(data)
            progress()
            if c.log_scalars:
                for name, value in metrics.items():
                    self._logger.scalar(name, value)
        progress.close()
        if STOP.now():  # Not done: the resumed run trains this burst again.
            raise KeyboardInterrupt
        self.train_every.done(agent.step)
        if self.log_every.due(agent.step):
            self._logger.scalar("expl_amount", agent.expl_amount())
            if c.log_images:
                data = tf.nest.map_structure(lambda x: agent.strategy.experimental_local_results(x)[0], data)
                self._logger.video("agent/openl", agent._openl(data).numpy())
            self._logger.write(agent.step, fps=True)
            self.log_every.done(agent.step)

    def save(self):
        self.checkpoints.save(self.agent.step, self._logger.pending if self._logger else None)

    def load(self, resume=False):
        """Restore the newest checkpoint that reads back whole, if any (see runtime.Checkpoints); its env step."""
        step, missing, pending = self.checkpoints.restore(resume, optional=("next_eval", "last_eval"))
        if "next_eval" in missing:  # Saved before the evaluation schedule was: evaluated at `step`, on its grid.
            self.eval_every.done(step)
        if "last_eval" in missing:
            self.evaluated.assign(step)
        if self._logger and pending is not None:
            self._logger.pending = pending
        return step


def summarize(config, episode):
    """An episode's return and its length in env steps (its first entry is the reset observation)."""
    return float(episode["reward"].astype(np.float64).sum()), (len(episode["reward"]) - 1) * config.action_repeat


def save_episode(config, logger, datadir, episode):
    """A training episode to the episode store and a line of its return."""
    with STOP.interruptible(False):  # The episode's file and summaries are written whole.
        tools.save_episodes(datadir, [episode])
        step = tools.count_steps(datadir, config.action_repeat)
        ret, length = summarize(config, episode)
        print(f"Train episode of length {length} with return {ret:.1f}.", flush=True)
        logger.log(step, {"train/return": ret, "train/length": length, "episodes": tools.count_episodes(datadir)})


def evaluation(config, logger, datadir, envs, episodes, agent):
    """The test episodes of an evaluation at the agent's env step (--eval_episodes, or more where several --envs end
    theirs together; `envs` hand them to `episodes`), logged as one line: their mean return and length, and with
    several episodes the return's spread."""
    episodes.clear()
    test(config, agent, envs, config.eval_episodes)
    with STOP.interruptible(False):
        returns, lengths = zip(*(summarize(config, e) for e in episodes))
        for ret, length in zip(returns, lengths):
            print(f"Test episode of length {length} with return {ret:.1f}.", flush=True)
        scalars = {"test/return": float(np.mean(returns)), "test/length": float(np.mean(lengths))}
        if len(returns) > 1:
            scalars.update({"test/return_std": float(np.std(returns)), "test/return_min": min(returns)})
            scalars.update({"test/return_max": max(returns), "test/episodes": len(returns)})
        scalars["episodes"] = tools.count_episodes(datadir)
        videos = {"sim/test/video": episodes[0]["image"][None]} if config.log_images else {}
        logger.log(agent.step, scalars, videos)


def make_envs(config, mode):
    """Start the environments of `mode` and read their spaces: one that cannot start stops the run here, with
    its own message and before anything is written."""
    modules, kwargs = wrappers.gym_modules(config.env_module), wrappers.gym_kwargs(config.env_kwargs)
    envs = []
    try:
        for index in range(config.envs):
            seed = config.seed + index + (10000 if mode == "test" else 0)
            ctor = functools.partial(
                wrappers.make_env,
                config.task,
                config.action_repeat,
                config.time_limit,
                seed=seed,
                life_done=(mode == "train"),
                env_modules=modules,
                env_kwargs=kwargs,
            )
            envs.append(wrappers.Async(ctor, config.parallel))
            envs[-1].obs_space, envs[-1].action_space  # Cached; the worker's ctor has run.
    except Exception as e:  # noqa: BLE001 (whatever the environment raises)
        for env in envs:
            env.close()
        if isinstance(e, wrappers.EnvError):  # The flags ask for what the environment does not offer.
            exit_2(e)
        # A worker sends its traceback: its last line is the environment's own message.
        lines = str(e).strip().splitlines() or [""]
        message = lines[-1] if isinstance(e, wrappers.WorkerError) else runtime.one_line(e)
        exit_2(f"the {mode} environment of --task {config.task} could not start: {message}")
    return envs


def record(config, envs, callbacks):
    """The environments, handing every finished episode to the callbacks (and restarting one that crashes)."""
    precision = 16 if config.precision == "16" else 32
    return [wrappers.Collect(env, callbacks, precision) for env in envs]


@contextlib.contextmanager
def environments(config, *modes):
    """The environments of each mode, started, and a gym_ task's action space resolved, before anything is
    written (a problem exits 2); closed at the end."""
    envs = []
    try:
        for mode in modes:
            envs.append(make_envs(config, mode))
        discrete_actions(config, envs[0][0].action_space)
        yield envs
    finally:
        for env in itertools.chain(*envs):
            env.close()


def make_trainer(config, strategy, dataset, image_shape, act_dim, logger=None):
    """The agent for these observation and action spaces, and its trainer on `dataset` (see Trainer)."""
    agent = Dreamer(config, dataset(0) if callable(dataset) else dataset, image_shape, act_dim, strategy)
    return Trainer(config, agent, logger, dataset)


def save_config(config):
    """config.json: the flags of the run in the logdir, written whole or not at all."""
    tools.write_atomic(config.logdir / "config.json", json.dumps({k: str(v) for k, v in config.items()}, indent=2))


@runtime.exits_on_full_disk
def train(config, strategy=None, start=lambda go: None):
    """A training run: prefill, then evaluate and save when due, else collect (training when due), to --steps.

    Under multi_worker the other workers only train with the chief, which calls `start(True)` once its prefill is
    done. Stopped, interrupted or given up on a crashing environment, the run saves a checkpoint to resume from; on
    a full disk it exits 3 (runtime.DISK_FULL) without one, to resume from the last."""
    if strategy is not None and not cluster.is_chief(strategy):
        return cluster.serve(config, strategy, functools.partial(make_trainer, config, strategy), configs.saved_config)
    datadir = config.logdir / "episodes"
    with environments(config, "train", "test") as (train_envs, test_envs), runtime.lock_logdir(config.logdir):
        if not tf.train.get_checkpoint_state(config.logdir / "checkpoints"):  # Else once its checkpoint took the flags.
            save_config(config)
        with contextlib.closing(
            tools.Logger(config.logdir, tools.count_steps(datadir, config.action_repeat), config.steps)
        ) as logger:
            train_envs = record(config, train_envs, [functools.partial(save_episode, config, logger, datadir)])
            tests = []
            test_envs = record(config, test_envs, [tests.append])
            evaluate_now = functools.partial(evaluation, config, logger, datadir, test_envs, tests)
            store = prefill(config, train_envs)
            if store is None:
                return
            start(True)
            dataset = functools.partial(tools.make_dataset, store, config)
            dataset = dataset if config.deterministic else dataset()
            image_shape, act_dim = train_envs[0].obs_space["image"].shape, train_envs[0].action_space.shape[0]
            trainer = make_trainer(config, strategy, dataset, image_shape, act_dim, logger)
            trainer.agent.step = tools.count_steps(datadir, config.action_repeat)
            trainer.load(resume=True)
            save_config(config)
            failed = run(config, trainer, train_envs, evaluate_now)
    cluster.leave(trainer)
    if failed:
        sys.exit(failed)


def run(config, trainer, train_envs, evaluate_now):
    """The loop, saving a checkpoint however it ends; the message of a run whose environment gave up, or None."""
    try:
        loop(config, trainer, train_envs, evaluate_now)
    except KeyboardInterrupt:
        print("Interrupted: saving a checkpoint before exiting.", flush=True)
        trainer.save()
    except wrappers.WorkerError as e:
        trainer.save()
        return env_failed(e, "the training so far is in the checkpoint, and the rerun resumes from it")
    except cluster.ERRORS as e:
        trainer.save()  # Local, no collectives: the weights so far, for the restarted cluster.
        sys.exit(cluster.lost("the chief", e))
    return None


def loop(config, trainer, train_envs, evaluate_now):
    """From where the checkpoint and the episodes on disk are: train when due; evaluate when due, then save; collect
    to the next evaluation, training whenever due. At --steps the episodes under way end, and the run evaluates."""
    agent = trainer.agent
    if agent.step >= config.steps and not evaluation_due(config, trainer):
        print(f"Already {agent.step} of --steps {config.steps} env steps: raise --steps to train on.", flush=True)
        return
    sim, resumed = None, not evaluation_due(config, trainer)
    while True:
        train_when_due(trainer)  # Before a test episode too: an evaluation at env step S sees every update due by S.
        if evaluation_due(config, trainer):
            print("Start evaluation.", flush=True)
            evaluate_now(agent)
            trainer.eval_every.done(agent.step)
            trainer.evaluated.assign(agent.step)
            trainer.save()
        if agent.step >= config.steps:
            return
        steps = min(int(trainer.eval_every.next.numpy()), config.steps) - agent.step
        if resumed:
            print(f"Resumed at env step {agent.step}: collecting {steps} steps before the next evaluation.", flush=True)
            resumed = False
        print("Start collection.", flush=True)
        sim = collect(config, trainer, train_envs, sim, steps=steps)
        if sim.stopped:  # Where an episode ended: the checkpoint and the episodes on disk are the whole run.
            trainer.save()
            print(f"Stopped at env step {agent.step}; run the command again to resume.", flush=True)
            return
        if agent.step >= config.steps:  # Only complete episodes are saved: at most one past --steps.
            sim = collect(config, trainer, train_envs, sim, episodes=int((~sim.done).sum()))


def evaluation_due(config, trainer):
    """Evaluations fall on multiples of --eval_every (the first at the end of the prefill) and once at --steps."""
    step = trainer.agent.step
    return trainer.eval_every.due(step) or step >= config.steps > int(trainer.evaluated.numpy())


def train_when_due(trainer):
    if trainer.train_every.due(trainer.agent.step):
        with STOP.interruptible(False):  # TensorFlow: a second stop signal waits for the next train step.
            trainer.burst()


def collect(config, trainer, envs, sim, steps=0, episodes=0):
    """Training episodes for `steps` env steps (until a stop signal) or `episodes` episodes, from `sim`, a train
    burst whenever one is due. The agent's env step counts those of the episodes on disk and under way: not
    those of an episode that crashed."""

    agent = trainer.agent

    def policy(obs, reset, state):
        action, state = act(agent, obs, reset, state)
        agent.step += len(reset) * config.action_repeat
        return action, state

    steps, stop = -(-steps // config.action_repeat), STOP if steps else None
    seed = reset_seed(config, agent)
    sim = simulate(policy, envs, steps, episodes, sim, seed, stop, on_step=lambda: train_when_due(trainer))
    disk = tools.count_steps(config.logdir / "episodes", config.action_repeat)
    agent.step = disk + config.action_repeat * int(sim.length.sum())
    return sim


def reset_seed(config, agent):
    """Training episodes start from (seed, env, the agent's env step): the same after a resume at that step."""
    return lambda index, _: tools.keyed_seed(config.seed, 0, index, agent.step)


def test(config, agent, envs, episodes):
    """Test episodes without exploration (the actor's mode, or PlaNet's plan), their resets and noise keyed by the
    agent's env step (and the step within the call, for all but the first)."""
    seed = lambda index, step: tools.keyed_seed(config.seed, 1, agent.step, index, step)
    progress = tools.Progress(f"Test episodes ({episodes})", episodes * config.time_limit, "env steps at most")
    step = lambda: progress(len(envs) * config.action_repeat)
    simulate(functools.partial(act, agent, training=False), envs, episodes=episodes, reset_seed=seed, on_step=step)
    progress.close()


def act(agent, *args, **kwargs):
    with STOP.interruptible(False):  # TensorFlow: a second stop signal waits for its end.
        return agent(*args, **kwargs)


def simulate(*args, **kwargs):
    """tools.simulate in a run: a second stop signal interrupts its waits on the environments (the agent and the
    episode callbacks, which run TensorFlow, defer it)."""
    with STOP.interruptible():
        return tools.simulate(*args, **kwargs)


def prefill(config, envs):
    """Random episodes to --prefill env steps (--steps bounds it too), and on until one of at least --batch_length
    steps is complete; then the episode store. None where a stop signal ended it: its complete episodes are on
    disk, and a rerun prefills on from there."""
    datadir = config.logdir / "episodes"
    step = tools.count_steps(datadir, config.action_repeat)
    fill = max(0, min(config.prefill, config.steps) - step)
    if fill or longest_episode(datadir) < config.batch_length:
        try:
            stopped = random_episodes(config, envs, step, fill)
        except KeyboardInterrupt:  # A second stop signal: the episodes under way are lost.
            stopped = True
        except wrappers.WorkerError as e:
            sys.exit(env_failed(e, "its complete episodes are on disk, and the rerun prefills on from there"))
        if stopped or STOP():
            step = tools.count_steps(datadir, config.action_repeat)
            print(f"Stopped in the prefill at env step {step}; run the command again to resume.", flush=True)
            return None
    store = tools.EpisodeStore(datadir, config.replay_size // config.action_repeat, config.seed)
    store.update()
    if store.longest < config.batch_length:  # The file names promised one: unreadable, or past --replay_size.
        exit_2(
            f"no episode read from {datadir} (the newest, up to --replay_size) has --batch_length "
            f"{config.batch_length} steps; move unreadable ones (named above) out of it and run again to "
            "prefill anew, or raise --replay_size"
        )
    return store


def random_episodes(config, envs, start, steps):
    """Uniform actions for `steps` env steps from env step `start`, and on until an episode of at least
    --batch_length steps is complete. Returns whether a stop signal ended it early (where an episode ended)."""
    print(f"Prefill dataset with {steps} steps.", flush=True)
    datadir = config.logdir / "episodes"
    agent = RandomAgent(envs[0].action_space, config.seed, start, config.action_repeat)
    seed = reset_seed(config, agent)
    progress = tools.Progress("Prefill", steps, "env steps")
    step = lambda: progress(len(envs) * config.action_repeat)
    sim = simulate(agent, envs, steps // config.action_repeat, reset_seed=seed, stop=STOP, on_step=step)
    progress.close()
    if sim.stopped:
        return True
    if longest_episode(datadir) < config.batch_length:
        print(
            f"Prefill continues until an episode of at least --batch_length {config.batch_length} steps is complete.",
            flush=True,
        )
    for _ in range(100):
        if longest_episode(datadir) >= config.batch_length:
            return False
        sim = simulate(agent, envs, episodes=1, state=sim, reset_seed=seed, stop=STOP)
        if sim.stopped:
            return True
    exit_2(f"100 prefill episodes and none has --batch_length {config.batch_length} steps; lower --batch_length")


@runtime.exits_on_full_disk
def evaluate(config):
    """Test episodes of the latest checkpoint; writes only eval.jsonl and eval/, never the training state."""
    episodes = []
    with environments(config, "test") as (envs,):
        envs = record(config, envs, [episodes.append])
        trainer = make_trainer(config, None, None, envs[0].obs_space["image"].shape, envs[0].action_space.shape[0])
        agent = trainer.agent
        step = agent.step = trainer.load() or 0
        try:
            test(config, agent, envs, config.eval_episodes)
        except wrappers.WorkerError as e:
            sys.exit(env_failed(e, "nothing was written"))
    episodes = episodes[: config.eval_episodes]
    outdir = config.logdir / "eval"
    outdir.mkdir(exist_ok=True)
    returns, lines = [], []
    for index, episode in enumerate(episodes):
        ret, length = summarize(config, episode)
        returns.append(ret)
        lines.append(json.dumps({"step": step, "episode": index, "return": ret, "length": length}))
        tools.write_video(outdir / f"{step}-{index}.mp4", episode["image"])
    tools.write_strip(outdir / f"{step}-openl.png", agent.openl(episodes))
    tools.append_line(config.logdir / "eval.jsonl", "\n".join(lines))  # Last, and all of them or none.
    print(
        f"Evaluated checkpoint of step {step} over {len(returns)} episodes: return {np.mean(returns):.1f} "
        f"± {np.std(returns):.1f} (mean ± std). Videos and open-loop predictions in {outdir}.",
        flush=True,
    )


def longest_episode(datadir):
    """Steps of the longest episode on disk (the reset one included): the dataset samples chunks of batch_length."""
    return max((tools.episode_length(f) + 1 for f in pathlib.Path(datadir).glob("*.npz")), default=0)


def env_failed(error, kept):
    """The message of a run whose environment kept crashing (wrappers.Collect restarts one that crashes once)."""
    return f"error: {error}. Fix the environment and run the command again: {kept}."


def discrete_actions(config, action_space):
    """A gym_ task's --action_dist and --expl auto resolve once its environment tells its action space; its logdir
    is checked with them."""
    if config.task.startswith("gym_"):
        discrete = isinstance(action_space, wrappers.OneHotBox)
        problem = configs.action_problem(config, discrete) or configs.mismatch_problem(config)
        if problem:
            exit_2(problem)


class RandomAgent:
    """Uniform actions, drawn from (seed, env step): a prefill resumed at `step` continues the same draws."""

    def __init__(self, action_space, seed, step=0, action_repeat=1):
        self.step = step
        self._space, self._seed, self._repeat = action_space, seed, action_repeat

    def __call__(self, obs, done, state):
        random = tools.keyed_random(self._seed, self.step)
        self.step += len(done) * self._repeat
        act_dim = self._space.shape[0]
        if isinstance(self._space, wrappers.OneHotBox):
            return np.eye(act_dim, dtype=np.float32)[random.randint(act_dim, size=len(done))], None
        low, high = self._space.low, self._space.high
        return random.uniform(low, high, (len(done), act_dim)).astype(np.float32), None


def main(config):
    strategy = runtime.setup(config)
    if config.export:
        export.export(config)
    elif config.eval_only:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        evaluate(config)
    elif cluster.is_chief(strategy):
        # A polite kill (timeout, cluster preemption) stops like Ctrl-C, and the resumed run is the one not stopped.
        STOP.install()
        start = cluster.Start(strategy)
        try:
            train(config, strategy, start)
        finally:
            start(False)  # Stopped or failed before training: the other workers stop too.
    else:  # Another worker of a multi_worker cluster: stops at once, and the chief with an error.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        train(config, strategy)


if __name__ == "__main__":
    main(configs.parse_config())
