"""Episode files and the replay buffer."""
import os

import numpy as np
import pytest

import replay as replay_lib
from tools import ConfigError


def make_episode(length, action_size=2, seed=0, value=None):
    rng = np.random.default_rng(seed)
    ep = dict(image=rng.integers(0, 255, (length, 64, 64, 3), dtype=np.uint8),
              action=rng.uniform(-1, 1, (length, action_size)).astype(np.float32),
              reward=rng.normal(size=length).astype(np.float32),
              discount=np.ones(length, np.float32), is_first=np.zeros(length, bool),
              is_terminal=np.zeros(length, bool))
    ep['is_first'][0] = True
    if value is not None:
        ep['reward'][:] = value
    return ep


def test_save_load_round_trip(tmp_path):
    ep = make_episode(11)
    path = replay_lib.save_episode(str(tmp_path), ep)
    name = os.path.basename(path)
    assert name.endswith('-10.npz') and len(name.split('-')) == 3
    assert not [f for f in os.listdir(tmp_path) if 'tmp' in f]      # atomic: no temp file left
    back = replay_lib.load_episode(path)
    assert set(back) == set(ep)
    for key in ep:
        assert back[key].dtype == ep[key].dtype and np.array_equal(back[key], ep[key])
    assert replay_lib.count_steps(str(tmp_path)) == 10


def test_corrupt_files_are_skipped(tmp_path, capsys):
    replay_lib.save_episode(str(tmp_path), make_episode(5))
    (tmp_path / 'broken-x-4.npz').write_bytes(b'not a zip')
    episodes, skipped = replay_lib.load_episodes(str(tmp_path))
    assert len(episodes) == 1 and skipped == 1


def test_sampling_shapes_and_seed():
    a, b = replay_lib.Replay(seed=3), replay_lib.Replay(seed=3)
    for i in range(4):
        a.add_episode(make_episode(20, seed=i))
        b.add_episode(make_episode(20, seed=i))
    x, y = a.sample(5, 8), b.sample(5, 8)
    assert x['image'].shape == (5, 8, 64, 64, 3) and x['image'].dtype == np.uint8
    assert x['action'].shape == (5, 8, 2) and x['is_first'][:, 0].all()
    for key in x:
        assert np.array_equal(x[key], y[key])


def test_sequences_are_contiguous_steps():
    r = replay_lib.Replay(seed=0)
    for i in range(3):
        ep = make_episode(10, seed=i)
        ep['reward'] = np.arange(10, dtype=np.float32) + 100 * i
        r.add_episode(ep)
    batch = r.sample(64, 6)
    rewards = batch['reward']
    # consecutive steps differ by 1 inside an episode, and an episode start is flagged where they jump
    jumps = np.diff(rewards, axis=1) != 1
    assert np.array_equal(jumps, batch['is_first'][:, 1:])


def test_capacity_keeps_newest_steps():
    r = replay_lib.Replay(capacity=25, seed=0)
    for i in range(5):
        r.add_episode(make_episode(10, value=float(i)))
    assert len(r) == 25 and r.steps == 50
    seen = np.unique(r.sample(256, 5)['reward'])
    assert set(seen) <= {2.0, 3.0, 4.0} and 4.0 in seen     # the oldest episodes were overwritten
    batch = r.sample(256, 5)
    # no sequence spans the write pointer (it would jump from the newest episode back to the oldest)
    assert not ((batch['reward'][:, :-1] == 4.0) & (batch['reward'][:, 1:] == 2.0)).any()


def test_video_dataset_checks(tmp_path, capsys):
    with pytest.raises(ConfigError, match='does not exist'):
        replay_lib.load_video_dataset(str(tmp_path / 'missing'))
    with pytest.raises(ConfigError, match='No .npz episodes'):
        replay_lib.load_video_dataset(str(tmp_path))
    sub = tmp_path / 'a' / 'b'
    for i in range(4):
        ep = make_episode(20, seed=i)
        ep['logprob'] = np.zeros(20, np.float32)             # extra keys are ignored
        replay_lib.save_episode(str(sub), ep)
    replay_lib.save_episode(str(sub), make_episode(5))       # too short for batch_length 10
    (sub / 'corrupt-0-9.npz').write_bytes(b'garbage')
    episodes, report = replay_lib.load_video_dataset(str(tmp_path), min_length=10)
    assert len(episodes) == 4 and report['unreadable'] == 1 and report['short'] == 1
    assert set(episodes[0]) == {'image'} and episodes[0]['image'].dtype == np.uint8
    quarter, _ = replay_lib.load_video_dataset(str(tmp_path), scale=0.5, seed=1, min_length=10)
    assert 1 <= len(quarter) <= 3
    with pytest.raises(ConfigError, match='GiB of RAM'):
        replay_lib.load_video_dataset(str(tmp_path), memory_fraction=1e-9)
    bad = tmp_path / 'bad'
    replay_lib.save_episode(str(bad), dict(image=np.zeros((12, 32, 32, 3), np.uint8)))
    with pytest.raises(ConfigError, match=r'\(32, 32, 3\); expected \(64, 64, 3\)'):
        replay_lib.load_video_dataset(str(bad))
    with pytest.raises(ConfigError, match='shorter than batch_length'):
        replay_lib.load_video_dataset(str(tmp_path / 'a'), min_length=100)


def test_dataset_scale_is_seeded_subset(tmp_path):
    for i in range(8):
        replay_lib.save_episode(str(tmp_path), make_episode(4, seed=i))
    a, _ = replay_lib.load_video_dataset(str(tmp_path), scale=0.25, seed=0, min_length=2)
    b, _ = replay_lib.load_video_dataset(str(tmp_path), scale=0.25, seed=0, min_length=2)
    assert len(a) == 2 and all(np.array_equal(x['image'], y['image']) for x, y in zip(a, b))


