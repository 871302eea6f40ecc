import json
import os
import shutil
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import GYM, ROOT, run_dreamer, run_here
from data import random_batch

import configs
import dreamer
import models
import runtime
import tools

TINY_MODEL = "--configs debug"  # Tiny networks, batches of 3 sequences of 8 steps, imagination horizon 3.


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("agent")
    config = configs.parse_config(
        ["--logdir", str(logdir), "--task", "dmc_walker_walk", "--precision", "32"] + TINY_MODEL.split()
    )
    runtime.setup(config)
    batches = [random_batch(3, 8, 6, seed) for seed in range(4)]
    dataset = tf.data.Dataset.from_tensor_slices({k: np.stack([b[k] for b in batches]) for k in batches[0]})
    dataset = dataset.repeat().map(lambda x: tools.preprocess(x, config))
    return dreamer.Dreamer(config, dataset, (64, 64, 3), 6), dataset


def snapshot(variables):
    return [v.numpy().copy() for v in variables]


def changed(before, variables):
    return [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables)]


# lambda_return.


def lambda_return_loop(reward, value, pcont, bootstrap, lambda_):
    """V_t = r_t + pcont_t ((1 - lambda) v_{t+1} + lambda V_{t+1}), time on axis 0, V_H = v_H = bootstrap."""
    returns = np.zeros_like(reward)
    next_return = next_value = bootstrap
    for t in reversed(range(len(reward))):
        returns[t] = reward[t] + pcont[t] * ((1 - lambda_) * next_value + lambda_ * next_return)
        next_return, next_value = returns[t], value[t]
    return returns


@pytest.mark.parametrize("lambda_", [0.0, 0.95, 1.0])
@pytest.mark.parametrize("bootstrap", [True, False])
@pytest.mark.parametrize("axis", [0, 1])
def test_lambda_return_matches_loop(lambda_, bootstrap, axis):
    rng = np.random.RandomState(0)
    reward, value = rng.randn(15, 7).astype(np.float32), rng.randn(15, 7).astype(np.float32)
    pcont = rng.uniform(0.5, 1.0, (15, 7)).astype(np.float32)
    last = rng.randn(7).astype(np.float32) if bootstrap else np.zeros(7, np.float32)
    expected = lambda_return_loop(reward, value, pcont, last, lambda_)
    move = (lambda x: x.T) if axis == 1 else (lambda x: x)
    inputs = [tf.constant(move(x)) for x in (reward, value, pcont)]
    returns = tools.lambda_return(*inputs, tf.constant(last) if bootstrap else None, lambda_, axis=axis)
    np.testing.assert_allclose(move(returns.numpy()), expected, rtol=1e-5, atol=1e-5)


def test_lambda_return_extremes():
    reward, value = tf.constant([[1.0], [2.0], [3.0]]), tf.constant([[10.0], [20.0], [30.0]])
    last = tf.constant([40.0])
    one_step = tools.lambda_return(reward, value, 0.5, last, 0.0, axis=0)[:, 0]
    np.testing.assert_allclose(one_step, [1 + 0.5 * 20, 2 + 0.5 * 30, 3 + 0.5 * 40])
    monte_carlo = tools.lambda_return(reward, value, 0.5, last, 1.0, axis=0)[:, 0]
    np.testing.assert_allclose(monte_carlo[0], 1 + 0.5 * 2 + 0.25 * 3 + 0.125 * 40)


SEED = tf.constant([0, 7], tf.int64)


# Distributions.


def test_tanh_bijector_log_det_matches_numerical_derivative():
    x = np.linspace(-4, 4, 41)
    eps = 1e-6
    numerical = np.log((np.tanh(x + eps) - np.tanh(x - eps)) / (2 * eps))
    analytic = tools.TanhBijector().forward_log_det_jacobian(tf.constant(x), event_ndims=0)
    np.testing.assert_allclose(analytic.numpy(), numerical, rtol=1e-4, atol=1e-6)
    y = tools.TanhBijector().forward(tf.constant([-30.0, 0.3, 30.0]))
    assert np.isfinite(tools.TanhBijector().inverse(y).numpy()).all()  # Saturated samples stay finite.


def test_tanh_normal_actor_sample_mode_entropy_shapes():
    actor = models.ActionDecoder(6, 4, 16, "tanh_normal", init_std=5.0)
    dist = actor(tf.random.normal([5, 20]))
    sample, mode, entropy = dist.sample(), dist.mode(), dist.entropy()
    assert sample.shape == mode.shape == (5, 6) and entropy.shape == (5,)
    assert np.all(np.abs(sample.numpy()) <= 1) and np.all(np.abs(mode.numpy()) <= 1)
    log_prob = dist.log_prob(mode)
    assert log_prob.shape == (5,) and np.isfinite(log_prob.numpy()).all()


