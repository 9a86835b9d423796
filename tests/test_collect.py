"""Video collection (scripts/collect_videos.py) and dataset download/unpack (scripts/download_datasets.py), on CPU.

Episodes are kept short (time limit 20 env steps = 10 agent steps = 11 frames) so the whole file runs in well under a
minute; the download path is exercised without network on archives the tests build.
"""
import os

os.environ.setdefault('MUJOCO_GL', 'egl')  # before dm_control / mujoco are imported

import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import replay as replay_lib  # noqa: E402
import tools  # noqa: E402
from helpers import load_script  # noqa: E402

TASK = 'dmc2gym_reacher_easy'
FRAMES = 11  # time_limit 20 env steps / action_repeat 2 + the reset frame


collect_videos = load_script('collect_videos')
download_datasets = load_script('download_datasets')


def collect(out, *flags, policy='random', episodes=1, seed=0):
    """Runs the collector in-process (as its CLI does) and returns its summary (paths in collection order)."""
    argv = ['--task', TASK, '--policy', str(policy), '--episodes', str(episodes), '--out', str(out),
            '--seed', str(seed), '--time_limit', '20', '--progress', 'False', *flags]
    args, config, explicit = collect_videos.parse_args(argv)
    return collect_videos.collect(config, args.policy, args.episodes, args.out, args.distractor, args.save_actions,
                                  args.sample_actions, explicit)


def load_all(summary):
    return [replay_lib.load_episode(path) for path in summary['paths']]


@pytest.fixture(scope='module')
def random_run(tmp_path_factory):
    out = tmp_path_factory.mktemp('random') / 'train_eps'
    return out, collect(out, '--color.max_delta', '0.05', '--color.step_std', '0.02', episodes=2, seed=1)


# --------------------------------------------------------------------------------------------------------------------
# collect_videos
# --------------------------------------------------------------------------------------------------------------------
def test_random_episodes_have_the_dreamer_format(random_run):
    out, summary = random_run
    assert summary['episodes'] == 2 and summary['frames'] == 2 * FRAMES and summary['distractor'] == 'train'
    episodes = load_all(summary)
    assert sorted(replay_lib.list_episodes(str(out))) == sorted(summary['paths'])
    for ep in episodes:
        assert set(ep) == {'image', 'action', 'reward', 'discount', 'is_first', 'is_terminal', 'color'}
        assert ep['image'].shape == (FRAMES, 64, 64, 3) and ep['image'].dtype == np.uint8
        assert ep['action'].shape == (FRAMES, 2) and ep['action'].dtype == np.float32
        assert np.all(ep['action'][0] == 0) and np.all(np.abs(ep['action']) <= 1) and ep['action'][1:].std() > 0.1
        for key in ('reward', 'discount'):
            assert ep[key].shape == (FRAMES,) and ep[key].dtype == np.float32
        assert ep['is_first'].dtype == bool and ep['is_first'].tolist() == [True] + [False] * (FRAMES - 1)
        assert ep['is_terminal'].dtype == bool and not ep['is_terminal'].any() and np.all(ep['discount'] == 1)
        # One colour per material and step, inside the train box of the --color.* flags given (base +- 0.05).
        color = ep['color'].reshape(FRAMES, -1, 3)
        assert ep['color'].dtype == np.float32 and color.shape[1] > 1
        assert np.all(np.abs(color - np.array([0.7, 0.3, 0.5])) <= 0.05 + 1e-6)
        assert np.any(color[1:] != color[:-1])  # the random walk moves the colours every step
    assert not np.array_equal(episodes[0]['image'], episodes[1]['image'])
    record = [line for line in open(os.path.join(out, 'collections.jsonl'))][-1]
    assert '"max_delta": 0.05' in record and '"seed": 1' in record


