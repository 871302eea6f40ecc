import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import tools

tfd = tfp.distributions
layers = keras.layers


def swap(x):
    """Batch-major [B, T, ...] <-> time-major [T, B, ...]."""
    return tf.experimental.numpy.swapaxes(x, 0, 1)


def bias_add(x, bias):
    """`x + bias`. Under mixed precision the bias gradient is summed in float32: TensorFlow's CPU kernel sums
    a bfloat16 bias gradient in bfloat16, which stalls over a convolution's many outputs (the decoder's last
    bias gradient came out 1000x too small), and a float16 sum stalls at 512."""
    if x.dtype == tf.float32:
        return x + bias
    return _bias_add_f32_grad(x, tf.cast(bias, x.dtype))  # A tensor: the custom gradient sees no variable.


@tf.custom_gradient
def _bias_add_f32_grad(x, bias):
    def grad(dy):
        total = tf.reduce_sum(tf.reshape(tf.cast(dy, tf.float32), [-1, dy.shape[-1]]), 0)
        return dy, tf.cast(total, bias.dtype)

    return tf.nn.bias_add(x, bias), grad


class Dense(layers.Dense):
    """Keras' Dense, with bias_add() under mixed precision (float32 runs Keras' own code)."""

    def call(self, x):
        if self.compute_dtype == "float32":
            return super().call(x)
        return self.activation(bias_add(keras.ops.matmul(x, self.kernel), self.bias))


def half_convs_are_slow():
    """TensorFlow's CPU kernels for the gradients of a convolution, and so for a transposed convolution, are
    5-20x slower in bfloat16 and 2-4x slower in float16 than in float32 (docs/precision.md); GPUs have fast ones."""
    return not tf.config.list_physical_devices("GPU")


def conv2d(x, kernel, strides, padding):
    """`tf.nn.conv2d`; in half precision on a CPU its gradients are computed in float32."""
    if x.dtype == tf.float32 or not half_convs_are_slow():
        return tf.nn.conv2d(x, kernel, strides, padding)

    @tf.custom_gradient
    def conv(x, kernel):
        def grad(dy):
            dy, x32, kernel32 = (tf.cast(t, tf.float32) for t in (dy, x, kernel))
            dx = tf.nn.conv2d_transpose(dy, kernel32, tf.shape(x), strides, padding)
            dkernel = tf.compat.v1.nn.conv2d_backprop_filter(x32, tf.shape(kernel), dy, [1, *strides, 1], padding)
            return tf.cast(dx, x.dtype), tf.cast(dkernel, kernel.dtype)

        return tf.nn.conv2d(x, kernel, strides, padding), grad

    return conv(x, tf.cast(kernel, x.dtype))  # A tensor: the custom gradient sees no variable.


def conv_transpose(x, kernel, strides, padding):
    """`keras.ops.conv_transpose`, computed in float32 in half precision on a CPU (its forward pass is a gradient)."""
    if x.dtype == tf.float32 or not half_convs_are_slow():
        return keras.ops.conv_transpose(x, kernel, strides, padding)
    return tf.cast(
        keras.ops.conv_transpose(tf.cast(x, tf.float32), tf.cast(kernel, tf.float32), strides, padding), x.dtype
    )


class Conv2D(layers.Conv2D):
    """Keras' Conv2D (NHWC, no dilation or groups), with conv2d() and bias_add() under mixed precision."""

    def call(self, x):
        if self.compute_dtype == "float32":
            return super().call(x)
        x = conv2d(x, self.kernel, list(self.strides), self.padding.upper())
        return self.activation(bias_add(x, self.bias))


class Conv2DTranspose(layers.Conv2DTranspose):
    """Keras' Conv2DTranspose (NHWC, no output padding or dilation), with conv_transpose() and bias_add() under
    mixed precision."""

    def call(self, x):
        if self.compute_dtype == "float32":
            return super().call(x)
        x = conv_transpose(x, self.kernel, list(self.strides), self.padding)
        return self.activation(bias_add(x, self.bias))