def test_onehot_straight_through_gradient():
    logits = tf.Variable(tf.random.normal([4, 5]))
    weights = tf.constant(np.arange(5, dtype=np.float32))
    with tf.GradientTape() as tape:
        sample = tools.OneHotDist(logits=logits).sample()
        loss = tf.reduce_sum(sample * weights)
    np.testing.assert_allclose(tf.reduce_sum(sample, -1), 1.0, atol=1e-6)
    assert set(np.round(sample.numpy(), 5).ravel()) <= {0.0, 1.0}
    grad = tape.gradient(loss, logits)
    assert grad is not None and np.abs(grad.numpy()).sum() > 0
    mode = tools.OneHotDist(logits=logits).mode().numpy()
    np.testing.assert_array_equal(mode.argmax(-1), logits.numpy().argmax(-1))


# RSSM.


@pytest.mark.parametrize("policy", ["float32", "mixed_float16"])
def test_rssm_observe_imagine_shapes_and_dtypes(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        rssm = models.RSSM(stoch=4, deter=16, hidden=16)
        embed, action = tf.random.normal([2, 5, 32]), tf.random.normal([2, 5, 3])
        post, prior = rssm.observe(embed, action)
        prior2 = rssm.imagine(action[:, :3], {k: v[:, -1] for k, v in post.items()})
    finally:
        keras.mixed_precision.set_global_policy("float32")
    dtype = tf.float16 if policy == "mixed_float16" else tf.float32
    for state, length in ((post, 5), (prior, 5), (prior2, 3)):
        assert state["stoch"].shape == state["mean"].shape == state["std"].shape == (2, length, 4)
        assert state["deter"].shape == (2, length, 16)
        assert all(v.dtype == dtype for v in state.values())
        assert rssm.get_feat(state).shape == (2, length, 20)
        dist = rssm.get_dist(state)
        assert dist.dtype == tf.float32 and dist.batch_shape == (2, length)
    assert np.all(post["std"].numpy() >= 0.1 - 1e-3)


def test_free_nats_clamp_stops_kl_gradient_to_the_prior(agent):
    agent, dataset = agent
    wm = agent.world_model
    data = next(iter(dataset))
    prior_head = wm.dynamics.img2.trainable_variables + wm.dynamics.img3.trainable_variables
    config = wm._c
    norms = {}
    for free_nats in (1e4, 0.0):
        config.free_nats = free_nats
        with tf.GradientTape() as tape:
            loss, _, metrics = wm.loss(data, SEED)
        norms[free_nats] = tf.linalg.global_norm(tape.gradient(loss, prior_head)).numpy()
        if free_nats:
            assert metrics["div"].numpy() == free_nats
    config.free_nats = 3.0
    assert norms[1e4] == 0 and norms[0.0] > 0


def test_train_step_noise_is_keyed_by_the_seed(agent):
    """Latent samples come from stateless noise: the same seed (run seed, update count) gives the same loss."""
    agent, dataset = agent
    wm = agent.world_model
    data = next(iter(dataset))
    first, again = (wm.loss(data, SEED)[1]["stoch"] for _ in range(2))
    other = wm.loss(data, SEED + 1)[1]["stoch"]
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    assert np.abs(first.numpy() - other.numpy()).max() > 1e-3


@pytest.mark.parametrize("dist", ["tanh_normal", "onehot"])
def test_actor_sample_from_noise_has_the_actors_distribution(dist):
    actor = models.ActionDecoder(3, 2, 16, dist, init_std=1.0)
    features = tf.repeat(tf.random.normal([1, 8]), 20000, 0)
    seed = tf.constant([1, 2], tf.int64)
    if dist == "tanh_normal":
        noise = tf.random.stateless_normal([20000, 3], seed)
    else:
        noise = tf.random.stateless_uniform([20000, 3], seed, 1e-6, 1 - 1e-6)
    ours = actor.sample(features, noise).numpy()
    theirs = actor(features).sample().numpy()
    np.testing.assert_allclose(ours.mean(0), theirs.mean(0), atol=0.03)
    np.testing.assert_allclose(ours.std(0), theirs.std(0), atol=0.03)


# Optimizers and train step.


def behavior_losses(agent, data, seed):
    """The actor and value losses of a train step from `seed`, at the weights the agent has now (eagerly)."""
    wm, ac = agent.world_model, agent.behavior
    model_seed, behavior_seed = tf.unstack(tf.random.split(seed))
    _, post, _ = wm.loss(data, model_seed)
    feat = ac.imagine_ahead(ac.start_states(post), behavior_seed)
    returns, weights = ac.returns(feat)
    return -tf.reduce_mean(weights * returns), ac.value_loss(feat, returns, weights)


def test_each_optimizer_changes_only_its_own_variables(agent):
    agent, dataset = agent
    wm, ac = agent.world_model, agent.behavior
    data = next(iter(dataset))
    groups = dict(model=wm.variables, actor=ac.actor.trainable_variables, value=ac.value.trainable_variables)
    before = {k: snapshot(v) for k, v in groups.items()}
    with tf.GradientTape() as tape:
        loss, _, _ = wm.loss(data, SEED)
    wm.optimizers["model_opt"](tape, loss)
    assert any(changed(before["model"], groups["model"]))
    assert not any(changed(before["actor"], groups["actor"]) + changed(before["value"], groups["value"]))
    before = {k: snapshot(v) for k, v in groups.items()}
    with tf.GradientTape(persistent=True) as tape:
        actor_loss, value_loss = behavior_losses(agent, data, SEED)
    ac.optimizers["actor_opt"](tape, actor_loss)
    ac.optimizers["value_opt"](tape, value_loss)
    assert not any(changed(before["model"], groups["model"]))  # The actor loss moves no world-model variable.
    assert any(changed(before["actor"], groups["actor"])) and any(changed(before["value"], groups["value"]))
    assert (
        wm.optimizers["model_opt"].opt.iterations.numpy() == 1
        and ac.optimizers["actor_opt"].opt.iterations.numpy() == 1
    )
    assert [o.opt.epsilon for o in agent.optimizers.values()] == [agent._c.adam_eps] * 3


def test_behavior_learns_at_the_world_models_weights_before_its_update(agent):
    # The paper's code takes all three gradients of a step at the same weights; tf.function keeps the train
    # step's program order (behaviour learning before the updates) for every variable's reads and writes.
    agent, dataset = agent
    data = next(iter(dataset))
    iterations = tf.cast(agent.world_model.optimizers["model_opt"].opt.iterations, tf.int64)
    seed = tf.stack([tf.constant(agent._c.seed, tf.int64), iterations])  # As Dreamer._train draws it.
    expected = behavior_losses(agent, data, seed)
    metrics = agent.train(data)
    assert np.isclose(metrics["actor_loss"], expected[0], rtol=1e-5)
    assert np.isclose(metrics["value_loss"], expected[1], rtol=1e-5)
    after = behavior_losses(agent, data, seed)  # At the updated weights: other losses.
    assert not np.isclose(metrics["actor_loss"], after[0], rtol=1e-5)


def test_train_and_policy_trace_once(agent):
    agent, dataset = agent
    batches = iter(dataset)
    for _ in range(3):
        metrics = agent.train(next(batches))
    expected = {"model_loss", "div", "image_loss", "reward_loss", "prior_ent", "post_ent", "actor_loss", "value_loss"}
    expected |= {"action_ent", "model_grad_norm", "actor_grad_norm", "value_grad_norm"}
    assert expected <= set(metrics) and all(np.isfinite(v.numpy()) for v in metrics.values())
    assert agent.train.experimental_get_tracing_count() == 1
    state, reset = None, np.array([True])
    for step in range(4):
        image = np.random.randint(0, 256, (1, 64, 64, 3), np.uint8)
        action, state = agent({"image": image}, reset, state, training=bool(step % 2))
        reset = np.array([False])
        assert action.shape == (1, 6) and np.all(np.abs(action) <= 1)
    assert agent.policy.experimental_get_tracing_count() == 1


def test_a_second_stop_signal_leaves_the_train_burst_to_the_resumed_run(agent, monkeypatch):
    """Stopped at once (a second Ctrl-C or SIGTERM) before its train steps, a due burst is not marked done, so
    the checkpoint's schedule has the resumed run train it."""
    agent, dataset = agent
    trainer = dreamer.Trainer(agent._c, agent, dataset=dataset)
    step, updates = agent.step, agent.optimizers["model_opt"].opt.iterations.numpy()
    monkeypatch.setattr(runtime.STOP, "signals", 2)
    with pytest.raises(KeyboardInterrupt):
        dreamer.train_when_due(trainer)
    assert trainer.train_every.next.numpy() == 0 and agent.step == step
    assert agent.optimizers["model_opt"].opt.iterations.numpy() == updates


@pytest.mark.parametrize("precision, dtype", [("16", "float16"), ("bf16", "bfloat16")])
def test_mixed_precision_train_step_is_finite(tmp_path, precision, dtype):
    flags = ["--logdir", str(tmp_path), "--task", "dmc_walker_walk", "--precision", precision] + TINY_MODEL.split()
    config = configs.parse_config(flags)
    runtime.setup(config)
    try:
        data = tools.preprocess(random_batch(3, 8, 6), config)
        agent = dreamer.Dreamer(config, tf.data.Dataset.from_tensors(data), (64, 64, 3), 6)
        for _ in range(2):
            metrics = agent.train(data)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert agent.world_model.encoder.compute_dtype == dtype
    assert all(v.dtype == tf.float32 for v in agent.world_model.variables)  # Variables stay float32.
    # The first float16 steps may overflow: the loss scaler then skips them (inf gradient norm) and halves its scale.
    assert all(np.isfinite(v.numpy()) for k, v in metrics.items() if not k.endswith("grad_norm"))
    assert all(np.isfinite(v.numpy()).all() for v in agent.world_model.variables + agent.behavior.actor.weights)
    scaled = isinstance(agent.world_model.optimizers["model_opt"].opt, keras.optimizers.LossScaleOptimizer)
    assert scaled == (precision == "16")
    # float16 reports its loss scale and skipped steps, so that overflow can be read off TensorBoard.
    logged = {f"{name}_{what}" for name in ("model", "actor", "value") for what in ("loss_scale", "skipped")}
    assert logged <= set(metrics) if scaled else not logged & set(metrics)
    if scaled:
        assert metrics["model_loss_scale"].numpy() > 1 and metrics["model_skipped"].numpy() in (0, 1)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_bias_gradients_sum_in_float32(policy):
    # TensorFlow's CPU BiasAddGrad sums bfloat16 in bfloat16: this bias gradient came out as about 128
    # instead of 40 * 64 * 64 / 8 (and a float16 Sum stops at 512).
    x = tf.random.stateless_uniform((40, 31, 31, 8), (0, 1))
    grads = {}
    for name in ("float32", policy):
        keras.mixed_precision.set_global_policy(name)
        try:
            layer = models.Conv2DTranspose(3, 4, strides=2, kernel_initializer="zeros")
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.cast(layer(x), tf.float32)) / 8
        finally:
            keras.mixed_precision.set_global_policy("float32")
        grads[name] = tape.gradient(loss, layer.bias).numpy()
    np.testing.assert_allclose(grads["float32"], 40 * 64 * 64 / 8)  # Below float16's largest, 65504.
    np.testing.assert_allclose(grads[policy], grads["float32"], rtol=1e-2)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("gpu", [False, True])
