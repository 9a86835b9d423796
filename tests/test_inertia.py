"""`--legacy_inertia`: MuJoCo < 2.1.1's capsule masses and inertias (env/inertia.py) on real dm_control models."""
import os

os.environ.setdefault('MUJOCO_GL', 'egl')  # before dm_control / mujoco are imported

import types  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import env  # noqa: E402
from env import inertia  # noqa: E402


def grid_inertia(inside, half_extent, step):
    """Mass (density 1000) and principal moments about the origin of the solid `inside(x, y, z)` by the midpoint rule
    on a cubic grid: the slow obvious version of a geom's formula."""
    axis = lambda h: np.arange(-h + step / 2, h, step)
    x, y, z = np.meshgrid(axis(half_extent[0]), axis(half_extent[1]), axis(half_extent[2]), indexing='ij')
    keep = inside(x, y, z)
    x, y, z = x[keep], y[keep], z[keep]
    cell = 1000.0 * step ** 3
    return cell * keep.sum(), cell * np.array([(y * y + z * z).sum(), (x * x + z * z).sum(), (x * x + y * y).sum()])


@pytest.mark.parametrize('legacy', [False, True])
def test_capsule_formulas_against_integrating_the_solid(legacy):
    """The exact capsule (points within r of its axis segment) and the old stand-in (a cylinder reaching r/2 past
    each end of the segment), integrated on a grid, against `geom_inertia` (finger_spin's spinner capsules)."""
    r, h = 0.04, 0.09
    if legacy:
        inside = lambda x, y, z: (x * x + y * y <= r * r) & (np.abs(z) <= h + r / 2)
    else:
        inside = lambda x, y, z: x * x + y * y + (np.abs(z) - np.minimum(np.abs(z), h)) ** 2 <= r * r
    mass, moments = grid_inertia(inside, (r, r, h + r), r / 60)
    theirs = inertia.geom_inertia(inertia.CAPSULE, [r, h, 0], np.nan, 1000.0, legacy)
    np.testing.assert_allclose(theirs[0], mass, rtol=2e-3)
    np.testing.assert_allclose(theirs[1], moments, rtol=3e-3)
    # a mass set in the XML keeps the mass and only redistributes it
    fixed = inertia.geom_inertia(inertia.CAPSULE, [r, h, 0], 0.5, 1000.0, legacy)
    np.testing.assert_allclose(fixed[0], 0.5)
    np.testing.assert_allclose(fixed[1], theirs[1] * 0.5 / theirs[0], rtol=1e-12)


@pytest.mark.parametrize('domain, task', [('cartpole', 'balance'), ('finger', 'spin'), ('cheetah', 'run'),
                                          ('walker', 'walk'), ('reacher', 'easy'), ('ball_in_cup', 'catch')])
def test_exact_rule_reproduces_mujocos_own_bodies(domain, task):
    """With today's capsule rule the recomputation gives every body's mass, centre of mass and inertia tensor as
    MuJoCo compiled them (boxes, spheres, cylinders, explicit masses and cheetah's settotalmass included), so the
    legacy values differ from MuJoCo's by the capsule rule alone."""
    from dm_control import suite
    model = suite.load(domain, task).physics.model.ptr
    ours = inertia.body_inertials(model, inertia.model_spec(domain), legacy=False)
    compiled = inertia.compiled_inertials(model)
    assert set(ours) == set(compiled)
    for body, (mass, com, tensor) in ours.items():
        np.testing.assert_allclose(mass, compiled[body][0], rtol=1e-12)
        np.testing.assert_allclose(com, compiled[body][1], atol=1e-12)
        np.testing.assert_allclose(tensor, compiled[body][2], rtol=1e-10, atol=1e-14)


def test_finger_spin_env_with_legacy_inertia():
    """The env's physics carries the old spinner (mass and moment about the hinge), MuJoCo's derived constants follow
    it (dof_M0 of the hinge), the default env keeps today's model, and the two simulate differently."""
    from env.dmc import DMCEnv
    config = lambda legacy: types.SimpleNamespace(size=[64, 64], camera=None, color=None, legacy_inertia=legacy)
    today, old = DMCEnv('finger_spin', config(False), 0, 'clean'), DMCEnv('finger_spin', config(True), 0, 'clean')
    hinge = lambda e: e.physics.model.name2id('hinge', 'joint')
    spinner = lambda e: e.physics.model.name2id('spinner', 'body')
    assert today.physics.model.body_mass[spinner(today)] == pytest.approx(2.458820, abs=1e-6)
    assert old.physics.model.body_mass[spinner(old)] == pytest.approx(2.324779, abs=1e-6)
    # the hinge turns about y through the spinner's centre of mass: its joint-space inertia is I_yy
    assert today.physics.model.dof_M0[hinge(today)] == pytest.approx(0.012704, abs=1e-6)
    assert old.physics.model.dof_M0[hinge(old)] == pytest.approx(0.010712, abs=1e-6)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (200, 2))
    speeds = []                                         # joint velocities after 200 steps
    for e in (today, old):
        e.reset()                                       # the same task seed: the same initial joint angles
        for action in actions:
            e.step(action)
        speeds.append(e.physics.data.qvel.copy())
    assert np.abs(speeds[0] - speeds[1]).max() > 0.03          # rad/s: the lighter links move otherwise
    for e in (today, old):
        e.close()


def test_legacy_inertia_errors():
    config = types.SimpleNamespace(action_repeat=2, time_limit=40, size=[64, 64], camera=None, color=None,
                                   release_compat=False, legacy_inertia=True)
    with pytest.raises(ValueError, match='dmc2gym tasks only'):
        env.make_env('gymnasium_Pusher-v5', config, 0, 'train')
    with pytest.raises(ValueError, match='one fixed XML'):
        env.make_env('dmc2gym_swimmer_swimmer6', config, 0, 'train')


def test_random_returns_script_and_env_agree_under_legacy_inertia():
    """scripts/random_returns.py (dm_control alone plus env/inertia.py) and the project's env earn the same rewards
    for the same actions with the old inertia; finger_spin's episode 1 earns reward only under it."""
    from helpers import load_script
    script = load_script('random_returns')
    theirs, _ = script.episode_rewards('finger_spin', 1, action_repeat=2, seed=0, steps=200, legacy_inertia=True)
    today, _ = script.episode_rewards('finger_spin', 1, action_repeat=2, seed=0, steps=200)
    assert sum(theirs) > 0 and sum(today) == 0
    config = types.SimpleNamespace(action_repeat=2, time_limit=400, size=[64, 64], camera=None, color=None,
                                   release_compat=False, legacy_inertia=True)
    environment = env.make_env('dmc2gym_finger_spin', config, 1, 'clean')
    rng = np.random.RandomState([0, 1])
    environment.reset()
    ours, done = [], False
    while not done:
        _, reward, done, _ = environment.step(rng.uniform(-1, 1, environment.action_size).astype(np.float32))
        ours.append(reward)
    environment.close()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)