class RSSM(layers.Layer):
    """Recurrent state-space model: deterministic GRU state plus diagonal Gaussian stochastic state."""

    def __init__(self, stoch=30, deter=200, hidden=200, act="elu", **kwargs):
        super().__init__(**kwargs)
        self._stoch_size = stoch
        self._deter_size = deter
        self.cell = layers.GRUCell(deter)
        self.img1 = Dense(hidden, act)
        self.img2 = Dense(hidden, act)
        self.img3 = Dense(2 * stoch)
        self.obs1 = Dense(hidden, act)
        self.obs2 = Dense(2 * stoch)

    def initial(self, batch_size):
        zeros = lambda size: tf.zeros([batch_size, size], self.compute_dtype)
        return dict(
            mean=zeros(self._stoch_size),
            std=zeros(self._stoch_size),
            stoch=zeros(self._stoch_size),
            deter=zeros(self._deter_size),
        )

    def observe(self, embed, action, state=None, noise=None):
        """Posterior and prior states for a batch of sequences; `noise` [B, T, stoch] makes the samples given."""
        if state is None:
            state = self.initial(tf.shape(action)[0])
        if noise is None:
            noise = tf.random.normal(tf.concat([tf.shape(action)[:2], [self._stoch_size]], 0))
        post, prior = tf.scan(
            lambda prev, inputs: self.obs_step(prev[0], *inputs),
            (swap(action), swap(embed), swap(noise)),
            (state, state),
        )
        return tf.nest.map_structure(swap, post), tf.nest.map_structure(swap, prior)

    def imagine(self, action, state=None):
        if state is None:
            state = self.initial(tf.shape(action)[0])
        prior = tf.scan(self.img_step, swap(action), state)
        return tf.nest.map_structure(swap, prior)

    def get_feat(self, state):
        return tf.concat([state["stoch"], state["deter"]], -1)

    def get_dist(self, state):
        mean, std = tf.cast(state["mean"], tf.float32), tf.cast(state["std"], tf.float32)
        return tfd.MultivariateNormalDiag(mean, std)

    def obs_step(self, prev_state, prev_action, embed, noise=None):
        # The prior's sample is never used downstream, so it may share the posterior's noise.
        prior = self.img_step(prev_state, prev_action, noise)
        x = tf.concat([prior["deter"], tf.cast(embed, self.compute_dtype)], -1)
        x = self.obs2(self.obs1(x))
        post = self._stats(x, noise)
        post["deter"] = prior["deter"]
        return post, prior

    def img_step(self, prev_state, prev_action, noise=None):
        x = tf.concat([prev_state["stoch"], tf.cast(prev_action, self.compute_dtype)], -1)
        x = self.img1(x)
        x, deter = self.cell(x, prev_state["deter"])
        x = self.img3(self.img2(x))
        prior = self._stats(x, noise)
        prior["deter"] = deter
        return prior

    def _stats(self, x, noise=None):
        mean, std = tf.split(x, 2, -1)
        std = tf.nn.softplus(std) + 0.1
        if noise is None:
            noise = tf.random.normal(tf.shape(mean))
        # The reparameterised sample of get_dist(), from standard normal noise that the caller may fix.
        stoch = mean + std * tf.cast(noise, mean.dtype)
        return dict(mean=mean, std=std, stoch=stoch)


class ConvEncoder(layers.Layer):
    def __init__(self, depth=32, act="relu", **kwargs):
        super().__init__(**kwargs)
        self.convs = [Conv2D(2**i * depth, 4, strides=2, activation=act) for i in range(4)]

    def call(self, image):
        x = tf.reshape(tf.cast(image, self.compute_dtype), [-1, *image.shape[-3:]])
        for conv in self.convs:
            x = conv(x)
        x = tf.reshape(x, [-1, np.prod(x.shape[1:])])
        return tf.reshape(x, tf.concat([tf.shape(image)[:-3], tf.shape(x)[-1:]], 0))


class ConvDecoder(layers.Layer):
    def __init__(self, depth=32, act="relu", shape=(64, 64, 3), **kwargs):
        super().__init__(**kwargs)
        self._depth = depth
        self._shape = tuple(shape)
        self.dense = Dense(32 * depth)
        self.deconvs = [
            Conv2DTranspose(4 * depth, 5, strides=2, activation=act),
            Conv2DTranspose(2 * depth, 5, strides=2, activation=act),
            Conv2DTranspose(1 * depth, 6, strides=2, activation=act),
            Conv2DTranspose(shape[-1], 6, strides=2),
        ]

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.deconvs[0].build((None, 1, 1, 32 * self._depth))

    def call(self, features):
        x = self.dense(tf.cast(features, self.compute_dtype))
        x = tf.reshape(x, [-1, 32 * self._depth])
        # On a 1x1 input the first transposed conv is a matmul with its kernel; as one it runs ~5x faster on CPU.
        first = self.deconvs[0]
        kernel = tf.cast(first.kernel, self.compute_dtype)  # [5, 5, out, in]
        x = tf.matmul(x, tf.reshape(tf.transpose(kernel, [3, 0, 1, 2]), [32 * self._depth, -1]))
        x = bias_add(tf.reshape(x, [-1, *kernel.shape[:3]]), tf.cast(first.bias, self.compute_dtype))
        x = first.activation(x)
        for deconv in self.deconvs[1:]:
            x = deconv(x)
        mean = tf.reshape(tf.cast(x, tf.float32), tf.concat([tf.shape(features)[:-1], self._shape], 0))
        return tfd.Independent(tfd.Normal(mean, 1.0), len(self._shape))