def test_mixed_precision_convolution_gradients_in_float32_on_cpu_half_on_gpu(policy, transpose, gpu, monkeypatch):
    # TensorFlow's CPU kernels for Conv2DBackpropInput/Filter (a transposed convolution's forward pass is one) are
    # 5-20x slower in bfloat16 than in float32: on a CPU they run in float32, the forward convolution in half. With
    # a GPU (its path taken here on the CPU) every convolution op runs in half precision.
    monkeypatch.setattr(models, "half_convs_are_slow", lambda: not gpu)
    x = tf.random.stateless_uniform((8, 31, 31, 5), (0, 1))
    cls, size = (models.Conv2DTranspose, 5) if transpose else (models.Conv2D, 4)
    outputs, kinds = {}, {}
    for name in ("float32", policy):
        keras.mixed_precision.set_global_policy(name)
        try:
            layer = cls(6, size, strides=2, activation="elu", kernel_initializer=keras.initializers.GlorotUniform(0))
            layer.build(x.shape)
        finally:
            keras.mixed_precision.set_global_policy("float32")

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
                loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
            return [y, *tape.gradient(loss, [x, layer.kernel, layer.bias])]

        half = tf.cast(x, layer.compute_dtype)
        outputs[name] = step(half)
        graph = step.get_concrete_function(half).graph
        kinds[name] = {(op.type, op.get_attr("T").name) for op in graph.get_operations() if "Conv" in op.type}
    assert outputs[policy][0].dtype == (tf.float16 if policy == "mixed_float16" else tf.bfloat16)
    assert outputs[policy][0].shape == outputs["float32"][0].shape
    half = outputs[policy][0].dtype.name
    forward, backward = (half, half) if gpu else ("float32" if transpose else half, "float32")
    assert kinds[policy] == {
        ("Conv2D", forward),
        ("Conv2DBackpropInput", backward),
        ("Conv2DBackpropFilter", backward),
    }
    for half_value, value in zip(outputs[policy], outputs["float32"]):  # output, input, kernel and bias gradients
        error = tf.norm(tf.cast(half_value, tf.float32) - value) / tf.norm(value)
        # bfloat16 has 8 significant bits; the CPU's bfloat16 gradient kernels also accumulate in it.
        assert error < (2e-3 if policy == "mixed_float16" else 5e-2 if gpu else 1e-2)


