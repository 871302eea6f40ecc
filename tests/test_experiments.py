"""The model-level pieces of the paper's other experiments: PlaNet's planner, the actor without a value model, and
the contrastive and reward-only representations (docs/experiments.md)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import GYM, checkpoint_keys, run_here

import configs
import dreamer
import models
import runtime
import tools

SEED = tf.constant([0, 7], tf.int64)
ACT_DIM = 2


def make_config(tmp_path, **extra):
    """The debug preset (stoch 4, deter 16, units 16, cnn_depth 4, horizon 3) in float32, with the new keys."""
    config = configs.parse_config(["--logdir", str(tmp_path), "--precision", "32", "--configs", "debug"])
    config.update({"behavior": "dreamer", "representation": "reconstruction", **extra})
    return config


def make_data(config, batch=3, length=8, seed=0):
    rng = np.random.RandomState(seed)
    data = dict(
        image=rng.randint(0, 255, (batch, length, 64, 64, 3)).astype(np.uint8),
        action=rng.uniform(-1, 1, (batch, length, ACT_DIM)).astype(np.float32),
        reward=rng.normal(size=(batch, length)).astype(np.float32),
        discount=np.ones((batch, length), np.float32),
    )
    return tools.preprocess({k: tf.constant(v) for k, v in data.items()}, config)


# PlaNet's planner.


class ActionCarrier:
    """Stand-in dynamics: the stochastic state is the last action, `deter` counts the steps, `mean` carries the
    start state's goal. It records the batch and noise shape of every img_step call (eagerly: one per step)."""

    def __init__(self):
        self.calls = []

    def img_step(self, prev, action, noise=None):
        self.calls.append((action.shape[0], tuple(noise.shape)))
        return dict(mean=prev["mean"], std=prev["std"], stoch=action, deter=prev["deter"] + 1)

    def get_feat(self, state):
        return tf.concat([state["stoch"], state["mean"], state["deter"]], -1)


class Reward:
    """-|a - goal|^2 for the first action, -|a + goal|^2 for the later ones: only the first action is the goal."""

    def __call__(self, feat):
        action, goal, step = feat[..., :ACT_DIM], feat[..., ACT_DIM:-1], feat[..., -1]
        target = tf.where((step == 1)[..., None], goal, -goal)
        return tools.AttrDict(mean=lambda: -tf.reduce_sum((action - target) ** 2, -1))


GOALS = np.array([[0.5, -0.3], [-0.7, 0.2]], np.float32)


def start_states(goals):
    zeros = tf.zeros([len(goals), 1])
    return dict(mean=tf.constant(goals), std=tf.ones_like(goals), stoch=tf.zeros_like(goals), deter=zeros)


def test_cem_finds_each_states_best_first_action_with_the_configured_budget():
    dynamics, sizes = ActionCarrier(), dict(candidates=300, iterations=5, topk=30, horizon=4)
    action = models.cross_entropy_method(dynamics, Reward(), start_states(GOALS), ACT_DIM, SEED, **sizes)
    assert action.shape == (2, ACT_DIM) and action.dtype == tf.float32
    np.testing.assert_allclose(action.numpy(), GOALS, atol=0.03)
    # 5 iterations of 4 steps, each on 2 x 300 candidates, with noise for the (2-dim) stochastic state.
    assert dynamics.calls == [(600, (600, ACT_DIM))] * (5 * 4)


def test_cem_clips_candidates_to_the_action_bounds():
    goals = np.array([[2.0, -3.0]], np.float32)  # Out of bounds: the best is the nearest corner.
    action = models.cross_entropy_method(ActionCarrier(), Reward(), start_states(goals), ACT_DIM, SEED, 300, 10, 30, 4)
    np.testing.assert_allclose(action.numpy(), [[1.0, -1.0]], atol=0.01)
    np.testing.assert_array_less(np.abs(action.numpy()), 1.0 + 1e-6)


