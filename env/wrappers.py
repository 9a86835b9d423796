"""Shared wrappers that turn a suite's base env into the agent-facing env of `env/CONTRACT.md`.

How a suite plugs in
--------------------
A suite module (`env/dmc.py`, `env/pusher.py`, `env/drawerworld.py`) defines ONE base class that `env.make_env`
constructs as `BaseEnv(name, config, seed, distractor)` (`name` is the task without its suite prefix, e.g.
`reacher_easy`, `Pusher-v5`, `drawer-open-v3`) and that offers:

- `action_size: int`
- `reset() -> None`: new episode (colours / drawer position drawn from the RNG seeded by `seed`).
- `step(action) -> (reward: float, terminated: bool, truncated: bool, info: dict)`: ONE control step; `action` is a
  float32 array in [-1, 1] that the base env rescales to its native range. It does not render. `terminated` means a
  true terminal (no bootstrapping); `truncated` means the suite's own time limit. `info` may hold `success`.
- `render() -> np.uint8 (H, W, 3)` and `factors() -> dict` with at least `color` (float32 1-D): both describe the
  state the next frame shows.
- `set_distractor(name)` (takes effect at the next `reset()`) and `close()`.

`wrap_base_env` then stacks, from the inside out:
`ActionRepeat` (agent step = several base steps) -> `TimeLimit` (in agent steps) -> `AgentEnv` (renders once per
agent step and builds the obs dict `image`, `is_first`, `is_last`, `is_terminal`, `color`). Nothing in these wrappers
is specific to a suite; the only suite-dependent choices (the release's doubled repeat and reward bug) are arguments.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

_REQUIRED = object()


def config_get(config: Any, key: str, default: Any = _REQUIRED) -> Any:
    """Reads `key` from a config given as a mapping or as an object with attributes (e.g. SimpleNamespace)."""
    if isinstance(config, Mapping):
        if key in config:
            return config[key]
    elif hasattr(config, key):
        return getattr(config, key)
    if default is _REQUIRED:
        raise KeyError(f'The env config has no {key!r}; add it to configs.yaml (or the config object you passed).')
    return default


class _Wrapper:
    """Forwards the base-env interface (and, for convenience, any other public attribute) to the wrapped env."""

    def __init__(self, env: Any):
        self._env = env

    @property
    def action_size(self) -> int:
        return self._env.action_size

    def render(self) -> np.ndarray:
        return self._env.render()

    def factors(self) -> dict:
        return self._env.factors()

    def set_distractor(self, name: str) -> None:
        self._env.set_distractor(name)

    def close(self) -> None:
        self._env.close()

    def __getattr__(self, name: str) -> Any:
        # Private names are not forwarded so that copy/pickle probes do not recurse before `_env` exists.
        if name.startswith('_'):
            raise AttributeError(name)
        return getattr(self._env, name)


class ActionRepeat(_Wrapper):
    """One agent step = `repeat` steps of the wrapped env; keeps the base-env interface.

    Default (paper-faithful): rewards are summed over all sub-steps. The loop stops early as soon as a sub-step ends
    the episode (terminated or truncated). `info['success']` is True if any sub-step reported success.

    `release_reward=True` reproduces the released code (docs/method.md, "The released code's behaviours and
    --release_compat"): each of the `repeat` sub-steps is itself `inner_repeat` base steps with summed reward (the
    release's dmc2gym frame skip; 1 for Pusher), and the agent gets 2 × the reward of the LAST sub-step only. For DMC
    the release uses `repeat = inner_repeat = action_repeat`.
    """

    def __init__(self, env: Any, repeat: int, inner_repeat: int = 1, release_reward: bool = False):
        super().__init__(env)
        if repeat < 1 or inner_repeat < 1:
            raise ValueError(f'action repeat must be >= 1, got repeat={repeat}, inner_repeat={inner_repeat}')
        self.repeat = int(repeat)
        self.inner_repeat = int(inner_repeat)
        self.release_reward = bool(release_reward)

    def reset(self) -> None:
        self._env.reset()

    def step(self, action: np.ndarray) -> tuple[float, bool, bool, dict]:
        total, terminated, truncated, success, info = 0.0, False, False, None, {}
        for _ in range(self.repeat):
            block = 0.0  # reward of one sub-step (= `inner_repeat` base steps)
            for _ in range(self.inner_repeat):
                reward, terminated, truncated, info = self._env.step(action)
                block += float(reward)
                if 'success' in info:
                    success = bool(success) or bool(info['success'])
                if terminated or truncated:
                    break
            total = 2.0 * block if self.release_reward else total + block
            if terminated or truncated:
                break
        info = dict(info)
        if success is not None:
            info['success'] = success
        return total, bool(terminated), bool(truncated), info


class TimeLimit(_Wrapper):
    """Truncates the episode after `duration` steps of the wrapped env (agent steps here); falsy = no limit."""

    def __init__(self, env: Any, duration: int | None):
        super().__init__(env)
        self.duration = int(duration) if duration else None
        self.elapsed = 0  # steps taken in the current episode

    def reset(self) -> None:
        self.elapsed = 0
        self._env.reset()

    def step(self, action: np.ndarray) -> tuple[float, bool, bool, dict]:
        reward, terminated, truncated, info = self._env.step(action)
        self.elapsed += 1
        if self.duration is not None and self.elapsed >= self.duration:
            truncated = True
        return reward, terminated, truncated, info


class AgentEnv(_Wrapper):
    """The env `dreamer.py` sees: `reset() -> obs`, `step(action) -> (obs, reward, done, info)`.

    obs: `image` uint8 (H, W, 3), `is_first`, `is_last`, `is_terminal` (bools; `is_terminal` only on a true
    terminal, never on a time limit), `color` float32 1-D (the distractor state shown in `image`). `done` equals
    `is_last`. Renders once per agent step, after the last sub-step. `info['discount']` is 0.0 on a true terminal
    and 1.0 otherwise (what a replay buffer that stores discounts needs).
    """

    def __init__(self, env: Any):
        super().__init__(env)
        self._needs_reset = True

    def reset(self) -> dict:
        self._env.reset()
        self._needs_reset = False
        return self._obs(is_first=True, is_last=False, is_terminal=False)

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, dict]:
        if self._needs_reset:
            raise RuntimeError('The episode has ended (or never started): call reset() before step().')
        action = np.asarray(action, np.float32)
        if action.shape != (self.action_size,):
            raise ValueError(f'Expected an action of shape ({self.action_size},), got {action.shape}')
        if not np.all(np.isfinite(action)):
            raise ValueError(f'Non-finite action: {action}')
        # Actions are defined on [-1, 1]; clipping here keeps every base env inside its native range.
        action = np.clip(action, -1.0, 1.0)
        reward, terminated, truncated, info = self._env.step(action)
        done = bool(terminated or truncated)
        self._needs_reset = done
        info = dict(info)
        info['discount'] = 0.0 if terminated else 1.0
        obs = self._obs(is_first=False, is_last=done, is_terminal=bool(terminated))
        return obs, float(reward), done, info

    def _obs(self, is_first: bool, is_last: bool, is_terminal: bool) -> dict:
        image = np.asarray(self._env.render())
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f'render() must return uint8 (H, W, 3), got {image.dtype} {image.shape}')
        color = np.asarray(self._env.factors()['color'], np.float32).ravel()
        return {'image': image, 'is_first': is_first, 'is_last': is_last, 'is_terminal': is_terminal,
                'color': color}


def wrap_base_env(base: Any, action_repeat: int, time_limit: int | None, inner_repeat: int = 1,
                  release_reward: bool = False) -> AgentEnv:
    """Applies the shared wrappers to a base env. `time_limit` is in base (env) steps as in the configs; the
    episode is cut after `time_limit // action_repeat` agent steps (no limit when falsy)."""
    env = ActionRepeat(base, action_repeat, inner_repeat, release_reward)
    env = TimeLimit(env, max(1, time_limit // action_repeat) if time_limit else None)
    return AgentEnv(env)
