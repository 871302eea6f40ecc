"""Test data shared by the tests, tests/distributed_step.py and benchmarks/speed.py."""

import numpy as np


def random_batch(batch, length, act_dim, seed=0, image=(64, 64, 3)):
    """Random data in the episode store's batch format, for tests and benchmarks."""
    rng = np.random.default_rng(seed)
    return dict(
        image=rng.integers(0, 256, (batch, length, *image), dtype=np.uint8),
        action=rng.uniform(-1, 1, (batch, length, act_dim)).astype(np.float32),
        reward=rng.normal(size=(batch, length)).astype(np.float32),
        discount=np.ones((batch, length), np.float32),
    )