def test_float32_train_step_computes_what_it_did(tmp_path):
    # Weights in, weights out: metrics of the third of three train steps from seeded initial weights on a
    # fixed batch, recorded before the mixed-precision changes of the layers (bit-identical on the AMD EPYC
    # CPU they were recorded on; the tolerance allows other CPUs' float32 kernels). The weights are checked through
    # the losses and gradient norms of the third step, which depend on the first two updates.
    flags = ["--logdir", str(tmp_path), "--task", "dmc_walker_walk", "--precision", "32", "--seed", "3"]
    config = configs.parse_config(flags + TINY_MODEL.split())
    runtime.setup(config)
    rng = np.random.RandomState(0)
    batch = dict(
        image=rng.randint(0, 255, (3, 8, 64, 64, 3)).astype(np.uint8),
        action=rng.uniform(-1, 1, (3, 8, 2)).astype(np.float32),
        reward=rng.normal(size=(3, 8)).astype(np.float32),
        discount=np.ones((3, 8), np.float32),
    )
    data = tools.preprocess({k: tf.constant(v) for k, v in batch.items()}, config)
    with tf.device("/CPU:0"):  # The CPU's float32 kernels (a GPU's may compute in TF32).
        agent = dreamer.Dreamer(config, tf.data.Dataset.from_tensors(data), (64, 64, 3), 2)
        for _ in range(3):
            metrics = agent.train(data)
    expected = {
        "action_ent": -7.031713485717773,  # A sample estimate, its samples keyed by the seed (--deterministic).
        "actor_grad_norm": 0.254005491733551,
        "actor_loss": -0.06714116036891937,
        "div": 3.0,
        "image_loss": 11803.2841796875,
        "model_grad_norm": 6.968323230743408,
        "model_loss": 11808.435546875,
        "post_ent": 4.858892917633057,
        "prior_ent": 4.925671100616455,
        "reward_loss": 2.1518256664276123,
        "value_grad_norm": 0.5274452567100525,
        "value_loss": 1.1366175413131714,
    }
    assert {k: float(v) for k, v in metrics.items()} == pytest.approx(expected, rel=1e-4)


