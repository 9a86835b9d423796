"""End-to-end runs of dreamer.py in a subprocess on a real DMC task (debug preset, tiny budgets)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import run_dreamer as run, wait_until_stopped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ['--configs', 'defaults', 'dmc2gym', 'debug', '--task', 'dmc2gym_reacher_easy', '--prefill', '60',
        '--time_limit', '60', '--eval_every', '200', '--log_every', '100', '--eval_episodes', '1',
        '--batch_length', '8', '--pretrain', '2', '--progress', 'False', '--threads', '1']




def rows(logdir):
    with open(os.path.join(logdir, 'metrics.jsonl')) as f:
        return [json.loads(line) for line in f]


def test_smoke_run_writes_everything(tmp_path):
    logdir = str(tmp_path / 'run')
    proc = run(BASE + ['--logdir', logdir, '--steps', '400', '--color_distractor', 'True'])
    for name in ('config.yaml', 'metrics.jsonl', 'checkpoint.pt'):
        assert os.path.exists(os.path.join(logdir, name)), name
    train_eps = os.listdir(os.path.join(logdir, 'train_eps'))
    eval_eps = os.listdir(os.path.join(logdir, 'eval_eps'))
    assert len(train_eps) >= 6 and len(eval_eps) == 2          # 200 agent steps / 30; one eval episode x 2 evals
    data = np.load(os.path.join(logdir, 'train_eps', sorted(train_eps)[0]))
    assert data['image'].shape == (31, 64, 64, 3) and data['image'].dtype == np.uint8
    assert data['action'].shape == (31, 2) and data['is_first'][0] and not data['is_first'][1:].any()
    assert data['color'].shape[0] == 31
    r = rows(logdir)
    keys = set().union(*r)
    assert {'train_return', 'eval_return', 'eval_return_average', 'model_loss', 'image_loss', 'kl_loss',
            'actor_loss', 'critic_loss'} <= keys
    assert max(row['step'] for row in r) == 400               # logged steps are env steps
    assert any(row.get('distractor_switch') for row in r)
    assert 'Distractor switch at agent step 100' in proc.stdout  # half of 400 env steps / action repeat 2
    assert 'checkpoint:' in proc.stdout and logdir in proc.stdout
    # an evaluation-only run of that checkpoint (model settings come from the checkpoint itself)
    out = run(['--configs', 'defaults', 'dmc2gym', 'debug', '--task', 'dmc2gym_reacher_easy', '--mode', 'eval',
               '--checkpoint', os.path.join(logdir, 'checkpoint.pt'), '--eval_episodes', '2', '--time_limit', '40',
               '--logdir', str(tmp_path / 'eval'), '--eval_videos', '1', '--threads', '1'])
    assert 'episodes: return' in out.stdout and '±' in out.stdout
    assert os.listdir(tmp_path / 'eval' / 'eval_videos') == ['episode_00.gif']
    result = json.load(open(tmp_path / 'eval' / 'eval_result.json'))
    assert len(result['returns']) == 2 and result['eval_sample'] is False
    assert "the actor's mean action" in out.stdout
    # the same with actions sampled from the actor (--eval_sample True), said in the report and the result file
    out = run(['--configs', 'defaults', 'dmc2gym', 'debug', '--task', 'dmc2gym_reacher_easy', '--mode', 'eval',
               '--checkpoint', logdir, '--eval_episodes', '2', '--time_limit', '40', '--eval_sample', 'True',
               '--logdir', str(tmp_path / 'eval_sampled'), '--eval_videos', '0', '--threads', '1'])
    assert 'sampled actions' in out.stdout
    result = json.load(open(tmp_path / 'eval_sampled' / 'eval_result.json'))
    assert len(result['returns']) == 2 and result['eval_sample'] is True


def test_same_seed_same_numbers(tmp_path):
    args = BASE + ['--steps', '160', '--eval_every', '1000', '--seed', '7']
    a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
    run(args + ['--logdir', a])
    run(args + ['--logdir', b])
    first = lambda d: next(row for row in rows(d) if 'model_loss' in row)
    ra, rb = first(a), first(b)
    for key in ('model_loss', 'image_loss', 'kl_loss', 'actor_loss', 'critic_loss'):
        assert ra[key] == rb[key], key
    ea = sorted(os.listdir(os.path.join(a, 'train_eps')))
    eb = sorted(os.listdir(os.path.join(b, 'train_eps')))
    for fa, fb in zip(ea, eb):
        assert np.array_equal(np.load(os.path.join(a, 'train_eps', fa))['image'],
                              np.load(os.path.join(b, 'train_eps', fb))['image'])


def test_killed_run_resumes_without_losing_episodes(tmp_path):
    logdir = str(tmp_path / 'run')
    # A checkpoint at every finished episode: the kill then lands after a periodic one, not an evaluation's.
    args = BASE + ['--logdir', logdir, '--color_distractor', 'True', '--checkpoint_every', '0.001']
    env = dict(os.environ, MUJOCO_GL='egl', PYTHONUNBUFFERED='1')
    proc = subprocess.Popen([sys.executable, 'dreamer.py', *args, '--steps', '2000'], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = os.path.join(logdir, 'checkpoint.pt')
    deadline = time.time() + 240
    while not os.path.exists(ckpt) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert os.path.exists(ckpt), 'no checkpoint written'
    # A pause (Ctrl-Z / kill -TSTP) before the kill: the run stops, and once continued its clocks leave the pause out
    # and count it in time_paused, which the next checkpoint carries over the resume.
    proc.send_signal(signal.SIGTSTP)
    assert wait_until_stopped(proc.pid)
    time.sleep(2.0)
    proc.send_signal(signal.SIGCONT)
    continued = time.time()
    while os.path.getmtime(ckpt) < continued + 0.5 and time.time() < continued + 90 and proc.poll() is None:
        time.sleep(0.05)
    assert os.path.getmtime(ckpt) >= continued + 0.5, 'no checkpoint after the pause'
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = set(os.listdir(os.path.join(logdir, 'train_eps')))
    steps_before = sum(int(f.rsplit('-', 1)[1].split('.')[0]) for f in before)
    assert not [f for f in before if not f.endswith('.npz')]   # nothing half-written
    out = run(args + ['--steps', str(2 * steps_before * 2 + 120)])
    # A kill between an episode's file and the checkpoint that follows it leaves that episode newer than the
    # checkpoint: the resume sets it aside (its steps are not in the weights) and continues from the checkpoint.
    aside_dir = os.path.join(logdir, 'train_eps_after_checkpoint')
    aside = set(os.listdir(aside_dir)) if os.path.isdir(aside_dir) else set()
    assert aside <= before and len(aside) <= 1
    kept_steps = steps_before - sum(int(f.rsplit('-', 1)[1].split('.')[0]) for f in aside)
    assert f'Resuming from {ckpt}: agent step {kept_steps}' in out.stdout
    assert (f'{len(aside)} episode(s) finished after the last checkpoint' in out.stdout) == bool(aside)
    after = set(os.listdir(os.path.join(logdir, 'train_eps')))
    assert before - aside <= after and len(after) > len(before - aside)
    r = rows(logdir)
    steps = [row['step'] for row in r]
    assert max(steps) == 2 * steps_before * 2 + 120
    assert 'Prefilling' not in out.stdout                       # no second prefill on resume
    last = [row for row in r if 'time_paused' in row][-1]        # written by the resumed run
    assert last['time_paused'] >= 2.0 and last['time_env'] > 0 and last['time_update'] > 0
    # The update schedule's position is in the checkpoint: the resumed run updates on the same steps as one run
    # straight through. It used to restart counting at the checkpoint's step, which moved every later update one
    # or more steps on and lost the last one here (the run ends on a step an update falls on).
    end = 2 * steps_before * 2 + 128
    out = run(args + ['--steps', str(end)])
    straight = str(tmp_path / 'straight')
    run(BASE + ['--logdir', straight, '--color_distractor', 'True', '--steps', str(end)])
    done = [json.load(open(os.path.join(d, 'finished.json'))) for d in (logdir, straight)]
    assert done[0]['updates'] == done[1]['updates'] and done[0]['env_steps'] == done[1]['env_steps']


def test_user_errors_exit_cleanly(tmp_path):
    for args, needle in [(['--batch_sise', '8'], "batch_size"), (['--configs', 'defaults', 'dmc2gm'], 'dmc2gym'),
                         (['--task', 'dmc2gym_reacher_esy'], 'dmc2gym_reacher_easy'),
                         (['--task', 'atari_pong'], 'Unknown suite'), (['--seed', 'x'], 'expects a int')]:
        proc = run(args + ['--logdir', str(tmp_path / 'e')], check=False, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr
    blocker = tmp_path / 'file'
    blocker.write_text('x')
    proc = run(['--logdir', str(blocker / 'sub'), '--task', 'dmc2gym_reacher_easy'], check=False, timeout=60)
    assert proc.returncode == 2 and 'Cannot write to --logdir' in proc.stderr


def test_parallel_envs_switch_colours_in_every_worker(tmp_path):
    logdir = str(tmp_path / 'run')
    proc = run(BASE + ['--logdir', logdir, '--steps', '480', '--envs', '2', '--color_distractor', 'True',
                       '--eval_every', '480'])
    assert 'Distractor switch at agent step 120' in proc.stdout
    files = sorted(os.listdir(os.path.join(logdir, 'train_eps')))
    green = [np.load(os.path.join(logdir, 'train_eps', f))['color'][:, 1::3] for f in files]
    assert len(files) >= 7
    assert all((g <= 0.5 + 1e-6).all() for g in green[:2])      # both workers start on the train colours
    assert all((g >= 0.5 - 1e-6).all() for g in green[-2:])     # and both end on the test colours
    assert len(os.listdir(os.path.join(logdir, 'eval_eps'))) == 1


def test_switch_happens_during_prefill_too(tmp_path):
    logdir = str(tmp_path / 'run')
    proc = run(BASE + ['--logdir', logdir, '--steps', '200', '--prefill', '80', '--color_distractor', 'True',
                       '--eval_every', '200'])
    assert 'Distractor switch at agent step 50' in proc.stdout


def test_wandb_without_package_is_a_clear_error(tmp_path):
    import importlib.util
    if importlib.util.find_spec('wandb') is not None:
        pytest.skip('wandb is installed here')
    proc = run(BASE + ['--logdir', str(tmp_path / 'w'), '--wandb', 'True', '--steps', '100'], check=False, timeout=120)
    assert proc.returncode == 2 and 'pip install wandb' in proc.stderr and 'Traceback' not in proc.stderr
