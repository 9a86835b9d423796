"""Experiment tooling (scripts/): sweep commands, aggregation and tables, plots and the HTML report.

No training: runs are synthetic metrics.jsonl / config.yaml files with known numbers, and the launchers start a stub
instead of dreamer.py.
"""
import csv
import json
import math
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, 'scripts')
sys.path.insert(0, SCRIPTS)

import experiments as ex  # noqa: E402
import plot  # noqa: E402
import report  # noqa: E402
import rundata  # noqa: E402
import sweep  # noqa: E402

STUB = """import sys
args = sys.argv[1:]
logdir = args[args.index('--logdir') + 1]
print('STUB', ' '.join(args))
sys.exit(3 if FAIL_IF in logdir else 0)
"""


# ----------------------------------------------------------------------------------------------------------- helpers
def write_run(root, task, method, seed, evals, metric='eval_return_average', config=True, partial=False,
              source='cheetah_run', steps=1_000_000, extra_config=''):
    """A run folder as dreamer.py leaves it: config.yaml + metrics.jsonl with one eval row per (step, value)."""
    path = os.path.join(root, task, method, f'seed_{seed}')
    os.makedirs(path, exist_ok=True)
    if config:
        env = ex.TASKS[task].env
        ckpt = f'runs/pretrain/{source}/seed_0' if ex.METHODS[method].pretrained else './checkpoints'
        with open(os.path.join(path, 'config.yaml'), 'w') as f:
            f.write(f'task: {env}\nmethod_name: {method}\nseed: {seed}\nsteps: {steps}\naction_repeat: 2\n'
                    f'color_distractor: true\nmode: train\nbeta_vae_pretrain: false\n'
                    f'pretrain_checkpoint_path: {ckpt}\n{extra_config}')
    with open(os.path.join(path, 'metrics.jsonl'), 'w') as f:
        for step, value in evals:
            f.write(json.dumps({'step': step, 'train_return': -1.0}) + '\n')   # a training row between evals
            f.write(json.dumps({'step': step, metric: value, 'eval_return_std': 1.0}) + '\n')
        if partial:
            f.write('{"step": 99999, "eval_return_aver')                          # a run still writing
    return path


def evals(final, n=12, last=3, every=10_000):
    """n evaluations; the last `last` are `final`, earlier ones far away (so the window matters)."""
    return [(every * (i + 1), final if i >= n - last else -1000.0) for i in range(n)]


@pytest.fixture(scope='module')
def synthetic(tmp_path_factory):
    """Walker Walk: DisWM seeds at 800/900/850 (mean 850, std 40.82), DreamerV2 one seed at 700 with a partial
    last line; Drawer Open: DisWM success 0.6/0.8 (70.0 ± 10.0 %); Hopper: an APV run with no evaluation yet."""
    root = str(tmp_path_factory.mktemp('runs'))
    for seed, final in enumerate((800.0, 900.0, 850.0)):
        write_run(root, 'walker_walk', 'diswm', seed, evals(final))
    write_run(root, 'walker_walk', 'dreamerv2', 0, evals(700.0), partial=True)
    for seed, final in enumerate((0.6, 0.8)):
        write_run(root, 'drawer_open', 'diswm', seed, evals(final), metric='eval_success_rate',
                  source='finger_spin')
    write_run(root, 'hopper_stand', 'apv', 0, [])
    return root


@pytest.fixture(scope='module')
def plotted(synthetic, tmp_path_factory):
    out = str(tmp_path_factory.mktemp('plots'))
    assert plot.main([synthetic, '--out', out, '--window', '3']) == 0
    return out


