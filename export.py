"""Policy export: a trained agent's policy as a TensorFlow SavedModel, callable without this project's code.

`python dreamer.py --logdir RUN --export PATH` (with the flags the run was trained with, as for --eval_only) writes
the encoder, the RSSM filter and the actor (or PlaNet's planner, with the reward model) of RUN's latest checkpoint.
Its functions, also as signatures of the same names (see docs/usage.md, "Exporting a trained policy"):

    initial_state(batch)                     -> state
    step(image, reset, **state)              -> {"action": ..., **state}   the actor's mode, no exploration noise
    sample(image, reset, expl_amount, **state) -> {"action": ..., **state} a sample of the actor, exploration noise
                                                                          of --expl with expl_amount

`state` is a dict of tensors: the RSSM's `mean`, `std`, `stoch` and `deter` [B, size] (float32, or the run's
--precision), the last `action` [B, act_dim] and `seed` int32 [3]. `reset` (bool [B]) marks the first observation
of an episode and clears that row's state; `image` is uint8 [B, height, width, 3] as the run's environment gives it.

Noise: even the mode draws some (the RSSM's posterior sample, and the tanh-Normal actor's mode is the likeliest of
100 samples). It is stateless, from `seed` = (seed, key, counter): every call uses (seed, key, counter + 1) and
returns it in the state, so the same seed and inputs give the same actions. The agent's own test episodes use
(--seed, the env step of the evaluation, n) at their n-th step: initial_state() starts from (--seed, the
checkpoint's env step, 0), so that step() from it draws the noise of an evaluation of the checkpoint; set
state["seed"] to (any seed, any key, 0) for others.
"""

import os
import pathlib
import shutil

import tensorflow as tf

import runtime

LATENT = ("mean", "std", "stoch", "deter")  # models.RSSM.initial()'s keys.


class Policy(tf.Module):
    """The agent's policy tf.function (Dreamer.policy) with a flat state, for tf.saved_model.save: it holds the layers
    that function reads, so that their variables are saved with it, and its three functions (closures, so that
    nothing else is saved)."""

    def __init__(self, agent, seed):
        super().__init__(name="dreamer_policy")
        policy = agent.policy
        # What a policy may read (by their checkpoint names): all but the image decoder.
        self.networks = {k: v for k, v in agent.modules.items() if k != "image_head"}
        image, reset, (latent, action), *_ = policy.input_signature
        assert set(latent) == set(LATENT), latent
        state = {k: tf.TensorSpec(latent[k].shape, latent[k].dtype, name=k) for k in LATENT}
        state.update(action=tf.TensorSpec(action.shape, action.dtype, name="action"))
        state.update(seed=tf.TensorSpec([3], tf.int32, name="seed"))
        inputs = dict(image=tf.TensorSpec(image.shape, image.dtype, name="image"))
        inputs.update(reset=tf.TensorSpec(reset.shape, reset.dtype, name="reset"))
        amount = dict(expl_amount=tf.TensorSpec([], tf.float32, name="expl_amount"))

        def initial_state(batch):
            zeros = {k: tf.zeros([batch, spec.shape[-1]], spec.dtype) for k, spec in state.items() if k != "seed"}
            return {**zeros, "seed": tf.constant(seed, tf.int32)}

        def call(image, reset, state, training, amount):
            latent, action = {k: state[k] for k in LATENT}, state["action"]
            seed = state["seed"] + tf.constant([0, 0, 1], tf.int32)  # The next call's noise.
            action, (latent, _) = policy(image, reset, (latent, action), tf.constant(training), amount, seed)
            return {"action": action, **latent, "seed": seed}

        def step(image, reset, mean, std, stoch, deter, action, seed):
            state = dict(mean=mean, std=std, stoch=stoch, deter=deter, action=action, seed=seed)
            return call(image, reset, state, False, tf.constant(0.0))

        def sample(image, reset, expl_amount, mean, std, stoch, deter, action, seed):
            state = dict(mean=mean, std=std, stoch=stoch, deter=deter, action=action, seed=seed)
            return call(image, reset, state, True, expl_amount)

        self.initial_state = tf.function(initial_state, input_signature=[tf.TensorSpec([], tf.int32, "batch")])
        self.step = tf.function(step, input_signature=list({**inputs, **state}.values()))
        self.sample = tf.function(sample, input_signature=list({**inputs, **amount, **state}.values()))

    def signatures(self):
        return {name: getattr(self, name).get_concrete_function() for name in ("initial_state", "step", "sample")}


def problem(config):
    """What keeps --export from writing its SavedModel, as an argparse error message, or ''."""
    if config.eval_only:
        return "argument --export: not with --eval_only; run one, then the other"
    path = pathlib.Path(config.export).expanduser()
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        return f"argument --export: {path} is a file; pass a new folder for the SavedModel (or an empty one)"
    if path.is_dir() and any(path.iterdir()):
        return f"argument --export: {path} is not empty; pass a new or empty folder, or remove that one first"
    existing = next(p for p in path.absolute().parents if p.exists())
    if not existing.is_dir():
        return f"argument --export: {existing} is a file, so {path} cannot be made; pass a folder path"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"argument --export: cannot write in {existing}; pass a folder you may write to"
    if not (config.logdir / "checkpoints" / "checkpoint").exists():
        return f"argument --export: no checkpoint in {config.logdir}/checkpoints; train a run there first"
    return ""


@runtime.exits_on_full_disk
def export(config):
    """Writes the policy of the latest checkpoint in config.logdir to config.export as a SavedModel (a folder made
    beside it, renamed into place once complete); returns the Policy module."""
    import dreamer  # Here: dreamer.py imports this module for --export.

    path = pathlib.Path(config.export).expanduser().absolute()
    config.envs = 1  # Only for the observation and action spaces.
    with dreamer.environments(config, "test") as (envs,):
        spaces = envs[0].obs_space["image"].shape, envs[0].action_space.shape[0]
    trainer = dreamer.make_trainer(config, None, None, *spaces)
    step = trainer.load()
    policy = Policy(trainer.agent, (config.seed, step, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.parent / f".{path.name}.partial-{os.getpid()}"
    try:
        tf.saved_model.save(policy, str(partial), signatures=policy.signatures())
        os.replace(partial, path)  # Also onto an empty folder.
    except OSError as e:
        if runtime.no_space(e):  # Not the path's fault: exits 3.
            raise
        runtime.exit_2(f"argument --export: could not write {path} ({e}); pass a new or empty folder")
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    print(
        f"Exported the policy of checkpoint {step} to {path}: m = tf.saved_model.load(path); "
        "state = m.initial_state(batch); out = m.step(image=uint8 [B, H, W, 3], reset=bool [B], **state); "
        'out["action"], and out is the next state (docs/usage.md).',
        flush=True,
    )
    return policy
