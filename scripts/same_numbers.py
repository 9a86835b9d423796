"""Same seed, same numbers: runs short seeded dreamer.py runs with the code of another commit and with the working tree,
and compares every logged value. The check for a refactor that must not change behaviour.

    python scripts/same_numbers.py --base HEAD~1                 # DreamerV2 online, stage-1 pretraining, DisWM
    python scripts/same_numbers.py --base main --runs dv2         # one run only

The base commit is checked out into a temporary `git worktree`; both trees run the same commands (debug preset, seed 3,
one thread, CPU) on the same generated video episodes. Wall-clock fields (`time_*`, `fps`, `updates_per_second`) are
left out of the comparison. Exit code 0 when all compared runs logged identical values, 1 otherwise. About 4 minutes
per tree on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ['--configs', 'defaults', 'dmc2gym', 'debug', '--seed', '3', '--threads', '1', '--progress', 'False',
          '--tensorboard', 'False', '--device', 'cpu']
RUNS = ('dv2', 'pre', 'diswm')
CLOCK_KEYS = ('fps', 'updates_per_second')


def commands(out: str, videos: str) -> dict[str, list[str]]:
    """The runs' dreamer.py arguments, in order (DisWM loads the pretraining run's video model)."""
    return {
        'dv2': COMMON + ['--task', 'dmc2gym_cartpole_balance', '--logdir', os.path.join(out, 'dv2'), '--steps', '1000'],
        'pre': COMMON + ['--task', 'dmc2gym_reacher_easy', '--logdir', os.path.join(out, 'pre'), '--beta_vae_pretrain',
                         'True', '--beta_vae', 'True', '--pretrain_action_num', '2', '--pretrain_datasets_path',
                         videos, '--pretrain_steps', '80'],
        'diswm': COMMON + ['--task', 'dmc2gym_cartpole_balance', '--logdir', os.path.join(out, 'diswm'), '--steps',
                           '1000', '--distillation', 'True', '--beta_vae', 'True', '--pretrain_checkpoint_path',
                           os.path.join(out, 'pre')],
    }


def comparable(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith('time') and k not in CLOCK_KEYS}


def compare(rows_a: list[dict], rows_b: list[dict]) -> list[str]:
    """The differences between two runs' metrics rows (wall-clock fields left out), as lines; [] when identical."""
    diffs = []
    if len(rows_a) != len(rows_b):
        diffs.append(f'{len(rows_a)} rows vs {len(rows_b)}')
    for a, b in zip(map(comparable, rows_a), map(comparable, rows_b)):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                diffs.append(f"step {a.get('step', b.get('step'))}: {key} {a.get(key)!r} vs {b.get(key)!r}")
    return diffs


def read_rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_videos(directory: str, episodes: int = 4, length: int = 24) -> None:
    """Tiny learnable videos (seeded): a white square moving across a plain background of a random colour. The tests'
    pretraining data too (tests/test_methods.py)."""
    sys.path.insert(0, ROOT)
    import numpy as np

    import replay as replay_lib
    rng = np.random.default_rng(0)
    for _ in range(episodes):
        frames = np.zeros((length, 64, 64, 3), np.uint8)
        frames[:] = rng.integers(0, 255, 3)
        x, v = int(rng.integers(0, 48)), int(rng.choice([-2, 2]))
        for t in range(length):
            frames[t, 20:36, x:x + 16] = 255
            x = int(np.clip(x + v, 0, 48))
        replay_lib.save_episode(str(directory), dict(image=frames, is_terminal=np.zeros(length, bool),
                                                     logprob=np.zeros(length, np.float32)))


def run_tree(tree: str, out: str, videos: str, runs) -> None:
    env = dict(os.environ, OMP_NUM_THREADS='1', MUJOCO_GL=os.environ.get('MUJOCO_GL', 'egl'))
    for name, argv in commands(out, videos).items():
        if name not in runs:
            continue
        with open(os.path.join(out, f'{name}.log'), 'w') as log:
            rc = subprocess.call([sys.executable, 'dreamer.py'] + argv, cwd=tree, env=env, stdout=log, stderr=log)
        if rc != 0:
            raise SystemExit(f"{name} failed in {tree} (exit {rc}); see {os.path.join(out, name + '.log')}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--base', required=True, help='the commit to compare the working tree with')
    parser.add_argument('--runs', default=','.join(RUNS), help=f'comma-separated subset of {",".join(RUNS)}')
    parser.add_argument('--keep', default=None, help='keep the run folders here (default: a temporary folder)')
    args = parser.parse_args(argv)
    runs = [r for r in args.runs.split(',') if r]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        parser.error(f'unknown runs {unknown}; choose from {", ".join(RUNS)}')
    if 'diswm' in runs and 'pre' not in runs:
        runs.insert(0, 'pre')            # DisWM loads the video model of the pretraining run
    work = args.keep or tempfile.mkdtemp(prefix='same_numbers_')
    base_tree = os.path.join(work, 'base_tree')
    if subprocess.call(['git', 'worktree', 'add', '--detach', '-f', base_tree, args.base], cwd=ROOT) != 0:
        print(f"Error: could not check out '{args.base}' (a commit, branch or tag of this repository).",
              file=sys.stderr)
        return 2
    try:
        videos = os.path.join(work, 'videos')
        write_videos(videos)
        for label, tree in (('base', base_tree), ('working tree', ROOT)):
            print(f'Running {", ".join(runs)} with the {label} ({tree}) ...', flush=True)
            os.makedirs(os.path.join(work, label.replace(' ', '_')), exist_ok=True)
            run_tree(tree, os.path.join(work, label.replace(' ', '_')), videos, runs)
        same = True
        for name in runs:
            a = read_rows(os.path.join(work, 'base', name, 'metrics.jsonl'))
            b = read_rows(os.path.join(work, 'working_tree', name, 'metrics.jsonl'))
            diffs = compare(a, b)
            values = sum(len(comparable(r)) for r in a)
            print(f'{name}: {len(a)} rows, {values} logged values: ' + ('identical' if not diffs else
                                                                       f'{len(diffs)} differences'))
            for line in diffs[:20]:
                print('  ' + line)
            same &= not diffs
        return 0 if same else 1
    finally:
        subprocess.call(['git', 'worktree', 'remove', '--force', base_tree], cwd=ROOT)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