def dry_run(script, *args, env=None):
    """The commands a sweep shell script prints with --dry-run, each split into its arguments."""
    full_env = {k: v for k, v in os.environ.items() if k not in ('SEEDS', 'STEPS', 'PRESETS', 'EXTRA',
                                                                 'CUDA_VISIBLE_DEVICES')}
    full_env.update(env or {})
    result = subprocess.run(['bash', os.path.join(SCRIPTS, script), '--dry-run', *args], capture_output=True,
                            text=True, env=full_env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def flag(cmd, name):
    return cmd[cmd.index(name) + 1] if name in cmd else None


def by_logdir(cmds):
    return {flag(c, '--logdir'): c for c in cmds}


# ----------------------------------------------------------------------------------------------------------- reading
def test_partial_last_line_is_skipped(tmp_path):
    path = write_run(str(tmp_path), 'walker_walk', 'diswm', 0, [(10, 1.0), (20, 2.0)], partial=True)
    rows, bad = rundata.read_metrics(os.path.join(path, 'metrics.jsonl'))
    assert bad == 1 and len(rows) == 4
    assert rundata.series(rows, 'eval_return_average') == ([10, 20], [1.0, 2.0])


def test_resumed_run_keeps_the_later_row_of_a_repeated_step():
    rows = [{'step': 10, 'm': 1.0}, {'step': 20, 'm': 2.0}, {'step': 20, 'm': 5.0}, {'step': 30, 'm': float('nan')}]
    assert rundata.series(rows, 'm') == ([10, 20], [1.0, 5.0])


def test_task_method_seed_from_the_layout_without_config(tmp_path):
    path = write_run(str(tmp_path), 'pusher', 'apv', 4, [(10, -50.0)], config=False)
    run = rundata.describe(path)
    assert (run.kind, run.task, run.method, run.seed) == ('online', 'pusher', 'apv', 4)


def test_source_from_the_pretrain_checkpoint_path(synthetic):
    runs = {(r.task, r.method, r.seed): r for r in rundata.discover(synthetic)}
    assert runs['walker_walk', 'diswm', 0].source == 'cheetah_run'
    assert runs['drawer_open', 'diswm', 1].source == 'finger_spin'
    assert runs['walker_walk', 'dreamerv2', 0].source is None


# ----------------------------------------------------------------------------------------------------------- numbers
def test_aggregate_interpolates_onto_the_union_of_steps():
    steps, mean, std, n = plot.aggregate([([0, 10, 20], [0.0, 10.0, 40.0]), ([5, 15], [0.0, 20.0])])
    assert steps.tolist() == [0, 5, 10, 15, 20]
    assert n.tolist() == [1, 2, 2, 2, 1]
    # by hand: seed A at 5 -> 5, at 15 -> 25; seed B at 10 -> 10
    np.testing.assert_allclose(mean, [0, 2.5, 10, 22.5, 40])
    np.testing.assert_allclose(std, [0, 2.5, 0, 2.5, 0])


def test_final_values_mean_and_std_over_seeds(synthetic):
    rows = {(s.group.task, s.group.method): s for s in plot.summarise(plot.load_groups(synthetic), window=3)}
    diswm = rows['walker_walk', 'diswm']
    assert diswm.n == 3 and diswm.evals_used == 3 and diswm.last_step == 120_000
    assert diswm.mean == pytest.approx(850.0)
    assert diswm.std == pytest.approx(math.sqrt((50 ** 2 + 50 ** 2) / 3))   # ddof 0
    assert rows['walker_walk', 'dreamerv2'].n == 1 and rows['walker_walk', 'dreamerv2'].std == 0.0
    assert rows['drawer_open', 'diswm'].mean == pytest.approx(70.0)          # success rate in %
    assert rows['drawer_open', 'diswm'].std == pytest.approx(10.0)
    assert rows['hopper_stand', 'apv'].n == 0 and math.isnan(rows['hopper_stand', 'apv'].mean)
    # a wider window reaches the far-away earlier evaluations
    wide = {(s.group.task, s.group.method): s for s in plot.summarise(plot.load_groups(synthetic), window=4)}
    assert wide['walker_walk', 'diswm'].mean == pytest.approx((3 * 850 - 1000) / 4)


def test_markdown_and_csv_tables(plotted):
    md = open(os.path.join(plotted, 'final_results.md')).read()
    assert 'K = 3' in md
    assert '| Walker Walk | Cheetah Run | DisWM | 850.0 ± 40.8 | 3 | 3 | 120k | ≈915 (Fig. 4) |' in md
    assert '| Walker Walk | from scratch | DreamerV2 | 700.0 ± 0.0 | 1 |' in md
    assert '| Drawer Open (success %) | Finger Spin | DisWM | 70.0 ± 10.0 | 2 |' in md
    assert '70 ± 10 (Table B)' in md
    assert 'no eval yet' in md                                        # the APV run without evaluations
    assert 'TED ≈845 (Fig. 4)' in md and 'TD-MPC2 43 ± 25 (Table B)' in md
    with open(os.path.join(plotted, 'final_results.csv')) as f:
        rows = {(r['task'], r['method']): r for r in csv.DictReader(f)}
    assert float(rows['walker_walk', 'diswm']['mean']) == pytest.approx(850.0)
    assert float(rows['walker_walk', 'diswm']['std']) == pytest.approx(40.8248, abs=1e-3)
    assert rows['walker_walk', 'diswm']['seeds'] == '0 1 2'
    assert rows['walker_walk', 'diswm']['paper_mean'] == '915' and rows['walker_walk', 'diswm']['paper_approx'] == \
        'True'
    assert rows['drawer_open', 'diswm']['metric'] == 'eval_success_rate'
    assert (rows['drawer_open', 'diswm']['paper_mean'], rows['drawer_open', 'diswm']['paper_std']) == ('70', '10')
    assert rows['walker_walk', 'dreamerv2']['n_seeds'] == '1' and float(rows['walker_walk', 'dreamerv2']['std']) == 0


def test_plot_files_are_written(plotted):
    for name in ('curves.png', 'curves.pdf', 'curves.csv', 'final_results.md', 'final_results.csv'):
        assert os.path.getsize(os.path.join(plotted, name)) > 0, name
    with open(os.path.join(plotted, 'curves.png'), 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    with open(os.path.join(plotted, 'curves.pdf'), 'rb') as f:
        assert f.read(5) == b'%PDF-'


def test_plot_without_any_evaluation(tmp_path):
    write_run(str(tmp_path / 'runs'), 'walker_walk', 'diswm', 0, [])
    assert plot.main([str(tmp_path / 'runs'), '--out', str(tmp_path / 'out')]) == 0
    assert not os.path.exists(tmp_path / 'out' / 'curves.png')
    assert 'no eval yet' in (tmp_path / 'out' / 'final_results.md').read_text()


# ----------------------------------------------------------------------------------------------------------- sweeps
def test_fig4_dry_run_layout_seeds_and_flags():
    cmds = dry_run('finetune_fig4.sh', env={'SEEDS': '3 4'})
    assert len(cmds) == 6 * len(ex.ONLINE_METHODS) * 2
    runs = by_logdir(cmds)
    expected = {f'runs/{t}/{m}/seed_{s}' for _, t in ex.EXPERIMENTS['fig4'].pairs for m in ex.ONLINE_METHODS
                for s in (3, 4)}
    assert set(runs) == expected
    for logdir, cmd in runs.items():
        assert cmd[1] == os.path.join('dreamer.py') and cmd[cmd.index('--configs') + 1] == 'defaults'
        assert flag(cmd, '--seed') == logdir.rsplit('_', 1)[1]
        assert flag(cmd, '--method_name') == logdir.split('/')[2]
        assert flag(cmd, '--color_distractor') == 'True'
        assert '--device' not in cmd and '--steps' not in cmd
        assert flag(cmd, '--cross_domain') == ('True' if logdir.startswith('runs/pusher/') else None)
    diswm = runs['runs/walker_walk/diswm/seed_4']
    assert diswm[diswm.index('--configs'):diswm.index('--task')] == ['--configs', 'defaults', 'dmc2gym']
    assert [flag(diswm, k) for k in ('--task', '--beta_vae', '--traverse', '--distillation')] == [
        'dmc2gym_walker_walk', 'True', 'True', 'True']
    assert flag(diswm, '--pretrain_checkpoint_path') == 'runs/pretrain/cheetah_run/seed_0'
    assert flag(runs['runs/pusher/apv/seed_3'], '--pretrain_checkpoint_path') == 'runs/pretrain/reacher_easy/seed_0'
    assert flag(runs['runs/pusher/apv/seed_3'], '--pretrain_action_num') == '2'
    scratch = runs['runs/walker_walk/dreamerv2/seed_3']
    assert flag(scratch, '--beta_vae') == 'False' and '--pretrain_checkpoint_path' not in scratch
    assert flag(runs['runs/pusher/diswm/seed_3'], '--configs') == 'defaults' and 'gymnasium' in \
        runs['runs/pusher/diswm/seed_3']


@pytest.mark.parametrize('script,target,source_actions,gap', [
    ('finetune_fig4.sh', 'walker_walk', 6, 0), ('finetune_fig4.sh', 'cheetah_run', 2, 4),
    ('finetune_fig4.sh', 'hopper_stand', 6, 0), ('finetune_fig4.sh', 'reacher_easy', 2, 0),
    ('finetune_fig4.sh', 'cartpole_swingup', 2, 0), ('finetune_fig4.sh', 'pusher', 2, 5),
    ('finetune_tableA.sh', 'humanoid_walk', 6, 15)])
def test_dv2_finetune_union_action_space(script, target, source_actions, gap):
    cmd = by_logdir(dry_run(script, '--methods', 'dv2_finetune', '--seeds', '0'))[f'runs/{target}/dv2_finetune/seed_0']
    assert (flag(cmd, '--source_action_num'), flag(cmd, '--action_num_gap')) == (str(source_actions), str(gap))
    assert flag(cmd, '--pretrain_action_num') == str(source_actions)


def test_tables_a_b_presets_and_cross_domain():
    runs = by_logdir(dry_run('finetune_tableB.sh', '--seeds', '0'))
    assert sorted(runs) == [f'runs/{t}/{m}/seed_0' for t in ('drawer_close', 'drawer_open')
                            for m in ('diswm', 'dreamerv2')]      # the paper has no DV2 Finetune / APV there
    cmd = runs['runs/drawer_close/diswm/seed_0']
    assert 'metaworld' in cmd and flag(cmd, '--task') == 'metaworld_drawer-close-v1'
    assert flag(cmd, '--cross_domain') == 'True' and flag(cmd, '--color_distractor') == 'True'
    assert flag(cmd, '--pretrain_checkpoint_path') == 'runs/pretrain/finger_spin/seed_0'
    table_a = by_logdir(dry_run('finetune_tableA.sh', '--seeds', '0', '--methods', 'diswm'))
    assert set(table_a) == {'runs/cheetah_run/diswm/seed_0', 'runs/humanoid_walk/diswm/seed_0'}
    assert '--cross_domain' not in table_a['runs/humanoid_walk/diswm/seed_0']
    assert flag(table_a['runs/humanoid_walk/diswm/seed_0'], '--pretrain_checkpoint_path') == \
        'runs/pretrain/walker_walk/seed_0'


def test_pretrain_dry_run_exact_command():
    cmds = dry_run('pretrain_all.sh', '--preset', 'debug', env={'SEEDS': '1'})
    assert [flag(c, '--logdir') for c in cmds] == [f'runs/pretrain/{s}/seed_1' for s in
                                                   ('cheetah_run', 'finger_spin', 'reacher_easy', 'walker_walk')]
    assert shlex.join(cmds[0][1:]) == (
        'dreamer.py --configs defaults dmc2gym debug --task dmc2gym_cheetah_run --logdir runs/pretrain/cheetah_run/'
        'seed_1 --seed 1 --beta_vae_pretrain True --beta_vae True --pretrain_action_num 6 --pretrain_datasets_path '
        'data/cheetah_run/train_eps --progress False')


def test_debug_sweep_steps_gpu_extra_flags_and_filters():
    cmds = dry_run('finetune_fig4.sh', '--preset', 'debug', '--tasks', 'Pusher', 'walker_walk', '--methods',
                   'diswm,dreamerv2', '--extra', '--threads 1', '--', '--eval_episodes', '1',
                   env={'SEEDS': '0', 'STEPS': '2000', 'CUDA_VISIBLE_DEVICES': '0'})
    assert sorted(flag(c, '--logdir') for c in cmds) == ['runs/pusher/diswm/seed_0', 'runs/pusher/dreamerv2/seed_0',
                                                         'runs/walker_walk/diswm/seed_0',
                                                         'runs/walker_walk/dreamerv2/seed_0']
    for cmd in cmds:
        presets = cmd[cmd.index('--configs') + 1:cmd.index('--task')]
        assert presets[0] == 'defaults' and presets[-1] == 'debug'
        assert flag(cmd, '--steps') == '2000' and flag(cmd, '--device') == 'cuda'
        assert cmd[-4:] == ['--threads', '1', '--eval_episodes', '1']   # extra flags last, so they win


def test_pretrain_root_and_seed_overrides_and_dedup():
    runs = by_logdir(dry_run('finetune_fig4.sh', '--seeds', '2', '--methods', 'apv', '--tasks', 'cheetah_run',
                             '--root', 'out', '--pretrain-root', 'videos', '--pretrain-seed', 'same'))
    assert flag(runs['out/cheetah_run/apv/seed_2'], '--pretrain_checkpoint_path') == 'videos/reacher_easy/seed_2'
    args = sweep.parse_args(['all', '--seeds', '0'])
    logdirs = [r.logdir for r in sweep.build_runs(args)]
    assert len(logdirs) == len(set(logdirs))
    assert logdirs.count(os.path.join('runs', 'cheetah_run', 'diswm', 'seed_0')) == 1   # Fig. 4 and Table A share it
    assert [r.kind for r in sweep.build_runs(args)][:4] == ['pretrain'] * 4


def test_eval_sweep_evaluates_each_checkpoint_with_the_same_flags():
    train = by_logdir(dry_run('finetune_tableB.sh', '--seeds', '0', '--methods', 'diswm'))
    evals = by_logdir(dry_run('finetune_tableB.sh', '--seeds', '0', '--methods', 'diswm', '--eval'))
    assert set(evals) == {f'{d}/eval' for d in train}
    cmd = evals['runs/drawer_open/diswm/seed_0/eval']
    assert (flag(cmd, '--mode'), flag(cmd, '--checkpoint')) == ('eval', 'runs/drawer_open/diswm/seed_0/checkpoint.pt')
    strip = lambda c: [a for i, a in enumerate(c) if not (c[i - 1] in ('--logdir', '--mode', '--checkpoint') or
                                                          a in ('--logdir', '--mode', '--checkpoint'))]
    assert strip(cmd) == strip(train['runs/drawer_open/diswm/seed_0'])


def test_sweep_rejects_unknown_names():
    for bad in (['fig4', '--methods', 'dreamer'], ['fig4', '--tasks', 'walker_run'], ['fig5']):
        result = subprocess.run([sys.executable, os.path.join(SCRIPTS, 'sweep.py'), *bad, '--dry-run'],
                                capture_output=True, text=True)
        assert result.returncode == 2 and 'choose from' in result.stderr, result.stderr


def test_every_sweep_command_resolves_in_dreamer_config():
    """Each command's flags and presets exist in configs.yaml and select the intended method."""
    import tools
    args = sweep.parse_args(['all', '--seeds', '0', '--preset', 'debug'])
    for run in sweep.build_runs(args):
        config = tools.make_config(run.cmd[2:])
        assert config.logdir == run.logdir
        if run.kind == 'online':
            assert config.method_name == run.logdir.split(os.sep)[-2]
            assert config.color_distractor and config.batch_size == 4   # debug preset applied
        if run.kind == 'teacher' or config.method_name == 'vid2act':
            assert list(config.source_tasks) == list(ex.VID2ACT_DMC_SOURCES)
            assert config.offline_dir == os.path.join('data', 'vid2act') and config.method_name == 'vid2act'
            assert bool(config.vid2act_pretrain) == (run.kind == 'teacher')
            assert config.teacher_checkpoint_path == (None if run.kind == 'teacher' else os.path.join(
                'runs', 'vid2act_teacher', run.logdir.split(os.sep)[1], 'seed_0'))
    kinds = [r.kind for r in sweep.build_runs(args)]
    assert kinds.count('teacher') == 2   # one per Quadruped target
    assert kinds.count('online') == 6 * 4 + (2 * 4 - 4) + 2 * 2 + 2 * 4   # Table A shares reacher_easy -> cheetah_run;
    #                                                                  Table B: DisWM and DreamerV2


# ----------------------------------------------------------------------------------------------------------- vid2act
VID2ACT_SOURCES = 'cheetah_run,hopper_stand,walker_walk,walker_run'


def test_vid2act_sources_and_targets_exist_in_env():
    from env.dmc import dmc_task_names
    names = set(dmc_task_names())
    stage = ex.EXPERIMENTS['vid2act_teacher']
    assert ','.join(stage.sources) == VID2ACT_SOURCES and set(stage.sources) <= names
    assert stage.kind == 'teacher' and ex.METHODS['vid2act'].teacher == 'vid2act_teacher'
    assert ex.teacher_owners('vid2act_teacher') == ['vid2act']
    for target in stage.targets:
        assert ex.TASKS[target].env == f'dmc2gym_{target}' and target in names and ex.TASKS[target].action_size == 12
    # every target of an experiment running a method with a teacher has a teacher
    for exp in ex.EXPERIMENTS.values():
        for method in exp.methods:
            if ex.METHODS[method].teacher:
                assert {t for _, t in exp.pairs} <= set(ex.EXPERIMENTS[ex.METHODS[method].teacher].targets)


def test_vid2act_sweep_dry_run_teachers_then_online_runs():
    cmds = dry_run('vid2act_sweep.sh', '--preset', 'debug', env={'SEEDS': '0 1'})
    logdirs = [flag(c, '--logdir') for c in cmds]
    teachers = [f'runs/vid2act_teacher/{t}/seed_{s}' for s in (0, 1) for t in ('quadruped_walk', 'quadruped_run')]
    assert logdirs[:4] == teachers                                    # every teacher before any online run
    assert set(logdirs[4:]) == {f'runs/{t}/{m}/seed_{s}' for t in ('quadruped_walk', 'quadruped_run')
                                for m in ('vid2act', 'dreamerv2', 'apv', 'diswm') for s in (0, 1)}
    assert len(logdirs) == len(set(logdirs)) == 4 + 16
    assert shlex.join(cmds[0][1:]) == (
        'dreamer.py --configs defaults dmc2gym debug --task dmc2gym_quadruped_walk --logdir '
        'runs/vid2act_teacher/quadruped_walk/seed_0 --seed 0 --method_name vid2act --vid2act_pretrain True '
        f'--source_tasks {VID2ACT_SOURCES} --offline_dir data/vid2act --progress False')
    runs = by_logdir(cmds)
    assert shlex.join(runs['runs/quadruped_run/vid2act/seed_1'][1:]) == (
        'dreamer.py --configs defaults dmc2gym debug --task dmc2gym_quadruped_run --logdir '
        'runs/quadruped_run/vid2act/seed_1 --seed 1 --method_name vid2act '
        f'--source_tasks {VID2ACT_SOURCES} --offline_dir data/vid2act '
        '--teacher_checkpoint_path runs/vid2act_teacher/quadruped_run/seed_0 --color_distractor True --progress False')
    for logdir, cmd in runs.items():
        presets = cmd[cmd.index('--configs') + 1:cmd.index('--task')]
        assert presets == ['defaults', 'dmc2gym', 'debug']
        assert flag(cmd, '--seed') == logdir.rsplit('_', 1)[1]
        if '/vid2act/' in logdir:   # online Vid2Act: the teacher of its own target, by default seed 0's
            target = logdir.split('/')[1]
            assert flag(cmd, '--teacher_checkpoint_path') == f'runs/vid2act_teacher/{target}/seed_0'
            assert flag(cmd, '--source_tasks') == VID2ACT_SOURCES and flag(cmd, '--offline_dir') == 'data/vid2act'
            assert flag(cmd, '--color_distractor') == 'True' and '--vid2act_pretrain' not in cmd
        elif not logdir.startswith('runs/vid2act_teacher/'):
            assert '--teacher_checkpoint_path' not in cmd and '--source_tasks' not in cmd
    assert flag(runs['runs/quadruped_walk/dreamerv2/seed_0'], '--beta_vae') == 'False'
    apv = runs['runs/quadruped_walk/apv/seed_1']
    assert (flag(apv, '--pretrain_checkpoint_path'), flag(apv, '--pretrain_action_num')) == (
        'runs/pretrain/walker_walk/seed_0', '6')


def test_vid2act_sweep_filters_and_overrides():
    # --methods without vid2act: no teachers; --tasks filters the teachers by target
    assert [flag(c, '--logdir') for c in dry_run('vid2act_sweep.sh', '--seeds', '0', '--methods', 'dreamerv2')] == [
        'runs/quadruped_walk/dreamerv2/seed_0', 'runs/quadruped_run/dreamerv2/seed_0']
    cmds = dry_run('vid2act_sweep.sh', '--seeds', '2', '--methods', 'vid2act', '--tasks', 'quadruped_run',
                   '--pretrain-seed', 'same', '--root', 'out', '--teacher-root', 'T', '--data-root', 'D',
                   '--pretrain-steps', '800', '--steps', '2000')
    teacher, online = cmds
    assert flag(teacher, '--logdir') == 'T/quadruped_run/seed_2' and flag(teacher, '--offline_dir') == 'D/vid2act'
    assert flag(teacher, '--pretrain_steps') == '800' and '--steps' not in teacher
    assert flag(online, '--logdir') == 'out/quadruped_run/vid2act/seed_2' and flag(online, '--steps') == '2000'
    assert flag(online, '--teacher_checkpoint_path') == 'T/quadruped_run/seed_2'
    assert flag(online, '--offline_dir') == 'D/vid2act' and '--pretrain_steps' not in online
    offline = dry_run('vid2act_sweep.sh', '--seeds', '0', '--methods', 'vid2act', '--offline-dir', 'E')
    assert {flag(c, '--offline_dir') for c in offline} == {'E'}
    evals = by_logdir(dry_run('vid2act_sweep.sh', '--seeds', '0', '--methods', 'vid2act', '--eval'))
    assert set(evals) == {'runs/quadruped_walk/vid2act/seed_0/eval', 'runs/quadruped_run/vid2act/seed_0/eval'}
    assert flag(evals['runs/quadruped_run/vid2act/seed_0/eval'], '--teacher_checkpoint_path') == \
        'runs/vid2act_teacher/quadruped_run/seed_0'


def test_vid2act_is_not_added_to_the_diswm_experiments():
    for script in ('finetune_fig4.sh', 'finetune_tableA.sh', 'finetune_tableB.sh'):
        assert not any(flag(c, '--method_name') == 'vid2act' for c in dry_run(script, '--seeds', '0'))
    result = subprocess.run([sys.executable, os.path.join(SCRIPTS, 'sweep.py'), 'fig4', '--methods', 'vid2act',
                             '--dry-run'], capture_output=True, text=True)
    assert result.returncode == 1 and 'vid2act runs in: vid2act' in result.stderr, result.stderr


ORDER_STUB = """import os, sys, time
args = sys.argv[1:]
logdir = args[args.index('--logdir') + 1]
if '--vid2act_pretrain' in args:
    time.sleep(0.3)   # a slow teacher: a run that loads it and started too early would be logged first
with open('order.txt', 'a') as f:
    f.write(logdir + '\\n')
print('STUB', ' '.join(args))
sys.exit(3 if 'vid2act_teacher/quadruped_run' in logdir else 0)
"""


def fake_offline_data(root, tasks=ex.VID2ACT_DMC_SOURCES):
    for task in tasks:
        os.makedirs(os.path.join(root, task, 'train_eps'), exist_ok=True)
        open(os.path.join(root, task, 'train_eps', 'ep_0.npz'), 'wb').close()


def test_local_launcher_runs_teachers_before_the_online_runs_that_load_them(tmp_path):
    entry = tmp_path / 'order_stub.py'
    entry.write_text(ORDER_STUB)
    fake_offline_data(str(tmp_path / 'data' / 'vid2act'))
    cmd = [sys.executable, os.path.join(SCRIPTS, 'sweep.py'), 'vid2act_teacher', 'vid2act', '--methods', 'vid2act',
           'dreamerv2', '--seeds', '0', '--root', 'r', '--jobs', '2', '--entry', str(entry)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr   # the quadruped_run teacher fails (exit 3)
    order = (tmp_path / 'order.txt').read_text().split()
    # every run but the one whose teacher failed ran once; the teachers' entries are written just before they exit,
    # so the Vid2Act run after its teacher's entry started after that teacher finished (the DreamerV2 runs load
    # nothing and may run beside the teachers)
    assert sorted(order) == sorted(['r/vid2act_teacher/quadruped_run/seed_0', 'r/vid2act_teacher/quadruped_walk/seed_0',
                                    'r/quadruped_walk/vid2act/seed_0', 'r/quadruped_walk/dreamerv2/seed_0',
                                    'r/quadruped_run/dreamerv2/seed_0'])
    assert order.index('r/vid2act_teacher/quadruped_walk/seed_0') < order.index('r/quadruped_walk/vid2act/seed_0')
    out = result.stdout
    assert 'FAILED (exit 3) r/vid2act_teacher/quadruped_run/seed_0' in out
    assert 'SKIPPED r/quadruped_run/vid2act/seed_0: its pretraining r/vid2act_teacher/quadruped_run/seed_0 did not ' \
           'finish' in out
    assert 'Summary: 4 of 6 runs exited 0.' in out
    log = (tmp_path / 'r' / 'quadruped_walk' / 'vid2act' / 'seed_0' / 'stdout.log').read_text()
    assert '--teacher_checkpoint_path r/vid2act_teacher/quadruped_walk/seed_0' in log
    # a finished teacher (updates = pretrain_steps // batch_size) is skipped and --status says so
    teacher = tmp_path / 'r' / 'vid2act_teacher' / 'quadruped_walk' / 'seed_0'
    (teacher / 'config.yaml').write_text('task: dmc2gym_quadruped_walk\nmethod_name: vid2act\nvid2act_pretrain: true\n'
                                         'pretrain_steps: 400\nbatch_size: 4\nseed: 0\n'
                                         f'source_tasks: [{VID2ACT_SOURCES}]\n')
    (teacher / 'metrics.jsonl').write_text('{"step": 100, "image_loss": 1.0}\n')
    status = subprocess.run(cmd[:4] + ['--tasks', 'quadruped_walk'] + cmd[4:] + ['--status'], capture_output=True,
                            text=True, cwd=tmp_path)
    assert 'done' in [line.split()[0] for line in status.stdout.splitlines() if 'vid2act_teacher' in line]
    run = rundata.describe(str(teacher))
    assert (run.kind, run.task, run.method, run.source) == ('teacher', 'quadruped_walk', 'vid2act', VID2ACT_SOURCES)
    assert run.target_steps == 100


def test_vid2act_missing_inputs_stop_the_launch(tmp_path):
    fake_offline_data(str(tmp_path / 'data' / 'vid2act'), ['cheetah_run', 'walker_walk'])
    base = [sys.executable, os.path.join(SCRIPTS, 'sweep.py'), '--methods', 'vid2act', '--seeds', '0', '--tasks',
            'quadruped_walk', '--entry', stub(tmp_path)]
    result = subprocess.run(base[:2] + ['vid2act_teacher', 'vid2act'] + base[2:], capture_output=True, text=True,
                            cwd=tmp_path)
    assert result.returncode == 2
    assert 'Vid2Act source datasets without .npz episodes in data/vid2act/: hopper_stand, walker_run' in result.stderr
    assert 'scripts/collect_vid2act_sources.sh' in result.stderr and 'teacher.pt' not in result.stderr
    fake_offline_data(str(tmp_path / 'data' / 'vid2act'))
    result = subprocess.run(base[:2] + ['vid2act'] + base[2:], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert 'Vid2Act teacher runs/vid2act_teacher/quadruped_walk/seed_0/teacher.pt not found' in result.stderr
    assert 'scripts/sweep.py vid2act_teacher --tasks quadruped_walk' in result.stderr
    assert 'source datasets' not in result.stderr


@pytest.fixture(scope='module')
def vid2act_runs(tmp_path_factory):
    """Quadruped Walk: Vid2Act seeds at 700/800 (750 ± 50), DreamerV2 at 300, and a Vid2Act teacher run."""
    root = str(tmp_path_factory.mktemp('vid2act_runs'))
    extra = f'source_tasks: [{VID2ACT_SOURCES}]\nteacher_checkpoint_path: runs/vid2act_teacher/quadruped_walk/seed_0\n'
    for seed, final in enumerate((700.0, 800.0)):
        write_run(root, 'quadruped_walk', 'vid2act', seed, evals(final), extra_config=extra)
    write_run(root, 'quadruped_walk', 'dreamerv2', 0, evals(300.0))
    teacher = os.path.join(root, 'vid2act_teacher', 'quadruped_walk', 'seed_0')
    os.makedirs(teacher)
    with open(os.path.join(teacher, 'config.yaml'), 'w') as f:
        f.write('task: dmc2gym_quadruped_walk\nmethod_name: vid2act\nvid2act_pretrain: true\nseed: 0\n'
                f'pretrain_steps: 400\nbatch_size: 4\nsource_tasks: [{VID2ACT_SOURCES}]\n')
    with open(os.path.join(teacher, 'metrics.jsonl'), 'w') as f:
        f.write(json.dumps({'step': 50, 'image_loss': 2.5, 'kl_loss': 1.0}) + '\n')
    return root


def test_plots_label_vid2act(vid2act_runs, tmp_path, monkeypatch):
    from matplotlib.figure import Figure
    legends = []
    original = Figure.legend

    def legend(self, *args, **kwargs):
        legends.extend((h.get_label(), h.get_color()) for h in kwargs.get('handles', []))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, 'legend', legend)
    out = str(tmp_path / 'plots')
    assert plot.main([vid2act_runs, '--out', out, '--window', '3']) == 0
    assert ('Vid2Act', 'tab:purple') in legends and ('DreamerV2', 'tab:orange') in legends
    groups = plot.load_groups(vid2act_runs)
    assert [(g.task, g.method, len(g.runs)) for g in groups] == [('quadruped_walk', 'dreamerv2', 1),
                                                                  ('quadruped_walk', 'vid2act', 2)]   # no teacher
    md = open(os.path.join(out, 'final_results.md')).read()
    assert ('| Quadruped Walk | teacher: Cheetah Run, Hopper Stand, Walker Walk, Walker Run | Vid2Act | 750.0 ± 50.0 '
            '| 2 | 3 | 120k |') in md
    with open(os.path.join(out, 'final_results.csv')) as f:
        rows = {r['method']: r for r in csv.DictReader(f)}
    assert rows['vid2act']['source'] == 'cheetah_run+hopper_stand+walker_walk+walker_run'
    assert float(rows['vid2act']['mean']) == pytest.approx(750.0) and rows['vid2act']['paper_mean'] == ''
    assert os.path.getsize(os.path.join(out, 'curves.png')) > 0
    page_path = tmp_path / 'report.html'
    assert report.main([vid2act_runs, '--out', str(page_path), '--plots', out, '--experiment', 'vid2act',
                        '--window', '3']) == 0
    page = page_path.read_text()
    assert '750.0 ± 50.0' in page and '<td>Vid2Act</td>' in page
    assert 'Cheetah Run, Hopper Stand, Walker Walk, Walker Run (teacher for Quadruped Walk)' in page
    assert '<td>teacher</td>' in page and '50 / 100' in page   # the teacher's updates / target in the inventory


# ----------------------------------------------------------------------------------------------------------- launchers
def stub(tmp_path, fail_if='NEVER'):
    path = tmp_path / 'stub.py'
    path.write_text(STUB.replace('FAIL_IF', repr(fail_if)))
    return str(path)


def test_local_launcher_logs_exit_codes_and_blocks_on_failed_pretraining(tmp_path):
    cmd = [sys.executable, os.path.join(SCRIPTS, 'sweep.py'), 'pretrain', 'fig4', '--tasks', 'reacher_easy',
           'finger_spin', '--methods', 'diswm', 'dreamerv2', '--seeds', '0', '1', '--root', 'r', '--jobs', '2',
           '--pretrain-seed', 'same', '--entry', stub(tmp_path, 'pretrain/finger_spin/seed_1'), '--no-checks']
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert 'FAILED (exit 3) r/pretrain/finger_spin/seed_1' in out
    assert 'Summary: 6 of 8 runs exited 0.' in out          # 4 pretraining (1 fails), 4 finetunes (1 not started)
    assert 'SKIPPED r/reacher_easy/diswm/seed_1: its pretraining r/pretrain/finger_spin/seed_1 did not finish' in out
    log = (tmp_path / 'r' / 'reacher_easy' / 'dreamerv2' / 'seed_1' / 'stdout.log').read_text()
    assert '--logdir r/reacher_easy/dreamerv2/seed_1' in log and log.count('STUB') == 1
    assert not (tmp_path / 'r' / 'reacher_easy' / 'diswm' / 'seed_1').exists()
    # a finished run is skipped on the next launch
    done = tmp_path / 'r' / 'reacher_easy' / 'dreamerv2' / 'seed_0'
    (done / 'config.yaml').write_text('steps: 1000\naction_repeat: 2\n')
    (done / 'metrics.jsonl').write_text('{"step": 1000, "eval_return_average": 5.0}\n')
    again = subprocess.run(cmd[:cmd.index('--tasks')] + ['--tasks', 'reacher_easy', '--methods', 'dreamerv2',
                                                          '--seeds', '0'] + cmd[cmd.index('--root'):],
                           capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 0 and 'Skipping 1 finished runs' in again.stdout
    assert 'Launching 1 runs' in again.stdout                # only the pretraining run of reacher_easy seed 0


def test_a_run_held_by_another_sweep_is_not_started_twice(tmp_path):
    logdir = tmp_path / 'r' / 'walker_walk' / 'dreamerv2' / 'seed_0'
    with sweep.run_lock(str(logdir)):
        result = subprocess.run([sys.executable, os.path.join(SCRIPTS, 'sweep.py'), 'fig4', '--tasks', 'walker_walk',
                                 '--methods', 'dreamerv2', '--seeds', '0', '--root', 'r', '--entry', stub(tmp_path)],
                                capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0 and 'Skipping 1 runs that another sweep or dreamer.py is running now' in result.stdout
    assert not (logdir / 'stdout.log').exists()
    assert not sweep.is_running(str(logdir))
    # dreamer.py started by hand holds <logdir>/.run.lock: the run counts as running too, until that process ends
    holder = subprocess.Popen([sys.executable, '-c', 'import fcntl, sys, time; f = open(sys.argv[1], "a"); '
                               'fcntl.flock(f, fcntl.LOCK_EX); print("locked", flush=True); time.sleep(60)',
                               str(logdir / '.run.lock')], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked'
        assert sweep.is_running(str(logdir))
    finally:
        holder.kill()
        holder.wait()
    assert not sweep.is_running(str(logdir))


def test_missing_inputs_stop_the_launch(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(SCRIPTS, 'sweep.py'), 'fig4', '--tasks', 'walker_walk',
                             '--methods', 'diswm', '--seeds', '0', '--entry', stub(tmp_path)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert 'runs/pretrain/cheetah_run/seed_0/encoder.pt not found' in result.stderr
    assert 'scripts/pretrain_all.sh --tasks cheetah_run' in result.stderr


def test_slurm_without_submitit_names_the_fix(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'submitit', None)     # import submitit -> ImportError
    with pytest.raises(SystemExit, match='pip install submitit'):
        sweep.main(['fig4', '--launcher', 'slurm', '--seeds', '0', '--no-checks', '--tasks', 'walker_walk',
                    '--root', '/nonexistent/runs'])


def test_slurm_launcher_through_submitit(tmp_path):
    pytest.importorskip('submitit')
    result = subprocess.run([sys.executable, os.path.join(SCRIPTS, 'sweep.py'), 'fig4', '--tasks', 'walker_walk',
                             '--methods', 'dreamerv2', '--seeds', '0', '--root', 'r', '--launcher', 'slurm',
                             '--gpus', '0', '--submitit-cluster', 'local', '--wait', '--entry', stub(tmp_path)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'Summary: 1 of 1 runs succeeded.' in result.stdout
    assert 'STUB' in (tmp_path / 'r' / 'walker_walk' / 'dreamerv2' / 'seed_0' / 'stdout.log').read_text()


# ----------------------------------------------------------------------------------------------------------- report
def test_report_is_self_contained_with_images_and_tables(synthetic, tmp_path):
    import imageio.v2 as imageio
    root = tmp_path / 'runs'
    import shutil
    shutil.copytree(synthetic, root)
    run = root / 'walker_walk' / 'diswm' / 'seed_0'
    (run / 'traversals').mkdir()
    for step in (10000, 20000):
        imageio.imwrite(run / 'traversals' / f'traverse_{step:08d}.png', np.full((64, 448, 3), step // 100, np.uint8))
    eval_dir = run / 'eval'
    (eval_dir / 'eval_videos').mkdir(parents=True)
    imageio.mimsave(eval_dir / 'eval_videos' / 'episode_00.gif', [np.zeros((64, 64, 3), np.uint8)] * 3,
                    duration=0.04, loop=0)
    (eval_dir / 'config.yaml').write_text('task: dmc2gym_walker_walk\nmethod_name: diswm\nmode: eval\nseed: 0\n')
    (eval_dir / 'eval_result.json').write_text(json.dumps(dict(task='dmc2gym_walker_walk', returns=[1, 3], mean=2.0,
                                                               std=1.0, success_rate=0.0, checkpoint='c.pt',
                                                               eval_sample=True)))
    (root / 'disentanglement').mkdir()
    (root / 'disentanglement' / 'cheetah.md').write_text('| model | D |\n|---|---|\n| DisWM | 0.613 |\n\n'
                                                         'Heat maps: [DisWM](importance_diswm.png)\n')
    imageio.imwrite(root / 'disentanglement' / 'importance_diswm.png', np.zeros((8, 8, 3), np.uint8))
    out = tmp_path / 'report.html'
    assert report.main([str(root), '--out', str(out), '--window', '3']) == 0
    page = out.read_text()
    assert page.startswith('<!DOCTYPE html>') and page.rstrip().endswith('</html>')
    assert page.count('data:image/png;base64,') == 3            # curves, the traversal, the linked heat map
    assert page.count('data:image/gif;base64,') == 1
    assert 'traverse_00020000.png' in page and 'traverse_00010000.png' not in page   # the latest only
    srcs = [part.split('"', 1)[0] for part in page.split('src="')[1:]]
    assert srcs and all(s.startswith('data:') for s in srcs)   # nothing loaded from disk
    assert '850.0 ± 40.8' in page and '≈915 (Fig. 4)' in page and '70.0 ± 10.0' in page
    assert '<td>0.613</td>' in page                             # the disentanglement table, as a table
    assert 'href="runs/disentanglement/importance_diswm.png"' in page   # the link still works beside the runs
    assert '2.0 ± 1.0 (sampled actions)' in page                # the eval-only run (--eval_sample True)
    assert 'K = 3' in page


def test_methods_are_declared_once():
    """`methods.py` is the one table: --method_name's choices and the release aliases (tools), the agent's parts
    (models) and the sweep's needs (experiments) all come from it."""
    import methods
    import tools
    assert tools.METHODS == methods.METHODS and set(ex.METHODS) == set(methods.METHODS)
    assert tools.METHOD_ALIASES == {'distillation': 'diswm', 'fine_tune': 'apv', 'naive_fine_tune': 'dv2_finetune'}
    assert {k for k, m in ex.METHODS.items() if m.pretrained} == {'diswm', 'dv2_finetune', 'apv'}
    assert {k for k, m in ex.METHODS.items() if m.union_actions} == {'dv2_finetune'}
    assert [k for k, m in ex.METHODS.items() if m.teacher] == [k for k, s in methods.METHOD_SPECS.items()
                                                               if s.own_teacher] == ['vid2act']
    assert 'torch' not in methods.__dict__


def test_local_launcher_starts_each_run_once_what_it_loads_has_finished(tmp_path, capsys):
    """Two slots: a run that loads nothing starts beside the pretraining (not after it), the run that loads the
    pretraining starts after it exited 0, and the run loading a failed pretraining never starts."""
    log = tmp_path / 'events.txt'

    def job(name, seconds=0.0, code=0, needs_file=None):
        script = (f'import os, sys, time; f = open({str(log)!r}, "a"); f.write("start {name}\\n"); f.flush(); '
                  + (f'assert os.path.exists({needs_file!r}); ' if needs_file else '')
                  + f'time.sleep({seconds}); '
                  + f'open(os.path.join({str(tmp_path / name)!r}, "encoder.pt"), "w").close(); '
                  + f'f.write("end {name}\\n"); sys.exit({code})')
        return [sys.executable, '-c', script]

    pre, bad = str(tmp_path / 'pre'), str(tmp_path / 'bad')
    runs = [sweep.Run(str(tmp_path / 'loads_pre'), job('loads_pre', needs_file=os.path.join(pre, 'encoder.pt')),
                      'online', needs=pre),
            sweep.Run(str(tmp_path / 'alone'), job('alone', 0.2), 'online'),
            sweep.Run(pre, job('pre', 1.5), 'pretrain'),
            sweep.Run(bad, job('bad', code=3), 'pretrain'),
            sweep.Run(str(tmp_path / 'loads_bad'), job('loads_bad'), 'online', needs=bad)]
    failed = sweep.launch_local(runs, 2, [])
    events = log.read_text().split('\n')
    assert failed == 2                                        # 'bad' exited 3, 'loads_bad' was not started
    assert 'start loads_bad' not in events and 'start loads_pre' in events
    assert events.index('start alone') < events.index('end pre')          # beside the pretraining
    assert events.index('end pre') < events.index('start loads_pre')      # after what it loads
    out = capsys.readouterr().out
    assert f'SKIPPED {tmp_path / "loads_bad"}: its pretraining {bad} did not finish' in out


def test_local_launcher_does_not_start_a_run_whose_pretraining_runs_elsewhere(tmp_path, capsys):
    """A run that loads a pretraining which another process is training now (its folder's lock is held) is not
    started on a half-trained model; the others run."""
    import fcntl
    pre = tmp_path / 'pre'
    pre.mkdir()
    started = tmp_path / 'started.txt'
    job = lambda name: [sys.executable, '-c', f'open({str(started)!r}, "a").write("{name}\\n")']  # noqa: E731
    runs = [sweep.Run(str(tmp_path / 'loads_pre'), job('loads_pre'), 'online', needs=str(pre)),
            sweep.Run(str(tmp_path / 'alone'), job('alone'), 'online')]
    with open(pre / '.run.lock', 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)            # dreamer.py's lock, as a running pretraining holds
        assert sweep.launch_local(runs, 2, []) == 1
    assert started.read_text().split() == ['alone']
    assert f'its pretraining {pre} is still running in another process' in capsys.readouterr().out
    assert sweep.launch_local(runs[:1], 2, []) == 0                  # once it has finished, the run starts
    assert started.read_text().split() == ['alone', 'loads_pre']
