"""Speed benchmark of the Dreamer agent: train step, policy step, environments, episode store, memory.

Usage (from the repository root; every measurement runs in a fresh child process):

    python benchmarks/speed.py                      # full run: 50x50 and 16x16, precisions 32,bf16, jit off/on
    python benchmarks/speed.py --quick              # tiny sizes, about a minute, to check that everything runs
    python benchmarks/speed.py --precisions 32,bf16,16 --timed 5 --out benchmarks/speed.jsonl

It prints a table and appends one JSON line per figure to --out: name, value, unit, spread (min/max or
null), config, date, commit and machine (platform, CPU model, cores, TensorFlow version).

Figures
  train_step_first_s / train_step_s  agent.train(batch) on a fixed random batch: first call (tracing and
      compilation) and median of --timed calls after one warm-up, with min/max; one child process per
      (precision, jit, batch), as the Keras mixed-precision policy and tracing caches are process-wide.
  train_gflops, train_frac_matmul_{f32,bf16}  analytic FLOPs of one train step (below) / median step
      time, and that as a fraction of this machine's tf.matmul GFLOP/s (2048x2048, float32 and bfloat16).
  policy_step_ms  agent.policy on one 64x64 frame (1 env, training=True, noise 0.3), median of 100 calls,
      in the jit-off child of the first batch of each precision (the policy is never XLA-compiled).
  env_steps_per_s  dmc_walker_walk, action repeat 2, random actions: 1 env rendering only the last
      sub-step (default), 1 env rendering every sub-step, 4 envs in Async 'process' workers stepped
      concurrently; env_render_last_speedup = first / second. Measured in a child that never imports
      TensorFlow (MuJoCo's Mesa EGL segfaults beside it).
  batch_ms, batch_frac_train_step  next(EpisodeStore.batches(B, T)) on synthetic saved episodes, median,
      and as a fraction of the float32 train step at the same batch (jit off).
  train_step_s, policy_step_ms with behavior=no_value / planet  the same, float32, jit off, first batch, for
      --behavior no_value (no value model) and planet (no actor or value; its policy step is one plan of the
      cross-entropy method at TF1's sizes: 1000 candidates, 10 iterations, top 100, horizon 12).
  peak_rss_mib  ru_maxrss of each train child (model, optimizer, one batch, traced functions).
  deterministic_cost_{train_step,policy_step}  --deterministic True over False (TensorFlow's deterministic
      kernels), float32, jit off, first batch: step time ratio - 1 (the train children run once per value).
  dataset_restart_ms, dataset_restart_frac_burst  --deterministic True starts a fresh data pipeline at every
      training burst (make_dataset with `start`: no batch drawn ahead of its burst): the time to its first batch,
      less that of a batch from a running pipeline, and that over a burst of 100 float32 train steps.
  Env steps/s do not depend on --deterministic: the workers never run TensorFlow, and the only change there
      (one seed per reset) is the same either way.

FLOP count (flops()): 2 FLOPs per multiply-add, dense layers and convolutions only (elementwise ops,
distributions, optimizer updates ignored); N = B*T, d = cnn_depth, u = num_units, h = deter_size
(the RSSM hidden size), s = stoch_size, f = s + h, a = action dim, H = horizon (15).
  encoder   per image: 4 convs k4 s2 valid, 64 -> 31 -> 14 -> 6 -> 2, channels 3 -> d -> 2d -> 4d -> 8d:
            sum 2 * out_h * out_w * k*k * c_in * c_out.
  observe   N obs_steps: img_step [dense s+a->h, GRU 2*(h+h)*3h, dense h->h, h->2s] plus dense
            (h + 32d)->h, h->2s.
  decoder   per feature: dense f->32d; first transposed conv on a 1x1 input = matmul 32d -> 5*5*4d; then
            transposed convs 5x5 -> 13x13 (k5, 4d->2d), -> 30x30 (k6, 2d->d), -> 64x64 (k6, d->3):
            2 * in_h * in_w * k*k * c_in * c_out each.
  reward    N * [f->u, u->u, u->1].
  imagine   H steps from N starts: actor (f->u, 3x u->u, u->2a) + img_step; then on H*N features
            reward (2 layers) and value (3 layers) twice (actor loss and value loss).
  train step = 3 x forward (backward ~ 2 x forward).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # random_batch: the tests' data.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TINY = dict(cnn_depth=4, num_units=16, deter_size=16, stoch_size=4)
DEFAULT = dict(cnn_depth=32, num_units=400, deter_size=200, stoch_size=30)
ACT_DIM, IMAGE = 6, (64, 64, 3)
MARK = "@@RESULT "


# FLOP count.


def flops(sizes, B, T, act_dim=ACT_DIM, horizon=15):
    d, u, h, s = sizes["cnn_depth"], sizes["num_units"], sizes["deter_size"], sizes["stoch_size"]
    f, a, N = s + h, act_dim, B * T
    dense = lambda *widths: sum(2 * i * o for i, o in zip(widths[:-1], widths[1:]))
    encoder, size, c_in = 0, 64, 3
    for c_out in (d, 2 * d, 4 * d, 8 * d):
        size = (size - 4) // 2 + 1
        encoder += 2 * size * size * 16 * c_in * c_out
        c_in = c_out
    img_step = dense(s + a, h) + 2 * (h + h) * 3 * h + dense(h, h, 2 * s)
    obs_step = img_step + dense(h + 32 * d, h, 2 * s)
    decoder = dense(f, 32 * d) + dense(32 * d, 25 * 4 * d)
    for size, k, c_in, c_out in ((5, 5, 4 * d, 2 * d), (13, 6, 2 * d, d), (30, 6, d, 3)):
        decoder += 2 * size * size * k * k * c_in * c_out
    reward = dense(f, u, u, 1)
    actor = dense(f, u, u, u, u, 2 * a)
    value = dense(f, u, u, u, 1)
    model = N * (encoder + obs_step + decoder + reward)
    behavior = horizon * N * (actor + img_step + reward + 2 * value)
    return 3 * (model + behavior)


# Workers (children). Only train/host import TensorFlow; env never does.


def timed(fn, n):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def spread(times, scale=1.0):
    return dict(median=statistics.median(times) * scale, min=min(times) * scale, max=max(times) * scale, n=len(times))


def peak_rss_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


def make_agent(args, logdir):
    import tensorflow as tf

    import configs
    import dreamer
    import runtime
    import tools
    from data import random_batch

    B, T = args.batch
    flags = ["--logdir", logdir, "--precision", args.precision, "--jit", str(args.jit)]
    flags += ["--deterministic", str(args.deterministic), "--behavior", args.behavior or "dreamer"]
    flags += ["--batch_size", str(B), "--batch_length", str(T)]
    flags += [f"--{k}={v}" for k, v in (TINY if args.quick else DEFAULT).items()]
    config = configs.parse_config(flags)
    runtime.setup(config)
    data = random_batch(B, T, ACT_DIM, image=IMAGE)
    dataset = tf.data.Dataset.from_tensors(data).repeat().map(lambda x: tools.preprocess(x, config))
    agent = dreamer.Dreamer(config, dataset, IMAGE, ACT_DIM)
    return agent, next(iter(dataset))


def worker_train(args):
    import numpy as np
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as logdir:
        agent, batch = make_agent(args, logdir)
        step = lambda: agent.train(batch)["model_loss"].numpy()
        first = timed(step, 1)[0]
        step()
        result = dict(first_s=first, step_s=spread(timed(step, args.timed)))
        if args.policy:
            state = (agent.world_model.dynamics.initial(1), tf.zeros((1, ACT_DIM)))
            image, reset = np.zeros((1, *IMAGE), np.uint8), np.zeros(1, bool)
            seed = np.array([0, 0, 0], np.int32)

            def act():
                nonlocal state
                action, state = agent.policy(image, reset, state, True, 0.3, seed)
                action.numpy()

            timed(act, 3)
            result["policy_ms"] = spread(timed(act, args.policy), 1000)
    result.update(peak_rss_mib=peak_rss_mib(), tf=tf.__version__)
    return result


def worker_host(args):
    """Matmul peak of this machine and the episode store's batch time."""
    import numpy as np
    import tensorflow as tf

    import tools

    n, reps = (512, 3) if args.quick else (2048, 7)
    matmul = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.matmul(x, y), tf.float32)))
    result = dict(tf=tf.__version__, matmul_n=n)
    for name, dtype in (("f32", tf.float32), ("bf16", tf.bfloat16)):
        x, y = (tf.cast(tf.random.normal((n, n)), dtype) for _ in range(2))
        matmul(x, y).numpy()
        times = timed(lambda: matmul(x, y).numpy(), reps)
        result[f"matmul_{name}_gflops"] = spread([2 * n**3 / t / 1e9 for t in times])
    B, T = args.batch
    episodes, length = (3, 51) if args.quick else (20, 501)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as directory:
        for _ in range(episodes):  # Keys as saved from dmc_walker_walk; images low-entropy to save disk.
            episode = dict(
                image=(rng.integers(0, 4, (length, *IMAGE)) * 60).astype(np.uint8),
                orientations=rng.normal(size=(length, 14)).astype(np.float32),
                height=rng.normal(size=(length, 1)).astype(np.float32),
                velocity=rng.normal(size=(length, 9)).astype(np.float32),
                action=rng.uniform(-1, 1, (length, ACT_DIM)).astype(np.float32),
                reward=rng.uniform(size=length).astype(np.float32),
                discount=np.ones(length, np.float32),
            )
            tools.save_episodes(directory, [episode])
        store = tools.EpisodeStore(directory, seed=0)
        result["store_load_s"] = timed(store.update, 1)[0]
        batches = store.batches(B, T)
        next(batches)
        result["batch_ms"] = spread(timed(lambda: next(batches), 5 if args.quick else 20), 1000)
        config = tools.AttrDict(batch_size=B, batch_length=T, dataset_balance=False, clip_rewards="none")
        running = iter(tools.make_dataset(store, config))
        next(running)
        restart = lambda: next(iter(tools.make_dataset(store, config, start=0)))
        restart()
        reps = 3 if args.quick else 10
        result["restart_ms"] = statistics.median(timed(restart, reps)) * 1000
        result["running_ms"] = statistics.median(timed(lambda: next(running), reps)) * 1000
    result["store"] = dict(episodes=episodes, length=length)
    return result