def test_collected_episodes_load_for_pretraining(random_run):
    out, _ = random_run
    episodes, report = replay_lib.load_video_dataset(str(out), min_length=FRAMES)
    assert report['episodes'] == 2 and report['frames'] == 2 * FRAMES and report['unreadable'] == 0
    assert all(ep['image'].shape == (FRAMES, 64, 64, 3) for ep in episodes)


def test_same_seed_same_episodes(tmp_path, random_run):
    _, first = random_run
    again = load_all(collect(tmp_path / 'again', '--color.max_delta', '0.05', '--color.step_std', '0.02', seed=1))
    other = load_all(collect(tmp_path / 'other', '--color.max_delta', '0.05', '--color.step_std', '0.02', seed=2))
    reference = load_all(first)[0]
    for key in ('image', 'color', 'action', 'reward'):
        np.testing.assert_array_equal(again[0][key], reference[key])
    assert not np.array_equal(other[0]['color'], reference['color'])
    assert not np.array_equal(other[0]['image'], reference['image'])


def test_video_only_and_bad_flags(tmp_path, capsys):
    summary = collect(tmp_path / 'video', '--save_actions', 'False')
    assert 'action' not in load_all(summary)[0] and 'reward' in load_all(summary)[0]
    assert collect_videos.main(['--task', TASK, '--out', str(tmp_path / 'x'), '--distractor', 'purple']) == 2
    assert "Unknown colour set 'purple'" in capsys.readouterr().err
    assert collect_videos.main(['--task', TASK, '--out', str(tmp_path / 'x'), '--color.max_dleta', '0.1']) == 2
    assert "Did you mean 'color.max_delta'" in capsys.readouterr().err
    assert collect_videos.main(['--task', 'dmc2gym_reacher_eazy', '--out', str(tmp_path / 'x')]) == 2
    assert 'dmc2gym_reacher_easy' in capsys.readouterr().err


def make_checkpoint(folder, action_size, *flags):
    """A run folder with config.yaml and checkpoint.pt of a fresh agent (debug preset), as dreamer.py writes them."""
    import dreamer
    import models

    config = tools.make_config(['--configs', 'defaults', 'dmc2gym', 'debug', '--task', TASK, '--logdir', str(folder),
                                '--device', 'cpu', *flags])
    os.makedirs(folder, exist_ok=True)
    tools.save_config(config, os.path.join(folder, 'config.yaml'))
    agent = models.Agent(config, action_size)
    counters = {'step': 0, 'updates': 0, 'episodes': 0, 'eval_episodes_done': 0}
    path = os.path.join(folder, 'checkpoint.pt')
    dreamer.save_checkpoint(path, agent, counters, replay_lib.Replay(), config)
    return path


def test_collect_with_a_checkpoint(tmp_path):
    # The run acted with action_repeat 1: the collector takes it from the run's config (20 agent steps, 21 frames).
    path = make_checkpoint(tmp_path / 'run', 2, '--action_repeat', '1')
    summary = collect(tmp_path / 'eps', policy=path)
    episode = load_all(summary)[0]
    assert summary['policy'] == path and summary['action_repeat'] == 1
    assert episode['image'].shape == (21, 64, 64, 3) and episode['action'].shape == (21, 2)
    assert np.all(np.abs(episode['action']) <= 1) and np.any(episode['action'][1:] != 0)
    # Acting with the actor's mode is deterministic: a second collection repeats the actions exactly.
    again = load_all(collect(tmp_path / 'eps2', policy=os.path.dirname(path)))[0]
    np.testing.assert_array_equal(again['action'], episode['action'])


