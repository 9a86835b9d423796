"""Returns of uniformly random actions on a DeepMind Control task, straight from dm_control (no project code), and a
fingerprint of the physics trajectory: a check that the simulator behaves the same under two MuJoCo/dm_control
versions, or that a task's reward is as rare as a learning curve's slow start suggests.

    python scripts/random_returns.py                                    # finger_spin, 40 episodes, action repeat 2
    python scripts/random_returns.py --task cheetah_run --episodes 10
    python scripts/random_returns.py --legacy_inertia True --episodes 400        # MuJoCo < 2.1.1's capsule inertia

Episode i starts from dm_control's task seed i and draws its actions from the stream (`--seed`, i), so two installs
print the same numbers exactly when their physics agree. Runs in any environment with dm_control (it imports nothing
from this repository but `env/inertia.py` under `--legacy_inertia True`), e.g. a second virtual environment holding
older MuJoCo and dm_control releases (docs/learning.md, "finger_spin under an older MuJoCo"). `--legacy_inertia True`
recomputes the bodies' masses and inertias with MuJoCo < 2.1.1's capsule rule first (docs/learning.md, "finger_spin's
spinner under MuJoCo 2.0's capsule inertia").
"""
import argparse

import numpy as np


def episode_rewards(task: str, episode: int, action_repeat: int, seed: int, steps: int | None = None,
                    legacy_inertia: bool = False):
    """(rewards per agent step, physics fingerprint) of one episode, to its end or `steps` agent steps: dm_control's
    task seed `episode`, uniform random float32 actions drawn from the stream (seed, episode), each held for
    `action_repeat` control steps with their rewards summed (as official DreamerV2's DMC wrapper sums them). The
    fingerprint sums |qpos| + |qvel| over the agent steps."""
    from dm_control import suite
    domain, name = task.split('_', 1)
    env = suite.load(domain, name, task_kwargs={'random': episode})
    if legacy_inertia:
        import os
        import sys
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from env.inertia import legacy_capsule_inertia
        legacy_capsule_inertia(env.physics, domain)
    spec = env.action_spec()
    rng = np.random.RandomState([seed, episode])
    time_step = env.reset()
    rewards, fingerprint = [], 0.0
    while not time_step.last() and len(rewards) != steps:
        action = rng.uniform(spec.minimum, spec.maximum).astype(np.float32)   # as an agent's actions are
        reward = 0.0
        for _ in range(action_repeat):
            time_step = env.step(action)
            reward += time_step.reward or 0.0
            if time_step.last():
                break
        rewards.append(reward)
        fingerprint += np.abs(env.physics.data.qpos).sum() + np.abs(env.physics.data.qvel).sum()
    return rewards, fingerprint


def random_returns(task: str, episodes: int, action_repeat: int, seed: int, legacy_inertia: bool = False):
    """(returns per episode, rewarded agent steps, physics fingerprint summed over the episodes)."""
    returns, rewarded, fingerprint = [], 0, 0.0
    for episode in range(episodes):
        rewards, trace = episode_rewards(task, episode, action_repeat, seed, legacy_inertia=legacy_inertia)
        returns.append(sum(rewards))
        rewarded += sum(r > 0 for r in rewards)
        fingerprint += trace
    return returns, rewarded, fingerprint


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--task', default='finger_spin', help='domain_task, e.g. finger_spin, cheetah_run')
    parser.add_argument('--episodes', type=int, default=40)
    parser.add_argument('--action_repeat', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--legacy_inertia', type=lambda v: {'true': True, 'false': False}[v.lower()], default=False,
                        help="True: bodies' masses and inertias as MuJoCo < 2.1.1 computed them (env/inertia.py)")
    args = parser.parse_args(argv)
    from importlib.metadata import version
    returns, rewarded, fingerprint = random_returns(args.task, args.episodes, args.action_repeat, args.seed,
                                                    args.legacy_inertia)
    print(f'mujoco {version("mujoco")}, dm_control {version("dm-control")}'
          f'{", capsule inertia of MuJoCo < 2.1.1" if args.legacy_inertia else ""}: {args.task}, '
          f'{args.episodes} episodes of random actions, action repeat {args.action_repeat}')
    print(f'mean return {np.mean(returns):.3f}, episodes with reward {sum(r > 0 for r in returns)}, '
          f'rewarded agent steps {rewarded}')
    print('returns', ' '.join(f'{r:g}' for r in returns))
    print(f'physics fingerprint {fingerprint:.6f}')


if __name__ == '__main__':
    main()
