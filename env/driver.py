"""The acting loop, torch-free: episodes recorded in the replay format, a random policy, a batched collector over
parallel envs, and single-env episodes. Used by `dreamer.py` (collection, evaluation) and by the scripts that collect
videos or source datasets (`scripts/collect_videos.py`).

A policy is `policy(obs, state, training) -> (actions, state)` with a leading env axis on `obs` (a dict of numpy
arrays) and on the actions; `state` is the policy's own (None at the start).
"""
from __future__ import annotations

import numpy as np


class EpisodeRecorder:
    """Accumulates one episode in the DreamerV2 format (action[t] led to obs t; reward[t] received at obs t)."""

    def __init__(self, action_size: int):
        self.action_size = action_size
        self.steps: list[dict] = []
        self.success = False
        self.reports_success = False   # the env puts `success` in its info (DrawerWorld); success metrics only then

    def add(self, obs: dict, action=None, reward=0.0, info=None) -> None:
        step = {k: v for k, v in obs.items() if k in ('image', 'is_first', 'is_last', 'is_terminal', 'color')}
        step['action'] = np.zeros(self.action_size, np.float32) if action is None else np.asarray(action, np.float32)
        step['reward'] = np.float32(reward)
        step['discount'] = np.float32(0.0 if obs['is_terminal'] else 1.0)
        self.steps.append(step)
        if info and 'success' in info:
            self.reports_success = True
            self.success = self.success or bool(info['success'])

    def episode(self) -> dict:
        keys = self.steps[0].keys()
        episode = {k: np.stack([s[k] for s in self.steps]) for k in keys}
        episode.pop('is_last', None)
        return episode

    @property
    def score(self) -> float:
        return float(sum(s['reward'] for s in self.steps))

    def __len__(self):
        return len(self.steps) - 1


def random_policy(action_size: int, rng: np.random.Generator):
    def act(obs, state, training=True):
        return rng.uniform(-1, 1, (len(obs['image']), action_size)).astype(np.float32), None
    return act


class Collector:
    """Steps a batch of envs (`env.parallel.ParallelEnvs`) with a policy, restarting finished episodes.

    The policy's state has a leading env axis; an env that restarts shows `is_first` in its next observation, which
    resets just that row of the agent state.
    """

    def __init__(self, envs):
        self.envs = envs
        self.obs, self.recs, self.state = None, None, None

    def step(self, policy, training: bool) -> list:
        """One step of every env; returns (env index, EpisodeRecorder) of the episodes that ended."""
        from env.parallel import stack_obs
        if self.obs is None:
            self.obs = self.envs.reset()
            self.recs = [EpisodeRecorder(self.envs.action_size) for _ in self.obs]
            for rec, first in zip(self.recs, self.obs):
                rec.add(first)
            self.state = None
        action, self.state = policy(stack_obs(self.obs), self.state, training)
        obs, rewards, dones, infos = self.envs.step(action)
        finished = []
        for i, rec in enumerate(self.recs):
            rec.add(obs[i], action[i], rewards[i], infos[i])
        done = np.flatnonzero(dones)
        if len(done):
            for i, first in zip(done, self.envs.reset(done)):
                finished.append((int(i), self.recs[i]))
                obs[i], self.recs[i] = first, EpisodeRecorder(self.envs.action_size)
                self.recs[i].add(first)
        self.obs = obs
        return finished

    def episodes(self, policy, training: bool, count: int) -> list:
        """`count` episodes from a fresh reset of every env: env i contributes its first, second, ... episodes in
        turn (round robin), so early-ending episodes are not favoured. Leftover partial episodes are dropped."""
        n = len(self.envs.seeds)
        per_env = [[] for _ in range(n)]
        needed = -(-count // n)
        self.obs = None
        while min(len(eps) for eps in per_env) < needed:
            for i, rec in self.step(policy, training):
                per_env[i].append(rec)
        self.obs = None
        ordered = [per_env[i][k] for k in range(needed) for i in range(n)]
        return ordered[:count]


def run_episode(env, policy, training: bool, on_frame=None):
    """Runs one episode of a single env; returns its EpisodeRecorder. `on_frame()` (optional) runs right after every
    observation, e.g. to read the env's ground-truth factors of the frame just rendered."""
    obs = env.reset()
    rec = EpisodeRecorder(env.action_size)
    rec.add(obs)
    if on_frame:
        on_frame()
    state = None
    while not obs['is_last']:
        batch_obs = {k: np.asarray(v)[None] for k, v in obs.items()}
        action, state = policy(batch_obs, state, training)
        obs, reward, done, info = env.step(action[0])
        rec.add(obs, action[0], reward, info)
        if on_frame:
            on_frame()
    return rec
