"""Held-out factor recording (env/dmc.py, scripts/collect_videos.py --heldout True) and scripts/disentanglement.py, on
CPU with short reacher_easy episodes (time limit 60 env steps = 30 agent steps = 31 frames)."""
import csv
import json
import os

os.environ.setdefault('MUJOCO_GL', 'egl')  # before dm_control / mujoco are imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import env as envs  # noqa: E402
import replay as replay_lib  # noqa: E402
from helpers import load_script  # noqa: E402
import tools  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = 'dmc2gym_reacher_easy'
FRAMES = 31
# reacher: the floor (grid), the arm (self), the root and walls (decoration) and the target are on screen; the finger
# (effector) covers < 0.5 % of the 64x64 frame; the *_default / *_highlight / eye / site materials are never drawn.
VISIBLE = ['grid', 'self', 'decoration', 'target']


collect_videos = load_script('collect_videos')
disentanglement = load_script('disentanglement')


def make_config(time_limit=60):
    return tools.make_config(['--configs', 'defaults', 'dmc2gym', '--task', TASK, '--time_limit', str(time_limit),
                              '--progress', 'False'])


@pytest.fixture(scope='module')
def heldout(tmp_path_factory):
    """Six held-out episodes collected through the CLI entry point."""
    out = tmp_path_factory.mktemp('heldout') / 'eps'
    rc = collect_videos.main(['--task', TASK, '--policy', 'random', '--heldout', 'True', '--episodes', '6',
                              '--out', str(out), '--time_limit', '60', '--progress', 'False'])
    assert rc == 0
    return out


def test_heldout_collection_writes_the_factor_keys(heldout):
    paths = replay_lib.list_episodes(str(heldout))
    assert len(paths) == 6
    episodes = [replay_lib.load_episode(p) for p in paths]
    assert [str(e['colour_set']) for e in episodes] == ['train', 'test'] * 3
    assert [int(e['episode_seed']) for e in episodes] == [collect_videos.HELDOUT_SEED + i for i in range(6)]
    assert all(str(e['policy']) == 'random' for e in episodes)
    for ep in episodes:
        M = len(ep['material_names'])
        assert ep['image'].shape == (FRAMES, 64, 64, 3)
        assert ep['factor_color'].shape == (FRAMES, 3 * M) and ep['factor_color'].dtype == np.float32
        assert ep['factor_color_names'].tolist()[:3] == ['grid_r', 'grid_g', 'grid_b']
        assert ep['factor_state_names'].tolist() == ['shoulder_sin', 'shoulder_cos', 'wrist']
        assert ep['factor_state'].shape == (FRAMES, 3)
        np.testing.assert_allclose(ep['factor_state'][:, 0] ** 2 + ep['factor_state'][:, 1] ** 2, 1, atol=1e-5)
        assert ep['material_coverage'].shape == (FRAMES, M)
        assert ep['visible_materials'].tolist() == VISIBLE
        # the recorded material colours are the distractor state of the obs (same frame), inside the set's box
        np.testing.assert_array_equal(ep['factor_color'], ep['color'])
        base = np.array([0.7, 0.3, 0.5] if str(ep['colour_set']) == 'train' else [0.5, 0.7, 0.3])
        assert np.all(np.abs(ep['factor_color'].reshape(FRAMES, M, 3) - base) <= 0.2 + 1e-6)
    # distinct seeds: distinct targets / colours; a second collection into the same folder is refused
    assert not np.array_equal(episodes[0]['factor_color'][0], episodes[2]['factor_color'][0])
    assert collect_videos.main(['--task', TASK, '--heldout', 'True', '--episodes', '1', '--out', str(heldout),
                                '--time_limit', '20']) == 2
    summary = [json.loads(line) for line in open(heldout / 'collections.jsonl')][-1]
    assert summary['heldout'] and summary['colour_sets'] == ['train', 'test'] and summary['episodes'] == 6


def test_heldout_plan_halves_random_and_policy():
    plan = collect_videos.heldout_plan(8, ['train', 'test'], with_policy=True)
    assert [p['colour_set'] for p in plan] == ['train', 'test'] * 4
    assert [p['policy'] for p in plan] == ['random', 'random', 'checkpoint', 'checkpoint'] * 2
    assert all(p['policy'] == 'random' for p in collect_videos.heldout_plan(4, ['train', 'test'], False))


