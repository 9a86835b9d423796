"""The actor-critic learns in a world model whose answer is known (seconds on a CPU).

The learning runs (docs/learning.md) take hours; this is the quick check that a change has not broken behaviour
learning itself. `ImagBehavior` trains, with the project's own optimizers and slow critic, inside a hand-written
differentiable model: a point x in [-1, 1] moved by x' = clip(x + 0.25 a), rewarded -|x|. The optimal policy moves
towards 0 at full speed and then stays; the critic must equal the discounted return of the learned policy,
measured by plain Monte-Carlo rollouts of that policy in the same model.
"""
import types

import pytest
import torch

import models
import tools

STEP = 0.25


class PointModel:
    """The slice of `WorldModel` that imagination uses: `rssm.feat`, `rssm.img_step`, `pad_action`."""

    class Dynamics:
        feat_size = 1

        @staticmethod
        def feat(state):
            return state['x']

        @staticmethod
        def img_step(state, action):
            return {'x': (state['x'] + STEP * action).clamp(-1, 1)}

    rssm = Dynamics()

    @staticmethod
    def pad_action(action):
        return action


def reward_of(x: torch.Tensor) -> torch.Tensor:
    return -x.abs()


def train_behavior(updates: int = 600):
    """`updates` calls of the agent's own `Agent.update_behavior` (actor and critic steps, slow-critic refresh) on a
    stand-in agent whose world model is `PointModel`."""
    torch.manual_seed(0)
    config = tools.make_config(['--configs', 'defaults', '--units', '64', '--actor_layers', '2', '--value_layers', '2',
                                '--actor_lr', '1e-3', '--value_lr', '1e-3', '--imag_horizon', '10',
                                '--discount', '0.9', '--slow_target_update', '10'])
    behavior = models.ImagBehavior(config, feat_size=1, action_size=1)
    opt = lambda name, module, lr: tools.Optimizer.for_config(name, module.parameters(), lr, config)
    agent = types.SimpleNamespace(
        config=config, behavior=behavior, wm=PointModel(), updates=0,
        actor_opt=opt('actor', behavior.actor, config.actor_lr),
        critic_opt=opt('critic', behavior.critic, config.value_lr),
        reward_fn=lambda feats: reward_of(feats[:-1, :, 0]),        # the first H states' rewards, as Agent.reward_fn
        autocast=lambda: tools.autocast(config))
    for _ in range(updates):
        models.Agent.update_behavior(agent, {'post': {'x': torch.rand(128, 1) * 2 - 1}})
    assert agent.updates == updates
    return behavior, agent.wm, config


@torch.no_grad()
def monte_carlo_value(behavior, model, config, x0: float, rollouts: int = 400, steps: int = 80) -> float:
    """E[sum_t gamma^t r(x_t)] from x_0 = x0 under the actor's sampled actions, counting r(x_0) as the
    lambda-returns do (their first reward is the start state's)."""
    x = torch.full((rollouts, 1), float(x0))
    total, scale = torch.zeros(rollouts), 1.0
    for _ in range(steps):                                           # 0.9^80 < 3e-4 of the rest
        total += scale * reward_of(x[:, 0])
        scale *= config.discount
        x = model.rssm.img_step({'x': x}, behavior.actor(x).sample())['x']
    return total.mean().item()


@pytest.fixture(scope='module')
def trained():
    torch.set_num_threads(1)           # module fixtures run before conftest's per-test single_torch_thread
    return train_behavior()


def test_actor_moves_towards_the_reward_at_full_speed(trained):
    behavior, _, _ = trained
    xs = torch.tensor([[-1.0], [-0.75], [-0.5], [0.5], [0.75], [1.0]])
    with torch.no_grad():
        action = behavior.actor(xs).mode()[:, 0]
    assert (action[:3] > 0.9).all() and (action[3:] < -0.9).all(), action
    with torch.no_grad():                                            # and stays put at the optimum
        assert behavior.actor(torch.zeros(1, 1)).mode().abs().item() < 0.2


def test_critic_equals_the_monte_carlo_return_of_the_learned_policy(trained):
    behavior, model, config = trained
    xs = [-0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75]
    with torch.no_grad():
        critic = behavior.critic(torch.tensor(xs)[:, None]).reshape(-1).tolist()
    expected = [monte_carlo_value(behavior, model, config, x) for x in xs]
    # The returns span -1.3 to -0.2 here; a critic that learned something else (returns reversed in time, a slow
    # critic never refreshed, another discount) misses by 0.3 or more.
    for x, got, want in zip(xs, critic, expected):
        assert abs(got - want) < 0.15, (x, got, want)