def test_collect_with_a_diswm_checkpoint_after_its_pretraining_folder_is_gone(tmp_path):
    # DisWM builds its teacher from --pretrain_checkpoint_path; the collector uses the copy inside the checkpoint.
    import models

    pretrained = tmp_path / 'pretrained'
    config = tools.make_config(['--configs', 'defaults', 'dmc2gym', '--beta_vae', 'True', '--beta_vae_pretrain',
                                'True', '--device', 'cpu'])
    video_model = models.WorldModel(config, config.pretrain_action_num, models.METHOD_SPECS['pretrain'])
    models.save_video_model(str(pretrained), video_model, {'z_dim': config.z_dim})
    path = make_checkpoint(tmp_path / 'run', 2, '--beta_vae', 'True', '--method_name', 'diswm',
                           '--pretrain_checkpoint_path', str(pretrained))
    for name in os.listdir(pretrained):
        os.remove(pretrained / name)
    summary = collect(tmp_path / 'eps', policy=path)
    assert summary['episodes'] == 1 and load_all(summary)[0]['action'].shape == (FRAMES, 2)


def test_checkpoint_with_another_action_size_fails_clearly(tmp_path, capsys):
    path = make_checkpoint(tmp_path / 'run', 3)
    out = tmp_path / 'eps'
    assert collect_videos.main(['--task', TASK, '--policy', path, '--out', str(out), '--time_limit', '20']) == 2
    err = capsys.readouterr().err
    assert 'has 3 actions' in err and f'{TASK} has 2' in err and '--policy random' in err
    assert not replay_lib.list_episodes(str(out))
    assert collect_videos.main(['--task', TASK, '--policy', str(tmp_path / 'missing.pt'), '--out', str(out)]) == 2
    assert 'not found' in capsys.readouterr().err


def test_cli_smoke(tmp_path):
    out = tmp_path / 'cli'
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'scripts', 'collect_videos.py'), '--task', TASK, '--policy', 'random',
         '--episodes', '2', '--out', str(out), '--time_limit', '10', '--progress', 'False'],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, MUJOCO_GL='egl'))
    assert result.returncode == 0, result.stderr
    assert f'Collected 2 episodes, 12 frames of {TASK}' in result.stdout and str(out) in result.stdout
    assert len(replay_lib.list_episodes(str(out))) == 2


# --------------------------------------------------------------------------------------------------------------------
# download_datasets (no network)
# --------------------------------------------------------------------------------------------------------------------
def fake_episode(rng, length=12):
    """A synthetic DreamerV2 episode (what the published archives hold)."""
    return {'image': rng.integers(0, 256, (length, 64, 64, 3), dtype=np.uint8),
            'action': rng.uniform(-1, 1, (length, 2)).astype(np.float32),
            'reward': rng.random(length).astype(np.float32), 'discount': np.ones(length, np.float32),
            'is_first': np.arange(length) == 0, 'is_terminal': np.zeros(length, bool)}


def make_archive(tmp_path, name='reacher_easy.tar.xz', prefix='reacher_easy/train_eps', episodes=2, evil=None):
    source = tmp_path / 'source'
    rng = np.random.default_rng(0)
    paths = [replay_lib.save_episode(str(source), fake_episode(rng)) for _ in range(episodes)]
    archive = tmp_path / name
    with tarfile.open(archive, 'w:xz') as tar:
        for path in paths:
            tar.add(path, arcname=f'{prefix}/{os.path.basename(path)}')
        if evil is not None:
            evil(tar, paths[0])
    return str(archive)


def test_unpack_and_verify(tmp_path, capsys):
    archive = make_archive(tmp_path)
    out = tmp_path / 'data'
    assert download_datasets.main(['--unpack-only', archive, '--out', str(out)]) == 0
    # The archive's top folder named after the task is stripped: data/reacher_easy/train_eps/*.npz.
    episodes_dir = out / 'reacher_easy' / 'train_eps'
    assert len(replay_lib.list_episodes(str(episodes_dir), recursive=False)) == 2
    assert os.listdir(out) == ['reacher_easy']  # no staging folder left behind
    printed = capsys.readouterr().out
    assert '2 episodes' in printed and f'--pretrain_datasets_path {episodes_dir}' in printed
    info = download_datasets.verify(str(episodes_dir))
    assert info['episodes'] == 2 and info['sample_frames'] == 12 and info['image_shape'] == (64, 64, 3)
    assert {'image', 'action', 'reward'} <= set(info['keys'])
    # The unpacked folder is what pretraining reads.
    _, report = replay_lib.load_video_dataset(str(episodes_dir), min_length=2)
    assert report['episodes'] == 2