class DenseDecoder(layers.Layer):
    def __init__(self, shape, num_layers, units, dist="normal", act="elu", **kwargs):
        super().__init__(**kwargs)
        self._shape = tuple(shape)
        self._dist = dist
        self.hidden = [Dense(units, act) for _ in range(num_layers)]
        self.out = Dense(int(np.prod(self._shape)))

    def call(self, features):
        x = mlp(features, self.hidden, self.out, self.compute_dtype)
        x = tf.reshape(x, tf.concat([tf.shape(features)[:-1], self._shape], 0))
        if self._dist == "normal":
            return tfd.Independent(tfd.Normal(x, 1.0), len(self._shape))
        if self._dist == "binary":
            return tfd.Independent(tfd.Bernoulli(logits=x, dtype=tf.float32), len(self._shape))
        raise NotImplementedError(self._dist)


class ActionDecoder(layers.Layer):
    def __init__(
        self,
        size,
        num_layers,
        units,
        dist="tanh_normal",
        act="elu",
        min_std=1e-4,
        init_std=5.0,
        mean_scale=5.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._size = size
        self._dist = dist
        self._min_std = min_std
        self._raw_init_std = np.log(np.exp(init_std) - 1)  # softplus^-1(init_std)
        self._mean_scale = mean_scale
        self.hidden = [Dense(units, act) for _ in range(num_layers)]
        self.out = Dense(2 * size if dist == "tanh_normal" else size)

    def call(self, features):
        params = self._params(features)
        if self._dist == "tanh_normal":
            dist = tfd.TransformedDistribution(tfd.Normal(*params), tools.TanhBijector())
            return tools.SampleDist(tfd.Independent(dist, 1))
        return tools.OneHotDist(logits=params)

    def sample(self, features, noise):
        """A differentiable sample of call(features) from given noise: standard normal for tanh_normal,
        uniform in (0, 1) for onehot (a Gumbel-max sample with straight-through gradients)."""
        params = self._params(features)
        if self._dist == "tanh_normal":
            mean, std = params
            return tf.tanh(mean + std * noise)
        probs = tf.nn.softmax(params)
        sample = tf.one_hot(tf.argmax(params - tf.math.log(-tf.math.log(noise)), -1), self._size)
        return sample + probs - tf.stop_gradient(probs)

    @property
    def noise(self):
        return "normal" if self._dist == "tanh_normal" else "uniform"

    def _params(self, features):
        x = mlp(features, self.hidden, self.out, self.compute_dtype)
        if self._dist == "tanh_normal":
            mean, std = tf.split(x, 2, -1)
            mean = self._mean_scale * tf.tanh(mean / self._mean_scale)
            std = tf.nn.softplus(std + self._raw_init_std) + self._min_std
            return mean, std
        if self._dist == "onehot":
            return x
        raise NotImplementedError(self._dist)


class StateModel(layers.Layer):
    """The paper's state model q(s_t | o_t) for contrastive estimation: a diagonal Gaussian over the features
    [stoch, deter] given the encoder's embedding. TF1's `heads.cpc`: networks.basic.feed_forward with
    cpc_head_layers=3 hidden layers, separate mean and std layers, std 'learned' (min_std 1e-2, init_std 1)."""

    def __init__(self, size, num_layers, units, act="elu", min_std=1e-2, init_std=1.0, **kwargs):
        super().__init__(**kwargs)
        self._min_std = min_std
        self._raw_init_std = np.log(np.exp(init_std) - 1)  # softplus^-1(init_std)
        self.hidden = [Dense(units, act) for _ in range(num_layers)]
        self.mean = Dense(size)
        self.std = Dense(size)

    def call(self, embed):
        x = tf.cast(embed, self.compute_dtype)
        for dense in self.hidden:
            x = dense(x)
        mean, std = tf.cast(self.mean(x), tf.float32), tf.cast(self.std(x), tf.float32)
        std = tf.nn.softplus(std + self._raw_init_std) + self._min_std
        return tfd.Independent(tfd.Normal(mean, std), 1)


def contrastive_objective(pred, feat, batch_amount=None, time_amount=None):
    """J_S of the paper's J_NCE as TF1 computes it (training/utility.py, compute_cpc_loss): for the state model
    `pred` of every observation o_bt [B, T], ln q(s_bt | o_bt) - ln sum over a window of offsets (i, j) of
    q(s_(b-i)(t-j) | o_bt), the offset (0, 0) included and the indices cyclic (TF1's tf.roll). The window is
    `batch_amount` x `time_amount` offsets centred on 0 (TF1's 'window' contrast; None: all B or T of them, so
    (None, 1) is TF1's 'batch' contrast and (1, None) its 'time'), clamped to [B, T] where TF1 asserts."""
    feat = tf.cast(feat, tf.float32)
    rows, cols = tf.shape(feat)[0], tf.shape(feat)[1]
    kb = rows if batch_amount is None else tf.minimum(batch_amount, rows)
    kt = cols if time_amount is None else tf.minimum(time_amount, cols)
    index = tf.range(kb * kt)  # TF1's order of the offsets, batch-major.
    shift_b, shift_t = index // kt - kb // 2, index % kt - kt // 2
    b = tf.math.floormod(tf.range(rows)[None, :, None] - shift_b[:, None, None], rows)
    t = tf.math.floormod(tf.range(cols)[None, None, :] - shift_t[:, None, None], cols)
    shape = [kb * kt, rows, cols]
    rolled = tf.gather_nd(feat, tf.stack([tf.broadcast_to(b, shape), tf.broadcast_to(t, shape)], -1))
    negative = tf.reduce_logsumexp(pred.log_prob(rolled), 0)  # [K, B, T, feat] against the batch [B, T].
    return pred.log_prob(feat) - negative


def mlp(features, hidden, out, dtype):
    """Dense layers computed in `dtype`, their output in float32."""
    x = tf.cast(features, dtype)
    for dense in hidden:
        x = dense(x)
    return tf.cast(out(x), tf.float32)


def count_params(module):
    return int(sum(np.prod(v.shape) for v in module.trainable_variables))


class WorldModel:
    """Encoder, RSSM, image and reward (and optional continuation) heads, trained by the KL and the terms of a
    representation objective (REPRESENTATIONS[c.representation]), which may add heads of its own."""

    def __init__(self, config, image_shape, act_dim):
        self._c = c = config
        self.encoder = ConvEncoder(c.cnn_depth, c.cnn_act, name="encoder")
        self.dynamics = RSSM(c.stoch_size, c.deter_size, c.deter_size, c.dense_act, name="dynamics")
        self.heads = {
            "image": ConvDecoder(c.cnn_depth, c.cnn_act, image_shape, name="image"),
            "reward": DenseDecoder((), 2, c.num_units, act=c.dense_act, name="reward"),
        }
        if c.pcont:
            self.heads["pcont"] = DenseDecoder((), 3, c.num_units, "binary", c.dense_act, name="pcont")
        self.objective = REPRESENTATIONS[c.representation](c, c.stoch_size + c.deter_size, act_dim)
        if set(self.heads) & set(self.objective.heads):
            raise ValueError(f"{type(self.objective).__name__}.heads: {set(self.objective.heads)} takes a model head")
        self.modules = dict(encoder=self.encoder, dynamics=self.dynamics)
        self.modules.update({f"{k}_head": v for k, v in {**self.heads, **self.objective.heads}.items()})
        # Build every variable eagerly, before any tracing.
        embed = self.encoder(tf.zeros((1, 1, *image_shape)))
        post, _ = self.dynamics.observe(embed, tf.zeros((1, 1, act_dim)))
        feat = self.dynamics.get_feat(post)
        for head in self.heads.values():
            head(feat)
        zeros = dict(image=tf.zeros((1, 1, *image_shape)), action=tf.zeros((1, 1, act_dim)), reward=tf.zeros((1, 1)))
        self.objective.likes(embed, feat, dict(zeros, discount=tf.ones((1, 1))))
        self.variables = [v for m in self.modules.values() for v in m.trainable_variables]
        # A decoder that shapes no state learns with an optimizer of its own, as TF1's heads outside gradient_heads
        # do (scripts/configs.py, optimizers.default: lr 1e-3, clipping 1000): its large gradient would otherwise
        # take most of the model's clipped global norm.
        own = [] if self.objective.decoder_shapes_state else self.heads["image"].trainable_variables
        shared = [v for v in self.variables if not any(v is o for o in own)]
        self.optimizers = dict(model_opt=optimizer(c, "model", shared, c.model_lr))
        if own:
            self.optimizers["image_opt"] = optimizer(c, "image", own, 1e-3, clip=1000.0)

    def loss(self, data, seed):
        c = self._c
        embed = self.encoder(data["image"])
        noise = tools.replica_noise(seed, [*tf.unstack(tf.shape(data["action"])[:2]), c.stoch_size])
        post, prior = self.dynamics.observe(embed, data["action"], noise=noise)
        feat = self.dynamics.get_feat(post)
        likes = {}
        # Without reconstruction the image decoder still learns, for the open-loop videos, but shapes no state.
        image_feat = feat if self.objective.decoder_shapes_state else tf.stop_gradient(feat)
        likes["image"] = tf.reduce_mean(self.heads["image"](image_feat).log_prob(data["image"]))
        likes["reward"] = tf.reduce_mean(self.heads["reward"](feat).log_prob(data["reward"]))
        if c.pcont:
            target = c.discount * data["discount"]
            likes["pcont"] = c.pcont_scale * tf.reduce_mean(self.heads["pcont"](feat).log_prob(target))
        terms = self.objective.likes(embed, feat, data)
        if set(terms) & set(likes):
            raise ValueError(f"{type(self.objective).__name__}.likes: {set(terms)} takes a term of the model's")
        likes.update(terms)
        prior_dist, post_dist = self.dynamics.get_dist(prior), self.dynamics.get_dist(post)
        div = tf.reduce_mean(tfd.kl_divergence(post_dist, prior_dist))
        # Free nats clamp the KL of the global batch: no gradient while its mean over all replicas is below.
        div = tf.where(tools.replica_mean(tf.stop_gradient(div)) > c.free_nats, div, c.free_nats)
        loss = c.kl_scale * div - sum(likes.values())
        metrics = dict(model_loss=loss, div=div, prior_ent=tf.reduce_mean(prior_dist.entropy()))
        metrics["post_ent"] = tf.reduce_mean(post_dist.entropy())
        metrics.update({f"{k}_loss": -v for k, v in likes.items()})
        return loss, post, metrics

    def train(self, tape, loss):
        """Applies the gradients of `loss`, recorded on `tape`, to the model's variables; their metrics."""
        metrics = {}
        for opt in self.optimizers.values():  # An image_opt's variables only feel the image loss.
            metrics.update(opt(tape, loss))
        return metrics

    def openl(self, data):
        """Open-loop video: 5 frames observed, the rest predicted from actions; rows truth, model, error."""
        data = {k: v[:6] for k, v in data.items()}
        embed = self.encoder(data["image"])
        post, _ = self.dynamics.observe(embed[:, :5], data["action"][:, :5])
        recon = self.heads["image"](self.dynamics.get_feat(post)).mode()
        init = {k: v[:, -1] for k, v in post.items()}
        prior = self.dynamics.imagine(data["action"][:, 5:], init)
        openl = self.heads["image"](self.dynamics.get_feat(prior)).mode()
        truth = data["image"] + 0.5
        model = tf.concat([recon + 0.5, openl + 0.5], 1)
        error = (model - truth + 1) / 2
        return tf.clip_by_value(tf.concat([truth, model, error], 2), 0.0, 1.0)


# Representation objectives: what, besides the KL, shapes the encoder and RSSM. Each is a class in
# REPRESENTATIONS, made with (config, feat_size, act_dim), with
#   flags: {name: (default, help[, choices])}, its settings, added to configs.py's flags;
#   heads: {name: layer}, networks of its own (checkpointed as <name>_head);
#   decoder_shapes_state: whether the image decoder's gradient reaches the state (else it learns on
#     stop-gradient features with an optimizer of its own, for the open-loop videos);
#   likes(embed, feat, data) -> {name: log-likelihood}, its terms of the model's objective (maximised; logged
#     as <name>_loss, negated); called once at build time on a batch of one.
# See docs/extending.md.


class Reconstruction:
    """reconstruction: the image decoder's likelihood shapes the state (the paper's)."""

    flags = {}
    decoder_shapes_state = True

    def __init__(self, config, feat_size, act_dim):
        self.heads = {}

    def likes(self, embed, feat, data):
        return {}

    @staticmethod
    def problem(config):
        """What is wrong with the flags for this objective, or ''."""
        return ""


class RewardOnly(Reconstruction):
    """reward: only the reward (and continuation) predictions shape the state (TF1's gradient_heads=[reward])."""

    decoder_shapes_state = False


class Contrastive(RewardOnly):
    """contrastive: a state model q(s_t | o_t) against the batch's other states (the paper's J_NCE; TF1's cpc_head
    with gradient_heads=[reward, cpc])."""

    flags = dict(
        cpc_contrast=(
            "window",
            "contrastive: the negatives of each state: window (--cpc_batch_amount sequences x --cpc_time_amount "
            "steps around it), batch (every sequence, the same step) or time (every step, the same sequence)",
            ("window", "batch", "time"),
        ),
        cpc_batch_amount=(10, "contrastive, window: sequences of the negatives' window (clamped to the batch)"),
        cpc_time_amount=(30, "contrastive, window: steps of the negatives' window (clamped to --batch_length)"),
    )

    def __init__(self, config, feat_size, act_dim):
        c = self._c = config
        self.heads = {"cpc": StateModel(feat_size, 3, c.num_units, c.dense_act, name="cpc")}

    def likes(self, embed, feat, data):
        """The contrastive bound on I(s_t; o_t), its negatives as TF1's config.cpc_contrast picks them."""
        c = self._c
        amounts = dict(window=(c.cpc_batch_amount, c.cpc_time_amount), batch=(None, 1), time=(1, None))
        bound = contrastive_objective(self.heads["cpc"](embed), feat, *amounts[c.cpc_contrast])
        return {"cpc": tf.reduce_mean(bound)}

    @staticmethod
    def problem(config):
        for key in ("cpc_batch_amount", "cpc_time_amount"):
            if config[key] <= 0:
                return f"argument --{key}: must be positive, got {config[key]}"
        return ""


# Behaviours: how actions are chosen and learned. Each is a class in BEHAVIORS, made with (config, world_model,
# act_dim) inside the strategy's scope, with
#   flags: {name: (default, help[, choices])}, its settings, added to configs.py's flags;
#   discrete: whether it can act in discrete action spaces (one-hot actions);
#   modules, optimizers: {name: layer}, {name: tools.Optimizer}, what it checkpoints under these names;
#   policy(latent, training, seed) -> action [B, act_dim], from the RSSM's filtered state (training: sample,
#     else the deterministic action of test episodes), with stateless noise from `seed`;
#   train(post, seed) -> metrics: learns from the world model's posterior states [B, T] and applies its updates,
#     before the world model's own update (its gradients are taken at the weights the step starts with); `seed`
#     is the train step's stateless seed, whose split(seed)[0] the world model draws from.
# See docs/extending.md.


class ImaginedActor:
    """An actor learned by backpropagating `returns()` of imagined trajectories through the dynamics."""

    flags = {}
    discrete = True

    def __init__(self, config, world_model, act_dim):
        self._c = c = config
        self._wm, self._act_dim = world_model, act_dim
        self.actor = ActionDecoder(
            act_dim, 4, c.num_units, c.action_dist, c.dense_act, init_std=c.action_init_std, name="actor"
        )
        self.actor(tf.zeros((1, c.stoch_size + c.deter_size))).mode()
        self.modules = dict(actor=self.actor)

    def policy(self, latent, training, seed):
        dist = self.actor(self._wm.dynamics.get_feat(latent))
        return tf.cond(training, lambda: dist.sample(seed=seed), lambda: dist.mode(seed=seed))

    def train(self, post, seed):
        imagine_seed, entropy_seed = tf.random.split(seed)[1], tf.random.experimental.stateless_fold_in(seed, 1)
        with tf.GradientTape() as actor_tape:
            feat = self.imagine_ahead(self.start_states(post), imagine_seed)
            returns, weights = self.returns(feat)
            actor_loss = -tf.reduce_mean(weights * returns)
        metrics = dict(actor_loss=actor_loss, **self.learn_value(feat, returns, weights))
        metrics.update(self.optimizers["actor_opt"](actor_tape, actor_loss))
        feat = tf.stop_gradient(self._wm.dynamics.get_feat(post))
        metrics["action_ent"] = tf.reduce_mean(self.actor(feat).entropy(seed=entropy_seed))
        return metrics

    def start_states(self, post):
        """Every posterior state of a batch, as a batch of start states for imagination (no gradient into them)."""
        if self._c.pcont:  # The last step could be terminal.
            post = {k: v[:, :-1] for k, v in post.items()}
        return {k: tf.stop_gradient(tf.reshape(v, [-1, v.shape[-1]])) for k, v in post.items()}

    def imagine_ahead(self, start, seed):
        """Roll the prior `horizon` steps from every start state with actions sampled from the actor."""
        c, rows, dynamics = self._c, tf.shape(start["deter"])[0], self._wm.dynamics
        act_seed, stoch_seed = tf.unstack(tf.random.split(seed))
        act_noise = tools.replica_noise(act_seed, [rows, c.horizon, self._act_dim], self.actor.noise)
        stoch_noise = tools.replica_noise(stoch_seed, [rows, c.horizon, c.stoch_size])

        def step(prev, noise):
            action = self.actor.sample(tf.stop_gradient(dynamics.get_feat(prev)), noise[0])
            return dynamics.img_step(prev, action, noise[1])

        states = tf.scan(step, (swap(act_noise), swap(stoch_noise)), start)
        return dynamics.get_feat(states)

    def continuation(self, feat):
        """Predicted rewards of imagined features [horizon, N, feat] and their discounts (continuation model)."""
        c, heads = self._c, self._wm.heads
        reward = heads["reward"](feat).mode()
        pcont = heads["pcont"](feat).mean() if c.pcont else c.discount * tf.ones_like(reward)
        return reward, pcont

    def returns(self, feat):
        """The actor's objective at each imagined step [horizon - 1 or horizon, N], and each step's weight."""
        raise NotImplementedError

    def learn_value(self, feat, returns, weights):
        """Updates of what `returns` bootstraps from; their metrics."""
        return {}

    @staticmethod
    def problem(config):
        """What is wrong with the flags for this behaviour, or ''."""
        return ""


class ActorCritic(ImaginedActor):
    """dreamer: an actor and a value model learned in imagination, the actor maximising λ-returns (the paper's)."""

    def __init__(self, config, world_model, act_dim):
        super().__init__(config, world_model, act_dim)
        c = config
        self.value = DenseDecoder((), 3, c.num_units, act=c.dense_act, name="value")
        self.value(tf.zeros((1, c.stoch_size + c.deter_size)))
        self.modules["value"] = self.value
        self.optimizers = dict(actor_opt=optimizer(c, "actor", self.actor.trainable_variables, c.actor_lr))
        self.optimizers["value_opt"] = optimizer(c, "value", self.value.trainable_variables, c.value_lr)

    def returns(self, feat):
        """λ-returns of imagined features [horizon, N, feat] from predicted rewards and values, and each step's
        weight: the probability, under the continuation model, that the trajectory has not ended before it."""
        reward, pcont = self.continuation(feat)
        value = self.value(feat).mode()
        returns = tools.lambda_return(reward[:-1], value[:-1], pcont[:-1], value[-1], self._c.disclam, axis=0)
        weights = tf.stop_gradient(tf.math.cumprod(tf.concat([tf.ones_like(pcont[:1]), pcont[:-2]], 0), 0))
        return returns, weights

    def learn_value(self, feat, returns, weights):
        with tf.GradientTape() as value_tape:
            value_loss = self.value_loss(feat, returns, weights)
        return dict(value_loss=value_loss, **self.optimizers["value_opt"](value_tape, value_loss))

    def value_loss(self, feat, returns, weights):
        value_pred = self.value(tf.stop_gradient(feat[:-1]))
        return -tf.reduce_mean(weights * value_pred.log_prob(tf.stop_gradient(returns)))


class NoValue(ImaginedActor):
    """no_value: the actor maximises the imagined rewards within --horizon; no value model (TF1's `actor` preset)."""

    def __init__(self, config, world_model, act_dim):
        super().__init__(config, world_model, act_dim)
        self.optimizers = dict(actor_opt=optimizer(config, "actor", self.actor.trainable_variables, config.actor_lr))

    def returns(self, feat):
        """The discounted returns of the imagined rewards, each step weighted 1 (TF1)."""
        reward, pcont = self.continuation(feat)
        return discounted_return(reward, pcont), tf.ones_like(reward)


class Planet:
    """planet: PlaNet's online planner, the cross-entropy method over action sequences in the learned dynamics; no
    actor or value (TF1's `planet` preset)."""

    flags = dict(
        plan_horizon=(12, "planet: steps of each planned action sequence"),
        cem_candidates=(1000, "planet: action sequences drawn at each refit"),
        cem_iterations=(10, "planet: refits of the action sequences' Gaussian per action"),
        cem_topk=(100, "planet: the best sequences each refit is fitted to"),
    )
    discrete = False

    def __init__(self, config, world_model, act_dim):
        self._c, self._wm, self._act_dim = config, world_model, act_dim
        self.modules, self.optimizers = {}, {}

    def policy(self, latent, training, seed):
        """The first action of the best action sequence the cross-entropy method finds from `latent`."""
        c, wm = self._c, self._wm
        sizes = dict(candidates=c.cem_candidates, iterations=c.cem_iterations, topk=c.cem_topk, horizon=c.plan_horizon)
        return cross_entropy_method(wm.dynamics, wm.heads["reward"], latent, self._act_dim, seed, **sizes)

    def train(self, post, seed):
        return {}

    @staticmethod
    def problem(config):
        for key in Planet.flags:
            if config[key] <= 0:
                return f"argument --{key}: must be positive, got {config[key]}"
        if config.cem_topk > config.cem_candidates:
            return (
                f"argument --cem_topk: {config.cem_topk} of --cem_candidates {config.cem_candidates}; use at most that"
            )
        return ""


def discounted_return(reward, pcont):
    """R_t = r_t + pcont_t R_(t+1) over time [horizon, N], R after the horizon 0: the objective of TF1's actor
    without a value head (training/utility.py compute_action_values: control.discounted_return, bootstrap None),
    where the paper's eq. 4 (V_R) is the undiscounted sum. See docs/experiments.md."""
    return tf.scan(lambda agg, cur: cur[0] + cur[1] * agg, (reward, pcont), tf.zeros_like(reward[-1]), reverse=True)


def imagined_reward(dynamics, reward_head, start, action, noise):
    """Sum over the horizon of the predicted reward means of action sequences [N, horizon, act] rolled out in the
    prior from start states [N, ...] with stochastic-state noise [horizon, N, stoch]: PlaNet's objective (TF1's
    scripts/objectives.py reward: reward(features).mean() of the prior's samples, summed over time)."""
    states = tf.scan(lambda prev, inputs: dynamics.img_step(prev, *inputs), (swap(action), noise), start)
    return tf.reduce_sum(tf.cast(reward_head(dynamics.get_feat(states)).mean(), tf.float32), 0)


def cross_entropy_method(
    dynamics,
    reward_head,
    latent,
    act_dim,
    seed,
    candidates=1000,
    iterations=10,
    topk=100,
    horizon=12,
    low=-1.0,
    high=1.0,
):
    """PlaNet's planner (TF1's control/planning.py cross_entropy_method): from each latent state [B, ...], refit a
    diagonal Gaussian over action sequences [horizon, act_dim] (from mean 0, std 1) to the `topk` best of
    `candidates` samples, clipped to [low, high], by imagined_reward(), `iterations` times; returns the first
    action of the final mean [B, act_dim]. Stateless noise from `seed`; statistics in float32."""
    batch = tf.shape(latent["deter"])[0]
    # Candidate k of state b is row b * candidates + k (TF1's tile pairs them right only for a batch of 1).
    start = {k: tf.repeat(v, candidates, 0) for k, v in latent.items()}
    stoch = latent["stoch"].shape[-1]
    mean = tf.zeros([batch, horizon, act_dim], tf.float32)
    std = tf.ones([batch, horizon, act_dim], tf.float32)
    for iteration_seed in tf.unstack(tf.random.split(seed, iterations)):
        action_seed, stoch_seed = tf.unstack(tf.random.split(iteration_seed))
        normal = tf.random.stateless_normal([batch, candidates, horizon, act_dim], action_seed)
        action = tf.clip_by_value(mean[:, None] + std[:, None] * normal, low, high)
        noise = tf.random.stateless_normal([horizon, batch * candidates, stoch], stoch_seed)
        objective = imagined_reward(dynamics, reward_head, start, tf.reshape(action, [-1, horizon, act_dim]), noise)
        _, best = tf.math.top_k(tf.reshape(objective, [batch, candidates]), topk)
        mean, variance = tf.nn.moments(tf.gather(action, best, batch_dims=1), [1])
        std = tf.sqrt(variance + 1e-6)
    return mean[:, 0]


def optimizer(config, name, variables, lr, clip=None):
    c = config
    kwargs = dict(wd=c.weight_decay, wd_pattern=c.weight_decay_pattern, precision=c.precision)
    return tools.Optimizer(name, variables, lr, eps=c.adam_eps, clip=clip or c.grad_clip, **kwargs)


# The registries: --behavior and --representation pick from them; docs/extending.md adds to them.
BEHAVIORS = dict(dreamer=ActorCritic, no_value=NoValue, planet=Planet)
REPRESENTATIONS = dict(reconstruction=Reconstruction, contrastive=Contrastive, reward=RewardOnly)
