"""scripts/learning.py: the protocol's dreamer.py commands, and the table and plot read from metrics files and the
shipped published curves."""
import datetime
import time
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tools
from helpers import ROOT, load_script

learning = load_script('learning')


def resolved(cmd):
    """The config dreamer.py would resolve from a protocol command (everything after dreamer.py)."""
    i = next(i for i, part in enumerate(cmd) if part.endswith('dreamer.py'))
    return tools.make_config(cmd[i + 1:])


def test_protocol_command_resolves_to_the_official_schedule(tmp_path):
    args = learning.parse_args(['--tasks', 'finger_spin', '--seeds', '3', '--root', str(tmp_path), '--precision', '32',
                                '--steps', '20000', '--', '--compile', 'True'])
    cmd = learning.build_command('finger_spin', 3, args)
    config = resolved(cmd)
    assert config.task == 'dmc2gym_finger_spin' and config.method_name == 'dreamerv2'
    assert config.clean_render is True and config.color_distractor is False
    assert (config.batch_size, config.batch_length, config.train_every, config.train_steps) == (16, 50, 5, 1)
    assert (config.action_repeat, config.eval_every, config.eval_episodes) == (2, 10_000, 10)
    assert (config.steps, config.seed, config.precision, config.compile) == (20_000, 3, '32', True)
    assert config.logdir == os.path.join(str(tmp_path), 'finger_spin', 'seed_3')
    # Default model sizes: the protocol never touches an architecture key.
    defaults = tools.make_config(['--configs', 'defaults', 'dmc2gym'])
    for key in ('dyn_stoch', 'dyn_deter', 'dyn_hidden', 'dyn_cell', 'cnn_depth', 'units', 'actor_layers'):
        assert config[key] == defaults[key]
    assert learning.build_command('finger_spin', 3, args) == cmd  # the same command every time: reruns resume


def test_official_model_option_adds_the_official_dreamerv2_preset(tmp_path):
    args = learning.parse_args(['--model', 'official', '--tasks', 'cheetah_run', '--precision', 'bf16'])
    assert args.root == 'runs/learning_official' and args.out == args.root   # never mixed with the default model's runs
    args.root = str(tmp_path)
    config = resolved(learning.build_command('cheetah_run', 0, args))
    official = tools.make_config(['--configs', 'defaults', 'dmc2gym', 'dreamerv2_official'])
    for key in ('dyn_stoch', 'dyn_discrete', 'cnn_depth', 'reward_layers', 'value_layers', 'reward_scale',
                'weight_decay_step'):
        assert config[key] == official[key], key
    assert (config.dyn_discrete, config.cnn_depth, config.reward_scale) == (32, 48, 1.0)
    assert (config.batch_size, config.train_every, config.prefill, config.clean_render) == (16, 5, 1000, True)
    assert learning.parse_args([]).model == 'release'
    with pytest.raises(SystemExit):
        learning.parse_args(['--model', 'official', '--experiment', 'diswm'])


def test_official_all_option_adds_official_dreamerv2_training_to_its_model(tmp_path):
    """--model official_all: the official model plus official DreamerV2's initialisation, actor objective, replay
    sampling and Adam epsilon; nothing else of the protocol changes."""
    args = learning.parse_args(['--model', 'official_all', '--tasks', 'finger_spin', '--precision', 'bf16'])
    assert args.root == 'runs/learning_official_all'
    args.root = str(tmp_path)
    config = resolved(learning.build_command('finger_spin', 0, args))
    args.model = 'official'
    model_only = resolved(learning.build_command('finger_spin', 0, args))
    training = {'weight_init': 'glorot', 'actor_return_offset': 1, 'sample_within_episodes': True,
                'opt_eps_keras': True}
    assert {key: config[key] for key in training} == training
    assert {key: model_only[key] for key in training} == {'weight_init': 'torch', 'actor_return_offset': 0,
                                                          'sample_within_episodes': False, 'opt_eps_keras': False}
    differ = {key for key in config if config[key] != model_only[key]}
    assert differ == set(training)
    with pytest.raises(SystemExit):
        learning.parse_args(['--model', 'official_all', '--experiment', 'diswm'])


def test_auto_precision_is_bf16_only_for_cpu_runs_on_a_cpu_with_hardware_bf16(monkeypatch):
    import torch
    monkeypatch.setattr(tools, 'cpu_has_native_bf16', lambda: True)
    for gpu_visible, extra, want in [(False, [], 'bf16'), (True, [], '32'), (True, ['--device', 'cpu'], 'bf16'),
                                     (False, ['--device', 'cuda:1'], '32'), (True, ['--compile', 'True'], '32')]:
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: gpu_visible)
        assert learning.parse_args(['--precision', 'auto', '--', *extra]).precision == want, (gpu_visible, extra)
    monkeypatch.setattr(tools, 'cpu_has_native_bf16', lambda: False)
    assert learning.parse_args(['--precision', 'auto', '--', '--device', 'cpu']).precision == '32'


