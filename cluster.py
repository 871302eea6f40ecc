"""--strategy multi_worker: the TF_CONFIG checks, the handshakes by which the chief tells the other workers whether
training follows its prefill and, before every train step, whether one follows, and the other workers' train loop.
Only the chief collects and writes."""

import hashlib
import itertools
import json
import sys
import time

import numpy as np
import tensorflow as tf

import tools

# How a collective op fails when another member of the cluster is gone.
ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.CancelledError,
    tf.errors.AbortedError,
)

TF_CONFIG_EXAMPLE = (
    "Set TF_CONFIG on every host to the same cluster and that host's own index, e.g. on the first of two hosts: "
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", "index": 0}}\''
)


def tf_config_problem(text):
    """What is wrong with a TF_CONFIG value for --strategy multi_worker, or None."""
    if not text:
        return "the TF_CONFIG environment variable is not set"
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as e:
        return f"TF_CONFIG is not valid JSON ({e})"
    cluster = tf_config.get("cluster") if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not (cluster.get("worker") or cluster.get("chief")):
        return 'TF_CONFIG has no "cluster" with a "worker" list of host:port addresses'
    for kind, addresses in cluster.items():
        if kind not in ("chief", "worker"):
            return f'TF_CONFIG\'s cluster has a {kind!r} job; only "chief" and "worker" take part in training'
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            return f'TF_CONFIG\'s cluster "{kind}" must be a list of "host:port" strings, got {addresses!r}'
    task = tf_config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        return 'TF_CONFIG has no "task" saying which cluster member this host is'
    kind, index = task["type"], task["index"]
    if kind not in cluster:
        return f"TF_CONFIG's task type {kind!r} is not a job of its cluster ({', '.join(cluster)})"
    if not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        return f"TF_CONFIG's task index {index!r} is unknown: its cluster lists {len(cluster[kind])} {kind} address(es)"
    return None


def is_chief(strategy):
    """The worker that collects episodes and writes summaries and checkpoints (the only one without multi_worker)."""
    return strategy.extended.should_checkpoint


class Handshake:
    """Before every train step the chief says whether one follows, and the other workers learn it (a collective
    sum). Without multi_worker it only returns what it is given."""

    def __init__(self, strategy):
        self.active = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        add = lambda flag: strategy.reduce("SUM", strategy.run(lambda: flag), axis=None)
        self._sync = tf.function(add, input_signature=[tf.TensorSpec([], tf.int32)])
        self._released = False

    def __call__(self, more):
        if not self.active:
            return more
        return bool(self._sync(tf.constant(int(more), tf.int32)).numpy() > 0)

    def release(self):
        """Chief: tell the other workers that no train step follows (once)."""
        if not self._released:
            self._released = True
            self(False)


class Start:
    """Chief: the word, once, on whether training follows its prefill. The other workers wait for it before they
    build their agents (they train on the prefill's episodes); a chief that stops or fails before says no."""

    def __init__(self, strategy):
        self._handshake = Handshake(strategy)
        self._said = False

    def __call__(self, go):
        if self._said:
            return
        self._said = True
        try:
            self._handshake(go)
        except ERRORS as e:
            if go:
                sys.exit(lost("the chief", e))
            print(lost("the chief", e), file=sys.stderr)  # Stopping anyway: its own error or exit code goes on.


def digest(agent):
    """A fingerprint of all network weights, to check that workers agree."""
    digest = hashlib.sha256()
    for weight in (w for module in agent.modules.values() for w in module.weights):
        digest.update(np.asarray(weight.numpy()).tobytes())
    return f"weights sha256 {digest.hexdigest()[:16]}"


def lost(who, error):
    return (
        f"error: {who} lost a member of the cluster ({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
        "Restart every worker with its command: they resume from the chief's latest checkpoint."
    )


def leave(trainer):
    """Chief, at the end of its run: stop the other workers and leave with them."""
    if not trainer.handshake.active:
        return
    try:
        trainer.handshake.release()
        print(f"Chief: stopped the other workers; {digest(trainer.agent)}.", flush=True)
        trainer.handshake(False)  # Leave together: a worker that exits first looks crashed to the chief.
    except ERRORS as e:
        sys.exit(lost("the chief", e))


def serve(config, strategy, make_trainer, saved_config):
    """A non-chief worker: trains with the chief on the shared episode folder and writes nothing; its variables
    start from the chief's latest checkpoint. `make_trainer(dataset, image_shape, act_dim)` builds the agent and
    its trainer, `saved_config(logdir)` reads the chief's config.json (configs.saved_config)."""
    resolver = strategy.cluster_resolver
    name = f"{resolver.task_type} {resolver.task_id}"
    try:
        train_with_chief(config, strategy, make_trainer, saved_config, name)
    except ERRORS as e:
        sys.exit(lost(f"worker {name}", e))
    except KeyboardInterrupt:  # Not a success: a scheduler that restarts failed hosts restarts this one too.
        print(f"Worker {name}: interrupted; the chief and the other workers stop with an error.", flush=True)
        sys.exit(1)


def train_with_chief(config, strategy, make_trainer, saved_config, name):
    datadir = config.logdir / "episodes"
    print(f"Worker {name}: waiting for the chief's prefill in {datadir}.", flush=True)
    if not Handshake(strategy)(False):  # The chief's Start.
        print(
            f"Worker {name}: the chief stopped before training (see its output); run every worker's command again.",
            flush=True,
        )
        return
    print(f"Worker {name}: training with the chief on {datadir}.", flush=True)
    # Its own sampling seed (the chief's is --seed), so that the workers train on different batches.
    seed = config.seed + 1000 * (1 + strategy.cluster_resolver.task_id)
    store = tools.EpisodeStore(datadir, config.replay_size // config.action_repeat, seed)
    for waited in itertools.count():
        store.update()
        try:  # The prefill's episodes are written; on a network file system they may take a while to show.
            example = store.sample(config.batch_length)
            break
        except ValueError:
            if waited % 60 == 0:
                print(f"Worker {name}: waiting to see the chief's episodes in {datadir}.", flush=True)
            time.sleep(1)
    image_shape, act_dim = example["image"].shape[1:], example["action"].shape[-1]
    if config.task.startswith("gym_"):  # The chief learned them from the environment (see discrete_actions).
        saved = saved_config(config.logdir)
        config.action_dist, config.expl = saved["action_dist"], saved["expl"]
    trainer = make_trainer(tools.make_dataset(store, config), image_shape, act_dim)
    trainer.load()
    steps = 0
    while trainer.handshake(False):
        trainer.agent.train(next(trainer.batches))
        steps += 1
    print(f"Worker {name}: the chief stopped after {steps} train steps together; {digest(trainer.agent)}.", flush=True)
    trainer.handshake(False)  # Leave with the chief.
