"""Measures agent steps per second of each env suite on this machine (action repeat 2, random actions, one 64x64
render per agent step: what training collects), plus the cost of a render alone.

Each env is built with `env.make_env` and its task's preset from configs.yaml. Episode resets that fall inside the
timed window are counted (they are part of real collection); the first reset and a few warm-up steps are not.

    MUJOCO_GL=egl .venv/bin/python scripts/env_speed.py              # ~1-2 min on a 2-core CPU
    MUJOCO_GL=egl .venv/bin/python scripts/env_speed.py --steps 50 --tasks gymnasium_Pusher-v5
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('MUJOCO_GL', 'egl')

import numpy as np  # noqa: E402

import env as envs  # noqa: E402
import tools  # noqa: E402

# task -> preset in configs.yaml
TASKS = {
    'dmc2gym_reacher_easy': 'dmc2gym',
    'dmc2gym_cheetah_run': 'dmc2gym',
    'dmc2gym_walker_walk': 'dmc2gym',
    'gymnasium_Pusher-v5': 'gymnasium',
    'metaworld_drawer-open-v1': 'metaworld',
}


def measure(task: str, preset: str, steps: int, warmup: int, seed: int) -> dict:
    config = tools.make_config(['--configs', preset])
    distractor = envs.distractor_schedule(task, True)['train_1']
    env = envs.make_env(task, config, seed, distractor)
    rng = np.random.default_rng(seed)
    try:
        env.reset()
        for _ in range(warmup):
            if env.step(rng.uniform(-1, 1, env.action_size).astype(np.float32))[2]:
                env.reset()
        start = time.perf_counter()
        for _ in range(steps):
            if env.step(rng.uniform(-1, 1, env.action_size).astype(np.float32))[2]:
                env.reset()
        elapsed = time.perf_counter() - start
        renders = max(10, steps // 5)
        start = time.perf_counter()
        for _ in range(renders):
            env.render()
        render_ms = (time.perf_counter() - start) / renders * 1000
    finally:
        env.close()
    return {'task': task, 'action_repeat': int(config.action_repeat), 'steps_per_s': steps / elapsed,
            'ms_per_step': elapsed / steps * 1000, 'render_ms': render_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tasks', nargs='*', default=list(TASKS), help=f'tasks to time (default: {list(TASKS)})')
    parser.add_argument('--steps', type=int, default=200, help='timed agent steps per task')
    parser.add_argument('--warmup', type=int, default=5, help='untimed agent steps first')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()

    print(f'{"task":28s} {"repeat":>6s} {"agent steps/s":>14s} {"ms/agent step":>14s} {"ms/render":>10s}')
    for task in args.tasks:
        if task not in TASKS:
            sys.exit(f'Unknown task {task!r}; choose from {", ".join(TASKS)}.')
        result = measure(task, TASKS[task], args.steps, args.warmup, args.seed)
        print(f'{task:28s} {result["action_repeat"]:6d} {result["steps_per_s"]:14.1f} '
              f'{result["ms_per_step"]:14.1f} {result["render_ms"]:10.1f}', flush=True)
    print(f'({os.cpu_count()} CPUs, MUJOCO_GL={os.environ["MUJOCO_GL"]}; single process, {args.steps} agent steps '
          f'each; other load on the machine slows these down)')


if __name__ == '__main__':
    main()