def worker_env(args):
    """Agent steps per second of dmc_walker_walk; never imports TensorFlow."""
    import functools

    import numpy as np

    import wrappers

    assert "tensorflow" not in sys.modules
    steps, rng = args.env_steps, np.random.default_rng(0)
    ctor = lambda i, **kw: functools.partial(wrappers.make_env, "dmc_walker_walk", 2, 1000, seed=i, **kw)

    def rate(envs):
        for env in envs:
            env.reset()
        low, high = envs[0].action_space.low, envs[0].action_space.high
        start = time.perf_counter()
        for _ in range(steps):
            promises = [env.step(rng.uniform(low, high), blocking=False) for env in envs]
            for env, promise in zip(envs, promises):
                if promise()[2]:
                    env.reset()
        return len(envs) * steps / (time.perf_counter() - start)

    result = {}
    for name, render_every in (("last", False), ("every", True)):
        env = wrappers.Async(ctor(0, render_every=render_every), "none")
        result[f"render_{name}"] = rate([env])
        env.close()
    envs = [wrappers.Async(ctor(i), "process") for i in range(4)]
    try:
        result["async4"] = rate(envs)
    finally:
        for env in envs:
            env.close()
    return result


# Driver (parent): no TensorFlow here.


def run_child(argv, args):
    cmd = [sys.executable, os.path.abspath(__file__), *argv] + (["--quick"] if args.quick else [])
    print("$", " ".join(argv), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
    print(f"  failed (exit {proc.returncode}):\n    " + "\n    ".join(tail), flush=True)
    return None


def machine():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(platform=platform.platform(), cpu=cpu, cores=os.cpu_count(), python=platform.python_version())


def commit():
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return proc.stdout.strip() or None


def record(records, name, value, unit, stats=None, **config):
    spread_ = dict(min=stats["min"], max=stats["max"], n=stats["n"]) if stats else None
    records.append(dict(name=name, value=value, unit=unit, spread=spread_, config=config))


def train_records(records, r, precision, jit, batch, sizes, host, args, deterministic, behavior="dreamer"):
    cfg = dict(precision=precision, jit=jit, batch=f"{batch[0]}x{batch[1]}", sizes="tiny" if args.quick else "default")
    cfg["deterministic"] = deterministic
    if behavior != "dreamer":
        cfg["behavior"] = behavior
    s = r["step_s"]
    record(records, "train_step_first_s", r["first_s"], "s", **cfg)
    record(records, "train_step_s", s["median"], "s", s, **cfg)
    count = flops(sizes, *batch)  # Dreamer's train step: the others' FLOPs are not counted.
    rate = lambda t: count / t / 1e9
    gflops = dict(min=rate(s["max"]), max=rate(s["min"]), n=s["n"])
    if behavior == "dreamer":
        record(records, "train_gflops", rate(s["median"]), "GFLOP/s", gflops, flops_per_step=count, **cfg)
    for key in ("f32", "bf16") if host and behavior == "dreamer" else ():
        peak = host[f"matmul_{key}_gflops"]["median"]
        record(records, f"train_frac_matmul_{key}", rate(s["median"]) / peak, "fraction", matmul_gflops=peak, **cfg)
    if "policy_ms" in r:
        record(records, "policy_step_ms", r["policy_ms"]["median"], "ms", r["policy_ms"], envs=1, **cfg)
    record(records, "peak_rss_mib", r["peak_rss_mib"], "MiB", timed_steps=args.timed + 2, **cfg)


def other_records(records, host, env, train, args):
    if host:
        for key in ("f32", "bf16"):
            stats = host[f"matmul_{key}_gflops"]
            record(records, f"matmul_gflops_{key}", stats["median"], "GFLOP/s", stats, n=host["matmul_n"])
        B, T = args.batches[0]
        cfg = dict(batch=f"{B}x{T}", load_s=host["store_load_s"], **host["store"])
        record(records, "batch_ms", host["batch_ms"]["median"], "ms", host["batch_ms"], **cfg)
        ref = train.get(("32", False, (B, T), False))
        if ref:
            fraction = host["batch_ms"]["median"] / 1000 / ref["step_s"]["median"]
            record(records, "batch_frac_train_step", fraction, "fraction", precision="32", jit=False, **cfg)
        restart = host["restart_ms"] - host["running_ms"]
        cfg = dict(batch=f"{B}x{T}", restart_ms=host["restart_ms"], running_ms=host["running_ms"])
        record(records, "dataset_restart_ms", restart, "ms", **cfg)
        ref = train.get(("32", False, (B, T), False))
        if ref:
            fraction = restart / 1000 / (100 * ref["step_s"]["median"])
            record(records, "dataset_restart_frac_burst", fraction, "fraction", train_steps=100, **cfg)
    on, off = train.get(("32", False, args.batches[0], True)), train.get(("32", False, args.batches[0], False))
    if on and off:
        cfg = dict(precision="32", jit=False, batch="x".join(map(str, args.batches[0])))
        ratio = on["step_s"]["median"] / off["step_s"]["median"] - 1
        record(records, "deterministic_cost_train_step", ratio, "fraction", **cfg)
        if "policy_ms" in on and "policy_ms" in off:
            ratio = on["policy_ms"]["median"] / off["policy_ms"]["median"] - 1
            record(records, "deterministic_cost_policy_step", ratio, "fraction", **cfg)
    if env:
        cfg = dict(task="dmc_walker_walk", action_repeat=2, steps=args.env_steps)
        record(records, "env_steps_per_s", env["render_last"], "steps/s", envs=1, render="last", **cfg)
        record(records, "env_steps_per_s", env["render_every"], "steps/s", envs=1, render="every", **cfg)
        record(records, "env_steps_per_s", env["async4"], "steps/s", envs=4, render="last", parallel="process", **cfg)
        speedup = env["render_last"] / env["render_every"]
        record(records, "env_render_last_speedup", speedup, "x", **cfg)


def fmt(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def print_table(records):
    skip = ("flops_per_step", "matmul_gflops", "load_s", "episodes", "length", "task", "action_repeat", "steps")
    skip += ("sizes", "restart_ms", "running_ms")
    rows = []
    for r in records:
        label = ", ".join(f"{k}={v}" for k, v in r["config"].items() if k not in skip)
        spread_ = f"[{fmt(r['spread']['min'])}, {fmt(r['spread']['max'])}] n={r['spread']['n']}" if r["spread"] else ""
        rows.append((r["name"], label, f"{fmt(r['value'])} {r['unit']}", spread_))
    widths = [max(len(row[i]) for row in rows + [("figure", "config", "value", "spread")]) for i in range(4)]
    for row in [("figure", "config", "value", "spread (min, max)")] + rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def main(args):
    sizes = TINY if args.quick else DEFAULT
    host = run_child(["--worker", "host", "--batch", "x".join(map(str, args.batches[0]))], args)
    env = run_child(["--worker", "env", "--env_steps", str(args.env_steps)], args)
    failed = (host is None) + (env is None)
    train = {}
    for precision in args.precisions:
        for jit in args.jits:
            for i, batch in enumerate(args.batches):
                # Both values of --deterministic for the float32 reference only, False elsewhere.
                for deterministic in (False, True) if (precision, jit, i) == ("32", False, 0) else (False,):
                    argv = ["--worker", "train", "--precision", precision, "--jit", str(jit)]
                    argv += ["--batch", f"{batch[0]}x{batch[1]}", "--timed", str(args.timed)]
                    argv += ["--policy", str(args.policy if i == 0 and not jit else 0)]
                    result = run_child(argv + ["--deterministic", str(deterministic)], args)
                    if result:
                        train[(precision, jit, batch, deterministic)] = result
                    failed += not result
    variants = {}
    for behavior in args.behaviors:  # The paper's other experiments beside Dreamer: float32, jit off, first batch.
        B, T = args.batches[0]
        argv = ["--worker", "train", "--precision", "32", "--jit", "False", "--batch", f"{B}x{T}"]
        argv += [
            "--timed",
            str(args.timed),
            "--policy",
            str(min(args.policy, 10) if behavior == "planet" else args.policy),
        ]
        result = run_child(argv + ["--deterministic", "False", "--behavior", behavior], args)
        if result:
            variants[behavior] = result
        failed += not result
    records = []
    for (precision, jit, batch, deterministic), r in train.items():
        train_records(records, r, precision, jit, batch, sizes, host, args, deterministic)
    for behavior, r in variants.items():
        train_records(records, r, "32", False, args.batches[0], sizes, host, args, False, behavior)
    other_records(records, host, env, train, args)
    tf_version = (host or next(iter(train.values()), {}) or {}).get("tf")
    info = dict(date=datetime.datetime.now().isoformat(timespec="seconds"), commit=commit(), quick=args.quick)
    info["machine"] = dict(machine(), tensorflow=tf_version)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "a") as f:
        for r in records:
            f.write(json.dumps({**r, **info}) + "\n")
    print(f"\n{info['machine']['cpu']}, {info['machine']['cores']} cores, TF {tf_version}, {info['date']}")
    print_table(records)
    print(f"\nAppended {len(records)} lines to {args.out}.")
    if failed:
        print(f"{failed} measurement(s) failed: see their output above.", file=sys.stderr)
    return 1 if failed else 0


def parse_args(argv=None):
    batch = lambda s: tuple(int(x) for x in s.split("x"))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model, batch 4x10, 3 timed calls, jit off")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "speed.jsonl"))
    parser.add_argument("--precisions", default="32,bf16", help="comma-separated subset of 32, bf16, 16")
    parser.add_argument("--jits", default=None, help="comma-separated: False,True (quick: False)")
    parser.add_argument("--batches", default=None, help="BxT list, first is the reference (default 50x50,16x16)")
    parser.add_argument("--timed", type=int, default=None, help="timed train calls after a warm-up (default 5)")
    parser.add_argument("--policy", type=int, default=100, help="timed policy calls")
    parser.add_argument("--env_steps", type=int, default=None, help="agent steps per env figure (default 300)")
    parser.add_argument("--behaviors", default="no_value,planet", help="--behavior values measured beside dreamer")
    # Internal: child processes.
    parser.add_argument("--worker", choices=("train", "host", "env"), help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=("32", "bf16", "16"), help=argparse.SUPPRESS)
    parser.add_argument("--jit", help=argparse.SUPPRESS)
    parser.add_argument("--deterministic", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=batch, help=argparse.SUPPRESS)
    parser.add_argument("--behavior", choices=("dreamer", "no_value", "planet"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    internal = [flag for flag in ("precision", "jit", "batch", "deterministic") if getattr(args, flag) is not None]
    if internal and not args.worker:  # E.g. --precision 16 would measure the default precisions.
        instead = dict(precision="--precisions", jit="--jits", batch="--batches")
        fix = f"use {instead[internal[0]]}" if internal[0] in instead else "32 is measured both ways by itself"
        parser.error(f"--{internal[0]} is the measuring children's; {fix}")
    args.precisions = args.precisions.split(",")
    args.behaviors = [b for b in args.behaviors.split(",") if b]
    for b in args.behaviors:
        if b not in ("no_value", "planet"):
            parser.error(f"--behaviors: unknown behavior {b!r}; use no_value and/or planet")
    for p in args.precisions:
        if p not in ("32", "bf16", "16"):
            parser.error(f"--precisions: unknown precision {p!r}; use 32, bf16 or 16")

    def to_bool(text):
        if text.strip().lower() not in ("true", "1", "yes", "false", "0", "no"):
            parser.error(f"--jits: expected True or False, got {text!r}")
        return text.strip().lower() in ("true", "1", "yes")

    args.jit, args.deterministic = to_bool(args.jit or "False"), args.deterministic or "False"
    args.jits = [to_bool(j) for j in (args.jits or ("False" if args.quick else "False,True")).split(",")]
    args.batches = [batch(b) for b in (args.batches or ("4x10" if args.quick else "50x50,16x16")).split(",")]
    args.timed = (3 if args.quick else 5) if args.timed is None else args.timed
    args.env_steps = (20 if args.quick else 300) if args.env_steps is None else args.env_steps
    for flag, least in (("timed", 1), ("env_steps", 1), ("policy", 0)):
        if getattr(args, flag) < least:
            parser.error(f"--{flag}: must be at least {least}, got {getattr(args, flag)}")
    if args.quick:
        args.policy = min(args.policy, 20)
    return args


if __name__ == "__main__":
    args = parse_args()
    if args.worker:
        result = dict(train=worker_train, host=worker_host, env=worker_env)[args.worker](args)
        print(MARK + json.dumps(result), flush=True)
    else:
        sys.exit(main(args))
