"""Pusher-v5 and DrawerWorld (Meta-World drawer) envs: base envs directly, then through `env.make_env`.

CPU only. Renders are the slow part (~30 ms Pusher, ~60-100 ms Meta-World per frame), so episodes are short and
most checks step the base envs without rendering.
"""
import os

os.environ.setdefault('MUJOCO_GL', 'egl')

from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from distracting_control import color_boxes  # noqa: E402
from env import make_env  # noqa: E402
from env.drawerworld import TEXTURES, DrawerEnv, make_texture  # noqa: E402
from env.pusher import PusherEnv  # noqa: E402

PUSHER = 'gymnasium_Pusher-v5'
DRAWER_OPEN = 'metaworld_drawer-open-v1'
COLOR = {'train_base': [0.7, 0.3, 0.5], 'test_base': [0.5, 0.7, 0.3], 'max_delta': 0.2, 'step_std': 0.1}
BOXES = color_boxes(COLOR)


def make_config(**overrides):
    values = dict(size=[64, 64], camera=None, color=dict(COLOR), action_repeat=2, time_limit=100,
                  release_compat=False)
    values.update(overrides)
    return SimpleNamespace(**values)


def image_distance(a, b):
    """Mean absolute pixel difference on the 0-255 scale."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def scripted_policy(task):
    from metaworld.policies import SawyerDrawerCloseV3Policy, SawyerDrawerOpenV3Policy
    return SawyerDrawerOpenV3Policy() if 'open' in task else SawyerDrawerCloseV3Policy()


@pytest.fixture
def closing():
    """Collects envs and closes them after the test, so EGL contexts do not pile up."""
    envs = []
    yield lambda env: envs.append(env) or env
    for env in envs:
        env.close()


# ---------------------------------------------------------------- sizes, dtypes, action scaling, suite time limits

def test_pusher_base_env_interface(closing):
    env = closing(PusherEnv(PUSHER, make_config(), seed=0, distractor='train'))
    assert env.action_size == 7
    env.reset()
    image = env.render()
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    color = env.factors()['color']
    assert color.shape == (6,) and color.dtype == np.float32
    assert env.state.shape == (23,)
    model = env._env.unwrapped.model
    np.testing.assert_array_equal(model.geom_rgba[model.geom_bodyid == model.body('object').id], [[0, 0, 0, 1]])
    reward, terminated, truncated, info = env.step(np.ones(7, np.float32))
    assert isinstance(reward, float) and terminated is False and truncated is False and isinstance(info, dict)
    # [-1, 1] maps onto the native torque range Box(-2, 2).
    np.testing.assert_allclose(env._env.unwrapped.data.ctrl, 2.0)
    env.step(-np.ones(7, np.float32))
    np.testing.assert_allclose(env._env.unwrapped.data.ctrl, -2.0)
    env.step(np.zeros(7, np.float32))
    np.testing.assert_allclose(env._env.unwrapped.data.ctrl, 0.0, atol=1e-6)


def test_pusher_returns_gymnasium_truncation(closing):
    env = closing(PusherEnv(PUSHER, make_config(), seed=0, distractor='train'))
    env.reset()
    truncated = [env.step(np.zeros(7))[2] for _ in range(100)]
    assert truncated == [False] * 99 + [True]  # Pusher-v5 is registered with a 100-step limit


def test_drawer_base_env_interface(closing):
    env = closing(DrawerEnv(DRAWER_OPEN, make_config(), seed=0, distractor='grid'))
    assert env.action_size == 4
    env.reset()
    image = env.render()
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    color = env.factors()['color']
    assert color.dtype == np.float32
    np.testing.assert_array_equal(color, [1, 0, 0])
    assert env.state.shape == (39,)
    reward, terminated, truncated, info = env.step(np.zeros(4, np.float32))
    assert isinstance(reward, float) and terminated is False and truncated is False
    assert info['success'] is False


def test_drawer_has_no_metaworld_truncation(closing):
    """Meta-World stops at 500 steps on its own; the shared time-limit wrapper must be the only limit."""
    env = closing(DrawerEnv(DRAWER_OPEN, make_config(), seed=0, distractor='grid'))
    env.reset()
    for _ in range(510):
        _, terminated, truncated, _ = env.step(np.zeros(4))
        assert not terminated and not truncated


def test_task_names_and_distractor_names_are_checked(closing):
    with pytest.raises(ValueError, match='Pusher-v5'):
        PusherEnv('gymnasium_Reacher-v5', make_config(), seed=0, distractor='train')
    with pytest.raises(ValueError, match='drawer-open'):
        DrawerEnv('metaworld_drawer-opn-v1', make_config(), seed=0, distractor='grid')
    with pytest.raises(ValueError, match='train'):
        PusherEnv(PUSHER, make_config(), seed=0, distractor='grid')
    with pytest.raises(ValueError, match='no cameras'):
        PusherEnv(PUSHER, make_config(camera='topview'), seed=0, distractor='train')
    env = closing(DrawerEnv('drawer-close-v3', make_config(), seed=0, distractor='wood'))
    with pytest.raises(ValueError, match='grid'):
        env.set_distractor('train')


# ---------------------------------------------------------------- seeding

def test_pusher_same_seed_same_frames(closing):
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (3, 7)).astype(np.float32)

    def rollout(seed):
        env = closing(PusherEnv(PUSHER, make_config(), seed=seed, distractor='train'))
        frames, colors = [], []
        for _ in range(2):  # two episodes: the second checks the RNGs continue identically
            env.reset()
            colors.append(env.factors()['color'])
            frames.append(env.render())
            for action in actions:
                env.step(action)
            frames.append(env.render())
        return np.stack(frames), np.stack(colors)

    frames_a, colors_a = rollout(3)
    frames_b, colors_b = rollout(3)
    np.testing.assert_array_equal(frames_a, frames_b)
    np.testing.assert_array_equal(colors_a, colors_b)
    assert not np.allclose(colors_a[0], colors_a[1])  # a new draw each episode
    _, colors_c = rollout(4)
    assert not np.allclose(colors_a, colors_c)


def test_drawer_same_seed_same_frames_and_positions(closing):
    def rollout(seed):
        env = closing(DrawerEnv(DRAWER_OPEN, make_config(), seed=seed, distractor='wood'))
        frames, drawers = [], []
        for episode in range(3):
            env.reset()
            drawers.append(env.state[4:7].copy())  # the drawer handle position
            if episode == 0:
                frames.append(env.render())
                env.step(np.array([0.5, 0.5, -0.5, 1.0]))
                frames.append(env.render())
        return np.stack(frames), np.stack(drawers)

    frames_a, drawers_a = rollout(5)
    frames_b, drawers_b = rollout(5)
    np.testing.assert_array_equal(frames_a, frames_b)
    np.testing.assert_array_equal(drawers_a, drawers_b)
    assert len({tuple(pos) for pos in drawers_a}) == 3  # a new drawer position at each reset
    _, drawers_c = rollout(6)
    assert not np.allclose(drawers_a, drawers_c)


# ---------------------------------------------------------------- distractors change the picture, not the state

def test_pusher_colour_sets_differ_with_the_same_state(closing):
    envs = {name: closing(PusherEnv(PUSHER, make_config(), seed=1, distractor=name)) for name in ('train', 'test')}
    images, states = {}, {}
    for name, env in envs.items():
        env.reset()
        colors = env.factors()['color']
        assert BOXES[name].contains(colors.reshape(2, 3))
        for _ in range(3):
            env.step(np.full(7, 0.3))
        # Drawn once per episode: no random walk during the episode.
        np.testing.assert_array_equal(env.factors()['color'], colors)
        images[name], states[name] = env.render(), env.state
    np.testing.assert_array_equal(states['train'], states['test'])
    assert image_distance(images['train'], images['test']) > 5.0
    # The boxes are disjoint in green (train G <= 0.5 <= test G), and the table in the frames shows it.
    green = {name: image[5:25, 5:60, 1].mean() for name, image in images.items()}
    assert green['test'] > green['train'] + 20


def test_drawer_textures_differ_with_the_same_state(closing):
    images, states = {}, {}
    for name in TEXTURES:
        env = closing(DrawerEnv(DRAWER_OPEN, make_config(), seed=2, distractor=name))
        env.reset()
        images[name], states[name] = env.render(), env.state
        np.testing.assert_array_equal(env.factors()['color'], np.eye(3)[TEXTURES.index(name)])
    for a, b in [('grid', 'wood'), ('grid', 'metal'), ('wood', 'metal')]:
        np.testing.assert_array_equal(states[a], states[b])
        assert image_distance(images[a], images[b]) > 5.0, (a, b)


def test_textures_are_deterministic_and_distinct():
    for name in TEXTURES:
        np.testing.assert_array_equal(make_texture.__wrapped__(name, 64, 64), make_texture(name, 64, 64))
    means = np.stack([make_texture(name, 128, 128).reshape(-1, 3).mean(0) for name in TEXTURES])
    assert min(np.abs(means[i] - means[j]).max() for i in range(3) for j in range(i)) > 20


def test_set_distractor_applies_at_the_next_reset(closing):
    pusher = closing(make_env(PUSHER, make_config(), 0, 'train'))
    pusher.reset()
    before = pusher.factors()['color']
    pusher.set_distractor('test')
    np.testing.assert_array_equal(pusher.factors()['color'], before)  # not before the reset
    obs = pusher.reset()
    assert BOXES['test'].contains(obs['color'].reshape(2, 3))

    drawer = closing(make_env(DRAWER_OPEN, make_config(time_limit=200), 0, 'grid'))
    grid = drawer.reset()
    drawer.set_distractor('metal')
    np.testing.assert_array_equal(drawer.factors()['color'], [1, 0, 0])
    metal = drawer.reset()
    np.testing.assert_array_equal(metal['color'], [0, 0, 1])
    assert image_distance(grid['image'], metal['image']) > 5.0


# ---------------------------------------------------------------- through make_env: reward sum, time limit, success

@pytest.mark.parametrize('task, release_compat', [(PUSHER, False), (PUSHER, True), (DRAWER_OPEN, False)])
def test_reward_is_summed_over_the_action_repeat(closing, task, release_compat):
    config = make_config(time_limit=10, release_compat=release_compat)
    first = 'train' if task == PUSHER else 'grid'
    env = closing(make_env(task, config, 7, first))
    base = closing((PusherEnv if task == PUSHER else DrawerEnv)(task, config, 7, first))
    env.reset()
    base.reset()
    size = env.action_size
    actions = np.random.default_rng(1).uniform(-1, 1, (5, size)).astype(np.float32)
    for step, action in enumerate(actions, start=1):
        obs, reward, done, _ = env.step(action)
        sub_rewards = [base.step(action)[0] for _ in range(2)]
        expected = 2 * sub_rewards[-1] if release_compat else sum(sub_rewards)
        assert reward == pytest.approx(expected, rel=1e-6, abs=1e-9)
        # time_limit counts env steps: 10 // action_repeat 2 = 5 agent steps, a truncation, not a terminal.
        assert done == obs['is_last'] == (step == 5)
        assert obs['is_terminal'] is False
        assert obs['image'].shape == (64, 64, 3) and obs['image'].dtype == np.uint8


@pytest.mark.filterwarnings('ignore:Constant')  # Meta-World's own scripted policies warn about their gains
@pytest.mark.parametrize('task', ['drawer-open-v3', 'drawer-close-v3'])
def test_scripted_policy_succeeds_on_the_base_env(closing, task):
    env = closing(DrawerEnv(task, make_config(), seed=0, distractor='metal'))
    policy = scripted_policy(task)
    env.reset()
    successes = [env.step(policy.get_action(env.state))[3]['success'] for _ in range(150)]
    assert successes[0] is False
    assert any(successes)


@pytest.mark.filterwarnings('ignore:Constant')
def test_success_flag_reaches_the_agent_through_make_env(closing):
    """A scripted drawer-open episode at action repeat 2 and a 100-env-step limit: `success` shows in `info` at
    agent steps (any sub-step succeeded), and the episode ends after exactly 50 agent steps as a truncation."""
    env = closing(make_env(DRAWER_OPEN, make_config(time_limit=100), 0, 'grid'))
    policy = scripted_policy(DRAWER_OPEN)
    obs = env.reset()
    assert obs['is_first']
    successes, steps, done = [], 0, False
    while not done:
        obs, _, done, info = env.step(policy.get_action(env.state).astype(np.float32))
        successes.append(info['success'])
        steps += 1
    assert steps == 50 and obs['is_last'] and not obs['is_terminal']
    assert all(isinstance(flag, bool) for flag in successes)
    assert not successes[0] and any(successes)
