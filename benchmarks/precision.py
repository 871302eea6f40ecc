"""Precision soak: the learning check's agent trained in several precisions side by side on the same data.

Usage (from the repository root):

    python benchmarks/precision.py                  # 1000 train steps, half width, precisions 32,bf16,16
    python benchmarks/precision.py --quick          # tiny networks and 60 steps: about a minute
    python benchmarks/precision.py --steps 3000 --every 250 --precisions 32,bf16
    python benchmarks/precision.py --precisions 32 --twin   # float32 against itself with other noise

One set of real episodes (dmc_cartpole_balance, random actions, --seed) is collected once into --episodes and
reused by later runs. Every precision starts from the same initial weights (those of the float32 agent) and
sees the same batches in the same order with the same latent and action noise (stateless, keyed by the seed
and the update count), so any divergence comes from the precision alone. Every --every steps it prints,
per metric, the mean over those steps for each precision side by side, and the relative deviation from
float32. `imag_return` is the weighted mean λ-return of the imagined rollouts (minus the actor loss); for
float16, `model_loss_scale` and `*_skipped` (the fraction of steps skipped for non-finite gradients).

With --twin, a column 32' is float32 again with other latent and action noise (seed + 1): how far float32 drifts
from itself, the scale against which the half precisions' drift is read. The 32 columns of two invocations differ
too, at rounding level: op determinism is not enabled, so TensorFlow's threaded CPU kernels may sum in another order.
"""

import argparse
import functools
import math
import os
import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

import configs
import dreamer  # Imports TensorFlow: the environments run in worker processes.
import tools
import wrappers

TINY = dict(cnn_depth=4, num_units=16, deter_size=16, stoch_size=4, batch_size=4, batch_length=16)
# The learning check's widths: --configs cpu_check (benchmarks/learning.sh) over the defaults.
CPU_CHECK = {**configs.define_config(), **configs.PRESETS["cpu_check"]}
HALF = {k: CPU_CHECK[k] for k in TINY}
POLICIES = {"32": "float32", "16": "mixed_float16", "bf16": "mixed_bfloat16"}
SHOWN = (
    "image_loss",
    "reward_loss",
    "div",
    "prior_ent",
    "post_ent",
    "model_grad_norm",
    "actor_grad_norm",
    "value_grad_norm",
    "action_ent",
    "imag_return",
    "value_loss",
    "model_loss_scale",
    "model_skipped",
    "actor_skipped",
    "value_skipped",
)


def collect(directory, seed, episodes):
    """Random-action episodes of dmc_cartpole_balance in a TensorFlow-free worker, saved once."""
    if len(list(directory.glob("*.npz"))) >= episodes:
        return
    ctor = functools.partial(wrappers.make_env, "dmc_cartpole_balance", 2, 1000, seed=seed)
    env = wrappers.Collect(wrappers.Async(ctor, "process"), [lambda e: tools.save_episodes(directory, [e])])
    try:
        agent = dreamer.RandomAgent(env.action_space, seed)
        tools.simulate(agent, [env], episodes=episodes)
    finally:
        env.close()
    print(f"Collected {episodes} episodes into {directory}.", flush=True)


def build(config, precision, example, act_dim, weights=None):
    twin = precision.endswith("'")  # The same weights and batches, other noise.
    precision = precision.rstrip("'")
    config = tools.AttrDict(config, precision=precision, seed=config.seed + twin)
    keras.mixed_precision.set_global_policy(POLICIES[precision])
    dataset = tf.data.Dataset.from_tensors(example)
    agent = dreamer.Dreamer(config, dataset, example["image"].shape[2:], act_dim)
    variables = [v for module in agent.modules.values() for v in module.weights]
    if weights is not None:
        for variable, value in zip(variables, weights, strict=True):
            variable.assign(value)
    return agent, [v.numpy() for v in variables]