@pytest.mark.parametrize('prefix', ['.', 'logdir/run'], ids=['flat', 'other-folders'])
def test_unpack_puts_episodes_in_train_eps(tmp_path, prefix):
    archive = make_archive(tmp_path, name='finger_spin.tar.xz', prefix=prefix)
    episodes_dir = download_datasets.unpack(archive, str(tmp_path / 'data'))
    assert episodes_dir == str(tmp_path / 'data' / 'finger_spin' / 'train_eps')
    assert len(replay_lib.list_episodes(episodes_dir, recursive=False)) == 2


def _add_named(name):
    def evil(tar, path):
        info = tar.gettarinfo(path)
        info.name = name  # set after gettarinfo, which would strip a leading '/'
        with open(path, 'rb') as f:
            tar.addfile(info, f)
    return evil


def _add_symlink(tar, path):
    info = tarfile.TarInfo('reacher_easy/train_eps/link.npz')
    info.type, info.linkname = tarfile.SYMTYPE, '/etc/passwd'
    tar.addfile(info)


@pytest.mark.parametrize('evil', [_add_named('../escaped.npz'), _add_named('reacher_easy/../../escaped.npz'),
                                  _add_named('/tmp/diswm_test_absolute.npz'), _add_symlink],
                         ids=['dotdot', 'nested-dotdot', 'absolute', 'symlink'])
def test_unpack_refuses_unsafe_members(tmp_path, evil):
    archive = make_archive(tmp_path, evil=evil)
    out = tmp_path / 'data'
    with pytest.raises(tools.ConfigError, match='Refusing to unpack'):
        download_datasets.unpack(archive, str(out))
    assert not (tmp_path / 'escaped.npz').exists() and not os.path.exists('/tmp/diswm_test_absolute.npz')
    assert os.listdir(out) == []  # nothing unpacked, staging removed


def test_unpack_rejects_a_broken_archive_and_empty_folder(tmp_path):
    broken = tmp_path / 'finger_spin.tar.xz'
    broken.write_bytes(b'not an archive at all')
    with pytest.raises(tools.ConfigError, match='not a readable tar archive'):
        download_datasets.unpack(str(broken), str(tmp_path / 'data'))
    with pytest.raises(tools.ConfigError, match='No .npz episodes'):
        download_datasets.verify(str(tmp_path / 'data'))


def test_download_without_network_names_the_url_and_manual_route(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise OSError('[Errno 101] Network is unreachable')

    monkeypatch.setattr(huggingface_hub, 'hf_hub_download', offline)
    with pytest.raises(download_datasets.DownloadError) as error:
        download_datasets.download('finger_spin', str(tmp_path))
    message = str(error.value)
    assert 'https://huggingface.co/datasets/MrSC320/DisWM-Pretrain-Datasets/resolve/main/finger_spin.tar.xz' in message
    assert '--unpack-only' in message and 'Network is unreachable' in message
    assert download_datasets.main(['--tasks', 'finger_spin', '--out', str(tmp_path / 'data')]) == 2
    assert 'by hand' in capsys.readouterr().err


def test_download_of_a_missing_file_says_so(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors

    def missing(*args, **kwargs):
        raise errors.RemoteEntryNotFoundError.__new__(errors.RemoteEntryNotFoundError)

    monkeypatch.setattr(huggingface_hub, 'hf_hub_download', missing)
    with pytest.raises(download_datasets.DownloadError, match='not in https://huggingface.co/datasets/'):
        download_datasets.download('humanoid_walk', str(tmp_path))