def test_parameter_counts_for_walker_walk(tmp_path, capsys):
    config = configs.parse_config(["--logdir", str(tmp_path), "--task", "dmc_walker_walk", "--precision", "32"])
    act, stoch, deter, units, depth = 6, 30, 200, 400, 32
    dense = lambda i, o: i * o + o
    conv = lambda k, i, o: k * k * i * o + o
    feat, embed = stoch + deter, 32 * depth
    encoder = (
        conv(4, 3, depth) + conv(4, depth, 2 * depth) + conv(4, 2 * depth, 4 * depth) + conv(4, 4 * depth, 8 * depth)
    )
    gru = 3 * deter * deter + 3 * deter * deter + 2 * 3 * deter  # Keras GRUCell, reset_after: two bias rows.
    rssm = dense(stoch + act, deter) + gru + dense(deter, deter) + dense(deter, 2 * stoch)
    rssm += dense(deter + embed, deter) + dense(deter, 2 * stoch)
    decoder = dense(feat, 32 * depth) + conv(5, 32 * depth, 4 * depth) + conv(5, 4 * depth, 2 * depth)
    decoder += conv(6, 2 * depth, depth) + conv(6, depth, 3)
    reward = dense(feat, units) + dense(units, units) + dense(units, 1)
    actor = dense(feat, units) + 3 * dense(units, units) + dense(units, 2 * act)
    value = dense(feat, units) + 2 * dense(units, units) + dense(units, 1)
    dataset = tf.data.Dataset.from_tensors(tools.preprocess(random_batch(1, 2, act), config))
    dreamer.Dreamer(config, dataset, (64, 64, 3), act)
    out = capsys.readouterr().out
    assert f"Found {encoder + rssm + decoder + reward} model parameters." in out
    assert f"Found {actor} actor parameters." in out
    assert f"Found {value} value parameters." in out


# Command line.


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--batchsize", "3"], "unrecognized arguments: --batchsize"),
        (["--batch_size", "abc"], "argument --batch_size"),
        (["--batch_size", "0"], "argument --batch_size"),
        (["--log_images", "maybe"], "argument --log_images"),
        (["--precision", "8"], "argument --precision"),
        (["--task", "dmc_walker_fly"], "argument --task"),
        (["--task", "pong"], "argument --task"),
        (["--parallel", "none"], "argument --parallel"),
        (["--eval_only", "True"], "argument --eval_only: no checkpoint"),
        (["--task", "foo_bar"], "valid prefixes: dmc_"),
        (["--task", "atari_notagame"], "Unknown Atari game 'notagame'"),
        (["--task", "atari_notagame"], "known games (as atari_<game>): adventure, air_raid,"),
        (["--time_limit", "40"], "have 21 steps, fewer than --batch_length 50"),
        (["--configs", "atar"], "argument --configs: invalid choice: 'atar'"),
        (["--task", "atari_pong", "--action_dist", "tanh_normal"], "atari_pong has discrete actions"),
        (["--task", "atari_pong", "--expl", "additive_gaussian"], "invalid one-hot vectors"),
        (["--action_dist", "onehot"], "dmc_walker_walk has continuous actions"),
        (["--expl", "epsilon_greedy"], "would send as one-hot vectors"),
        (["--task", "atari_pong", "--configs", "planet"], "planet acts in continuous action spaces only"),
        (["--cem_topk", "2000"], "argument --cem_topk: 2000 of --cem_candidates 1000"),
        (["--behavior", "value"], "argument --behavior: invalid choice"),
        (["--pretrain", "0"], "argument --pretrain: must be positive"),
        (["--train_steps", "0"], "argument --train_steps: must be positive"),
        (["--eval_episodes", "0"], "argument --eval_episodes: must be positive"),
        (["--replay_size", "99"], "argument --replay_size: 99 env steps hold no sequence of --batch_length 50"),
        (["--weight_decay_pattern", "("], "argument --weight_decay_pattern: not a regular expression"),
    ],
)
def test_bad_flags_exit_2_before_writing(tmp_path, capsys, flags, message):
    logdir = tmp_path / "run"
    with pytest.raises(SystemExit) as error:
        configs.parse_config(["--logdir", str(logdir)] + flags)
    assert error.value.code == 2
    assert message in capsys.readouterr().err
    assert not logdir.exists()


