"""A run folder that cannot be corrupted (subprocesses, as a user runs dreamer.py): identity check on resume, one
process per folder, finished runs stay finished, non-finite values stop the run, bad values get one message."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import dreamer
import replay
import tools
from helpers import ROOT, load_script, run_dreamer

# A tiny cartpole run: the debug preset's schedule, shortened further (100-step episodes, 60 prefill agent steps).
TINY = ['--configs', 'defaults', 'dmc2gym', 'debug', '--task', 'dmc2gym_cartpole_balance', '--seed', '0',
        '--threads', '1', '--progress', 'False', '--tensorboard', 'False', '--time_limit', '100', '--prefill', '60',
        '--eval_every', '200', '--eval_episodes', '1', '--log_every', '100']


def digest(folder):
    """Name -> sha256 of every file under `folder` (the lock file's owner line aside)."""
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            if name != '.run.lock':
                with open(os.path.join(base, name), 'rb') as f:
                    out[os.path.relpath(os.path.join(base, name), folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp('run') / 'run')
    proc = run_dreamer(TINY + ['--logdir', logdir, '--steps', '300'])
    assert 'Done' in proc.stdout
    return logdir


def test_finished_run_rerun_changes_nothing(finished_run):
    done = json.load(open(os.path.join(finished_run, 'finished.json')))
    assert done['env_steps'] >= 300 and done['updates'] > 0
    before = digest(finished_run)
    for _ in range(3):
        proc = run_dreamer(TINY + ['--logdir', finished_run, '--steps', '300'])
        assert 'Run complete' in proc.stdout and 'metrics.jsonl' in proc.stdout
    assert digest(finished_run) == before


def test_conflicting_rerun_leaves_the_run_untouched(finished_run):
    before = digest(finished_run)
    proc = run_dreamer(TINY + ['--logdir', finished_run, '--steps', '300', '--seed', '1', '--task',
                               'dmc2gym_reacher_easy'], check=False)
    assert proc.returncode == 2
    err = proc.stderr
    assert "--seed: the run has 0, this command 1" in err
    assert "--task: the run has 'dmc2gym_cartpole_balance', this command 'dmc2gym_reacher_easy'" in err
    assert 'another --logdir' in err and 'Traceback' not in err
    assert digest(finished_run) == before
    if not __import__('torch').cuda.is_available():
        proc = run_dreamer(TINY + ['--logdir', finished_run, '--steps', '900', '--device', 'cuda'], check=False)
        assert proc.returncode == 2 and 'CUDA is not available' in proc.stderr
        assert digest(finished_run) == before


def test_train_windows_of_a_run_are_the_means_of_its_episodes_on_disk(tmp_path):
    """The learning report's published statistic read from a real run's metrics.jsonl (learning.train_windows)
    equals the plain mean of the returns of the training episodes on disk that ended in each window, the episodes
    ordered by their file names and placed by their lengths. Logged every 250 env steps, the rows hold 2 or 3
    episodes of 100 env steps each, so a window's mean must weight them."""
    logdir = str(tmp_path / 'run')
    run_dreamer(TINY + ['--logdir', logdir, '--steps', '600', '--log_every', '250', '--eval_every', '1000'])
    learning = load_script('learning')
    repeat = int(learning.rundata.read_config(logdir)['action_repeat'])
    ends, returns, env_steps = [], [], 0
    for path in replay.list_episodes(os.path.join(logdir, 'train_eps')):
        episode = replay.load_episode(path, ['reward'])
        env_steps += (len(episode['reward']) - 1) * repeat       # transitions: the reset step has no action
        ends.append(env_steps)
        returns.append(float(episode['reward'].sum()))
    rows = [json.loads(line) for line in open(os.path.join(logdir, 'metrics.jsonl'))]
    assert [row.get('episodes') for row in rows if 'train_return' in row][:2] == [2, 5]
    windows = learning.train_windows(rows, 500)
    assert list(windows) == [500] and windows[500][1] == 5 and ends[:5] == [100, 200, 300, 400, 500]
    assert windows[500][0] == pytest.approx(np.mean(returns[:5]), rel=1e-5)
    assert windows[500][0] != pytest.approx(np.mean([row['train_return'] for row in rows[:2]]), rel=1e-5)


def test_resumable_change_is_recorded_and_training_goes_on(tmp_path):
    logdir = str(tmp_path / 'run')
    run_dreamer(TINY + ['--logdir', logdir, '--steps', '200'])
    with open(os.path.join(logdir, 'checkpoint.pt.tmp999'), 'wb') as f:   # left by a killed save
        f.write(b'x' * 100)
    # An episode that finished after the last checkpoint (the process was killed before the next one).
    import shutil
    import replay as replay_lib
    first = replay_lib.list_episodes(os.path.join(logdir, 'train_eps'))[0]
    late = os.path.join(logdir, 'train_eps', '29991231T000000000000-late-50.npz')
    shutil.copyfile(first, late)
    os.remove(os.path.join(logdir, 'finished.json'))
    proc = run_dreamer(TINY + ['--logdir', logdir, '--steps', '400', '--log_every', '200', '--keep_checkpoints',
                               'True'])
    assert '1 episode(s) finished after the last checkpoint were moved' in proc.stdout
    assert os.path.exists(os.path.join(logdir, 'train_eps_after_checkpoint', os.path.basename(late)))
    assert 'Resuming from' in proc.stdout and 'agent step 100 (200 env steps)' in proc.stdout
    assert sorted(os.listdir(os.path.join(logdir, 'checkpoints'))) == ['checkpoint_000000400.pt']
    assert 'Removed 1 temporary file' in proc.stdout
    assert not os.path.exists(os.path.join(logdir, 'checkpoint.pt.tmp999'))
    # resumes.jsonl: the changed settings, then where training picked up (the late episode set aside).
    resumes = [json.loads(line) for line in open(os.path.join(logdir, 'resumes.jsonl'))]
    assert resumes[-2]['changed'] == {'steps': [200, 400], 'log_every': [100, 200], 'keep_checkpoints': [False, True]}
    episodes, updates = re.search(r'(\d+) episodes on disk, (\d+) updates done', proc.stdout).groups()
    assert int(updates) > 0
    assert resumes[-1]['resumed_from'] == {'env_steps': 200, 'updates': int(updates), 'episodes': int(episodes),
                                           'checkpoint': True}
    assert resumes[-1]['episodes_set_aside'] == 1
    assert json.load(open(os.path.join(logdir, 'finished.json')))['env_steps'] >= 400


def test_second_process_on_a_run_folder_stops_at_once(tmp_path):
    logdir = str(tmp_path / 'run')
    os.makedirs(logdir)
    holder = subprocess.Popen([sys.executable, '-c', (
        'import sys, time; sys.path.insert(0, sys.argv[1]); import dreamer; dreamer.lock_run_folder(sys.argv[2]); '
        'print("locked", flush=True); time.sleep(60)'), ROOT, logdir], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        start = time.time()
        proc = run_dreamer(TINY + ['--logdir', logdir, '--steps', '200'], check=False)
        assert proc.returncode == 2 and time.time() - start < 60
        assert f'is in use by pid {holder.pid}' in proc.stderr
        assert not os.path.exists(os.path.join(logdir, 'train_eps'))
    finally:
        holder.kill()
        holder.wait()


def test_nan_pretraining_stops_without_writing_a_model(tmp_path):
    from test_methods import moving_square_dataset
    data = tmp_path / 'videos'
    moving_square_dataset(data, episodes=3, length=20)
    logdir = str(tmp_path / 'pretrain')
    proc = run_dreamer(['--configs', 'defaults', 'dmc2gym', 'debug', '--task', 'dmc2gym_reacher_easy', '--logdir',
                        logdir, '--beta_vae_pretrain', 'True', '--beta_vae', 'True', '--pretrain_datasets_path',
                        str(data), '--batch_size', '2', '--batch_length', '8', '--pretrain_steps', '40',
                        '--pretrain_save_every', '10', '--model_lr', '1e9', '--threads', '1', '--progress', 'False',
                        '--tensorboard', 'False'], check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert 'Non-finite' in proc.stderr and 'at update' in proc.stderr and 'Traceback' not in proc.stderr
    for name in ('encoder.pt', 'decoder.pt', 'rssm.pt', 'pretrain_state.pt'):
        assert not os.path.exists(os.path.join(logdir, name))


def test_finite_guard_names_the_term_and_the_update():
    import torch
    guard = tools.FiniteGuard('cpu')
    guard.watch({'model_loss': torch.tensor(1.0), 'actor_grad_norm': torch.tensor(2.0), 'kl_value': torch.tensor(1.)},
                update=1)
    with pytest.raises(tools.NonFiniteError, match=r'actor_grad_norm = nan at update 7'):
        guard.watch({'model_loss': torch.tensor(1.0), 'actor_grad_norm': torch.tensor(float('nan'))}, update=7)
    lazy = tools.FiniteGuard('cuda:0')          # a GPU guard only looks when asked
    lazy.watch({'image_loss': torch.tensor(float('inf'))}, update=3)
    with pytest.raises(tools.NonFiniteError, match='image_loss = inf at update 3'):
        lazy.check()
    fp16 = tools.FiniteGuard('cpu', skip_grad_norms=True)   # the grad scaler skips overflowing steps itself
    fp16.watch({'model_grad_norm': torch.tensor(float('inf')), 'model_loss': torch.tensor(0.5)}, update=1)


@pytest.mark.parametrize('flag, value, message', [
    ('action_repeat', '0', '--action_repeat must be a number >= 1, got 0'),
    ('eval_every', '0', '--eval_every must be a number >= 1, got 0'),
    ('steps', '-5', '--steps must be a number >= 1, got -5'),
    ('batch_size', '0', '--batch_size must be >= 1'),
    ('checkpoint_every', '0', '--checkpoint_every must be a number >= 0.001'),
])
def test_bad_counts_get_one_message(flag, value, message):
    with pytest.raises(tools.ConfigError, match=message):
        tools.make_config(['--configs', 'defaults', 'dmc2gym', f'--{flag}', value])


def test_full_disk_message_removes_the_partial_file(tmp_path, monkeypatch):
    import errno
    path = str(tmp_path / 'checkpoint.pt')
    real_open = open

    class Full:
        def __init__(self, *a, **k):
            self.f = real_open(*a, **k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[:10])
            raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr('builtins.open', Full)
    with pytest.raises(tools.ConfigError, match=r"No space left .* while writing checkpoint.pt \(0.0 MiB needed\)"):
        tools.atomic_write_bytes(path, np.zeros(100, np.uint8).tobytes())
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_eval_only_takes_the_task_from_the_checkpoint(finished_run, tmp_path):
    """No --task (the default is walker_walk), a run folder as --checkpoint: the cartpole policy is evaluated on
    cartpole, and the run says which settings it took. No --logdir: the evaluation goes to <run>/eval."""
    run = str(tmp_path / 'run')
    shutil.copytree(finished_run, run)
    proc = run_dreamer(['--configs', 'defaults', 'dmc2gym', '--mode', 'eval', '--checkpoint', run,
                        '--eval_episodes', '1', '--eval_videos', '0', '--threads', '1', '--tensorboard', 'False'])
    assert "from the checkpoint's config: task='dmc2gym_cartpole_balance'" in proc.stdout
    assert f"Evaluation of {os.path.join(run, 'checkpoint.pt')} on dmc2gym_cartpole_balance (" in proc.stdout
    out = os.path.join(run, 'eval')
    assert f'No --logdir given: writing the evaluation to {out}.' in proc.stdout
    result = json.load(open(os.path.join(out, 'eval_result.json')))
    assert result['task'] == 'dmc2gym_cartpole_balance' and len(result['returns']) == 1
    # a second evaluation without --logdir does not overwrite the first
    assert dreamer.default_eval_logdir(os.path.join(run, 'checkpoint.pt')) == out + '_2'
    os.makedirs(out + '_2')
    open(os.path.join(out + '_2', 'config.yaml'), 'w').close()
    assert dreamer.default_eval_logdir(os.path.join(run, 'checkpoint.pt')) == out + '_3'
    missing = run_dreamer(['--mode', 'eval', '--checkpoint', out, '--logdir', str(tmp_path / 'e2')], check=False)
    assert missing.returncode == 2 and 'has no checkpoint.pt' in missing.stderr and 'Traceback' not in missing.stderr


def test_help_lists_presets_and_every_key_with_its_comment():
    proc = subprocess.run([sys.executable, 'dreamer.py', '--help'], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0
    text = proc.stdout
    defaults = tools.load_presets()['defaults']
    for key, value in defaults.items():
        if isinstance(value, dict):
            assert all(f'--{key}.{sub} ' in text for sub in value)
        else:
            assert f'--{key} ' in text, key
    for preset in tools.load_presets():
        assert preset == 'defaults' or f'  {preset}: ' in text
    assert 'rerunning the same command resumes' in text            # a key's comment from configs.yaml
    assert '\nworld model:\n' in text and '\nenvironment:\n' in text  # grouped as in the file


def test_corrupt_checkpoints_get_one_message(tmp_path):
    import agents
    import models
    import torch
    bad = tmp_path / 'checkpoint.pt'
    bad.write_bytes(b'not a checkpoint')
    with pytest.raises(tools.ConfigError, match=r"Checkpoint '.*checkpoint.pt' is unreadable"):
        agents.read_checkpoint(str(bad))
    (tmp_path / 'encoder.pt').write_bytes(b'\x00' * 64)
    config = tools.make_config(['--configs', 'defaults', '--beta_vae', 'True'])
    with pytest.raises(tools.ConfigError, match=r"Pretrained checkpoint '.*encoder.pt' is unreadable"):
        models.load_checkpoint_part(str(tmp_path), 'encoder', torch.nn.Linear(2, 2), config)


def test_nan_online_update_stops_the_run_before_any_checkpoint(tmp_path):
    logdir = str(tmp_path / 'run')
    proc = run_dreamer(TINY + ['--logdir', logdir, '--steps', '400', '--model_lr', '1e9'], check=False)
    assert proc.returncode == 2 and 'Non-finite' in proc.stderr and 'Traceback' not in proc.stderr
    assert not os.path.exists(os.path.join(logdir, 'checkpoint.pt'))
    assert not os.path.exists(os.path.join(logdir, 'finished.json'))


def test_checkpoint_of_another_code_version_gets_one_message(tmp_path):
    """A checkpoint whose weights do not fit the agent this code builds (keys renamed by a code change) stops the
    resume with one message naming the mismatch, not a traceback."""
    import torch

    import agents
    config = tools.make_config(['--configs', 'defaults', 'dmc2gym', 'debug', '--device', 'cpu'])
    agent = agents.make_agent(config, 2)
    state = agent.state_dict()
    state['wm.old_buffer'] = torch.zeros(3)
    path = str(tmp_path / 'checkpoint.pt')
    torch.save(dict(agent=state, optimizers=agent.optimizer_state(), counters={}, rng=tools.rng_state()), path)
    with pytest.raises(tools.ConfigError, match=r"does not fit the agent this code builds .*wm.old_buffer.*another "
                                                r"version of the code"):
        agents.load_checkpoint(path, agent, None)


def test_run_written_before_the_mode_and_the_rename_still_resumes(tmp_path):
    """A pretraining run's config.yaml from older code (`mode: train` + the alias flag, `pretrain` under its old name)
    is the same run as today's command; a real change is still caught."""
    import dreamer
    argv = ['--configs', 'defaults', 'dmc2gym', '--beta_vae_pretrain', 'True', '--beta_vae', 'True', '--logdir',
            str(tmp_path)]
    old = tools.make_config(argv).to_dict()
    old['mode'] = 'train'
    old['pretrain'] = old.pop('prefill_updates')
    tools.save_config(tools.Config(old), str(tmp_path / 'config.yaml'))
    assert dreamer.run_changes(str(tmp_path), tools.make_config(argv)) == ([], {})
    assert dreamer.run_changes(str(tmp_path), tools.make_config(argv + ['--mode', 'video_pretrain'])) == ([], {})
    conflicts, _ = dreamer.run_changes(str(tmp_path), tools.make_config(argv + ['--prefill_updates', '3']))
    assert conflicts == ["  --prefill_updates: the run has 100, this command 3"]


def test_run_written_before_opt_eps_keras_is_not_switched_to_it_by_a_preset(tmp_path):
    """A run whose config.yaml predates --opt_eps_keras trained with torch's epsilon; resuming it with a preset that
    now sets the key True is a conflict to resolve on the command line, not a silent change mid-run."""
    import dreamer
    argv = ['--configs', 'defaults', 'dmc2gym', 'dreamerv2_official', 'dreamerv2_official_training', '--logdir',
            str(tmp_path)]
    old = tools.make_config(argv + ['--opt_eps_keras', 'False']).to_dict()
    del old['opt_eps_keras']
    tools.save_config(tools.Config(old), str(tmp_path / 'config.yaml'))
    conflicts, _ = dreamer.run_changes(str(tmp_path), tools.make_config(argv))
    assert conflicts == ["  --opt_eps_keras: the run has False, this command True"]
    assert dreamer.run_changes(str(tmp_path), tools.make_config(argv + ['--opt_eps_keras', 'False'])) == ([], {})
