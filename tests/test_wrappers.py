"""The shared env wrappers on a scripted fake base env (no MuJoCo)."""
import types

import numpy as np
import pytest

from env.wrappers import ActionRepeat, AgentEnv, TimeLimit, config_get, wrap_base_env


class FakeBase:
    """Base env with scripted rewards: base step k (1-based, counted within the episode) gives reward k.

    terminal_at / truncate_at / success_at: base step numbers at which the episode terminates, hits the suite's own
    time limit, or reports success. The image encodes the number of base steps taken; `color` likewise.
    """

    action_size = 2

    def __init__(self, terminal_at=None, truncate_at=None, success_at=(), report_success=True):
        self.terminal_at, self.truncate_at = terminal_at, truncate_at
        self.success_at, self.report_success = set(success_at), report_success
        self.t = 0  # base steps in this episode
        self.total_steps = 0
        self.renders = 0
        self.resets = 0
        self.actions = []
        self.distractor = 'train'

    def reset(self):
        self.t = 0
        self.resets += 1

    def step(self, action):
        assert not self.ended, 'base env stepped after its episode ended'
        self.t += 1
        self.total_steps += 1
        self.actions.append(np.array(action))
        info = {'success': self.t in self.success_at} if self.report_success else {}
        return float(self.t), self.t == self.terminal_at, self.t == self.truncate_at, info

    @property
    def ended(self):
        return self.t in (self.terminal_at, self.truncate_at)

    def render(self):
        self.renders += 1
        return np.full((64, 64, 3), self.t % 256, np.uint8)

    def factors(self):
        return {'color': np.array([self.t, 0.5, 0.5], np.float64)}

    def set_distractor(self, name):
        self.distractor = name

    def close(self):
        pass


ACTION = np.zeros(2, np.float32)


def test_reward_is_summed_over_the_repeat_and_base_steps_are_counted():
    base = FakeBase()
    env = wrap_base_env(base, action_repeat=3, time_limit=None)
    env.reset()
    rewards = [env.step(ACTION)[1] for _ in range(4)]
    assert rewards == [1 + 2 + 3, 4 + 5 + 6, 7 + 8 + 9, 10 + 11 + 12]
    assert base.total_steps == 12
    assert base.renders == 1 + 4  # once at reset and once per agent step, never per sub-step


def test_repeat_stops_early_when_the_episode_ends_mid_repeat():
    base = FakeBase(terminal_at=5)
    env = wrap_base_env(base, action_repeat=3, time_limit=None)
    env.reset()
    _, reward, done, _ = env.step(ACTION)
    assert (reward, done) == (6.0, False)
    obs, reward, done, info = env.step(ACTION)
    assert reward == 4 + 5  # sub-step 6 is never taken
    assert base.total_steps == 5
    assert done and obs['is_last'] and obs['is_terminal'] and info['discount'] == 0.0


def test_suite_truncation_ends_the_episode_without_a_terminal():
    base = FakeBase(truncate_at=4)
    env = wrap_base_env(base, action_repeat=2, time_limit=None)
    env.reset()
    env.step(ACTION)
    obs, reward, done, info = env.step(ACTION)
    assert done and obs['is_last'] and not obs['is_terminal'] and info['discount'] == 1.0


def test_time_limit_counts_agent_steps():
    base = FakeBase()
    env = wrap_base_env(base, action_repeat=2, time_limit=10)  # 10 env steps -> 5 agent steps
    for _ in range(2):  # and it restarts with each episode
        obs = env.reset()
        dones = []
        for _ in range(5):
            obs, _, done, _ = env.step(ACTION)
            dones.append(done)
        assert dones == [False] * 4 + [True]
        assert obs['is_last'] and not obs['is_terminal']
    assert base.total_steps == 2 * 10 and base.resets == 2


def test_flags_over_an_episode():
    env = wrap_base_env(FakeBase(terminal_at=4), action_repeat=1, time_limit=100)
    obs = env.reset()
    flags = [(obs['is_first'], obs['is_last'], obs['is_terminal'])]
    done = False
    while not done:
        obs, _, done, _ = env.step(ACTION)
        flags.append((obs['is_first'], obs['is_last'], obs['is_terminal']))
    assert flags == [(True, False, False)] + [(False, False, False)] * 3 + [(False, True, True)]


def test_obs_dict_types_and_it_shows_the_state_after_the_last_sub_step():
    env = wrap_base_env(FakeBase(), action_repeat=2, time_limit=None)
    obs = env.reset()
    assert set(obs) == {'image', 'is_first', 'is_last', 'is_terminal', 'color'}
    obs, reward, done, info = env.step(ACTION)
    assert obs['image'].dtype == np.uint8 and obs['image'].shape == (64, 64, 3)
    assert obs['color'].dtype == np.float32 and obs['color'].ndim == 1
    assert obs['image'][0, 0, 0] == 2 and obs['color'][0] == 2.0
    assert isinstance(reward, float) and isinstance(done, bool)
    assert all(isinstance(obs[key], bool) for key in ('is_first', 'is_last', 'is_terminal'))


