"""Dreamer: learning behaviors by latent imagination (Hafner et al., 2019, arXiv:1912.01603)."""

import argparse
import contextlib
import fcntl
import functools
import itertools
import json
import os
import pathlib
import re
import signal
import socket
import sys

import numpy as np

import wrappers

# Environment workers are started with `spawn`, which re-imports this file as __mp_main__. They render
# MuJoCo through Mesa, which segfaults in a process that has loaded TensorFlow, so only the main
# process imports it.
if __name__ != "__mp_main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf
    import tensorflow_probability as tfp

    import cluster
    import models
    import tools

    tfd = tfp.distributions

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
ACTIVATIONS = ("elu", "relu", "swish", "silu", "gelu", "tanh", "leaky_relu", "selu", "sigmoid")

# Named flag sets for --configs.
PRESETS = dict(
    # The paper's Atari settings (discrete actions pick the onehot actor and epsilon_greedy by themselves).
    atari=dict(action_repeat=4, time_limit=108000, pcont=True, expl_amount=0.4, expl_decay=1e5, expl_min=0.1),
    # Tiny networks and a short schedule: a real run in about half a minute on 2 cores (tests, trying things).
    debug=dict(
        time_limit=200,
        cnn_depth=4,
        num_units=16,
        deter_size=16,
        stoch_size=4,
        horizon=3,
        batch_size=3,
        batch_length=8,
        prefill=400,
        pretrain=3,
        train_every=200,
        train_steps=2,
        eval_every=400,
        log_every=400,
        plan_horizon=3,
        cem_candidates=20,
        cem_iterations=2,
        cem_topk=4,
    ),
    # The paper's other experiments (README, "The paper's experiments"), each combinable with the others and atari.
    no_value=dict(behavior="no_value"),
    planet=dict(behavior="planet"),
    contrastive=dict(representation="contrastive"),
    reward_only=dict(representation="reward"),
    # The CPU learning check (benchmarks/learning.sh): half-width networks, 16-sequence batches.
    cpu_check=dict(
        task="dmc_walker_stand",
        steps=int(1e6),
        cnn_depth=16,
        num_units=200,
        deter_size=100,
        batch_size=16,
        eval_every=5000,
        log_every=5000,
        log_images=False,
        eval_episodes=5,
    ),
)