def test_default_protocol_covers_three_tasks_at_60k():
    args = learning.parse_args([])
    assert args.tasks == ['cartpole_balance', 'finger_spin', 'cheetah_run'] and args.steps == 60_000
    assert args.seeds == [0] and args.auto_precision               # bf16 on CPUs with hardware bf16 (two pairs)
    auto = learning.parse_args(['--', '--device', 'cpu']).precision
    assert auto == ('bf16' if tools.cpu_has_native_bf16() else '32')
    assert learning.parse_args(['--precision', 'bf16']).precision == 'bf16'
    with pytest.raises(SystemExit):
        learning.parse_args(['--tasks', 'no_such_task'])


def test_reference_data_matches_the_published_ranges():
    """The shipped curves give the issue's published min-max at 30k and 60k env steps."""
    reference = learning.load_reference()
    expected = {('cartpole_balance', 60_000): (483.6, 683.1), ('finger_spin', 60_000): (280.6, 414.4),
                ('cheetah_run', 60_000): (154.3, 359.9), ('cartpole_balance', 30_000): (281.4, 330.5),
                ('finger_spin', 30_000): (5.0, 86.9), ('cheetah_run', 30_000): (82.2, 160.0)}
    for (task, step), (low, high) in expected.items():
        lo, mean, hi = learning.reference_at(reference, task, step)
        assert (lo, hi) == (low, high)
        column = [seed[reference[task]['xs'].index(step)] for seed in reference[task]['seeds'].values()]
        assert mean == pytest.approx(np.mean(column)) and len(column) == 5
    assert learning.reference_at(reference, 'cartpole_balance', 10_000) is None
    with open(learning.REFERENCE) as f:
        assert 'danijar/dreamerv2' in json.load(f)['source']


def write_metrics(folder, rows):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'metrics.jsonl'), 'w') as f:
        for row in rows:
            f.write(json.dumps(row) + '\n')
        f.write('{"step": 7')  # a run still writing leaves a partial last line