def test_success_is_any_sub_step():
    base = FakeBase(success_at={2})
    env = wrap_base_env(base, action_repeat=3, time_limit=None)
    env.reset()
    assert env.step(ACTION)[3]['success'] is True  # success on sub-step 2 of 3, not on the last one
    assert env.step(ACTION)[3]['success'] is False
    # A suite that never reports success gets no key.
    env = wrap_base_env(FakeBase(report_success=False), action_repeat=3, time_limit=None)
    env.reset()
    assert 'success' not in env.step(ACTION)[3]


def test_release_compat_dmc_repeats_twice_and_returns_twice_the_last_sub_step():
    # DMC in the release: `action_repeat` sub-steps of `action_repeat` control steps each; reward = 2 * last sub-step.
    base = FakeBase()
    env = wrap_base_env(base, action_repeat=2, time_limit=1000, inner_repeat=2, release_reward=True)
    env.reset()
    _, reward, _, _ = env.step(ACTION)
    assert base.total_steps == 4
    assert reward == 2 * (3 + 4)
    _, reward, _, _ = env.step(ACTION)
    assert base.total_steps == 8 and reward == 2 * (7 + 8)


def test_release_compat_time_limit_is_still_time_limit_over_action_repeat():
    base = FakeBase()
    env = wrap_base_env(base, action_repeat=2, time_limit=20, inner_repeat=2, release_reward=True)
    env.reset()
    steps, done = 0, False
    while not done:
        done = env.step(ACTION)[2]
        steps += 1
    assert steps == 10 and base.total_steps == 40


def test_release_compat_pusher_returns_twice_the_last_base_step():
    base = FakeBase()
    env = wrap_base_env(base, action_repeat=2, time_limit=100, inner_repeat=1, release_reward=True)
    env.reset()
    assert env.step(ACTION)[1] == 2 * 2
    assert base.total_steps == 2


def test_release_compat_early_end_returns_twice_the_partial_last_sub_step():
    base = FakeBase(terminal_at=3)
    env = wrap_base_env(base, action_repeat=2, time_limit=None, inner_repeat=2, release_reward=True)
    env.reset()
    _, reward, done, _ = env.step(ACTION)
    assert done and base.total_steps == 3 and reward == 2 * 3


def test_step_needs_reset_and_actions_are_checked_and_clipped():
    base = FakeBase(terminal_at=1)
    env = wrap_base_env(base, action_repeat=1, time_limit=None)
    with pytest.raises(RuntimeError, match='reset'):
        env.step(ACTION)
    env.reset()
    with pytest.raises(ValueError, match='shape'):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match='Non-finite'):
        env.step(np.array([np.nan, 0.0]))
    env.step(np.array([3.0, -0.5]))
    np.testing.assert_array_equal(base.actions[-1], [1.0, -0.5])
    assert base.actions[-1].dtype == np.float32
    with pytest.raises(RuntimeError, match='reset'):
        env.step(ACTION)


def test_wrappers_forward_the_base_interface():
    base = FakeBase()
    env = wrap_base_env(base, action_repeat=2, time_limit=10)
    assert isinstance(env, AgentEnv) and env.action_size == 2
    env.set_distractor('test')
    assert base.distractor == 'test'
    assert env.total_steps == 0  # other public attributes reach the base env
    env.close()


def test_layering_can_be_built_by_hand():
    env = AgentEnv(TimeLimit(ActionRepeat(FakeBase(), 2), 3))
    env.reset()
    assert [env.step(ACTION)[2] for _ in range(3)] == [False, False, True]


def test_config_get_reads_mappings_and_namespaces():
    assert config_get({'a': 1}, 'a') == 1
    assert config_get(types.SimpleNamespace(a=2), 'a') == 2
    assert config_get({}, 'a', None) is None
    with pytest.raises(KeyError, match="'a'"):
        config_get(types.SimpleNamespace(), 'a')


@pytest.mark.parametrize('method,quirks', [('diswm', True), ('dreamerv2', True), ('vid2act', False)])
def test_release_compat_env_quirks_are_the_diswm_release_s_not_vid2act_s(monkeypatch, method, quirks):
    """--release_compat switches on the DisWM release's DMC repeat and reward quirks, but not for Vid2Act runs (its
    release repeats once and sums the rewards)."""
    import env as envs
    seen = {}
    monkeypatch.setattr(envs, '_base_class', lambda suite: lambda *args: FakeBase())
    monkeypatch.setattr(envs, 'wrap_base_env', lambda base, *args, **kwargs: seen.update(kwargs))
    config = dict(action_repeat=2, time_limit=1000, release_compat=True, method_name=method)
    envs.make_env('dmc2gym_cheetah_run', config, 0, 'train_1')
    assert (seen['inner_repeat'] == 2 and seen['release_reward']) == quirks
    assert quirks or (seen['inner_repeat'] == 1 and not seen['release_reward'])