def test_cem_is_keyed_by_the_seed_and_compiles_with_a_dynamic_batch():
    plan = lambda latent, seed: models.cross_entropy_method(
        ActionCarrier(), Reward(), latent, ACT_DIM, seed, 50, 2, 5, 3
    )
    spec = {k: tf.TensorSpec([None, v.shape[-1]], tf.float32) for k, v in start_states(GOALS).items()}
    compiled = tf.function(plan, input_signature=[spec, tf.TensorSpec([2], tf.int64)])
    eager = plan(start_states(GOALS), SEED).numpy()
    np.testing.assert_array_equal(compiled(start_states(GOALS), SEED).numpy(), eager)
    np.testing.assert_array_equal(plan(start_states(GOALS), SEED).numpy(), eager)
    assert np.abs(plan(start_states(GOALS), SEED + 1).numpy() - eager).max() > 1e-4
    assert compiled(start_states(GOALS[:1]), SEED).shape == (1, ACT_DIM)


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_cem_plans_in_a_real_rssm(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        rssm = models.RSSM(stoch=4, deter=16, hidden=16)
        reward = models.DenseDecoder((), 2, 16)
        post, _ = rssm.observe(tf.random.normal([3, 2, 32]), tf.random.normal([3, 2, ACT_DIM]))
        reward(rssm.get_feat(post))
        latent = {k: v[:, -1] for k, v in post.items()}
        plan = tf.function(lambda latent: models.cross_entropy_method(rssm, reward, latent, ACT_DIM, SEED, 40, 3, 4, 5))
        action = plan(latent)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert action.shape == (3, ACT_DIM) and action.dtype == tf.float32
    assert np.all(np.isfinite(action.numpy())) and np.all(np.abs(action.numpy()) <= 1)


# Behaviour without a value model.


@pytest.mark.parametrize("pcont", [False, True])
def test_no_value_actor_objective_is_the_discounted_sum_of_imagined_rewards(tmp_path, pcont):
    config = make_config(tmp_path, behavior="no_value", pcont=pcont)
    wm = models.WorldModel(config, (64, 64, 3), ACT_DIM)
    ac = models.NoValue(config, wm, ACT_DIM)
    _, post, _ = wm.loss(make_data(config), SEED)
    feat = ac.imagine_ahead(ac.start_states(post), SEED)
    returns, weights = ac.returns(feat)
    reward = wm.heads["reward"](feat).mode().numpy()
    discount = wm.heads["pcont"](feat).mean().numpy() if pcont else np.full_like(reward, config.discount)
    expected, later = np.zeros_like(reward), np.zeros_like(reward[0])
    for t in reversed(range(len(reward))):  # R_t = r_t + pcont_t R_t+1, nothing after the horizon.
        expected[t] = later = reward[t] + discount[t] * later
    assert returns.shape == reward.shape == (config.horizon, feat.shape[1])
    np.testing.assert_allclose(returns.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(weights.numpy(), np.ones_like(reward))
    with tf.GradientTape() as tape:  # The objective's gradient reaches the actor through the imagined states.
        feat = ac.imagine_ahead(ac.start_states(post), SEED)
        loss = -tf.reduce_mean(tf.math.multiply(*ac.returns(feat)))
    assert tf.linalg.global_norm(tape.gradient(loss, ac.actor.trainable_variables)).numpy() > 0


def test_no_value_builds_no_value_model(tmp_path):
    config = make_config(tmp_path, behavior="no_value")
    ac = models.NoValue(config, models.WorldModel(config, (64, 64, 3), ACT_DIM), ACT_DIM)
    assert list(ac.modules) == ["actor"] and list(ac.optimizers) == ["actor_opt"]
    assert [x.name for x in vars(ac).values() if isinstance(x, keras.layers.Layer)] == ["actor"]  # Nothing else built.
    assert ac.learn_value(None, None, None) == {}
    config = make_config(tmp_path, behavior="planet")
    planet = models.Planet(config, models.WorldModel(config, (64, 64, 3), ACT_DIM), ACT_DIM)
    assert planet.modules == {} and planet.optimizers == {}
    config = make_config(tmp_path)
    default = models.ActorCritic(config, models.WorldModel(config, (64, 64, 3), ACT_DIM), ACT_DIM)
    assert list(default.modules) == ["actor", "value"] and list(default.optimizers) == ["actor_opt", "value_opt"]


# Representations.


def gradients(wm, config, names):
    """Each loss's gradients with respect to the encoder and RSSM, and to all model variables."""
    state = wm.encoder.trainable_variables + wm.dynamics.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        loss, post, metrics = wm.loss(make_data(config), SEED)
    grads = {name: tape.gradient(metrics[name], state) for name in names}
    grads["model_loss"] = tape.gradient(loss, wm.variables)
    return grads, metrics


def norm(grads):
    return (
        tf.linalg.global_norm([g for g in grads if g is not None]).numpy() if any(g is not None for g in grads) else 0
    )


def log_normal(x, mean, std):
    return np.sum(-0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi), -1)


def logsumexp(x):
    return x.max() + np.log(np.sum(np.exp(x - x.max())))


def cpc_loop(mean, std, feat, batch_amount, time_amount):
    """TF1's compute_cpc_loss ('window') as a loop: the states at offsets (i, j) of each observation, cyclic."""
    rows, cols = feat.shape[:2]
    total = []
    for b in range(rows):
        for t in range(cols):
            negatives = [
                log_normal(feat[(b - i) % rows, (t - j) % cols], mean[b, t], std[b, t])
                for i in range(-(batch_amount // 2), batch_amount - batch_amount // 2)
                for j in range(-(time_amount // 2), time_amount - time_amount // 2)
            ]
            total.append(log_normal(feat[b, t], mean[b, t], std[b, t]) - logsumexp(np.array(negatives)))
    return np.mean(total)


@pytest.mark.parametrize("window", [None, (2, 3), (4, 1)])  # The default 10 x 30 clamped to the batch: all pairs.
def test_contrastive_loss_matches_a_loop_over_positives_and_negatives(tmp_path, window):
    config = make_config(tmp_path, representation="contrastive")
    if window:
        config.update(cpc_batch_amount=window[0], cpc_time_amount=window[1])
    wm = models.WorldModel(config, (64, 64, 3), ACT_DIM)
    data = make_data(config, batch=4, length=6)
    _, post, metrics = wm.loss(data, SEED)
    pred = wm.objective.heads["cpc"](wm.encoder(data["image"])).distribution
    mean, std = pred.loc.numpy().astype(np.float64), pred.scale.numpy().astype(np.float64)
    feat = wm.dynamics.get_feat(post).numpy().astype(np.float64)
    assert mean.shape == std.shape == feat.shape == (4, 6, config.stoch_size + config.deter_size)
    expected = -cpc_loop(mean, std, feat, *(window or (4, 6)))
    np.testing.assert_allclose(metrics["cpc_loss"].numpy(), expected, rtol=1e-5)
    losses = sum(metrics[f"{k}_loss"] for k in ("image", "reward", "cpc"))
    np.testing.assert_allclose(metrics["model_loss"], config.kl_scale * metrics["div"] + losses, rtol=1e-6)


def test_contrastive_contrast_modes_batch_and_time(tmp_path):
    config = make_config(tmp_path, representation="contrastive")
    wm = models.WorldModel(config, (64, 64, 3), ACT_DIM)
    data = make_data(config, batch=4, length=6)
    embed = wm.encoder(data["image"])
    feat = wm.dynamics.get_feat(wm.loss(data, SEED)[1])
    pred = wm.objective.heads["cpc"](embed).distribution
    args = pred.loc.numpy().astype(np.float64), pred.scale.numpy().astype(np.float64), feat.numpy().astype(np.float64)
    for contrast, window in (("batch", (4, 1)), ("time", (1, 6))):
        config.cpc_contrast = contrast
        objective = wm.objective.likes(embed, feat, data)["cpc"].numpy()
        np.testing.assert_allclose(objective, cpc_loop(*args, *window), rtol=1e-5)


def test_contrastive_head_is_a_trained_model_module(tmp_path):
    wm = models.WorldModel(make_config(tmp_path, representation="contrastive"), (64, 64, 3), ACT_DIM)
    head = wm.objective.heads["cpc"]
    assert wm.modules["cpc_head"] is head and head.trainable_variables  # Checkpointed as cpc_head.
    before = [v.numpy().copy() for v in head.trainable_variables]
    with tf.GradientTape(persistent=True) as tape:
        loss, _, _ = wm.loss(make_data(wm._c), SEED)
    wm.train(tape, loss)
    assert all(not np.array_equal(b, v.numpy()) for b, v in zip(before, head.trainable_variables))  # Trained.
    dense = lambda i, o: i * o + o  # Embedding 2 x 2 x 32 of the debug encoder; features 4 + 16.
    assert models.count_params(head) == dense(128, 16) + 2 * dense(16, 16) + 2 * dense(16, 20)
    assert "cpc_head" not in models.WorldModel(make_config(tmp_path), (64, 64, 3), ACT_DIM).modules


def test_contrastive_shapes_the_state_and_the_image_loss_does_not(tmp_path):
    config = make_config(tmp_path, representation="contrastive")
    wm = models.WorldModel(config, (64, 64, 3), ACT_DIM)
    grads, metrics = gradients(wm, config, ["cpc_loss", "image_loss", "reward_loss"])
    encoder = len(wm.encoder.trainable_variables)
    assert norm(grads["cpc_loss"][:encoder]) > 0 and norm(grads["cpc_loss"][encoder:]) > 0
    assert norm(grads["image_loss"]) == 0
    assert norm(grads["reward_loss"]) > 0
    assert np.isfinite(metrics["image_loss"].numpy()) and metrics["image_loss"].numpy() > 0
    image_head = {id(v) for v in wm.heads["image"].trainable_variables}
    assert norm([g for g, v in zip(grads["model_loss"], wm.variables) if id(v) in image_head]) > 0


@pytest.mark.parametrize("pcont", [False, True])
def test_reward_representation_leaves_the_image_loss_out_of_the_state(tmp_path, pcont):
    config = make_config(tmp_path, representation="reward", pcont=pcont)
    wm = models.WorldModel(config, (64, 64, 3), ACT_DIM)
    names = ["image_loss", "reward_loss"] + (["pcont_loss"] if pcont else [])
    grads, metrics = gradients(wm, config, names)
    encoder = len(wm.encoder.trainable_variables)
    assert norm(grads["image_loss"]) == 0
    assert norm(grads["reward_loss"][:encoder]) > 0 and norm(grads["reward_loss"][encoder:]) > 0
    if pcont:
        assert norm(grads["pcont_loss"]) > 0
    assert "cpc_loss" not in metrics and "cpc_head" not in wm.modules
    image_head = {id(v) for v in wm.heads["image"].trainable_variables}
    assert norm([g for g, v in zip(grads["model_loss"], wm.variables) if id(v) in image_head]) > 0


def test_reconstruction_image_loss_shapes_the_encoder_and_rssm(tmp_path):
    config = make_config(tmp_path)
    wm = models.WorldModel(config, (64, 64, 3), ACT_DIM)
    grads, metrics = gradients(wm, config, ["image_loss"])
    encoder = len(wm.encoder.trainable_variables)
    assert norm(grads["image_loss"][:encoder]) > 0 and norm(grads["image_loss"][encoder:]) > 0
    assert "cpc_loss" not in metrics


# Each experiment end to end: a run in this process (conftest's GYM flags), resumed, evaluated.

# The checkpoint's keys of each variant: those of the paper's Dreamer (`dreamer`), with these added and removed.
DREAMER = {"encoder", "dynamics", "image_head", "reward_head", "model_opt", "actor", "actor_opt", "value", "value_opt"}
DREAMER |= {"next_train", "next_log", "next_eval", "last_eval"}
VARIANTS = dict(
    no_value=dict(logged={"actor_loss"}, absent={"value_loss"}, added=set(), removed={"value", "value_opt"}),
    planet=dict(
        logged=set(),
        absent={"actor_loss", "value_loss"},
        added=set(),
        removed={"actor", "actor_opt", "value", "value_opt"},
    ),
    contrastive=dict(logged={"cpc_loss", "value_loss"}, absent=set(), added={"cpc_head", "image_opt"}, removed=set()),
    reward_only=dict(logged={"value_loss"}, absent={"cpc_loss"}, added={"image_opt"}, removed=set()),
)


@pytest.mark.parametrize("preset", list(VARIANTS))
def test_preset_trains_resumes_and_evaluates(tmp_path, capsys, preset):
    flags, expected = ["--configs", "debug", preset], VARIANTS[preset]
    run_here(tmp_path, *flags, "--steps", "120")
    resumed = run_here(tmp_path, *flags, "--steps", "160")[1]
    assert "Loaded checkpoint" in resumed and "Prefill" not in resumed
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "test/return" in r] == [80, 120, 160]
    keys = set().union(*rows)
    assert {"model_loss", "image_loss", "reward_loss"} | expected["logged"] <= keys and not expected["absent"] & keys
    assert checkpoint_keys(tmp_path / "checkpoints") == DREAMER - expected["removed"] | expected["added"]
    output = run_here(tmp_path, *flags, "--eval_only", "True", "--eval_episodes", "1")[1]
    assert "Evaluated checkpoint of step 160 over 1 episodes" in output
    config = json.loads((tmp_path / "config.json").read_text())
    other = ["--behavior", "dreamer"] if config["behavior"] != "dreamer" else ["--representation", "reconstruction"]
    with pytest.raises(SystemExit) as error:  # A checkpoint of one variant does not load into another.
        configs.parse_config(["--logdir", str(tmp_path), *GYM, *flags, *other])
    assert error.value.code == 2 and f"{other[0]} {config[other[0][2:]]} (not {other[1]})" in capsys.readouterr().err


@pytest.mark.parametrize("preset", list(VARIANTS))
def test_preset_train_step_and_policy_in_float16(tmp_path, preset):
    config = configs.parse_config(["--logdir", str(tmp_path), "--configs", "debug", preset, "--precision", "16"])
    runtime.setup(config)
    try:
        data = make_data(config)
        agent = dreamer.Dreamer(config, tf.data.Dataset.from_tensors(data), (64, 64, 3), ACT_DIM)
        for _ in range(3):
            metrics = agent.train(data)
        action, _ = agent({"image": np.zeros((2, 64, 64, 3), np.uint8)}, np.array([True, True]))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert all(np.isfinite(v.numpy()) for k, v in metrics.items() if not k.endswith("grad_norm"))
    assert all(np.isfinite(v.numpy()).all() for v in agent.world_model.variables)
    assert action.shape == (2, ACT_DIM) and np.isfinite(action).all() and np.abs(action).max() <= 1
