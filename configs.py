"""The flags of dreamer.py: their defaults (the paper's), presets, parsing, and the checks that turn bad input into
an error naming the fix (exit 2) before anything is written. A behaviour's or representation's own settings come
from its class in models.BEHAVIORS or models.REPRESENTATIONS (docs/extending.md)."""

import argparse
import json
import os
import pathlib
import re

import tensorflow as tf

import cluster
import export
import models
import tools
import wrappers

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

# The core flags: their default, what they do and, for some, their choices. flags() adds the variants' own; --help
# and the flag table (flag_table(), checked by a test) are made from it. Defaults are the paper's.
CORE = dict(
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
    representation=("reconstruction", "what besides the KL shapes the encoder and RSSM"),
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
    behavior=("dreamer", "how actions are chosen and learned"),
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
        "test episodes of each evaluation (the paper's: 1; at least one per --envs; their mean is test/return, their "
        "spread test/return_std, min and max) and of an --eval_only run",
    ),
    export=(
        "",
        "only export the policy of the latest checkpoint of --logdir to this new (or empty) folder as a TensorFlow "
        "SavedModel, callable without this code (docs/usage.md); pass the flags the run was trained with",
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


def flags():
    """Every flag: the core ones, --behavior and --representation with the registered variants as their choices
    (each named with its class's first docstring line), then each variant's own settings."""
    table = dict(CORE)
    for key, registry in (("behavior", models.BEHAVIORS), ("representation", models.REPRESENTATIONS)):
        default, text = CORE[key]
        kinds = "; ".join(first_line(kind) for kind in registry.values())
        table[key] = (default, f"{text} (models.{key.upper()}S): {kinds}", tuple(registry))
    for variant in (*models.BEHAVIORS.values(), *models.REPRESENTATIONS.values()):
        taken = [k for k, v in variant.flags.items() if k in table and table[k] is not v]  # Not an inherited one.
        if taken:
            raise ValueError(f"{variant.__name__}.flags: {', '.join(sorted(taken))} already taken; rename them")
        table.update(variant.flags)
    return table


def first_line(kind):
    return " ".join((kind.__doc__ or kind.__name__).split("\n\n")[0].split()).rstrip(".")


def define_config():
    return {key: value[0] for key, value in flags().items()}


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
    for key, (default, text, *choices) in flags().items():
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
        unknown = set(PRESETS[name]) - set(flags())
        if unknown:  # A preset of a variant that is not registered, or a misspelt flag.
            parser.error(f"argument --configs: {name} sets {', '.join(sorted(unknown))}, which no flag is")
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
    if saved in CORE["precision"][2]:
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
    for variant in (*models.BEHAVIORS.values(), *models.REPRESENTATIONS.values()):  # Their flags are everyone's.
        problem = variant.problem(config)
        if problem:
            return problem
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
    if discrete and not models.BEHAVIORS[config.behavior].discrete:
        usable = " or ".join(k for k, v in models.BEHAVIORS.items() if v.discrete)
        return (
            f"argument --behavior: {config.behavior} acts in continuous action spaces only, and {config.task} has "
            f"discrete actions; use --behavior {usable} (the onehot actor)"
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
    if config.export:  # Reads the run and writes only the SavedModel: export.py checks its folder instead.
        problem = export.problem(config)
        if problem:
            return problem
    elif config.strategy != "multi_worker" and not os.access(existing, os.W_OK | os.X_OK):  # Only its chief writes.
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
    """docs/flags.md's flag table, from flags()."""
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for key, (default, text, *_) in flags().items():
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