def test_storage_lives_in_its_own_memory_maps_and_survives_growth():
    """The unbounded replay grows by doubling; every step stays in place, and the storage is mmap-backed (outside
    malloc's heap), so an outgrown array's memory goes back to the OS."""
    import mmap
    r = replay_lib.Replay(seed=0)
    episodes = [make_episode(700, seed=i) for i in range(4)]      # 2796 steps: grows 1024 -> 2048 -> 4096
    for ep in episodes:
        r.add_episode(ep)
    assert len(r) == 4 * 699 + 4
    for arr in r._data.values():
        base = arr
        while isinstance(base, np.ndarray):
            base = base.base
        base = base.obj if isinstance(base, memoryview) else base
        assert isinstance(base, mmap.mmap) and arr.flags.writeable
    stored = r._data['reward'][:len(r)]
    assert np.array_equal(stored, np.concatenate([ep['reward'] for ep in episodes]))
    zeros = replay_lib.mapped_zeros((3, 5), np.float32)
    assert zeros.shape == (3, 5) and zeros.dtype == np.float32 and not zeros.any()


def test_release_compat_replay_marks_only_real_episode_starts():
    """Official DreamerV2 starts every sampled sequence with is_first (zero state, zero action); the release's
    world model starts from the zero state but sees the sequence's first stored action (`mark_sequence_starts`)."""
    marked, plain = replay_lib.Replay(seed=1), replay_lib.Replay(seed=1, mark_sequence_starts=False)
    for i in range(3):
        marked.add_episode(make_episode(20, seed=i))
        plain.add_episode(make_episode(20, seed=i))
    x, y = marked.sample(64, 8), plain.sample(64, 8)
    assert np.array_equal(x['action'], y['action']) and x['is_first'][:, 0].all()
    starts = y['reward'][:, 0] == np.concatenate([make_episode(20, seed=i)['reward'][:1] for i in range(3)])[:, None]
    assert np.array_equal(y['is_first'][:, 0], starts.any(0))       # true exactly where an episode really starts
    assert 0 < y['is_first'][:, 0].sum() < 64
    assert np.array_equal(x['is_first'][:, 1:], y['is_first'][:, 1:])


def test_within_episode_sampling_matches_a_loop_and_never_crosses_an_episode():
    """`within_episodes` (official DreamerV2's DMC replay and the release's `sample_episodes`): draw an episode
    uniformly among those holding a sequence, then its start uniformly; checked against a loop over the episodes,
    with a short episode (never sampled) and a ring buffer that has overwritten the oldest ones."""
    r = replay_lib.Replay(capacity=60, seed=4, within_episodes=True)
    lengths = [12, 5, 20, 9, 14, 16]             # 76 steps: the first episode (and 4 steps of the second) overwritten
    for i, n in enumerate(lengths):
        ep = make_episode(n, seed=i)
        ep['reward'] = (np.arange(n) + 100 * i).astype(np.float32)
        r.add_episode(ep)
    state = r.rng.bit_generator.state
    batch = r.sample(400, 8)
    # the slow obvious version: the episodes still whole in the buffer that hold 8 steps, as (rewards) lists
    whole = [i for i in range(len(lengths)) if sum(lengths[:i]) >= sum(lengths) - 60 and lengths[i] >= 8]
    assert whole == [2, 3, 4, 5]
    r.rng.bit_generator.state = state
    pick = r.rng.integers(0, len(whole), size=400)
    offsets = r.rng.integers(0, np.array(lengths)[np.array(whole)[pick]] - 8 + 1)
    for b in range(400):
        i = whole[pick[b]]
        assert np.array_equal(batch['reward'][b], np.arange(offsets[b], offsets[b] + 8) + 100 * i)
    assert (np.diff(batch['reward'], axis=1) == 1).all() and not batch['is_first'][:, 1:].any()
    # each usable episode is drawn about equally often, whatever its length (the flat sampler goes by length)
    counts = np.bincount(batch['reward'][:, 0].astype(int) // 100, minlength=6)[whole]
    assert counts.min() > 70
    flat = replay_lib.Replay(seed=0)
    for n in (10, 90):
        flat.add_episode(make_episode(n, value=float(n)))
    assert (flat.sample(1000, 8)['reward'][:, 0] == 10).mean() < 0.2
    within = replay_lib.Replay(seed=0, within_episodes=True)
    for n in (10, 90):
        within.add_episode(make_episode(n, value=float(n)))
    assert 0.4 < (within.sample(1000, 8)['reward'][:, 0] == 10).mean() < 0.6
    short = replay_lib.Replay(seed=0, within_episodes=True)
    short.add_episode(make_episode(6))
    short.add_episode(make_episode(7))
    with pytest.raises(ConfigError, match='No stored episode holds a sequence of 8 steps'):
        short.sample(2, 8)


def test_training_replay_follows_the_config():
    from tools import make_config
    base = ['--configs', 'defaults', 'dmc2gym', '--task', 'dmc2gym_cartpole_balance', '--logdir', 'unused']
    default = replay_lib.for_training(make_config(base))
    assert not default.within_episodes and default.mark_sequence_starts
    official = replay_lib.for_training(make_config(base + ['--sample_within_episodes', 'True']))
    assert official.within_episodes and official.mark_sequence_starts
    release = replay_lib.for_training(make_config(base + ['--release_compat', 'True']))
    assert release.within_episodes and not release.mark_sequence_starts