def test_logdir_that_is_a_file_exits_2(tmp_path, capsys):
    (tmp_path / "run").write_text("notes")
    with pytest.raises(SystemExit) as error:
        configs.parse_config(["--logdir", str(tmp_path / "run")])
    assert error.value.code == 2 and "run is a file; pass a folder" in capsys.readouterr().err
    assert (tmp_path / "run").read_text() == "notes"


def test_logdir_expands_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "checkpoint").write_text("")
    config = configs.parse_config(["--logdir", "~/run", "--eval_only", "True"])  # Finds the checkpoint.
    assert config.logdir == tmp_path / "run"


def test_resume_with_other_action_repeat_is_refused(tmp_path, capsys):
    """The episodes on disk count env steps at the run's action repeat."""
    dreamer.save_config(configs.parse_config(["--logdir", str(tmp_path), "--configs", "debug"]))
    saved = (tmp_path / "config.json").read_text()
    with pytest.raises(SystemExit) as error:
        configs.parse_config(["--logdir", str(tmp_path), "--configs", "debug", "--action_repeat", "4"])
    assert error.value.code == 2 and "--action_repeat 2 (not 4)" in capsys.readouterr().err
    assert (tmp_path / "config.json").read_text() == saved


def test_a_preset_of_no_flag_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(configs.PRESETS, "shooting", dict(behavior="random_shooting", shooting_candidates=10))
    with pytest.raises(SystemExit) as error:
        configs.parse_config(["--logdir", str(tmp_path), "--configs", "shooting"])
    assert error.value.code == 2 and "shooting sets shooting_candidates, which no flag is" in capsys.readouterr().err