# Every flag, in one place: its default, what it does and, for some, its choices. --help and the flag
# table (flag_table(), checked by a test) are made from it. Defaults are the paper's.
FLAGS = dict(
    # General.
    logdir=(
        pathlib.Path("."),
        "run folder: episodes/, checkpoints/, metrics.jsonl, TensorBoard events; rerun to "
        "resume (one training run at a time: it holds <logdir>/lock)",
    ),
    configs=([], "presets applied in order before the flags given (which win): " + ", ".join(PRESETS)),
    seed=(0, "seeds every random draw together with counters the run saves (env step, update count, episode)"),
    deterministic=(
        None,
        "the same run for the same --seed, also across a resume: TensorFlow's deterministic kernels "
        "and batches drawn at fixed points; default: True without a GPU (about 2% of a train step on CPU), else False",
    ),
    steps=(
        int(5e6),
        "env steps (frames, action repeat included) to train for: collection stops there, finishing "
        "the episode under way, and the run evaluates once at the end",
    ),
    eval_every=(int(1e4), "env steps between evaluations (--eval_episodes test episodes, then a checkpoint)"),
    log_every=(int(1e3), "env steps between lines of scalars in metrics.jsonl and TensorBoard"),
    log_scalars=(True, "log the train step's losses, entropies and gradient norms"),
    log_images=(True, "log open-loop video predictions and test episode videos to TensorBoard"),
    gpu_growth=(True, "let TensorFlow allocate GPU memory as it needs it rather than all at once"),
    precision=(
        None,
        "32, 16 (mixed float16, the paper's) or bf16 (mixed bfloat16); default: the run's in --logdir, else 16 where "
        "TensorFlow sees a GPU and 32 without one (all three learn in the learning check; 16 and bf16 ran slower "
        "than 32 on the CPUs measured: see docs/precision.md)",
        ("16", "32", "bf16"),
    ),
    jit=(False, "compile the train step with XLA (slower on CPU; try it on GPUs)"),
    strategy=(
        "default",
        "default: one device; mirrored: the train step on all local GPUs (or --replicas of them); "
        "multi_worker: on several hosts, each host's place in the cluster from TF_CONFIG (see docs/scale-out.md)",
        ("default", "mirrored", "multi_worker"),
    ),
    replicas=(
        0,
        "mirrored: how many local GPUs to use (0: all); without GPUs, how many logical CPU devices to split "
        "the CPU into (for testing)",
    ),
    # Environment.
    task=(
        "dmc_walker_walk",
        "dmc_<domain>_<task> (DeepMind Control), atari_<game> (Atari) or gym_<EnvId> (any "
        "Gymnasium id, e.g. gym_CartPole-v1; see --env_module)",
    ),
    env_module=(
        "",
        "gym_ tasks: modules to import (comma-separated) before making the environment, e.g. the one "
        "that registers your id with gymnasium.register; importable from the working directory",
    ),
    env_kwargs=(
        "{}",
        "gym_ tasks: keyword arguments for gymnasium.make as a JSON object, e.g. "
        """'{"render_mode": "rgb_array"}' (then the frames come from render())""",
    ),
    envs=(1, "environments stepped together, each in its own worker"),
    parallel=(
        "process",
        "where environments run: process renders MuJoCo in workers that never import TensorFlow "
        "(Mesa's EGL segfaults beside it); thread or none only for Atari or a non-Mesa GL",
        ("process", "thread", "none"),
    ),
    action_repeat=(2, "env steps per action; the agent sees the last frame and the summed reward"),
    time_limit=(1000, "env steps per episode (action repeat included)"),
    prefill=(
        5000,
        "random env steps before training; on until an episode of at least --batch_length steps is complete",
    ),
    eval_noise=(0.0, "exploration noise of test episodes (they act with the actor's mode)"),
    clip_rewards=("none", "squash rewards for the reward model: none or tanh", ("none", "tanh")),
    replay_size=(
        int(2e6),
        "env steps of episodes held in memory for sampling (oldest evicted, files stay on disk); "
        "2e6 at action repeat 2 is about 12 GiB of 64x64 frames",
    ),
    # World model.
    deter_size=(200, "size of the RSSM's deterministic (GRU) state, and of its hidden layers"),
    stoch_size=(30, "size of the RSSM's stochastic (Gaussian) state"),
    num_units=(400, "width of the reward, value, continuation and actor networks' hidden layers"),
    dense_act=("elu", "activation of the dense layers", ACTIVATIONS),
    cnn_act=("relu", "activation of the encoder's and decoder's convolutions", ACTIVATIONS),
    cnn_depth=(32, "channels of the first convolution (doubled at each of the encoder's four)"),
    pcont=(False, "learn to predict episode ends (a continuation model), for tasks that terminate"),
    representation=(
        "reconstruction",
        "what besides the KL shapes the encoder and RSSM: reconstruction (the image decoder, the paper's), "
        "contrastive (a state model q(s_t | o_t) against the batch's other states, the paper's J_NCE) or reward "
        "(only the reward and continuation losses); the decoder still learns, on stop-gradient features, for videos",
        ("reconstruction", "contrastive", "reward"),
    ),
    free_nats=(3.0, "no KL gradient while the mean KL is below this many nats"),
    kl_scale=(1.0, "weight of the KL term in the model loss"),
    pcont_scale=(10.0, "weight of the continuation model's loss"),
    weight_decay=(0.0, "decoupled weight decay of all three optimizers"),
    weight_decay_pattern=(r".*", "regular expression: the variables whose names match are decayed"),
    # Training.
    batch_size=(50, "sequences per batch in all (the global batch: split evenly across replicas)"),
    batch_length=(50, "steps per sequence"),
    train_every=(1000, "env steps between training bursts"),
    train_steps=(100, "train steps per burst"),
    pretrain=(100, "train steps of the first burst, on the prefill"),
    model_lr=(6e-4, "world model learning rate (Adam)"),
    value_lr=(8e-5, "value model learning rate (Adam)"),
    actor_lr=(8e-5, "actor learning rate (Adam)"),
    grad_clip=(100.0, "global gradient norm each optimizer clips to"),
    adam_eps=(
        1e-4,
        "Adam's epsilon for all three optimizers: 1e-4 as in the paper's TF1 code (google-research/"
        "dreamer); its TF2 reimplementation (danijar/dreamer) leaves Keras' 1e-7",
    ),
    dataset_balance=(False, "sample more sequence chunks that end at an episode's last step"),
    # Behaviour.
    behavior=(
        "dreamer",
        "how actions are chosen: dreamer (actor and value model learned in imagination, the paper's), no_value "
        "(the actor maximises the imagined rewards within --horizon; no value model), planet (PlaNet's online "
        "planner: the cross-entropy method over action sequences in the learned dynamics; no actor or value)",
        ("dreamer", "no_value", "planet"),
    ),
    plan_horizon=(12, "planet: steps of each planned action sequence"),
    cem_candidates=(1000, "planet: action sequences drawn at each refit"),
    cem_iterations=(10, "planet: refits of the action sequences' Gaussian per action"),
    cem_topk=(100, "planet: the best sequences each refit is fitted to"),
    discount=(0.99, "discount factor of imagined rewards"),
    disclam=(0.95, "lambda of the lambda-returns"),
    horizon=(15, "imagination horizon (steps)"),
    action_dist=(
        "auto",
        "actor distribution: tanh_normal for continuous actions, onehot for discrete ones "
        "(Atari, a gym Discrete space); auto picks by the action space",
        ("auto", "tanh_normal", "onehot"),
    ),
    action_init_std=(5.0, "the tanh-Normal actor's initial standard deviation"),
    expl=(
        "auto",
        "exploration while collecting: additive_gaussian (continuous), epsilon_greedy (discrete) or "
        "completely_random; auto picks by the action space",
        ("auto", "additive_gaussian", "epsilon_greedy", "completely_random"),
    ),
    expl_amount=(0.3, "exploration: the Gaussian's standard deviation or epsilon"),
    expl_decay=(0.0, "env steps over which --expl_amount halves (0: constant)"),
    expl_min=(0.0, "floor of the decayed --expl_amount"),
    # Evaluation only.
    eval_only=(
        False,
        "only evaluate the latest checkpoint of --logdir: writes eval.jsonl and eval/ videos, changes nothing else",
    ),
    eval_episodes=(
        1,
        "test episodes of each evaluation (the paper's: 1; their mean is test/return, their spread test/return_std, "
        "min and max) and of an --eval_only run",
    ),
)

# Flags a run is bound to: they shape the networks or their inputs, or (action_repeat) how the env steps of its
# episodes on disk count. A checkpoint only fits a run with the same values.
ARCHITECTURE = (
    "task",
    "action_repeat",
    "deter_size",
    "stoch_size",
    "num_units",
    "dense_act",
    "cnn_act",
    "cnn_depth",
    "pcont",
    "action_dist",
    "behavior",
    "representation",
)


def define_config():
    return {key: value[0] for key, value in FLAGS.items()}


def parse_bool(value):
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def parse_int(value):
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if not number.is_integer():
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}")
    return int(number)


def make_parser():
    parser = argparse.ArgumentParser(description=__doc__, allow_abbrev=False)
    for key, (default, text, *choices) in FLAGS.items():
        kind = {bool: parse_bool, int: parse_int, float: float}.get(type(default), str)
        kwargs = dict(type=kind, default=default, choices=choices[0] if choices else None, help=text.replace("%", "%%"))
        if key == "logdir":
            kwargs.update(type=pathlib.Path, required=True, default=None)
        if key == "configs":
            kwargs.update(nargs="+", choices=tuple(PRESETS))
        if key == "deterministic":
            kwargs.update(type=parse_bool)
        parser.add_argument(f"--{key}", **kwargs)
    return parser


