"""Environments for DisWM: `make_env` and the distractor schedule of `env/CONTRACT.md`.

Suites are imported lazily, so a missing suite package fails only when one of its tasks is requested:
- `dmc2gym_<domain>_<task>`: `env.dmc.DMCEnv` (colour distractor, sets `train` / `test`)
- `gymnasium_Pusher-v5`: `env.pusher.PusherEnv` (colour distractor, sets `train` / `test`)
- `metaworld_drawer-{open,close}-{v1,v3}`: `env.drawerworld.DrawerEnv` (table texture, sets `grid` / `wood` / `metal`)
Each base class is constructed as `BaseEnv(name, config, seed, distractor)`; see `env/wrappers.py`.
"""
from __future__ import annotations

import difflib
import importlib
import os
from typing import Any

# dm_control and mujoco pick their GL backend at import time. EGL works headless on both the CPU machines (Mesa)
# and NVIDIA GPUs; a user's own MUJOCO_GL (e.g. osmesa, glfw) takes precedence.
os.environ.setdefault('MUJOCO_GL', 'egl')

from env.wrappers import AgentEnv, config_get, wrap_base_env  # noqa: E402

# suite prefix -> (module, base class)
SUITES = {
    'dmc2gym': ('env.dmc', 'DMCEnv'),
    'gymnasium': ('env.pusher', 'PusherEnv'),
    'metaworld': ('env.drawerworld', 'DrawerEnv'),
}
_GYMNASIUM_TASKS = ('Pusher-v5',)
# v1 names are the release's (metaworld 3.x only has v3 envs; DrawerEnv decides how v1 maps onto them).
_METAWORLD_TASKS = ('drawer-open-v1', 'drawer-close-v1', 'drawer-open-v3', 'drawer-close-v3')


def valid_tasks(suite: str | None = None) -> list[str]:
    """All task names `make_env` accepts (of one suite, or of all). DMC names need dm_control to list."""
    suites = [suite] if suite else list(SUITES)
    names = []
    for name in suites:
        if name == 'dmc2gym':
            try:
                from env.dmc import dmc_task_names
                names += [f'dmc2gym_{task}' for task in dmc_task_names()]
            except ImportError:  # dm_control not installed: its tasks cannot be listed (nor made)
                pass
        elif name == 'gymnasium':
            names += [f'gymnasium_{task}' for task in _GYMNASIUM_TASKS]
        elif name == 'metaworld':
            names += [f'metaworld_{task}' for task in _METAWORLD_TASKS]
    return names


def _unknown_task(task: str, reason: str) -> ValueError:
    candidates = valid_tasks()
    by_lower = {name.lower(): name for name in candidates}
    close = [by_lower[name] for name in difflib.get_close_matches(task.lower(), list(by_lower), n=3, cutoff=0.4)]
    return ValueError(f'{reason} Closest valid tasks: {", ".join(close) or "none"}. '
                      f'Valid suites: {", ".join(SUITES)} (task = <suite>_<name>, '
                      f'e.g. dmc2gym_reacher_easy, gymnasium_Pusher-v5, metaworld_drawer-open-v1).')


def split_task(task: str) -> tuple[str, str]:
    """`<suite>_<name>` -> (suite, name), checking that both exist; raises ValueError naming the closest tasks."""
    suite, _, name = task.partition('_')
    if suite not in SUITES:
        raise _unknown_task(task, f'Unknown suite {suite!r} in task {task!r}.')
    if name in [full.partition('_')[2] for full in valid_tasks(suite)]:
        return suite, name
    if suite == 'dmc2gym':
        try:
            import dm_control  # noqa: F401  (only to tell a missing package from a misspelled task)
        except ImportError as error:
            raise ImportError(f'Task {task!r} needs dm_control: pip install -r requirements.txt') from error
    raise _unknown_task(task, f'Unknown task {task!r}.')


def _base_class(suite: str) -> type:
    module_name, class_name = SUITES[suite]
    return getattr(importlib.import_module(module_name), class_name)


def make_env(task: str, config: Any, seed: int, distractor: str) -> AgentEnv:
    """Builds the agent-facing env of `env/CONTRACT.md` for `task` (see the module docstring for names).

    config (attribute access or a mapping): `action_repeat`, `time_limit` (env steps; the episode is cut after
    `time_limit // action_repeat` agent steps), `size`, `camera`, `color`, `release_compat`, `legacy_inertia` (DMC
    only: MuJoCo < 2.1.1's capsule masses and inertias, `env/inertia.py`). `seed` drives every
    random choice of the env. `distractor` is the initial set (`env.set_distractor` switches at the next reset).

    With `release_compat` the DisWM release's protocol is reproduced (README, `--release_compat` table): DMC repeats
    each action `action_repeat`² control steps and DMC / Pusher return 2 × the reward of the last sub-step. Not for
    `method_name: vid2act`, whose own release has neither quirk.
    """
    suite, name = split_task(task)
    if config_get(config, 'legacy_inertia', False) and suite != 'dmc2gym':
        raise ValueError(f'--legacy_inertia applies to dmc2gym tasks only, not {task!r}: drop --legacy_inertia.')
    action_repeat = int(config_get(config, 'action_repeat'))
    time_limit = config_get(config, 'time_limit')
    # The env quirks are the DisWM release's; Vid2Act's release sums rewards over the repeat and repeats once.
    release_compat = (bool(config_get(config, 'release_compat', False))
                      and config_get(config, 'method_name', None) != 'vid2act')
    base = _base_class(suite)(name, config, seed, distractor)
    return wrap_base_env(
        base, action_repeat, time_limit,
        # The release's dmc2gym wrapper repeats inside (frame_skip) AND outside; DrawerWorld's sums correctly.
        inner_repeat=action_repeat if release_compat and suite == 'dmc2gym' else 1,
        release_reward=release_compat and suite in ('dmc2gym', 'gymnasium'))


def distractor_schedule(task: str, color_distractor: bool, clean_render: bool = False) -> dict[str, str]:
    """Distractor set per phase (docs/method.md, "Colour distractors", "When the environment switches");
    `dreamer.py` switches from the `*_1` to the `*_2` sets halfway through training.

    DMC / Pusher with `color_distractor`: train and eval both use the train colours, then both the test colours.
    Without it: train on the train colours and evaluate on the test colours throughout.
    DrawerWorld (either way): train on grid, then wood; evaluate on metal.
    `clean_render` (DMC only, not with `color_distractor`): dm_control's own rendering in every phase.
    """
    suite, _ = split_task(task)
    if clean_render:
        if suite != 'dmc2gym':
            raise ValueError(f'clean_render applies to dmc2gym tasks only, not {task!r}: drop --clean_render.')
        if color_distractor:
            raise ValueError('--clean_render True renders without distractors; it cannot be combined with '
                             '--color_distractor True. Pick one.')
        return dict.fromkeys(('train_1', 'train_2', 'eval_1', 'eval_2'), 'clean')
    if suite == 'metaworld':
        return {'train_1': 'grid', 'train_2': 'wood', 'eval_1': 'metal', 'eval_2': 'metal'}
    if color_distractor:
        return {'train_1': 'train', 'train_2': 'test', 'eval_1': 'train', 'eval_2': 'test'}
    return {'train_1': 'train', 'train_2': 'train', 'eval_1': 'test', 'eval_2': 'test'}


__all__ = ['SUITES', 'make_env', 'distractor_schedule', 'split_task', 'valid_tasks']
