import pathlib
import re
import sys
import warnings
import zipfile

import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import tools  # noqa: E402

NAME = re.compile(r"^\d{6,}-(\d+)\.npz$")


def make_episode(entries, marker=0.0, actions=2, seed=0):
    """A synthetic episode of `entries` entries (entries - 1 transitions); `marker` fills the reward."""
    rng = np.random.RandomState(seed)
    return {
        "image": rng.randint(0, 256, (entries, 64, 64, 3)).astype(np.uint8),
        "action": rng.uniform(-1, 1, (entries, actions)).astype(np.float32),
        "reward": np.full(entries, marker, np.float32),
        "discount": np.ones(entries, np.float32),
    }


def make_config(batch_size=3, batch_length=5, balance=False, clip_rewards="none"):
    return tools.AttrDict(
        batch_size=batch_size, batch_length=batch_length, dataset_balance=balance, clip_rewards=clip_rewards
    )


def save_marked(directory, entries, markers):
    """One episode per marker, saved one by one, oldest first."""
    return [tools.save_episodes(directory, [make_episode(entries, m, seed=int(m))])[0] for m in markers]


def sampled_markers(store, samples=300, length=1):
    return {float(store.sample(length)["reward"][0]) for _ in range(samples)}


class Unserializable:
    """Breaks np.savez_compressed after the arrays before it were already written."""

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("serialization failed")


# Save, count, load.


def test_save_count_load_round_trip(tmp_path):
    episodes = [make_episode(11, 1.0, seed=1), make_episode(4, 2.0, seed=2)]
    episodes[1]["discount"][-1] = 0.0
    filenames = tools.save_episodes(tmp_path / "episodes", episodes)
    assert sorted(filenames) == sorted((tmp_path / "episodes").glob("*.npz"))
    for filename, episode in zip(filenames, episodes):
        assert filename.parent == tmp_path / "episodes"
        match = NAME.match(filename.name)
        assert match, filename.name
        assert int(match.group(1)) == len(episode["reward"])
        assert tools.episode_length(filename) == len(episode["reward"]) - 1
        with zipfile.ZipFile(filename) as archive:
            assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in archive.infolist())
    assert tools.count_episodes(tmp_path / "episodes") == 2
    assert tools.count_steps(tmp_path / "episodes", 1) == 10 + 3
    assert tools.count_steps(tmp_path / "episodes", 4) == 4 * (10 + 3)

    store = tools.EpisodeStore(tmp_path / "episodes")
    assert store.update() == 2
    assert len(store) == 2 and store.steps == 13
    assert store.update() == 0
    chunks = [store.sample(4) for _ in range(50)]
    # The 4-entry episode comes back whole, the 11-entry one as 4-step chunks of it.
    whole = next(c for c in chunks if c["reward"][0] == 2.0)
    assert whole.keys() == episodes[1].keys()
    for key, value in episodes[1].items():
        np.testing.assert_array_equal(whole[key], value, err_msg=key)
        assert whole[key].dtype == value.dtype, key
    store = tools.EpisodeStore(tmp_path / "episodes")
    store.update()
    for _ in range(20):
        chunk = store.sample(11)  # Only the long episode fits, so it comes back whole.
        for key, value in episodes[0].items():
            np.testing.assert_array_equal(chunk[key], value, err_msg=key)
            assert chunk[key].dtype == value.dtype, key


def test_counts_come_from_file_names_alone(tmp_path):
    (tmp_path / "20200101T000000-0123456789abcdef0123456789abcdef-11.npz").write_bytes(b"not an archive")
    (tmp_path / "20200101T000001-fedcba9876543210fedcba9876543210-3.npz").write_bytes(b"")
    assert tools.count_steps(tmp_path, 2) == 2 * (10 + 2)
    assert tools.count_episodes(tmp_path) == 2
    assert tools.count_steps(tmp_path / "missing", 2) == 0
    assert tools.count_episodes(tmp_path / "missing") == 0


def test_numbered_names_continue_after_timestamped_ones(tmp_path):
    # A run saved with timestamped names (before numbered ones) and resumed: the new episodes are the newest.
    np.savez_compressed(tmp_path / "20991231T235959000000-0123456789abcdef0123456789abcdef-6.npz", **make_episode(6))
    files = save_marked(tmp_path, 6, [2.0, 3.0])
    assert [f.name for f in files] == ["000000-6.npz", "000001-6.npz"]
    files[0].unlink()
    assert save_marked(tmp_path, 6, [4.0])[0].name == "000002-6.npz"  # Never a name already used.
    store = tools.EpisodeStore(tmp_path, capacity=10)
    store.update()
    assert sampled_markers(store) == {3.0, 4.0}