def parse_config(argv=None):
    """The flags: parsed (presets first), checked, and checked against the run already in --logdir."""
    parser = make_parser()
    config = parse(parser, argv)
    checks = [flag_problem, logdir_problem]
    if config.task.startswith(("atari_", "dmc_")):  # Their action spaces are known before an environment starts.
        checks.insert(1, lambda config: action_problem(config, discrete=config.task.startswith("atari_")))
    for check in checks:
        problem = check(config)
        if problem:
            parser.error(problem)
    return config


def parse(parser, argv):
    """Flags over the presets of --configs over the defaults."""
    configs = parser.parse_known_args(argv)[0].configs
    for name in configs:
        parser.set_defaults(**PRESETS[name])
    config = tools.AttrDict(vars(parser.parse_args(argv)))
    try:  # Also where the shell leaves ~ as it is (--logdir=~/runs).
        config.logdir = config.logdir.expanduser()
    except RuntimeError as e:
        parser.error(f"argument --logdir: {e}")
    if config.precision is None:
        config.precision = default_precision(config.logdir)
    return config


def default_precision(logdir, gpus=None):
    """The precision of the run in logdir, else 16 on GPUs (where float16 pays) and 32 on CPUs (where it did not).
    `gpus`: those TensorFlow sees, unless given."""
    saved = saved_config(logdir).get("precision")
    if saved in FLAGS["precision"][2]:
        return saved
    gpus = tf.config.list_physical_devices("GPU") if gpus is None else gpus
    return "16" if gpus else "32"