def test_table_and_plot_from_metrics_files(tmp_path):
    root = str(tmp_path / 'runs')
    write_metrics(os.path.join(root, 'cartpole_balance', 'seed_0'), [
        {'step': 10_000, 'train_return': 100.0}, {'step': 10_000, 'eval_return': 150.0, 'eval_return_average': 150.0},
        {'step': 30_000, 'eval_return_average': 250.0}, {'step': 60_000, 'eval_return_average': 700.0}])
    write_metrics(os.path.join(root, 'cartpole_balance', 'seed_1'), [
        {'step': 30_000, 'eval_return_average': 350.0}, {'step': 60_000, 'eval_return_average': 500.0}])
    write_metrics(os.path.join(root, 'finger_spin', 'seed_0'), [{'step': 60_000, 'eval_return_average': 100.0}])
    args = learning.parse_args(['--root', root, '--seeds', '0,1', '--report_only'])
    assert learning.main(['--root', root, '--seeds', '0,1', '--report_only']) == 0
    text = open(os.path.join(args.out, 'learning_table.md')).read()
    windows_part, eval_part = text.split('## Evaluation return')
    assert windows_part.startswith('## Training return per 30k window')
    rows = {tuple(c.strip() for c in line.split('|')[1:3]): [c.strip() for c in line.split('|')[3:-1]]
            for line in eval_part.splitlines() if line.startswith('| ') and not line.startswith('| task')}
    assert rows[('cartpole_balance', '10k')] == ['150.0', '150.0', '–', '–', '–', '–']
    assert rows[('cartpole_balance', '30k')] == ['250.0, 350.0', '300.0', '281.4', '304.7', '330.5', 'inside']
    assert rows[('cartpole_balance', '60k')] == ['700.0, 500.0', '600.0', '483.6', '538.8', '683.1', 'inside']
    assert rows[('finger_spin', '60k')][1:] == ['100.0', '280.6', '324.0', '414.4', 'below']
    assert ('cheetah_run', '60k') not in rows
    # Only seed 0 of cartpole_balance logged a train return, at 10k: its first window is not complete (no row at 30k).
    assert '| cartpole_balance | 0-30k |' not in windows_part
    training = open(os.path.join(args.out, 'learning_training.md')).read().splitlines()
    assert training[0].startswith('| task | seed | env steps | train return | eval return | actor entropy |')
    assert training[2] == '| cartpole_balance | 0 | 10k | 100.0 | 150.0 | – | – | – | – | – | – | – |'
    assert training[3].startswith('| cartpole_balance | 0 | 30k | – | 250.0 |') and len(training) == 2 + 3 + 2 + 1
    png = os.path.join(args.out, 'learning_curves.png')
    assert open(png, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
    assert learning.is_finished(os.path.join(root, 'cartpole_balance', 'seed_0'), 60_000)
    assert not learning.is_finished(os.path.join(root, 'finger_spin', 'seed_1'), 60_000)


def dreamer_rows(episode_returns, log_every=2500, episode_steps=1000, counter=True):
    """Metrics rows as dreamer.py logs them: every `log_every` env steps, the mean return of the training episodes
    that ended since the last row (an episode ending on the row's step included) and the episode counter."""
    ends = np.arange(1, len(episode_returns) + 1) * episode_steps
    rows = []
    for step in range(log_every, int(ends[-1]) + 1, log_every):
        ended = (ends > step - log_every) & (ends <= step)
        row = {'step': step, 'train_return': float(np.mean(np.asarray(episode_returns)[ended]))}
        if counter:
            row['episodes'] = int((ends <= step).sum())
        rows.append(row)
    return rows


def test_train_windows_are_the_mean_of_the_episodes_that_ended_in_each_window():
    """The published curves' statistic: per 30k env steps, the plain mean of the training episodes that ended in
    the window, recovered from rows that average 2 or 3 episodes each; an incomplete window is left out."""
    rng = np.random.default_rng(0)
    returns = rng.uniform(0, 800, size=70)            # 70 episodes of 1000 env steps: windows to 60k, part of 90k
    rows = dreamer_rows(returns)
    assert [r['step'] for r in rows][:3] == [2500, 5000, 7500] and rows[0]['episodes'] == 2
    windows = learning.train_windows(rows)
    assert sorted(windows) == [30_000, 60_000]
    for end in (30_000, 60_000):
        ended = returns[(end - 30_000) // 1000:end // 1000]  # episodes ending at (end - 30k, end]
        assert windows[end][0] == pytest.approx(ended.mean()) and windows[end][1] == 30
    # A resumed run logs some steps again: the later rows win. Rows without the episode counter count once each.
    replaced = rows[:12] + [dict(r, train_return=r['train_return'] + 1000) for r in rows[8:12]] + rows[12:]
    again = learning.train_windows(replaced)
    assert again[60_000] == windows[60_000] and again[30_000][0] > windows[30_000][0]
    plain = learning.train_windows(dreamer_rows(returns, counter=False))
    assert plain[30_000][1] == 12 and plain[30_000][0] == pytest.approx(
        np.mean([r['train_return'] for r in rows if r['step'] <= 30_000]))


def test_window_table_puts_the_windows_against_the_published_values(tmp_path):
    root = str(tmp_path / 'runs')
    write_metrics(os.path.join(root, 'cheetah_run', 'seed_0'),
                  dreamer_rows([100.0] * 30 + [300.0] * 30) + [{'step': 60_000, 'eval_return_average': 50.0}])
    assert learning.main(['--root', root, '--tasks', 'cheetah_run', '--report_only']) == 0
    text = open(os.path.join(root, 'learning_table.md')).read()
    assert '| cheetah_run | 0-30k | 100.0 | 100.0 | 82.2 | 108.8 | 160.0 | inside |' in text
    assert '| cheetah_run | 30-60k | 300.0 | 300.0 | 154.3 | 253.6 | 359.9 | inside |' in text
    assert '| cheetah_run | 60k | 50.0 | 50.0 | 154.3 | 253.6 | 359.9 | below |' in text


def test_compare_puts_the_same_runs_of_two_roots_side_by_side(tmp_path, capsys):
    """--compare: per task, seed and evaluation, both runs' returns (mean ± episode std), their difference and the
    published seeds' spread; runs named by their precision; seeds with one side only are left out."""
    fp32, bf16 = str(tmp_path / 'fp32'), str(tmp_path / 'bf16')
    for root, precision, returns in ((fp32, "'32'", (300.0, 420.0, 600.0)), (bf16, 'bf16', (None, 400.0, 350.0))):
        folder = os.path.join(root, 'cartpole_balance', 'seed_0')
        rows = [{'step': s, 'eval_return_average': r, 'eval_return_std': r / 10}
                for s, r in zip((10_000, 30_000, 60_000), returns) if r is not None]
        episode_return = 200.0 if root == fp32 else 260.0
        write_metrics(folder, rows + dreamer_rows([episode_return] * (60 if root == fp32 else 45)))
        with open(os.path.join(folder, 'config.yaml'), 'w') as f:
            f.write(f'precision: {precision}\nseed: 0\n')
    write_metrics(os.path.join(fp32, 'finger_spin', 'seed_0'), [{'step': 30_000, 'eval_return_average': 9.0}])
    out = str(tmp_path / 'out')
    assert learning.main(['--root', fp32, '--compare', bf16, '--report_only', '--out', out]) == 0
    windows, evaluations = open(os.path.join(out, 'compare_table.md')).read().split('## Evaluation return')
    # The published curves' statistic first: the mean training return per 30k window (bf16 has none at 60k).
    assert windows.splitlines()[2] == ('| task | seed | window (env steps) | fp32 | bf16 | bf16 − fp32 | '
                                       'published spread (max − min) | within it |')
    assert windows.splitlines()[4:] == ['| cartpole_balance | 0 | 0-30k | 200.0 | 260.0 | +60.0 | 49.1 | no |',
                                        '| cartpole_balance | 0 | 30-60k | 200.0 | – | – | 199.5 | – |', '']
    lines = evaluations.splitlines()[2:]
    assert lines[0] == ('| task | seed | env steps | fp32 | bf16 | bf16 − fp32 | published spread (max − min) | '
                        'within it |')
    cells = [[c.strip() for c in line.split('|')[1:-1]] for line in lines[2:]]
    assert cells == [['cartpole_balance', '0', '10k', '300.0 ± 30.0', '–', '–', '–', '–'],
                     ['cartpole_balance', '0', '30k', '420.0 ± 42.0', '400.0 ± 40.0', '-20.0', '49.1', 'yes'],
                     ['cartpole_balance', '0', '60k', '600.0 ± 60.0', '350.0 ± 35.0', '-250.0', '199.5', 'no']]
    assert open(os.path.join(out, 'compare_curves.png'), 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
    capsys.readouterr()
    assert learning.main(['--root', fp32, '--compare', str(tmp_path / 'none'), '--report_only', '--out', out]) == 1
    assert 'no task and seed has evaluations under both' in capsys.readouterr().out


def test_compare_three_roots_names_runs_of_one_precision_by_their_root(tmp_path):
    """--compare A,B: one column and one difference from the first run per compared root; two runs of the same
    precision are told apart by their results folder; "within it" gives one verdict per difference."""
    roots = {name: str(tmp_path / name) for name in ('fp32', 'old', 'new')}
    for name, precision, returns in (('fp32', "'32'", (420.0, 600.0)), ('old', 'bf16', (300.0, 350.0)),
                                     ('new', 'bf16', (400.0, None))):
        folder = os.path.join(roots[name], 'cartpole_balance', 'seed_0')
        write_metrics(folder, [{'step': s, 'eval_return_average': r, 'eval_return_std': 10.0}
                               for s, r in zip((30_000, 60_000), returns) if r is not None])
        with open(os.path.join(folder, 'config.yaml'), 'w') as f:
            f.write(f'precision: {precision}\nseed: 0\n')
    out = str(tmp_path / 'out')
    assert learning.main(['--root', roots['fp32'], '--compare', f"{roots['old']},{roots['new']}", '--report_only',
                          '--tasks', 'cartpole_balance', '--out', out]) == 0
    lines = open(os.path.join(out, 'compare_table.md')).read().splitlines()
    old, new = f"bf16 ({roots['old']})", f"bf16 ({roots['new']})"
    assert lines[0] == (f'| task | seed | env steps | fp32 | {old} | {new} | {old} − fp32 | {new} − fp32 | '
                        'published spread (max − min) | within it |')
    assert lines[1].count('|') == lines[0].count('|')
    cells = [[c.strip() for c in line.split('|')[1:-1]] for line in lines[2:]]
    assert cells == [['cartpole_balance', '0', '30k', '420.0 ± 10.0', '300.0 ± 10.0', '400.0 ± 10.0', '-120.0',
                      '-20.0', '49.1', 'no / yes'],
                     ['cartpole_balance', '0', '60k', '600.0 ± 10.0', '350.0 ± 10.0', '–', '-250.0', '–', '199.5',
                      'no / –']]


def test_report_without_runs_says_so(tmp_path, capsys):
    assert learning.main(['--root', str(tmp_path), '--report_only']) == 1
    assert 'No evaluations yet' in capsys.readouterr().out


def test_diswm_experiment_stages(tmp_path):
    """Videos from the finger_spin protocol run's checkpoint, a shortened stage 1, then DisWM and DreamerV2 under the
    colour distractor with the protocol's schedule; DisWM loads the stage-1 model it just trained."""
    root = str(tmp_path)
    args = learning.parse_args(['--experiment', 'diswm', '--root', root, '--pretrain_updates', '500',
                                '--video_episodes', '7'])
    stages = learning.diswm_stages(args, seed=2)
    assert [name for name, _, _ in stages] == ['videos', 'pretrain', 'diswm', 'dreamerv2']
    videos, pretrain = stages[0][1], stages[1][1]
    collect = stages[0][2]
    assert collect[collect.index('--policy') + 1] == os.path.join(root, 'finger_spin', 'seed_2', 'checkpoint.pt')
    assert collect[collect.index('--episodes') + 1] == '7' and collect[collect.index('--out') + 1] == videos
    stage1 = resolved(stages[1][2])
    assert stage1.beta_vae_pretrain and stage1.pretrain_datasets_path == videos and stage1.logdir == pretrain
    assert stage1.pretrain_steps // stage1.batch_size == 500 and stage1.pretrain_action_num == 2
    diswm, dreamerv2 = resolved(stages[2][2]), resolved(stages[3][2])
    assert diswm.method_name == 'diswm' and diswm.beta_vae and diswm.pretrain_checkpoint_path == pretrain
    assert dreamerv2.method_name == 'dreamerv2' and not dreamerv2.beta_vae
    for config in (diswm, dreamerv2):
        assert config.task == 'dmc2gym_cartpole_balance' and config.color_distractor and not config.clean_render
        assert (config.batch_size, config.train_every, config.steps, config.seed) == (16, 5, 60_000, 2)
    assert not learning.stage_done('pretrain', pretrain, args)
    os.makedirs(pretrain)
    with open(os.path.join(pretrain, 'meta.json'), 'w') as f:
        json.dump({'updates': 500}, f)
    assert learning.stage_done('pretrain', pretrain, args)
    # Without the source run's checkpoint nothing starts, and the message names the command that makes it.
    assert learning.main(['--experiment', 'diswm', '--root', root]) == 2


def test_diswm_videos_from_another_policy(tmp_path, capsys):
    """--video_policy: random actions or any checkpoint collect the videos instead of the finger_spin protocol run;
    a checkpoint that does not exist stops before anything runs."""
    root = str(tmp_path)
    for policy in ('random', str(tmp_path / 'other' / 'checkpoint.pt')):
        args = learning.parse_args(['--experiment', 'diswm', '--root', root, '--video_policy', policy])
        collect = learning.diswm_stages(args, seed=0)[0][2]
        assert collect[collect.index('--policy') + 1] == policy
    assert learning.main(['--experiment', 'diswm', '--root', root]) == 2
    assert '--video_policy random' in capsys.readouterr().out
    assert learning.main(['--experiment', 'diswm', '--root', root, '--video_policy', str(tmp_path / 'no.pt')]) == 2
    assert 'no such checkpoint' in capsys.readouterr().out
    # random needs no checkpoint: the dry run prints the four stages' commands
    assert learning.main(['--experiment', 'diswm', '--root', root, '--video_policy', 'random', '--dry_run']) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and '--policy random' in printed[0]


def test_diswm_report_reads_distillation_terms(tmp_path):
    root = str(tmp_path)
    base = os.path.join(root, 'diswm', 'cartpole_balance')
    write_metrics(os.path.join(base, 'diswm', 'seed_0'), [
        {'step': 10_000, 'distill_loss': 2.0, 'distill_eta': 0.1, 'train_return': 50.0},
        {'step': 10_000, 'eval_return_average': 120.0}])
    write_metrics(os.path.join(base, 'dreamerv2', 'seed_0'), [{'step': 2_500, 'train_return': 40.0},
                                                              {'step': 10_000, 'eval_return_average': 90.0}])
    assert learning.main(['--experiment', 'diswm', '--root', root, '--report_only']) == 0
    text = open(os.path.join(root, 'diswm_table.md')).read()
    # side by side: seed, env steps, eval (diswm, dreamerv2), train (diswm, dreamerv2), distill_loss, distill_eta
    assert text.splitlines()[0] == ('| seed | env steps | diswm eval | dreamerv2 eval | diswm train | dreamerv2 train '
                                    '| distill_loss | distill_eta |')
    assert '| 0 | 10k | 120 | 90 | 50 | – | 2 | 0.1 |' in text
    assert '| 0 | 2.5k | – | – | – | 40 | – | – |' in text             # training-log steps between evaluations
    assert len(text.splitlines()) == 4
    assert open(os.path.join(root, 'diswm_curves.png'), 'rb').read(4) == b'\x89PNG'


def test_jobs_run_unfinished_runs_at_once_with_their_output_in_the_run_folder(tmp_path, capsys):
    """--jobs 2: the unfinished runs start together (each writes its start time, then waits until both started or
    5 s pass), their output lands in <run>/stdout.log, finished runs are skipped, a failure is reported."""
    assert learning.parse_args(['--jobs', '2', '--threads', '3']).threads == 3
    cores = len(os.sched_getaffinity(0))
    assert learning.parse_args(['--jobs', '2']).threads == max(1, cores // 2)
    assert learning.parse_args([]).threads == cores
    with pytest.raises(SystemExit):
        learning.parse_args(['--jobs', '0'])
    args = learning.parse_args(['--jobs', '2', '--root', str(tmp_path)])
    wait_for_both = (
        "import glob, os, sys, time; d = sys.argv[1]; open(os.path.join(d, 'started'), 'w').close(); t = time.time()\n"
        "while len(glob.glob(os.path.join(os.path.dirname(d), '*', 'started'))) < 2 and time.time() - t < 5:\n"
        "    time.sleep(0.05)\n"
        "print('both' if len(glob.glob(os.path.join(os.path.dirname(d), '*', 'started'))) == 2 else 'alone')\n"
        "sys.exit(int(sys.argv[2]))")
    folders = [str(tmp_path / name) for name in ('a', 'b', 'c')]
    stages = [(f'run {i}', lambda i=i: i == 2, [sys.executable, '-c', wait_for_both, folder, str(code)], folder,
               'online', None) for i, (folder, code) in enumerate(zip(folders, (0, 3, 0)))]
    busy = str(tmp_path / 'busy')                                       # a run another process trains now
    os.makedirs(busy)
    holder = subprocess.Popen([sys.executable, '-c', 'import fcntl, sys, time; f = open(sys.argv[1], "a"); '
                               'fcntl.flock(f, fcntl.LOCK_EX); print("locked", flush=True); time.sleep(60)',
                               os.path.join(busy, '.run.lock')], stdout=subprocess.PIPE, text=True)
    stages.append(('run busy', lambda: False, [sys.executable, '-c', 'raise SystemExit(5)'], busy, 'online', None))
    try:
        assert holder.stdout.readline().strip() == 'locked'
        assert learning.launch(stages, args) == 1                      # run b exited 3
    finally:
        holder.kill()
        holder.wait()
    assert not os.path.exists(os.path.join(busy, 'stdout.log'))
    for folder in folders[:2]:
        assert open(os.path.join(folder, 'stdout.log')).read().strip().endswith('both')
    assert not os.path.exists(folders[2])                               # done: not started
    out = capsys.readouterr().out
    assert 'run 2: done; skipped.' in out and 'FAILED (exit 3)' in out
    assert 'run busy: another process is training it now; skipped.' in out


def time_stamp(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).strftime('%Y%m%dT%H%M%S%f')


def test_status_reads_steps_returns_and_pace_from_the_run_folder(tmp_path, capsys):
    """Env steps from the episodes on disk (names carry their length), the pace from their timestamps after the
    prefill (5 episodes 10 minutes apart -> 10 min per 1000 env steps), the state from the run lock."""
    import fcntl
    import replay
    root = str(tmp_path)
    run = learning.run_dir(root, 'cartpole_balance', 0)
    write_metrics(run, [{'step': 2500, 'train_return': 100.0}, {'step': 5000, 'train_return': 150.0},
                        {'step': 5000, 'eval_return_average': 210.0}])
    with open(os.path.join(run, 'config.yaml'), 'w') as f:
        f.write('action_repeat: 2\nprefill: 1000\nsteps: 60000\n')
    # 2 prefill episodes written a second apart, then 5 trained ones 10 minutes apart (500 agent steps each)
    times = [0, 1] + [1 + 600 * k for k in range(1, 6)]
    for t in times:
        replay.save_episode(os.path.join(run, 'train_eps'), {'image': np.zeros((501, 1, 1, 1), np.uint8)})
    names = sorted(os.listdir(os.path.join(run, 'train_eps')))
    for name, t in zip(names, times):   # give them the timestamps wanted, keeping replay's name format
        stamp = time_stamp(1_800_000_000 + t)
        os.rename(os.path.join(run, 'train_eps', name), os.path.join(run, 'train_eps', f'{stamp}-{name.split("-", 1)[1]}'))
    status = learning.run_status(run, 60_000)
    assert status['state'] == 'stopped' and status['env_steps'] == 7 * 1000
    assert status['eval'] == (5000, 210.0) and status['train'] == (5000, 150.0)
    assert status['minutes_per_1k'] == pytest.approx(10.0, abs=1e-3)
    assert status['hours_left'] == pytest.approx(53 * 10 / 60, abs=1e-3)
    with open(os.path.join(run, '.run.lock'), 'a') as lock:    # dreamer.py holds it while training
        fcntl.flock(lock, fcntl.LOCK_EX)
        assert learning.run_status(run, 60_000)['state'] == 'running'   # (a second open file: flock conflicts)
    assert learning.run_status(run, 60_000)['state'] == 'stopped'
    assert learning.run_status(learning.run_dir(root, 'finger_spin', 0), 60_000) == \
        dict(state='not started', env_steps=0)
    assert learning.main(['--status', '--root', root]) == 0
    out = capsys.readouterr().out
    assert 'stopped' in out and '7000 / 60000' in out and '210.0 @5k' in out and '10.0' in out and '8.8 h' in out
    assert 'not started' in out
    assert 'window' not in status                                  # no 30k window complete yet
    write_metrics(run, dreamer_rows([100.0] * 30 + [250.0] * 32))    # two windows complete, a third begun
    assert learning.run_status(run, 60_000)['window'] == (60_000, 250.0)
    assert learning.main(['--status', '--root', root]) == 0
    assert '250.0 @30-60k' in capsys.readouterr().out


def test_status_without_the_yaml_package_is_an_error_not_a_fresh_run(tmp_path, monkeypatch):
    """A run folder's config.yaml is read with ruamel.yaml: without the package (scripts run outside the project's
    environment) the status must fail with the missing module, not report a started run as 'not started'."""
    rundata = load_script('rundata')
    (tmp_path / 'config.yaml').write_text('task: dmc2gym_cartpole_balance\naction_repeat: 2\n')
    assert rundata.read_config(str(tmp_path))['action_repeat'] == 2
    monkeypatch.setitem(sys.modules, 'ruamel', None)      # `import ruamel...` now raises ImportError
    monkeypatch.setitem(sys.modules, 'ruamel.yaml', None)
    with pytest.raises(ImportError, match='requirements.txt'):
        rundata.read_config(str(tmp_path))
    (tmp_path / 'config.yaml').unlink()
    assert rundata.read_config(str(tmp_path)) == {}      # no config.yaml: not started, with or without the package


def test_status_piped_into_head_ends_quietly(tmp_path):
    """`learning.py --status | head -1`: a reader that left ends the command without a traceback."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'scripts', 'learning.py')
    proc = subprocess.Popen([sys.executable, script, '--status', '--root', str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()             # the reader is gone before the first line (the script takes ~1 s to import)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1 and 'Traceback' not in err and 'BrokenPipe' not in err, err


@pytest.fixture
def saved_figures(monkeypatch) -> list:
    """The matplotlib figures the code under test saves, in order (they are still written to their files)."""
    import matplotlib
    matplotlib.use('Agg')
    from matplotlib.figure import Figure
    saved, savefig = [], Figure.savefig
    monkeypatch.setattr(Figure, 'savefig', lambda self, *a, **k: (saved.append(self), savefig(self, *a, **k))[1])
    return saved


def test_plot_gives_a_seed_one_colour_and_lists_every_seed(tmp_path, saved_figures):
    """A seed has the same colour in every panel, and a seed that only a later panel has gets a legend there."""
    found = {'cartpole_balance': {0: ([10_000, 20_000], [1.0, 2.0])},
             'cheetah_run': {0: ([10_000], [2.0]), 1: ([10_000], [3.0])},
             'finger_spin': {1: ([10_000], [4.0])}}
    windows = {'cheetah_run': {1: {30_000: (150.0, 30), 60_000: (250.0, 30)}}}
    learning.plot(found, {}, str(tmp_path / 'curves.png'), 60_000, windows)
    axes = saved_figures[0].axes
    colours = {ax.get_title(): {line.get_label(): line.get_color() for line in ax.get_lines()} for ax in axes}
    seed0, seed1 = 'seed 0: evaluation', 'seed 1: evaluation'
    assert colours['cartpole_balance'][seed0] == colours['cheetah_run'][seed0] != colours['cheetah_run'][seed1]
    assert colours['cheetah_run'][seed1] == colours['finger_spin'][seed1]
    # The window means: open squares at the windows' ends, in their seed's colour.
    square = next(line for line in axes[1].get_lines() if line.get_label() == 'seed 1: train return, 30k window')
    assert list(square.get_xdata()) == [30_000, 60_000] and list(square.get_ydata()) == [150.0, 250.0]
    assert square.get_marker() == 's' and square.get_color() == colours['cheetah_run'][seed1]
    assert [ax.get_legend() is not None for ax in axes] == [True, True, False]
    assert (tmp_path / 'curves.png').exists()


def test_compare_plot_keeps_a_runs_colour_where_the_first_root_has_no_run(tmp_path, saved_figures):
    """--compare: a compared run has one colour in every panel, also in a panel (task, seed) that the first root has
    no run for, and each panel names its seed."""
    curve = {30_000: (100.0, 5.0), 60_000: (200.0, None)}
    found = [('cheetah_run', 0, [('new', curve), ('old', curve), ('other', curve)]),
             ('cheetah_run', 1, [('old', curve), ('other', curve)])]
    learning.compare_plot(found, {}, str(tmp_path / 'compare.png'), 60_000)
    colours = {ax.get_title(): {bars.get_label(): bars.lines[0].get_color() for bars in ax.containers}
               for ax in saved_figures[0].axes}
    first, second = colours['cheetah_run, seed 0'], colours['cheetah_run, seed 1']
    assert len(set(first.values())) == 3
    assert second == {'old, seed 1': first['old, seed 0'], 'other, seed 1': first['other, seed 0']}
    assert (tmp_path / 'compare.png').exists()


@pytest.mark.parametrize('jobs', [1, 2])
def test_sigterm_to_the_protocol_stops_its_runs(tmp_path, jobs):
    """`kill` / `timeout` / a scheduler's SIGTERM to scripts/learning.py (one run at a time, or several through the
    sweep launcher) stops the dreamer.py runs it started, instead of leaving them training as orphans that hold
    their run folders' locks; it exits 130 and says how to resume."""
    import signal
    import textwrap
    pid_files = [str(tmp_path / f'child_{i}.pid') for i in range(jobs)]
    launcher = textwrap.dedent(f'''
        import os, sys, time
        sys.path.insert(0, {os.path.join(ROOT, 'scripts')!r})
        import learning, sweep
        sweep.interrupt_on_sigterm()                     # what learning.py's __main__ does
        child = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
        pid_files = {pid_files!r}
        stages = [(f'run {{i}}', lambda: False, [sys.executable, '-c', child, path], os.path.join({str(tmp_path)!r},
                   f'run_{{i}}'), 'online', None) for i, path in enumerate(pid_files)]
        args = learning.parse_args(['--jobs', '{jobs}', '--root', {str(tmp_path)!r}])
        sys.exit(learning.launch(stages, args))
        ''')
    proc = subprocess.Popen([sys.executable, '-c', launcher], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    while not all(os.path.exists(p) and open(p).read() for p in pid_files) and time.time() < deadline:
        time.sleep(0.05)
    children = [int(open(p).read()) for p in pid_files]
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    for pid in children:                  # reaped by the launcher: no such process any more
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert err.count('Interrupted: stopped') == jobs and 'resume' in err


def test_auto_precision_keeps_the_precision_a_run_was_started_with(tmp_path, monkeypatch):
    """A run folder that already holds a run resumes in its recorded precision under `--precision auto` (another
    machine, or a changed default, must not switch it halfway); an explicit --precision is taken as asked."""
    monkeypatch.setattr(tools, 'cpu_has_native_bf16', lambda: True)
    started = tmp_path / 'cartpole_balance' / 'seed_0'
    started.mkdir(parents=True)
    (started / 'config.yaml').write_text("precision: '32'\nseed: 0\n")
    args = learning.parse_args(['--root', str(tmp_path), '--', '--device', 'cpu'])
    assert args.precision == 'bf16'
    assert resolved(learning.build_command('cartpole_balance', 0, args)).precision == '32'   # resumes in fp32
    assert resolved(learning.build_command('cartpole_balance', 1, args)).precision == 'bf16'  # a new run
    explicit = learning.parse_args(['--root', str(tmp_path), '--precision', 'bf16', '--', '--device', 'cpu'])
    assert resolved(learning.build_command('cartpole_balance', 0, explicit)).precision == 'bf16'


def test_compare_labels_name_the_runs_and_bad_labels_are_refused(tmp_path, capsys):
    """--labels: the given names head the columns and the differences (in --root, --compare order) instead of the
    precisions and folders; a wrong count, a repeated name or --labels without --compare is one clear error."""
    roots = {name: str(tmp_path / name) for name in ('a', 'b', 'c')}
    for name, returns in (('a', (420.0, 600.0)), ('b', (300.0, 350.0)), ('c', (400.0, 500.0))):
        folder = os.path.join(roots[name], 'cartpole_balance', 'seed_0')
        write_metrics(folder, [{'step': s, 'eval_return_average': r, 'eval_return_std': 10.0}
                               for s, r in zip((30_000, 60_000), returns)])
        with open(os.path.join(folder, 'config.yaml'), 'w') as f:
            f.write('precision: bf16\nseed: 0\n')
    out = str(tmp_path / 'out')
    compare = f"{roots['b']},{roots['c']}"
    assert learning.main(['--root', roots['a'], '--compare', compare, '--labels', 'torch init, glorot,official',
                          '--report_only', '--tasks', 'cartpole_balance', '--out', out]) == 0
    lines = open(os.path.join(out, 'compare_table.md')).read().splitlines()
    assert lines[0] == ('| task | seed | env steps | torch init | glorot | official | glorot − torch init | '
                        'official − torch init | published spread (max − min) | within it |')
    assert [c.strip() for c in lines[3].split('|')[1:-1]][3:8] == ['600.0 ± 10.0', '350.0 ± 10.0', '500.0 ± 10.0',
                                                                   '-250.0', '-100.0']
    assert open(os.path.join(out, 'compare_curves.png'), 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
    for bad, message in ((['--compare', compare, '--labels', 'x,y'], '--labels needs 3 distinct non-empty names'),
                         (['--compare', compare, '--labels', 'x,y,x'], '--labels needs 3 distinct'),
                         (['--labels', 'x,y'], 'give --compare too')):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            learning.main(['--root', roots['a'], '--report_only', '--out', out] + bad)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