def test_start_shows_only_the_projects_lines(tmp_path):
    """TensorFlow's start-up notices (absl, oneDNN, cudart, cuInit) are dropped unless TF_CPP_MIN_LOG_LEVEL is set."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = run_dreamer(tmp_path, "--eval_only", "True", check=False, env=env)
    assert quiet.returncode == 2 and "error: argument --eval_only: no checkpoint" in quiet.stdout
    assert not runtime.NOTICES.search(quiet.stdout) and "I0000" not in quiet.stdout, quiet.stdout
    asked = run_dreamer(tmp_path, "--eval_only", "True", check=False, env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert asked.returncode == 2 and runtime.NOTICES.search(asked.stdout), asked.stdout


def test_flag_table_is_generated_from_the_flags():
    text = configs.make_parser().format_help()  # Raises on a stray % in a help text.
    assert "--weight_decay_pattern" in text
    docs = (ROOT / "docs" / "flags.md").read_text()
    table = docs.split("<!-- flags start -->\n")[1].split("\n<!-- flags end -->")[0]
    assert table == configs.flag_table(), "regenerate it: python -c 'import configs; print(configs.flag_table())'"


def test_configs_apply_presets_in_order_and_flags_win(tmp_path):
    argv = ["--logdir", str(tmp_path), "--configs", "cpu_check", "debug", "--batch_size", "5"]
    config = configs.parse_config(argv)
    assert (
        config.task == "dmc_walker_stand"
        and config.steps == 10**6
        and config.eval_episodes == 5
        and config.log_images is False
    )  # cpu_check
    assert config.num_units == 16 and config.eval_every == 400  # debug, after cpu_check
    assert config.batch_size == 5 and config.configs == ["cpu_check", "debug"]
    assert config.action_dist == "tanh_normal" and config.expl == "additive_gaussian"  # auto, continuous actions
    config = configs.parse_config(["--logdir", str(tmp_path), "--task", "atari_pong", "--configs", "atari"])
    assert (config.action_repeat, config.time_limit, config.pcont) == (4, 108000, True)
    assert (config.expl_amount, config.expl_decay, config.expl_min) == (0.4, 10**5, 0.1)
    assert config.action_dist == "onehot" and config.expl == "epsilon_greedy"  # auto, discrete actions


def test_flag_parsing(tmp_path):
    config = configs.parse_config(["--logdir", str(tmp_path), "--steps", "1e4", "--pcont", "True", "--free_nats", "2"])
    assert config.steps == 10000 and config.pcont is True and config.free_nats == 2.0 and config.adam_eps == 1e-4
    assert configs.parse_config(["--logdir", str(tmp_path), "--adam_eps", "1e-7"]).adam_eps == 1e-7
    config = configs.parse_config(["--logdir", str(tmp_path), "--task", "atari_pong"])
    assert config.action_dist == "onehot" and config.expl == "epsilon_greedy"


# A real run of dreamer.py (the GYM flags of conftest.py, in this process).


def metrics(logdir):
    return [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]


def test_run_trains_checkpoints_and_resumes(trained_run):
    logdir, first, second, checkpoint = trained_run
    saved = json.loads((logdir / "config.json").read_text())  # The resolved values of --configs debug and auto.
    assert saved["configs"] == "['debug']" and saved["num_units"] == "16" and saved["action_dist"] == "tanh_normal"
    assert "Prefill dataset" in first and "Prefill dataset" not in second
    assert "Loaded checkpoint" in second and "ckpt-160" in checkpoint
    assert "Training for 2 steps." in first and "Training for 2 steps." not in second  # Pretrain runs once.
    # The burst due at an evaluation's env step runs before its test episode, as in the paper's code.
    assert first.index("Training for 2 steps.") < first.index("Start evaluation.") < first.index("Test episode")
    assert second.rindex("Training for 1 steps.") < second.rindex("Start evaluation.") < second.rindex("Test episode")
    rows = metrics(logdir)
    # At the end of the prefill, every 80 env steps after it and at --steps; the resumed run does not repeat 160.
    assert [r["step"] for r in rows if "test/return" in r] == [80, 160, 240]
    assert any("model_loss" in r and r["step"] == 240 for r in rows)  # Logged by the resumed run.
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(logdir / "checkpoints"))
    iterations = reader.get_tensor("model_opt/_iterations/.ATTRIBUTES/VARIABLE_VALUE")
    # 2 pretraining steps at 80, then 1 at 120, 160, 200 (after the restart) and 240: the count continued.
    assert iterations == 2 + 1 * 4
    assert reader.get_tensor("next_eval/.ATTRIBUTES/VARIABLE_VALUE") == 320  # The schedules are in the checkpoint.
    assert reader.get_tensor("next_train/.ATTRIBUTES/VARIABLE_VALUE") == 280
    assert tools.count_steps(logdir / "episodes", 2) == 240


def test_run_killed_between_evaluations_resumes_on_their_schedule(trained_run, tmp_path):
    """A run killed at 200 env steps, after the checkpoint of 160: the next evaluation is due at 240."""
    logdir = tmp_path / "run"
    shutil.copytree(trained_run[0], logdir)
    newest = max((logdir / "episodes").glob("*.npz"))
    newest.unlink()
    for path in (logdir / "checkpoints").glob("ckpt-240.*"):
        path.unlink()
    tf.compat.v1.train.update_checkpoint_state(str(logdir / "checkpoints"), str(logdir / "checkpoints" / "ckpt-160"))
    logged = len(metrics(logdir))
    output = run_here(logdir, "--steps", "320")[1]
    assert "Loaded checkpoint" in output and "ckpt-160" in output
    assert "Resumed at env step 200: collecting 40 steps before the next evaluation." in output
    assert [r["step"] for r in metrics(logdir)[logged:] if "test/return" in r] == [240, 320]


def test_evaluations_fall_on_the_grid_and_once_at_steps():
    config = tools.AttrDict(steps=1000)
    agent = types.SimpleNamespace(step=0)
    trainer = types.SimpleNamespace(agent=agent, eval_every=tools.Every(400), evaluated=tf.Variable(-1, dtype=tf.int64))

    def due(step):
        agent.step = step
        return dreamer.evaluation_due(config, trainer)

    def evaluate(step):
        trainer.eval_every.done(step)
        trainer.evaluated.assign(step)

    assert due(450)  # The end of the prefill.
    evaluate(450)
    assert not due(799) and due(800)
    evaluate(800)
    # --steps 1000 is off the grid: the last evaluation is due once the run is there, however it got there (a
    # checkpoint saved in the episodes under way at --steps, say), and not again.
    assert not due(999) and due(1040)
    evaluate(1040)
    assert not due(1040) and not due(1100)


def test_checkpoint_without_the_evaluation_schedule_resumes(trained_run, tmp_path):
    """Checkpoints written before the evaluation schedule was one: the next evaluation falls on its grid."""
    logdir = tmp_path / "run"
    shutil.copytree(trained_run[0], logdir)
    config = configs.parse_config(["--logdir", str(logdir), *GYM])
    config.action_dist, config.expl = "tanh_normal", "additive_gaussian"  # As the run's environment resolved them.
    runtime.setup(config)
    trainer = dreamer.Trainer(config, dreamer.Dreamer(config, None, (64, 64, 3), 2))
    path = trainer.load()
    old = {k: v for k, v in trainer.trackables().items() if k != "next_eval"}
    tf.train.CheckpointManager(tf.train.Checkpoint(**old), logdir / "checkpoints", 2).save(checkpoint_number=240)
    assert not any(name.startswith("next_eval") for name, _ in tf.train.list_variables(str(logdir / "checkpoints")))
    output = run_here(logdir, "--steps", "400")[1]
    assert f"Loaded checkpoint {logdir}/checkpoints/ckpt-240" in output and path == 240
    assert [r["step"] for r in metrics(logdir) if "test/return" in r] == [80, 160, 240, 320, 400]


def test_resume_with_other_architecture_is_refused(trained_run, capsys):
    logdir = trained_run[0]
    config = (logdir / "config.json").read_text()
    with pytest.raises(SystemExit) as error:
        configs.parse_config(["--logdir", str(logdir), *GYM, "--num_units", "32"])
    assert error.value.code == 2 and "--num_units 16 (not 32)" in capsys.readouterr().err
    assert (logdir / "config.json").read_text() == config


def test_resume_in_float16_of_a_float32_run_is_refused(trained_run, capsys):
    logdir = trained_run[0]
    config = (logdir / "config.json").read_text()
    with pytest.raises(SystemExit) as error:
        configs.parse_config(["--logdir", str(logdir), *GYM, "--precision", "16"])
    assert error.value.code == 2 and "--precision 32 (not 16)" in capsys.readouterr().err
    assert (logdir / "config.json").read_text() == config


def test_precision_defaults_to_the_runs_then_to_the_device(tmp_path):
    flags = lambda logdir: ["--logdir", str(logdir), "--task", "dmc_walker_walk"]
    device = "16" if tf.config.list_physical_devices("GPU") else "32"
    assert configs.default_precision(tmp_path / "new", gpus=[]) == "32"
    assert configs.parse_config(flags(tmp_path / "new")).precision == device
    (tmp_path / "config.json").write_text(json.dumps({"precision": "bf16"}))
    assert configs.parse_config(flags(tmp_path)).precision == "bf16"
    assert configs.parse_config(flags(tmp_path) + ["--precision", "32"]).precision == "32"
    assert configs.default_precision(tmp_path / "new", gpus=["a GPU"]) == "16"
    assert configs.default_precision(tmp_path, gpus=["a GPU"]) == "bf16"


def test_flags_its_checkpoint_refuses_are_not_saved_as_the_runs(trained_run, tmp_path):
    """Without config.json the flags are only checked by restoring the checkpoint; refused, they are not saved."""
    logdir = tmp_path / "run"
    shutil.copytree(trained_run[0], logdir, ignore=shutil.ignore_patterns("lock", "config.json"))
    code, output = run_here(logdir, "--precision", "16", check=False)
    assert code == 2 and "does not fit this run" in output
    assert not (logdir / "config.json").exists()
    keras.mixed_precision.set_global_policy("float32")


def test_the_policy_never_trains(trained_run):
    """Acting, in training or test mode, with a train burst due: no update, no schedule moved."""
    config = configs.parse_config(["--logdir", str(trained_run[0]), *GYM])
    config.action_dist, config.expl = "tanh_normal", "additive_gaussian"  # As the run's environment resolved them.
    runtime.setup(config)
    store = tools.EpisodeStore(trained_run[0] / "episodes")
    agent = dreamer.Dreamer(config, tools.make_dataset(store, config), (64, 64, 3), 2)
    trainer = dreamer.Trainer(config, agent, dataset=tools.make_dataset(store, config))
    trainer.load()
    agent.step = 10**6
    assert trainer.train_every.due(agent.step) and trainer.eval_every.due(agent.step)
    before = [v.numpy().copy() for v in agent.world_model.variables]
    state = None
    for training in (True, False, True):
        action, state = agent({"image": np.zeros((1, 64, 64, 3), np.uint8)}, np.array([state is None]), state, training)
    assert action.shape == (1, 2) and agent.world_model.optimizers["model_opt"].opt.iterations.numpy() == 6
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, agent.world_model.variables))
    assert agent.step == 10**6 and trainer.train_every.due(agent.step) and trainer.eval_every.due(agent.step)


def test_atari_agent_acts_with_valid_one_hot_actions(tmp_path):
    """The onehot actor and epsilon-greedy exploration through OneHotAction's check, which rejects anything else."""
    flags = ["--logdir", str(tmp_path), *TINY_MODEL.split(), "--task", "atari_pong", "--parallel", "none"]
    config = configs.parse_config([*flags, "--time_limit", "120", "--expl_amount", "0.5", "--precision", "32"])
    assert (config.action_dist, config.expl) == ("onehot", "epsilon_greedy")
    runtime.setup(config)
    episodes = []
    with dreamer.environments(config, "train") as (envs,):
        envs = dreamer.record(config, envs, [episodes.append])
        trainer = dreamer.make_trainer(config, None, None, envs[0].obs_space["image"].shape, 6)
        trainer.train_every.next.assign(10**9)  # Nothing to train on: acting only.
        dreamer.collect(config, trainer, envs, None, episodes=1)
        dreamer.test(config, trainer.agent, envs, episodes=1)
    for episode in episodes:
        action = episode["action"][1:]
        assert action.shape == (60, 6) and set(np.unique(action)) == {0, 1} and (action.sum(-1) == 1).all()
    assert len({a.argmax() for a in episodes[0]["action"][1:]}) > 1  # Exploring.