def saved_config(logdir):
    """The flags of the run in logdir as config.json has them, or {} where there is none (or not one of ours)."""
    try:
        saved = json.loads((logdir / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def flag_problem(config):
    """What is wrong with the flags on their own, as an argparse error message, or ''."""
    suite = config.task.split("_", 1)[0]
    try:  # Looks names up without making a GL context: safe beside TensorFlow.
        wrappers.check_task(config.task)
    except ValueError as e:
        return f"argument --task: {e}"
    if suite == "gym":
        try:  # Imports the modules and looks up the id; the environment is only made in the workers.
            wrappers.gym_check(config.task.split("_", 1)[1], config.env_module, config.env_kwargs)
        except ValueError as e:
            return str(e)
    elif config.env_module or config.env_kwargs != "{}":
        return "argument --env_module/--env_kwargs: only gym_<EnvId> tasks take them"
    if suite == "dmc" and config.parallel != "process" and os.environ.get("DREAMER_ALLOW_TF_RENDER") != "1":
        return (
            f"argument --parallel: {config.parallel!r} would render MuJoCo inside the TensorFlow process, which "
            "segfaults with Mesa's EGL; use --parallel process (or set DREAMER_ALLOW_TF_RENDER=1 for NVIDIA EGL)"
        )
    positive = ("steps", "envs", "action_repeat", "batch_size", "batch_length", "horizon", "cnn_depth", "num_units")
    positive += ("deter_size", "stoch_size", "eval_every", "log_every", "train_every", "time_limit")
    positive += ("plan_horizon", "cem_candidates", "cem_iterations", "cem_topk")
    for key in positive + ("train_steps", "pretrain", "eval_episodes"):
        if config[key] <= 0:
            return f"argument --{key}: must be positive, got {config[key]}"
    if config.replay_size < config.batch_length * config.action_repeat:
        return (
            f"argument --replay_size: {config.replay_size} env steps hold no sequence of --batch_length "
            f"{config.batch_length} at --action_repeat {config.action_repeat}; use at least "
            f"{config.batch_length * config.action_repeat}"
        )
    try:
        re.compile(config.weight_decay_pattern)
    except (re.error, OverflowError) as e:
        return f"argument --weight_decay_pattern: not a regular expression ({e}): {config.weight_decay_pattern!r}"
    if config.batch_length < 2 or (config.log_images and config.batch_length <= 5):
        return "argument --batch_length: must be at least 2 (and above 5 with --log_images True)"
    length = -(-config.time_limit // config.action_repeat) + 1  # Steps of a full episode, the reset one included.
    if length < config.batch_length:
        return (
            f"argument --batch_length: episodes of --time_limit {config.time_limit} at --action_repeat "
            f"{config.action_repeat} have {length} steps, fewer than --batch_length {config.batch_length}; lower it "
            "or raise --time_limit"
        )
    if config.cem_topk > config.cem_candidates:
        return f"argument --cem_topk: {config.cem_topk} of --cem_candidates {config.cem_candidates}; use at most that"
    if config.seed < 0:
        return f"argument --seed: must be 0 or positive, got {config.seed}"
    if config.replicas < 0:
        return f"argument --replicas: must be 0 (all GPUs) or positive, got {config.replicas}"
    if config.strategy == "multi_worker" and not config.eval_only:
        problem = cluster.tf_config_problem(os.environ.get("TF_CONFIG"))
        if problem:
            return f"--strategy multi_worker: {problem}. {cluster.TF_CONFIG_EXAMPLE}"
    return ""


def action_problem(config, discrete):
    """Resolves --action_dist and --expl auto for the action space; what cannot work with it, or ''."""
    if config.action_dist == "auto":
        config.action_dist = "onehot" if discrete else "tanh_normal"
    if config.expl == "auto":
        config.expl = "epsilon_greedy" if discrete else "additive_gaussian"
    if discrete:
        print(f"{config.task} has discrete actions: --action_dist {config.action_dist}, --expl {config.expl}.")
    if discrete and config.behavior == "planet":
        return (
            f"argument --behavior: planet searches continuous action sequences, and {config.task} has discrete "
            "actions; use --behavior dreamer or no_value (the onehot actor)"
        )
    if discrete and (config.action_dist != "onehot" or config.expl == "additive_gaussian"):
        return (
            f"argument --action_dist/--expl: {config.task} has discrete actions, which --action_dist "
            f"{config.action_dist} with --expl {config.expl} would send as invalid one-hot vectors; use --action_dist "
            "onehot (or auto) and --expl epsilon_greedy or completely_random (or auto)"
        )
    if not discrete and (config.action_dist == "onehot" or config.expl == "epsilon_greedy"):
        return (
            f"argument --action_dist/--expl: {config.task} has continuous actions, which --action_dist "
            f"{config.action_dist} with --expl {config.expl} would send as one-hot vectors; use --action_dist "
            "tanh_normal (or auto) and --expl additive_gaussian or completely_random (or auto)"
        )
    return ""


def logdir_problem(config):
    """What keeps the flags from fitting the run already in --logdir, or ''."""
    if config.logdir.exists() and not config.logdir.is_dir():
        return f"argument --logdir: {config.logdir} is a file; pass a folder (new or a run's)"
    existing = next(path for path in (config.logdir, *config.logdir.absolute().parents) if path.exists())
    if config.strategy != "multi_worker" and not os.access(existing, os.W_OK | os.X_OK):  # Only its chief writes.
        if config.eval_only:
            return (
                f"argument --logdir: cannot write in {existing}, where --eval_only writes eval.jsonl and eval/; "
                "copy the run to a folder you may write to"
            )
        return f"argument --logdir: cannot write in {existing}; pass a folder you may write to"
    if config.eval_only and not (config.logdir / "checkpoints" / "checkpoint").exists():
        return f"argument --eval_only: no checkpoint in {config.logdir}/checkpoints; train a run there first"
    # A gym_ task's actions are only known once its environment is made (see discrete_actions).
    return mismatch_problem(config, skip=("action_dist",) if config.action_dist == "auto" else ())


def flag_table():
    """docs/flags.md's flag table, from FLAGS."""
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for key, (default, text, *_) in FLAGS.items():
        if key in ("logdir", "configs"):
            default = "required" if key == "logdir" else "none"
        elif isinstance(default, int) and not isinstance(default, bool) and default >= 10000:
            default = f"{default:.0e}".replace("e+0", "e").replace("e+", "e")
        elif default is None or default == "":
            default = "auto" if key in ("deterministic", "precision") else "none"
        rows.append(f"| `--{key}` | `{default}` | {text.replace('<', '&lt;').replace('>', '&gt;')} |")
    return "\n".join(rows)


def config_mismatch(config, skip=()):
    """Architecture flags that differ from those of the run already in config.logdir, as text."""
    saved = saved_config(config.logdir.expanduser())
    differ = [k for k in ARCHITECTURE if k in saved and k not in skip and saved[k] != str(config[k])]
    if "precision" in saved and (saved["precision"] == "16") != (str(config.precision) == "16"):
        differ.append("precision")  # float16's loss-scale optimizers have other variables; 32 and bf16 share theirs.
    return ", ".join(f"--{k} {saved[k]} (not {config[k]})" for k in differ)


def mismatch_problem(config, skip=()):
    mismatch = config_mismatch(config, skip)
    if mismatch:
        return (
            f"argument --logdir: {config.logdir} holds a run trained with {mismatch}; pass the same values to "
            "resume or evaluate it, or use a new --logdir"
        )
    return ""


class Dreamer:
    """World model and behaviour (actor and value model, or PlaNet's planner), with one compiled policy and one
    compiled train step, and the run's
    schedules (train, log, evaluate: tools.Every, in the checkpoint). The run loop trains it; its policy only acts.

    Under a tf.distribute `strategy` the train step runs on every replica with its share of each batch of
    `dataset` (global batches), and its losses and updates are those of the global batch. `dataset` may also be
    a function of the index of a first batch that returns the batches from there: a fresh one at every
    training burst, so that no batch is drawn ahead of the burst that takes it (--deterministic).
    """

    def __init__(self, config, logger, dataset, image_shape, act_dim, step, strategy=None):
        self._c = config
        self._logger = logger
        self._act_dim = act_dim
        self.step = step
        self.strategy = strategy or tf.distribute.get_strategy()
        self._saved = None
        self._test = (None, 0)  # Env step of the current evaluation, policy calls in it.
        with self.strategy.scope():
            self._build(dataset, image_shape, act_dim)

    def _build(self, dataset, image_shape, act_dim):
        c = self._c
        self.world_model = models.WorldModel(c, image_shape, act_dim)
        feat_size = c.stoch_size + c.deter_size
        # PlaNet plans with the world model alone.
        self.behavior = None if c.behavior == "planet" else models.ActorCritic(c, feat_size, act_dim)
        modules = dict(model=self.world_model.modules)
        if self.behavior:
            modules.update(actor=[self.behavior.actor], value=[self.behavior.value] if self.behavior.value else [])
        for name, group in modules.items():
            if group:
                print(f"Found {sum(models.count_params(m) for m in group)} {name} parameters.")
        self.train_every, self.log_every = tools.Every(c.train_every), tools.Every(c.log_every)
        self.eval_every = tools.Every(c.eval_every)
        self.evaluated = tf.Variable(-1, dtype=tf.int64, trainable=False)  # Env step of the last evaluation.
        latent = self.world_model.dynamics.initial(1)
        state_spec = (
            {k: tf.TensorSpec([None, v.shape[-1]], v.dtype) for k, v in latent.items()},
            tf.TensorSpec([None, act_dim], tf.float32),
        )
        image_spec = tf.TensorSpec([None, *image_shape], tf.uint8)
        scalar = lambda dtype: tf.TensorSpec([], dtype)
        self.policy = tf.function(
            self._policy,
            input_signature=[
                image_spec,
                tf.TensorSpec([None], tf.bool),
                state_spec,
                scalar(tf.bool),
                scalar(tf.float32),
                tf.TensorSpec([3], tf.int32),
            ],
        )
        self._openl = tf.function(self.world_model.openl)
        self.batches, self._datasets = None, None
        if callable(dataset):
            self._datasets, dataset = dataset, dataset(0)
        if dataset is not None:
            dataset = self.strategy.experimental_distribute_dataset(dataset)
            self.batches = None if self._datasets else iter(dataset)
            self.train = tf.function(self._train, input_signature=[dataset.element_spec], jit_compile=c.jit)
        self.handshake = cluster.Handshake(self.strategy)
        self._checkpoint = tf.train.Checkpoint(**self._trackables())
        self._manager = None  # Made after load(), which may move corrupt checkpoints out of the rotation.

    def _trackables(self):
        wm, ac = self.world_model, self.behavior
        trackables = dict(
            encoder=wm.encoder,
            dynamics=wm.dynamics,
            **{f"{k}_head": v for k, v in wm.heads.items()},
            model_opt=wm.optimizer.opt,
            **({"image_opt": wm.image_optimizer.opt} if wm.image_optimizer else {}),
            next_train=self.train_every.next,
            next_log=self.log_every.next,
            next_eval=self.eval_every.next,
            last_eval=self.evaluated,
        )
        if ac:
            trackables.update(actor=ac.actor, actor_opt=ac.actor_opt.opt)
        if ac and ac.value:
            trackables.update(value=ac.value, value_opt=ac.value_opt.opt)
        return trackables

    def __call__(self, obs, reset, state=None, training=True):
        """The policy: actions for a batch of observations (`reset` marks the first of an episode)."""
        with STOP.interruptible(False):  # TensorFlow: a second stop signal waits for its end.
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

    def train_burst(self):
        """The train steps due now (--pretrain the first time), then a line of scalars if one is due."""
        c = self._c
        steps = c.train_steps if self.train_every.started else c.pretrain
        print(f"Training for {steps} steps.", flush=True)
        if self._datasets:  # From the episodes on disk now, batch k keyed by k: as any restart would draw them.
            start = int(self.world_model.optimizer.opt.iterations.numpy())
            self.batches = iter(self.strategy.experimental_distribute_dataset(self._datasets(start)))
        for _ in range(steps):
            if STOP.now():  # Between steps: a multi-worker chief never promises a step it does not take.
                break
            self.handshake(True)
            data = next(self.batches)
            metrics = self.train(data)
            if c.log_scalars:
                for name, value in metrics.items():
                    self._logger.scalar(name, value)
        if STOP.now():  # Not done: the resumed run trains this burst again.
            raise KeyboardInterrupt
        self.train_every.done(self.step)
        if self.log_every.due(self.step):
            self._logger.scalar("expl_amount", self.expl_amount())
            if c.log_images:
                data = tf.nest.map_structure(lambda x: self.strategy.experimental_local_results(x)[0], data)
                self._logger.video("agent/openl", self._openl(data).numpy())
            self._logger.write(self.step, fps=True)
            self.log_every.done(self.step)

    def _train(self, data):
        # Stateless noise from the run's seed and the update count: the same samples on resume and for any
        # number of replicas. (A float16 step skipped for non-finite gradients is retried with its noise.)
        updates = tf.cast(self.world_model.optimizer.opt.iterations, tf.int64)
        seed = tf.stack([tf.constant(self._c.seed, tf.int64), updates])
        metrics = self.strategy.run(self._train_replica, (data, seed))
        return {k: self.strategy.reduce("MEAN", v, axis=None) for k, v in metrics.items()}

    def _train_replica(self, data, seed):
        """One train step in the paper's order. As in the paper's code, all three gradients are taken at the weights
        the step starts with: behaviour is learned from the world model before its update is applied."""
        wm, ac = self.world_model, self.behavior
        model_seed, behavior_seed = tf.unstack(tf.random.split(seed))
        with tf.GradientTape(persistent=wm.image_optimizer is not None) as model_tape:
            model_loss, post, metrics = wm.loss(data, model_seed)
        if wm.image_optimizer:  # Its variables only feel the image loss, which shapes no state here.
            metrics.update(wm.image_optimizer(model_tape, model_loss))
        if not ac:  # PlaNet: only the world model learns.
            metrics.update(wm.optimizer(model_tape, model_loss))
            return metrics
        with tf.GradientTape() as actor_tape:
            feat = ac.imagine_ahead(ac.start_states(post), wm.dynamics, behavior_seed)
            returns, weights = ac.returns(feat, wm.heads)
            actor_loss = -tf.reduce_mean(weights * returns)
        metrics.update(actor_loss=actor_loss)
        if ac.value:
            with tf.GradientTape() as value_tape:
                value_loss = ac.value_loss(feat, returns, weights)
            metrics.update(value_loss=value_loss)
        metrics.update(ac.actor_opt(actor_tape, actor_loss))
        if ac.value:
            metrics.update(ac.value_opt(value_tape, value_loss))
        metrics.update(wm.optimizer(model_tape, model_loss))
        feat = tf.stop_gradient(wm.dynamics.get_feat(post))
        entropy_seed = tf.random.experimental.stateless_fold_in(seed, 1)
        metrics["action_ent"] = tf.reduce_mean(ac.actor(feat).entropy(seed=entropy_seed))
        return metrics

    def _policy(self, image, reset, state, training, amount, seed):
        # Stateless noise from (seed, env step, call): the same actions on resume (see _policy_seed).
        seed = tf.random.experimental.stateless_fold_in(seed[:2], seed[2])
        latent_seed, action_seed, expl_seed = tf.unstack(tf.random.split(seed, 3))
        mask = 1.0 - tf.cast(reset, tf.float32)[:, None]
        state = tf.nest.map_structure(lambda x: x * tf.cast(mask, x.dtype), state)
        latent, action = state
        dynamics = self.world_model.dynamics
        embed = self.world_model.encoder(tools.preprocess({"image": image}, self._c)["image"])
        noise = tf.random.stateless_normal(tf.shape(latent["stoch"]), latent_seed)
        latent, _ = dynamics.obs_step(latent, action, embed, noise)
        action = self._plan(latent, action_seed) if self.behavior is None else self._act(latent, training, action_seed)
        action = self._exploration(action, amount, expl_seed)
        return action, (latent, action)

    def _act(self, latent, training, seed):
        dist = self.behavior.actor(self.world_model.dynamics.get_feat(latent))
        return tf.cond(training, lambda: dist.sample(seed=seed), lambda: dist.mode(seed=seed))

    def _plan(self, latent, seed):
        """PlaNet's action: the first of the best action sequence the cross-entropy method finds from `latent`."""
        c, wm = self._c, self.world_model
        sizes = dict(candidates=c.cem_candidates, iterations=c.cem_iterations, topk=c.cem_topk, horizon=c.plan_horizon)
        return models.cross_entropy_method(wm.dynamics, wm.heads["reward"], latent, self._act_dim, seed, **sizes)

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

    def save(self):
        if self._saved == self.step:  # Nothing changes between two calls at one env step (e.g. a stop after a test).
            return
        if self._manager is None:
            self._manager = tf.train.CheckpointManager(self._checkpoint, self._c.logdir / "checkpoints", 2)
        if self._logger:  # Scalars not yet written, for the line a resumed run writes next.
            pending = self._c.logdir / "checkpoints" / "pending.json"
            pending.parent.mkdir(parents=True, exist_ok=True)
            tools.write_atomic(pending, json.dumps({"step": self.step, "scalars": self._logger.pending}))
        path = self._manager.save(checkpoint_number=self.step)
        self._saved = self.step
        print(f"Saved checkpoint {path}.", flush=True)

    def load(self, resume=False):
        """Restore the newest checkpoint that reads back whole, if any; returns its env step or None.

        Newer ones that do not (disk trouble, a copy interrupted half way) are reported and left as they are; with
        `resume` they are moved to checkpoints/corrupt/, out of the rotation that keeps two intact checkpoints and
        of the way of the resumed run's checkpoints.
        """
        directory = self._c.logdir / "checkpoints"
        state = tf.train.get_checkpoint_state(directory)
        paths, corrupt = list(state.all_model_checkpoint_paths) if state else [], []
        for path in reversed(paths):
            problem = unreadable(path)
            if not problem:
                break
            print(f"Skipping corrupt checkpoint {path} ({problem}).", flush=True)
            corrupt.append(f"{path} ({problem})")
        else:
            if not paths:
                return None
            exit_2(
                f"no checkpoint in {directory} reads back whole: {'; '.join(corrupt)}. Restore them from a "
                "copy, or move them away to start over, or use a new --logdir."
            )
        step = int(path.rsplit("-", 1)[-1])
        checkpoint = self._checkpoint
        saved = {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
        legacy = {"next_eval", "last_eval"} - saved
        if legacy:  # Saved before the evaluation schedule was: evaluated at `step`, the next one on its grid.
            checkpoint = tf.train.Checkpoint(**{k: v for k, v in self._trackables().items() if k not in legacy})
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as e:
            exit_2(
                f"checkpoint {path} does not fit this run ({str(e).splitlines()[0][:300]}). Use the flags it "
                f"was trained with (see {self._c.logdir / 'config.json'}), or a new --logdir."
            )
        if "next_eval" in legacy:
            self.eval_every.done(step)
        if "last_eval" in legacy:
            self.evaluated.assign(step)
        if resume and corrupt:
            self._move_aside(directory, state, paths[paths.index(path) + 1 :])
        print(f"Loaded checkpoint {path}.", flush=True)
        pending = self._c.logdir / "checkpoints" / "pending.json"
        if self._logger and pending.exists():
            saved = json.loads(pending.read_text())
            if saved["step"] == step:
                self._logger.pending = saved["scalars"]
        return step

    def _move_aside(self, directory, state, bad):
        """Corrupt checkpoints to checkpoints/corrupt/, the list the CheckpointManager rotates without them."""
        (directory / "corrupt").mkdir(exist_ok=True)
        for path in bad:
            for file in directory.glob(f"{pathlib.Path(path).name}.*"):
                file.rename(directory / "corrupt" / file.name)
            print(f"Moved the corrupt checkpoint {path} to {directory / 'corrupt'}.", flush=True)
        kept = len(state.all_model_checkpoint_paths) - len(bad)
        names = [pathlib.Path(p).name for p in state.all_model_checkpoint_paths[:kept]]
        stamps = list(state.all_model_checkpoint_timestamps)[:kept] or None
        tf.compat.v1.train.update_checkpoint_state(str(directory), names[-1], names, None, stamps)

    def openl(self, episodes):
        """Open-loop predictions for up to 6 episodes: truth, model and error rows, as uint8 video."""
        length = min([self._c.batch_length] + [len(e["reward"]) for e in episodes[:6]])
        data = {k: np.stack([e[k][:length] for e in episodes[:6]]) for k in ("image", "action", "reward")}
        video = self._openl(tools.preprocess(data, self._c)).numpy()
        return (255 * video).astype(np.uint8)


def unreadable(path):
    """What is wrong with a checkpoint whose tensors do not all read back, or None: checked before restoring any."""
    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as e:  # noqa: BLE001 (IndexError when truncated, DataLossError for a bad checksum, NotFoundError)
        return one_line(e)
    return None


def one_line(error):
    first = str(error).strip().split("\n")[0]
    return f"{type(error).__name__}: {first[:200]}"


def summarize(config, episode):
    """An episode's return and its length in env steps (its first entry is the reset observation)."""
    return float(episode["reward"].astype(np.float64).sum()), (len(episode["reward"]) - 1) * config.action_repeat


def process_episode(config, logger, mode, datadir, episode):
    with STOP.interruptible(False):  # The episode's file and summaries are written whole.
        _process_episode(config, logger, mode, datadir, episode)


def _process_episode(config, logger, mode, datadir, episode):
    tools.save_episodes(datadir, [episode])
    step = tools.count_steps(datadir, config.action_repeat)
    ret, length = summarize(config, episode)
    print(f"{mode.title()} episode of length {length} with return {ret:.1f}.", flush=True)
    logger.log(step, {f"{mode}/return": ret, f"{mode}/length": length, "episodes": tools.count_episodes(datadir)})


def evaluation(config, logger, datadir, envs, episodes, agent):
    """The --eval_episodes test episodes of an evaluation (`envs` hand them to `episodes`), logged as one line: their
    mean return and length, and with several episodes the return's spread."""
    episodes.clear()
    test(config, agent, envs, config.eval_episodes)
    with STOP.interruptible(False):
        returns, lengths = zip(*(summarize(config, e) for e in episodes[: config.eval_episodes]))
        for ret, length in zip(returns, lengths):
            print(f"Test episode of length {length} with return {ret:.1f}.", flush=True)
        scalars = {"test/return": float(np.mean(returns)), "test/length": float(np.mean(lengths))}
        if len(returns) > 1:
            scalars.update({"test/return_std": float(np.std(returns)), "test/return_min": min(returns)})
            scalars.update({"test/return_max": max(returns), "test/episodes": len(returns)})
        scalars["episodes"] = tools.count_episodes(datadir)
        videos = {"sim/test/video": episodes[0]["image"][None]} if config.log_images else {}
        logger.log(tools.count_steps(datadir, config.action_repeat), scalars, videos)


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
        message = lines[-1] if isinstance(e, wrappers.WorkerError) else one_line(e)
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


def make_agent(config, env, logger=None, dataset=None, strategy=None, step=0):
    """The agent for an environment's observation and action spaces."""
    image_shape, act_dim = env.obs_space["image"].shape, env.action_space.shape[0]
    return Dreamer(config, logger, dataset, image_shape, act_dim, step, strategy)


def save_config(config):
    """config.json: the flags of the run in the logdir, written whole or not at all."""
    tools.write_atomic(config.logdir / "config.json", json.dumps({k: str(v) for k, v in config.items()}, indent=2))


def lock_logdir(logdir):
    """An OS lock on the logdir until the returned file closes (the kernel drops it even on kill -9)."""
    logdir.mkdir(parents=True, exist_ok=True)
    lock = (logdir / "lock").open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        exit_2(
            f"argument --logdir: {logdir} is in use by a training run ({holder}); wait for it to end or stop "
            "it, or use another --logdir (--eval_only may run beside it)"
        )
    lock.truncate(0)
    lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    lock.flush()
    return lock


def train(config, strategy=None, start=lambda go: None):
    """A training run: prefill, then evaluate and save when due, else collect (training when due), to --steps.

    Under multi_worker the other workers only train with the chief, which calls `start(True)` once its prefill is
    done. Stopped, interrupted or given up on a crashing environment, the run saves a checkpoint to resume from."""
    if strategy is not None and not cluster.is_chief(strategy):
        build = functools.partial(Dreamer, config, None, step=0, strategy=strategy)
        return cluster.serve(config, strategy, build, saved_config)
    datadir = config.logdir / "episodes"
    with environments(config, "train", "test") as (train_envs, test_envs), lock_logdir(config.logdir):
        if not tf.train.get_checkpoint_state(config.logdir / "checkpoints"):  # Else once its checkpoint took the flags.
            save_config(config)
        with contextlib.closing(
            tools.Logger(config.logdir, tools.count_steps(datadir, config.action_repeat))
        ) as logger:
            episode = functools.partial(process_episode, config, logger)
            train_envs = record(config, train_envs, [functools.partial(episode, "train", datadir)])
            tests = []
            test_envs = record(config, test_envs, [tests.append])
            evaluate_now = functools.partial(evaluation, config, logger, datadir, test_envs, tests)
            store = prefill(config, train_envs)
            if store is None:
                return
            start(True)
            dataset = functools.partial(tools.make_dataset, store, config)
            dataset = dataset if config.deterministic else dataset()
            step = tools.count_steps(datadir, config.action_repeat)
            agent = make_agent(config, train_envs[0], logger, dataset, strategy, step)
            agent.load(resume=True)
            save_config(config)
            failed = run(config, agent, train_envs, evaluate_now)
    cluster.leave(agent)
    if failed:
        sys.exit(failed)


def run(config, agent, train_envs, evaluate_now):
    """The loop, saving a checkpoint however it ends; the message of a run whose environment gave up, or None."""
    try:
        loop(config, agent, train_envs, evaluate_now)
    except KeyboardInterrupt:
        print("Interrupted: saving a checkpoint before exiting.", flush=True)
        agent.save()
    except wrappers.WorkerError as e:
        agent.save()
        return env_failed(e, "the training so far is in the checkpoint, and the rerun resumes from it")
    except cluster.ERRORS as e:
        agent.save()  # Local, no collectives: the weights so far, for the restarted cluster.
        sys.exit(cluster.lost("the chief", e))
    return None


def loop(config, agent, train_envs, evaluate_now):
    """From where the checkpoint and the episodes on disk are: train when due; evaluate when due, then save; collect
    to the next evaluation, training whenever due. At --steps the episodes under way end, and the run evaluates."""
    if agent.step >= config.steps and not evaluation_due(config, agent):
        print(f"Already {agent.step} of --steps {config.steps} env steps: raise --steps to train on.", flush=True)
        return
    sim, resumed = None, not evaluation_due(config, agent)
    while True:
        train_when_due(agent)  # Before a test episode too: an evaluation at env step S sees every update due by S.
        if evaluation_due(config, agent):
            print("Start evaluation.", flush=True)
            evaluate_now(agent)
            agent.eval_every.done(agent.step)
            agent.evaluated.assign(agent.step)
            agent.save()
        if agent.step >= config.steps:
            return
        steps = min(int(agent.eval_every.next.numpy()), config.steps) - agent.step
        if resumed:
            print(f"Resumed at env step {agent.step}: collecting {steps} steps before the next evaluation.", flush=True)
            resumed = False
        print("Start collection.", flush=True)
        sim = collect(config, agent, train_envs, sim, steps=steps)
        if sim.stopped:  # Where an episode ended: the checkpoint and the episodes on disk are the whole run.
            agent.save()
            print(f"Stopped at env step {agent.step}; run the command again to resume.", flush=True)
            return
        if agent.step >= config.steps:  # Only complete episodes are saved: at most one past --steps.
            sim = collect(config, agent, train_envs, sim, episodes=int((~sim.done).sum()))


def evaluation_due(config, agent):
    """Evaluations fall on multiples of --eval_every (the first at the end of the prefill) and once at --steps."""
    return agent.eval_every.due(agent.step) or agent.step >= config.steps > int(agent.evaluated.numpy())


def train_when_due(agent):
    if agent.train_every.due(agent.step):
        with STOP.interruptible(False):  # TensorFlow: a second stop signal waits for the next train step.
            agent.train_burst()


def collect(config, agent, envs, sim, steps=0, episodes=0):
    """Training episodes for `steps` env steps (until a stop signal) or `episodes` episodes, from `sim`, a train
    burst whenever one is due. The agent's env step counts those of the episodes on disk and under way: not
    those of an episode that crashed."""

    def policy(obs, reset, state):
        action, state = agent(obs, reset, state)
        agent.step += len(reset) * config.action_repeat
        return action, state

    steps, stop = -(-steps // config.action_repeat), STOP if steps else None
    seed = reset_seed(config, agent)
    sim = simulate(policy, envs, steps, episodes, sim, seed, stop, on_step=lambda: train_when_due(agent))
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
    simulate(functools.partial(agent, training=False), envs, episodes=episodes, reset_seed=seed)


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
    sim = simulate(agent, envs, steps // config.action_repeat, reset_seed=seed, stop=STOP)
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


def evaluate(config):
    """Test episodes of the latest checkpoint; writes only eval.jsonl and eval/, never the training state."""
    episodes = []
    with environments(config, "test") as (envs,):
        envs = record(config, envs, [episodes.append])
        agent = make_agent(config, envs[0])
        step = agent.step = agent.load() or 0
        try:
            test(config, agent, envs, config.eval_episodes)
        except wrappers.WorkerError as e:
            sys.exit(env_failed(e, "nothing was written"))
    episodes = episodes[: config.eval_episodes]
    outdir = config.logdir / "eval"
    outdir.mkdir(exist_ok=True)
    returns = []
    with (config.logdir / "eval.jsonl").open("a") as f:
        for index, episode in enumerate(episodes):
            ret, length = summarize(config, episode)
            returns.append(ret)
            f.write(json.dumps({"step": step, "episode": index, "return": ret, "length": length}) + "\n")
            tools.write_video(outdir / f"{step}-{index}.mp4", episode["image"])
    tools.write_strip(outdir / f"{step}-openl.png", agent.openl(episodes))
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
        problem = action_problem(config, isinstance(action_space, wrappers.OneHotBox)) or mismatch_problem(config)
        if problem:
            exit_2(problem)


def exit_2(message):
    """Bad input or a fault found after parse_config (an environment, a checkpoint, the lock): exit as
    parser.error does, without a traceback."""
    print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr)
    sys.exit(2)


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


def make_strategy(config):
    """The tf.distribute strategy of --strategy; made before anything else runs on a device."""
    if config.strategy == "default" or config.eval_only:
        return tf.distribute.get_strategy()
    if config.strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        count = config.replicas or len(gpus)
        if count > len(gpus):
            exit_2(f"argument --replicas: {count} replicas but only {len(gpus)} GPUs are visible")
        return tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(count)])
    count = config.replicas or 1
    # Logical CPU devices share the same cores: for testing the distributed code path, not for speed.
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(count)])


def setup(config):
    for gpu in tf.config.list_physical_devices("GPU"):  # Before the strategy starts the devices.
        if config.gpu_growth:
            tf.config.experimental.set_memory_growth(gpu, True)
    strategy = make_strategy(config)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        exit_2(
            f"argument --batch_size: the global batch of {config.batch_size} does not split evenly "
            f"across {replicas} replicas; use a multiple of {replicas}"
        )
    if replicas > 1:
        devices = ", ".join(strategy.extended.worker_devices)
        print(
            f"Strategy {config.strategy}: {replicas} replicas (here: {devices}), "
            f"{config.batch_size // replicas} sequences each.",
            flush=True,
        )
    policy = {"16": "mixed_float16", "bf16": "mixed_bfloat16", "32": "float32"}[config.precision]
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic is None:
        config.deterministic = not tf.config.list_physical_devices("GPU")
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    return strategy


class Stop:
    """Ctrl-C and SIGTERM. The first asks the run to stop where its checkpoint holds all of it: after the train
    steps and the episodes under way, so that the resumed run is the one that was not stopped. A second stops
    sooner, losing the train burst and episodes under way: it interrupts a wait on the environments at once, and
    otherwise stops the run at its next train step or wait. It never raises inside TensorFlow, whose scopes a
    KeyboardInterrupt can leave broken for the checkpoint that follows. A third ends the process, as kill -9 does."""

    def __init__(self):
        self.signals = 0
        self._interruptible = False

    def install(self):
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        self.signals += 1
        if self.signals == 1:  # Unbuffered: a print() here could land inside another one.
            message = "Stopping after the train steps and episodes under way (again to stop at once).\n"
            os.write(sys.__stdout__.fileno(), message.encode())
        elif self.signals == 2 and self._interruptible:
            raise KeyboardInterrupt
        elif self.signals > 2:
            for other in STOP_SIGNALS:
                signal.signal(other, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    def __call__(self):
        return self.signals > 0

    def now(self):
        return self.signals > 1

    @contextlib.contextmanager
    def interruptible(self, value=True):
        """A block where a second signal raises KeyboardInterrupt at once; with False, one where it waits (to the
        block's end within an interruptible block). Any TensorFlow code called within must be in the latter."""
        outer = self._interruptible
        try:
            self._interruptible = value
            if value and self.now():
                raise KeyboardInterrupt
            yield
        finally:
            self._interruptible = outer
        if outer and self.now():
            raise KeyboardInterrupt


STOP = Stop()


def main(config):
    strategy = setup(config)
    if config.eval_only:
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
    main(parse_config())