def test_visible_material_filter_on_a_real_episode():
    environment = envs.make_env(TASK, make_config(), 123, 'train')
    try:
        rec, factors = collect_videos.run_factor_episode(
            environment, tools_random_policy(environment.action_size), training=False)
        base = environment.unwrapped
        keys = collect_videos.factor_keys(base, factors)
    finally:
        environment.close()
    names = keys['material_names'].tolist()
    coverage = keys['material_coverage'].mean(0)
    assert keys['visible_materials'].tolist() == VISIBLE
    never = ['self_default', 'self_highlight', 'effector_default', 'effector_highlight', 'eye', 'target_default',
             'target_highlight', 'site']
    assert all(coverage[names.index(m)] == 0 for m in never)
    assert 0 < coverage[names.index('effector')] < collect_videos.MIN_COVERAGE  # on screen, but too small
    assert coverage[names.index('grid')] > 0.5 and coverage.sum() <= 1.0 + 1e-6
    # the scoring script keeps the same materials (RGB of each) plus the state
    data = dict(coverage=keys['material_coverage'].astype(float), material_names=names,
                color=keys['factor_color'].astype(float), state=keys['factor_state'].astype(float),
                color_names=keys['factor_color_names'].tolist(), state_names=keys['factor_state_names'].tolist())
    fac = disentanglement.select_factors(data, np.ones(len(rec.steps), bool), 0.005)
    assert fac['visible'] == VISIBLE
    assert fac['names'] == [f'{m}_{c}' for m in VISIBLE for c in 'rgb'] + ['shoulder_sin', 'shoulder_cos', 'wrist']
    assert fac['groups'] == ['colour'] * 12 + ['state'] * 3


def tools_random_policy(action_size):
    from env import driver
    return driver.random_policy(action_size, np.random.default_rng(0))


def test_recorded_colours_and_state_are_those_of_the_rendered_frame():
    """Re-renders every frame from the recorded physics state with the recorded material colours: the image must be
    the recorded one exactly, and the previous step's colours (a one-step offset) must not reproduce it."""
    environment = envs.make_env(TASK, make_config(20), 7, 'train')
    base = environment.unwrapped
    states, original = [], base.factors

    def spy(full=False):
        if full:
            states.append(base.physics.get_state().copy())
        return original(full)

    base.factors = spy
    try:
        rec, factors = collect_videos.run_factor_episode(
            environment, tools_random_policy(environment.action_size), training=False)
        images = [s['image'] for s in rec.steps]
        keys = collect_videos.factor_keys(base, factors)
        colors, qpos_names = keys['factor_color'], keys['factor_state_names'].tolist()
        assert len(states) == len(images) == len(colors) == 11
        rgba = base.physics.model.mat_rgba
        offset_errors = []
        for t in range(len(images)):
            base.physics.set_state(states[t])
            base.physics.forward()
            rgba[:, :3] = colors[t].reshape(-1, 3)
            np.testing.assert_array_equal(base.render(), images[t])
            qpos = base.physics.data.qpos
            np.testing.assert_allclose(keys['factor_state'][t], [np.sin(qpos[0]), np.cos(qpos[0]), qpos[1]],
                                       atol=1e-6)
            if t > 0:
                rgba[:, :3] = colors[t - 1].reshape(-1, 3)
                offset_errors.append(np.abs(base.render().astype(float) - images[t]).mean())
        assert qpos_names == ['shoulder_sin', 'shoulder_cos', 'wrist']
        assert min(offset_errors) > 1.0  # a one-step colour offset is visible in the pixels
    finally:
        environment.close()


def test_dmc_factors_stay_opt_in():
    """Normal training only reads `color`; the full factors need `full=True`."""
    environment = envs.make_env(TASK, make_config(20), 0, 'train')
    try:
        obs = environment.reset()
        assert set(environment.factors()) == {'color'}
        full = environment.unwrapped.factors(full=True)
        assert set(full) == {'color', 'material_rgb', 'state', 'material_coverage'}
        np.testing.assert_array_equal(full['color'], obs['color'])
        assert environment.unwrapped._seg_camera is not None
    finally:
        environment.close()


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    """A pretraining folder (models.save_video_model of an untrained WorldModel) and a DreamerV2-style run
    checkpoint (conv encoder, 1024-d embedding)."""
    import torch

    import models
    import networks

    root = tmp_path_factory.mktemp('ckpt')
    config = tools.make_config(['--configs', 'defaults', 'dmc2gym', '--task', TASK, '--beta_vae_pretrain', 'True',
                                '--beta_vae', 'True', '--pretrain_action_num', '2', '--device', 'cpu'])
    torch.manual_seed(1)
    wm = models.WorldModel(config, config.pretrain_action_num, models.METHOD_SPECS['pretrain'])
    models.save_video_model(str(root / 'pretrain'), wm, dict(z_dim=config.z_dim, updates=0, task=TASK))
    enc = networks.ConvEncoder(32)
    os.makedirs(root / 'dv2')
    torch.save({'agent': {f'wm.encoder.{k}': v for k, v in enc.state_dict().items()},
                'config': {'method_name': 'dreamerv2'}, 'counters': {'step': 0}}, root / 'dv2' / 'checkpoint.pt')
    return root


