"""One train step under --strategy default and under --strategy mirrored (2 logical CPU devices), from the same
weights and the same global batch. Prints one JSON line: the largest weight change of the step and the largest
difference between the two results. Run as a script: logical devices must be set before TensorFlow starts.

    python tests/distributed_step.py LOGDIR [dreamer.py flags]
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

import configs  # noqa: E402
import dreamer  # noqa: E402
import runtime  # noqa: E402
import tools  # noqa: E402
from data import random_batch  # noqa: E402

ACT_DIM, IMAGE = 2, (64, 64, 3)


def build(flags, strategy, batch):
    config = configs.parse_config(flags)
    dataset = tf.data.Dataset.from_tensors(batch).repeat().map(lambda x: tools.preprocess(x, config))
    return dreamer.Trainer(config, dreamer.Dreamer(config, dataset, IMAGE, ACT_DIM, strategy), dataset=dataset)


def weights(agent):
    """Network weights, then the optimizers' moments and iteration counts."""
    variables = [v for module in agent.modules.values() for v in module.weights]
    for opt in agent.optimizers.values():
        variables += opt.opt.variables
    return [np.array(v.numpy(), np.float64) for v in variables]


def main():
    flags = ["--logdir", sys.argv[1], *sys.argv[2:]]
    mirrored_config = configs.parse_config([*flags, "--strategy", "mirrored", "--replicas", "2"])
    mirrored = runtime.setup(mirrored_config)  # Splits the CPU into 2 logical devices first.
    assert mirrored.num_replicas_in_sync == 2, mirrored.num_replicas_in_sync
    config = configs.parse_config(flags)
    batch = random_batch(config.batch_size, config.batch_length, ACT_DIM)
    single = build(flags, None, batch)
    single.save()  # The same initial weights for both.
    before = weights(single.agent)
    metrics = single.agent.train(next(single.batches))
    after = weights(single.agent)
    other = build([*flags, "--strategy", "mirrored", "--replicas", "2"], mirrored, batch)
    other.load()
    assert all(np.array_equal(a, b) for a, b in zip(weights(other.agent), before)), "not the same initial weights"
    data = next(other.batches)
    shapes = [x.shape[0] for x in mirrored.experimental_local_results(data["image"])]
    other_metrics = other.agent.train(data)
    result = weights(other.agent)
    print(
        json.dumps(
            dict(
                replica_batches=shapes,
                change=max(float(np.max(np.abs(a - b))) for a, b in zip(after, before)),
                difference=max(float(np.max(np.abs(a - b))) for a, b in zip(after, result)),
                scale=max(float(np.max(np.abs(a))) for a in after),
                metrics={k: float(v) for k, v in metrics.items()},
                other_metrics={k: float(v) for k, v in other_metrics.items()},
            )
        )
    )


if __name__ == "__main__":
    main()