def table(step, sums, count, precisions):
    """Means over the last `count` steps; a float16 step skipped for non-finite gradients counts in *_skipped
    and is left out of the other means (its gradient norm is inf)."""
    print(f"\nAfter {step} train steps (means over the last {count}, finite values):")
    print(
        f"{'metric':>18} "
        + " ".join(f"{p:>12}" for p in precisions)
        + "".join(f"{p + ' rel':>10}" for p in precisions[1:])
    )
    for name in SHOWN:
        values = [sums[p][name][0] / sums[p][name][1] if sums[p].get(name, (0, 0))[1] else None for p in precisions]
        if all(name not in sums[p] for p in precisions):
            continue
        cells = " ".join(f"{'-' if v is None else f'{v:.4g}':>12}" for v in values)
        base = values[0]
        rel = ""
        for v in values[1:]:
            ok = v is not None and base is not None and base != 0
            rel += f"{f'{(v - base) / abs(base):+.1%}' if ok else '-':>10}"
        print(f"{name:>18} {cells}{rel}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--precisions", default="32,bf16,16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=pathlib.Path, default=ROOT / "logdir" / "precision-soak-episodes")
    parser.add_argument("--num_episodes", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny networks, 60 steps, 3 episodes")
    parser.add_argument("--twin", action="store_true", help="also float32 with other noise, as column 32'")
    args = parser.parse_args()
    sizes = TINY if args.quick else HALF
    if args.quick:
        args.steps, args.every, args.num_episodes = 60, 20, 3
        args.episodes = args.episodes.with_name(args.episodes.name + "-quick")
    precisions = args.precisions.split(",")
    if precisions[0] != "32":
        precisions = ["32"] + [p for p in precisions if p != "32"]
    precisions += ["32'"] * args.twin
    lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), "?")
    print(f"Machine: {platform.node()}, {cpu}, {os.cpu_count()} cores, TensorFlow {tf.__version__}.")
    print(f"Sizes: {sizes}; precisions {', '.join(precisions)}; {args.steps} steps.", flush=True)

    collect(args.episodes, args.seed, args.num_episodes)
    config = tools.AttrDict(configs.define_config())
    config.update(sizes, seed=args.seed, log_images=False, logdir=pathlib.Path("/nonexistent"))
    config.update(action_dist="tanh_normal", expl="additive_gaussian")  # What auto picks for cartpole.
    store = tools.EpisodeStore(args.episodes, seed=args.seed)
    store.update()
    batches = store.batches(config.batch_size, config.batch_length)
    preprocess = lambda b: tools.preprocess({k: tf.constant(v) for k, v in b.items()}, config)
    example = preprocess(next(batches))
    act_dim = example["action"].shape[-1]
    keras.utils.set_random_seed(args.seed)
    agents, weights = {}, None
    for precision in precisions:
        agents[precision], initial = build(config, precision, example, act_dim, weights)
        weights = weights or initial

    sums, count, start = {p: {} for p in precisions}, 0, time.time()
    seconds = {p: 0.0 for p in precisions}
    for step in range(1, args.steps + 1):
        data = preprocess(next(batches))
        for precision, agent in agents.items():
            begin = time.time()
            metrics = {k: float(v) for k, v in agent.train(data).items()}
            seconds[precision] += (time.time() - begin) * (step > 1)  # The first call traces and compiles.
            metrics["imag_return"] = -metrics["actor_loss"]
            for name, value in metrics.items():
                total, finite = sums[precision].get(name, (0.0, 0))
                sums[precision][name] = (total + value, finite + 1) if math.isfinite(value) else (total, finite)
        count += 1
        if step % args.every == 0 or step == args.steps:
            table(step, sums, count, precisions)
            sums, count = {p: {} for p in precisions}, 0
    times = ", ".join(f"{p} {seconds[p] / max(args.steps - 1, 1):.3f} s" for p in precisions)
    print(f"\nMean train step (after the first): {times}; {time.time() - start:.0f} s in all.")


if __name__ == "__main__":
    main()