def test_keyed_batches_depend_on_their_index_and_the_held_episodes_only(tmp_path):
    save_marked(tmp_path, 9, [1.0, 2.0, 3.0])
    store = tools.EpisodeStore(tmp_path, seed=5)
    store.update()
    batches = store.batches(4, 5, start=7)
    first = [next(batches) for _ in range(3)]
    save_marked(tmp_path, 9, [4.0])  # Not held until the next update(): no batch can see it.
    again = next(store.batches(4, 5, start=8))
    for key in again:
        np.testing.assert_array_equal(first[1][key], again[key])
    assert not np.array_equal(first[0]["image"], first[1]["image"])
    assert set(np.unique([b["reward"] for b in first])) <= {1.0, 2.0, 3.0}
    store.update()
    assert 4.0 in {float(r) for i in range(20) for r in next(store.batches(4, 5, start=i))["reward"][:, 0]}


# Robustness.


def test_corrupt_episode_is_skipped_with_one_warning(tmp_path):
    good = save_marked(tmp_path, 8, [1.0, 2.0])
    data = good[0].read_bytes()
    (tmp_path / "20000101T000000-00000000000000000000000000000000-8.npz").write_bytes(data[: len(data) // 2])
    store = tools.EpisodeStore(tmp_path)
    with pytest.warns(UserWarning, match="Skipping unreadable episode") as record:
        assert store.update() == 2
    assert len([w for w in record if "unreadable" in str(w.message)]) == 1
    assert len(store) == 2 and store.steps == 14
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Not warned about again.
        assert store.update() == 0
        batches = store.batches(4, 5)
        for _ in range(5):
            batch = next(batches)
            assert batch["image"].shape == (4, 5, 64, 64, 3)
            assert set(np.unique(batch["reward"])) <= {1.0, 2.0}


def test_garbled_archive_member_is_skipped(tmp_path):
    good = save_marked(tmp_path, 8, [1.0])[0]
    data = bytearray(good.read_bytes())
    start = len(data) // 4
    data[start : start + 64] = bytes(64)  # The zip directory is intact, a compressed member is not.
    (tmp_path / "20000101T000000-00000000000000000000000000000000-8.npz").write_bytes(bytes(data))
    store = tools.EpisodeStore(tmp_path)
    with pytest.warns(UserWarning, match="Skipping unreadable episode"):
        assert store.update() == 1
    assert sampled_markers(store, 20) == {1.0}


def test_failed_save_leaves_no_episode_file(tmp_path):
    episode = make_episode(6)
    episode["zzz"] = Unserializable()  # Serialized after the real arrays.
    with pytest.raises(RuntimeError, match="serialization failed"):
        tools.save_episodes(tmp_path, [episode])
    assert list(tmp_path.glob("*.npz")) == []
    assert tools.count_steps(tmp_path, 1) == 0
    assert tools.count_episodes(tmp_path) == 0


def test_temporary_files_are_not_episodes(tmp_path):
    save_marked(tmp_path, 5, [1.0])
    # What a kill during the write leaves behind: a partial file under a temporary name.
    (tmp_path / "20990101T000000-00000000000000000000000000000000-100.tmp").write_bytes(b"PK\x03\x04partial")
    assert tools.count_steps(tmp_path, 1) == 4
    assert tools.count_episodes(tmp_path) == 1
    store = tools.EpisodeStore(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert store.update() == 1
    assert len(store) == 1 and store.steps == 4


# Memory bound.


def test_capacity_keeps_newest_episodes_and_files_stay(tmp_path):
    files = save_marked(tmp_path, 21, range(5))  # 20 steps each.
    store = tools.EpisodeStore(tmp_path, capacity=50)
    store.update()
    assert store.steps <= 50
    assert len(store) == 2 and store.steps == 40
    assert sampled_markers(store) == {3.0, 4.0}

    files += save_marked(tmp_path, 21, range(5, 8))
    store.update()
    assert len(store) == 2 and store.steps == 40
    assert sampled_markers(store) == {6.0, 7.0}

    files += save_marked(tmp_path, 11, [8.0])  # 10 steps: it fits beside the two held ones.
    store.update()
    assert len(store) == 3 and store.steps == 50
    assert sampled_markers(store) == {6.0, 7.0, 8.0}

    files += save_marked(tmp_path, 2, [9.0])  # 1 step over the capacity: the oldest held one goes.
    store.update()
    assert len(store) == 3 and store.steps == 31
    assert sampled_markers(store) == {7.0, 8.0, 9.0}

    assert sorted(tmp_path.glob("*.npz")) == sorted(files)
    assert tools.count_steps(tmp_path, 1) == 8 * 20 + 10 + 1


def test_capacity_evicts_oldest_first_within_one_save(tmp_path):
    episodes = [make_episode(6, marker, seed=marker) for marker in range(12)]  # 5 steps each.
    tools.save_episodes(tmp_path, episodes)  # Many episodes within the same second.
    store = tools.EpisodeStore(tmp_path, capacity=15)
    store.update()
    assert len(store) == 3 and store.steps == 15
    assert sampled_markers(store) == {9.0, 10.0, 11.0}
    tools.save_episodes(tmp_path, [make_episode(6, 12.0), make_episode(6, 13.0)])
    store.update()
    assert len(store) == 3 and store.steps == 15
    assert sampled_markers(store) == {11.0, 12.0, 13.0}


def test_capacity_keeps_an_episode_longer_than_itself(tmp_path):
    save_marked(tmp_path, 31, [1.0, 2.0])
    store = tools.EpisodeStore(tmp_path, capacity=10)
    store.update()
    assert len(store) == 1 and store.steps == 30
    assert sampled_markers(store, 20) == {2.0}


def test_capacity_over_many_updates(tmp_path):
    store = tools.EpisodeStore(tmp_path, capacity=100, seed=1)
    rng = np.random.RandomState(0)
    lengths = []
    for marker in range(30):
        entries = int(rng.randint(5, 40))
        lengths.append(entries - 1)
        save_marked(tmp_path, entries, [float(marker)])
        store.update()
        assert store.steps <= 100 or len(store) == 1
        # What is held is exactly the newest episodes that fit.
        held, total = 0, 0
        for steps in reversed(lengths):
            if held and total + steps > 100:
                break
            held, total = held + 1, total + steps
        assert (len(store), store.steps) == (held, total)
        assert sampled_markers(store, 200) == {float(m) for m in range(marker - held + 1, marker + 1)}
    assert tools.count_episodes(tmp_path) == 30


# Sampling.


def coverage(tmp_path, entries, length, balance, samples=4000):
    episode = make_episode(entries)
    episode["step"] = np.arange(entries)
    tools.save_episodes(tmp_path / f"{entries}-{balance}", [episode])
    store = tools.EpisodeStore(tmp_path / f"{entries}-{balance}", seed=0)
    store.update()
    counts = np.zeros(entries)
    for _ in range(samples):
        chunk = store.sample(length, balance)
        assert len(chunk["step"]) == length
        assert all(len(v) == length for v in chunk.values())
        np.testing.assert_array_equal(np.diff(chunk["step"]), 1)
        counts[chunk["step"]] += 1
    return counts / samples


def test_balance_reaches_the_last_step_much_more_often(tmp_path):
    # Balanced chunks start uniformly over the whole episode, clamped to the last full chunk, so
    # a chunk ends at the last step with probability length / entries instead of 1 / (entries - length + 1).
    balanced = coverage(tmp_path, 25, 10, True)
    unbalanced = coverage(tmp_path, 25, 10, False)
    assert balanced[-1] > 0.3
    assert balanced[-1] == pytest.approx(10 / 25, abs=0.03)
    assert unbalanced[-1] == pytest.approx(1 / 16, abs=0.02)
    assert balanced[-1] > 4 * unbalanced[-1]


def test_balance_covers_the_end_as_often_as_the_middle(tmp_path):
    balanced = coverage(tmp_path, 200, 10, True)
    unbalanced = coverage(tmp_path, 200, 10, False)
    middle = balanced[50:150].mean()
    assert middle == pytest.approx(10 / 200, rel=0.15)
    assert balanced[-1] == pytest.approx(middle, rel=0.3)
    assert balanced[-10:].min() > 0.7 * middle
    assert unbalanced[-1] < 0.2 * unbalanced[50:150].mean()
    assert balanced[-1] > 5 * unbalanced[-1]


def test_short_episodes_are_skipped(tmp_path):
    save_marked(tmp_path, 4, [1.0, 2.0])  # Shorter than the chunk.
    save_marked(tmp_path, 8, [3.0])
    save_marked(tmp_path, 12, [4.0])
    store = tools.EpisodeStore(tmp_path)
    store.update()
    for balance in (False, True):
        seen = set()
        for _ in range(200):
            chunk = store.sample(8, balance)
            assert all(len(v) == 8 for v in chunk.values())
            seen.add(float(chunk["reward"][0]))
        assert seen == {3.0, 4.0}
    with pytest.raises(ValueError, match="No episode"):
        store.sample(13)


def test_new_episodes_become_sampleable(tmp_path):
    save_marked(tmp_path, 10, [1.0])
    store = tools.EpisodeStore(tmp_path)
    batches = store.batches(8, 5)
    assert set(np.unique(next(batches)["reward"])) == {1.0}
    save_marked(tmp_path, 3, [2.0])  # Too short for the chunks.
    save_marked(tmp_path, 10, [3.0])
    rewards = np.concatenate([next(batches)["reward"].ravel() for _ in range(10)])
    assert set(np.unique(rewards)) == {1.0, 3.0}
    assert len(store) == 3


# Dataset.


def test_make_dataset_batches(tmp_path):
    for marker in range(3):
        episode = make_episode(20, 5.0 * (marker + 1), seed=marker)
        episode["image"][0] = 0
        episode["image"][1] = 255
        tools.save_episodes(tmp_path, [episode])
    config = make_config(batch_size=4, batch_length=6)
    dataset = tools.make_dataset(tools.EpisodeStore(tmp_path), config)
    assert isinstance(dataset, tf.data.Dataset)
    assert "Prefetch" in type(dataset).__name__
    assert dataset.element_spec["image"].shape == (4, 6, 64, 64, 3)
    assert dataset.element_spec["image"].dtype == tf.float32
    images = []
    for batch in dataset.take(5):
        assert batch["image"].shape == (4, 6, 64, 64, 3)
        assert batch["image"].dtype == tf.float32
        assert batch["action"].shape == (4, 6, 2) and batch["action"].dtype == tf.float32
        assert batch["reward"].shape == (4, 6) and batch["reward"].dtype == tf.float32
        assert batch["discount"].shape == (4, 6) and batch["discount"].dtype == tf.float32
        assert set(np.unique(batch["reward"].numpy())) <= {5.0, 10.0, 15.0}
        images.append(batch["image"].numpy())
    images = np.concatenate(images)
    assert images.min() >= -0.5 and images.max() <= 0.5
    assert images.min() == -0.5 and images.max() == 0.5


def test_make_dataset_tanh_reward_clipping(tmp_path):
    tools.save_episodes(tmp_path, [make_episode(10, 3.0), make_episode(10, -0.5, seed=1)])
    dataset = tools.make_dataset(tools.EpisodeStore(tmp_path), make_config(clip_rewards="tanh", balance=True))
    for batch in dataset.take(3):
        rewards = batch["reward"].numpy()
        assert rewards.shape == (3, 5)
        for value in np.unique(rewards):
            assert value == pytest.approx(np.tanh(3.0), rel=1e-5) or value == pytest.approx(np.tanh(-0.5), rel=1e-5)
        assert np.abs(rewards).max() < 1.0


def test_preprocess():
    obs = {
        "image": np.array([0, 128, 255], np.uint8),
        "reward": np.array([-3.0, 0.0, 2.0]),
        "action": np.array([1, 0], np.int64),
        "discount": np.array([1, 0], np.int32),
    }
    for clip, reward in (("none", [-3.0, 0.0, 2.0]), ("tanh", np.tanh([-3.0, 0.0, 2.0]))):
        out = tools.preprocess(obs, make_config(clip_rewards=clip))
        assert set(out) == set(obs)
        np.testing.assert_allclose(out["image"], [-0.5, 128 / 255 - 0.5, 0.5], atol=1e-6)
        np.testing.assert_allclose(out["reward"], reward, atol=1e-6)
        assert all(out[k].dtype == tf.float32 for k in out)
    assert obs["image"].dtype == np.uint8  # The input is left alone.