@pytest.mark.filterwarnings('ignore::sklearn.exceptions.ConvergenceWarning')  # Lasso on 64 frames
def test_script_end_to_end(heldout, checkpoints, tmp_path):
    out = tmp_path / 'report'
    rc = disentanglement.main(['--task', TASK, '--episodes', str(heldout), '--checkpoints',
                               str(checkpoints / 'pretrain'), str(checkpoints / 'dv2'), '--names', 'teacher', 'dv2',
                               '--out', str(out), '--bootstrap', '10', '--frames_per_episode', '16',
                               '--colour_set', 'all'])
    assert rc == 0
    rows = {r['encoder']: r for r in csv.DictReader(open(out / 'disentanglement.csv'))}
    assert list(rows) == ['oracle', 'shuffled', 'teacher', 'dv2 (PCA-20 of 1024-d)', 'random-init beta-VAE']
    oracle, shuffled = rows['oracle'], rows['shuffled']
    for key in ('D', 'C', 'I_lin'):
        assert float(oracle[key]) >= 0.95, (key, oracle[key])
    assert float(oracle['I_nl']) >= 0.6  # trees on 64 fit frames; >= 0.95 at the protocol's size (docs)
    assert float(oracle['D_grp']) >= 0.95 and float(oracle['D_lo']) <= float(oracle['D']) <= float(oracle['D_hi'])
    assert float(shuffled['I_lin']) <= 0.1
    assert int(oracle['n_factors']) == 15 and int(oracle['n_fit']) + int(oracle['n_test']) == 6 * 16
    assert float(rows['dv2 (PCA-20 of 1024-d)']['I_full']) >= 0 and rows['teacher']['I_full'] == ''
    assert int(rows['teacher']['latents']) == 20
    md = (out / 'disentanglement.md').read_text()
    for text in ('| oracle |', 'I_lin', 'D_grp', 'MIG_sup', 'grid', "'effector'", 'Per-factor test R^2'):
        assert text in md
    pngs = sorted(p.name for p in out.glob('importance_*.png'))
    assert len(pngs) == 5 and 'importance_all_oracle.png' in pngs


@pytest.mark.filterwarnings('ignore::sklearn.exceptions.ConvergenceWarning')
def test_script_blocks_per_colour_set_and_errors(heldout, tmp_path, capsys):
    out = tmp_path / 'each'
    assert disentanglement.main(['--task', TASK, '--episodes', str(heldout), '--out', str(out), '--colour_set',
                                 'each', '--bootstrap', '0', '--no-nonlinear', '--no-random-init',
                                 '--frames_per_episode', '16']) == 0
    rows = list(csv.DictReader(open(out / 'disentanglement.csv')))
    assert [(r['block'], r['encoder']) for r in rows] == [('test', 'oracle'), ('test', 'shuffled'),
                                                          ('train', 'oracle'), ('train', 'shuffled')]
    assert all(float(r['I_lin']) >= 0.95 for r in rows if r['encoder'] == 'oracle')
    # wrong task, episodes without factors, unknown checkpoint: one clear message each
    assert disentanglement.main(['--task', 'dmc2gym_walker_walk', '--episodes', str(heldout), '--out',
                                 str(out)]) == 2
    plain = tmp_path / 'plain'
    replay_lib.save_episode(str(plain), {'image': np.zeros((3, 64, 64, 3), np.uint8)})
    assert disentanglement.main(['--task', TASK, '--episodes', str(plain), '--out', str(out)]) == 2
    assert disentanglement.main(['--task', TASK, '--episodes', str(heldout), '--out', str(out), '--checkpoints',
                                 str(tmp_path / 'nothing')]) == 2
    err = capsys.readouterr().err
    assert 'not dmc2gym_walker_walk' in err and '--heldout True' in err and 'neither a pretraining folder' in err
