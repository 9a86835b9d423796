"""Renders what the agent sees, one row per task and distractor set, into a PNG (default docs/gallery.png).

Each row builds the env with `env.make_env` and the task's preset from configs.yaml (so size, camera and colours are
exactly the agent's), and each column is a new episode after a few random agent steps, so a row shows how much the
colours / drawer position vary within one set. Frames are upscaled (nearest neighbour) to stay crisp.

    MUJOCO_GL=egl .venv/bin/python scripts/gallery.py                 # all rows, ~1 min on a 2-core CPU
    MUJOCO_GL=egl .venv/bin/python scripts/gallery.py --no-dmc --out /tmp/g.png
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('MUJOCO_GL', 'egl')

import matplotlib  # noqa: E402

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import env as envs  # noqa: E402
import tools  # noqa: E402

# (task, preset in configs.yaml, distractor sets shown)
ROWS = [
    ('dmc2gym_reacher_easy', 'dmc2gym', ('train', 'test')),
    ('dmc2gym_cheetah_run', 'dmc2gym', ('train', 'test')),
    ('gymnasium_Pusher-v5', 'gymnasium', ('train', 'test')),
    ('metaworld_drawer-open-v1', 'metaworld', ('grid', 'wood', 'metal')),
]


def episode_frames(task: str, preset: str, distractor: str, frames: int, steps: int, seed: int) -> list[np.ndarray]:
    """The agent's image after `steps` random agent steps, in each of `frames` consecutive episodes."""
    config = tools.make_config(['--configs', preset])
    env = envs.make_env(task, config, seed, distractor)
    rng = np.random.default_rng(seed)
    images = []
    try:
        for _ in range(frames):
            obs = env.reset()
            for _ in range(steps):
                obs, _, done, _ = env.step(rng.uniform(-1, 1, env.action_size).astype(np.float32))
                if done:
                    break
            images.append(obs['image'])
    finally:
        env.close()
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default=os.path.join(ROOT, 'docs', 'gallery.png'), help='PNG to write')
    parser.add_argument('--frames', type=int, default=5, help='columns: one new episode each')
    parser.add_argument('--steps', type=int, default=6, help='random agent steps before each frame')
    parser.add_argument('--scale', type=int, default=3, help='nearest-neighbour upscaling of each 64x64 frame')
    parser.add_argument('--seed', type=int, default=0, help='env seed of every row')
    parser.add_argument('--no-dmc', action='store_true', help='skip the DMC rows (e.g. without dm_control)')
    args = parser.parse_args()

    rows = [(task, preset, name) for task, preset, names in ROWS for name in names
            if not (args.no_dmc and preset == 'dmc2gym')]
    size = 64 * args.scale / 100  # inches per frame at dpi 100
    fig, axes = plt.subplots(len(rows), args.frames, figsize=(args.frames * size + 1.8, len(rows) * size + 0.6),
                             squeeze=False, dpi=100)
    for row, (task, preset, name) in enumerate(rows):
        print(f'{task} [{name}]', flush=True)
        images = episode_frames(task, preset, name, args.frames, args.steps, args.seed)
        for col, image in enumerate(images):
            ax = axes[row, col]
            ax.imshow(np.kron(image, np.ones((args.scale, args.scale, 1), np.uint8)), interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(f'{task.split("_", 1)[1]}\n{name}', rotation=0, ha='right', va='center', fontsize=9)
    fig.suptitle(f'What the agent sees (64x64, x{args.scale}): each column a new episode after {args.steps} random '
                 f'agent steps', fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))  # leave room for the title
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out)
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
