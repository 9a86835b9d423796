"""The learning protocol (docs/learning.md): DreamerV2 on clean DMC from pixels, compared with the published
DreamerV2 curves; and the small-scale DisWM-vs-DreamerV2 comparison under the colour distractor.

    python scripts/learning.py                                   # 3 tasks x seed 0, 60k env steps each, then report
    python scripts/learning.py --tasks cartpole_balance --seeds 0,1 --precision 32
    python scripts/learning.py --report_only                     # table + PNG from the runs on disk
    python scripts/learning.py --dry_run                         # print the dreamer.py commands, run nothing

Runs go to `<root>/<task>/seed_<n>` (one dreamer.py run folder each; rerunning the same command resumes an unfinished
run and skips a finished one). The report is `<out>/learning_table.md` and `<out>/learning_curves.png` (out defaults
to root). Published curves: `scripts/reference/dreamerv2_dmc_vision.json` (its `source` names where they come from).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))

import rundata  # noqa: E402

REFERENCE = os.path.join(ROOT, 'scripts', 'reference', 'dreamerv2_dmc_vision.json')
TASKS = ('cartpole_balance', 'finger_spin', 'cheetah_run')

# The official DreamerV2 DMC-vision schedule on this project's default model: batch 16 x 50, one update every 5 agent
# steps, action repeat 2, 1000 prefill agent steps and 100 updates at the first training call, evaluation every 10k
# env steps with 10 episodes; clean rendering (no distractor), as in the published runs. The dmc2gym preset's other
# values (reward_scale 2, LayerNorm GRU, time limit 1000) stay: they are this project's DMC setting.
PROTOCOL = {
    'method_name': 'dreamerv2',
    'clean_render': 'True',
    'batch_size': '16',
    'batch_length': '50',
    'train_every': '5',
    'train_steps': '1',
    'action_repeat': '2',
    'prefill': '1000',
    'pretrain': '100',
    'eval_every': '1e4',
    'eval_episodes': '10',
    'log_every': '1e4',
}


def run_dir(root: str, task: str, seed: int) -> str:
    return os.path.join(root, task, f'seed_{seed}')


def build_command(task: str, seed: int, args) -> list[str]:
    """The dreamer.py command of one protocol run (flags in a fixed order, so reruns are the same command)."""
    flags = dict(PROTOCOL, steps=str(args.steps), precision=args.precision, seed=str(seed), threads=str(args.threads),
                 logdir=run_dir(args.root, task, seed), progress=str(args.progress))
    cmd = [sys.executable, os.path.join(ROOT, 'dreamer.py'), '--configs', 'defaults', 'dmc2gym',
           '--task', f'dmc2gym_{task}']
    for key, value in flags.items():
        cmd += [f'--{key}', value]
    return cmd + list(args.extra)


def eval_curve(run: str) -> tuple[list[int], list[float]]:
    """(env steps, mean evaluation return) of one run folder, from its metrics.jsonl."""
    rows, _ = rundata.read_metrics(os.path.join(run, 'metrics.jsonl'))
    steps, values = rundata.series(rows, 'eval_return_average')
    if not steps:
        steps, values = rundata.series(rows, 'eval_return')
    return steps, values


def is_finished(run: str, steps: int) -> bool:
    done, _ = eval_curve(run)
    return bool(done) and done[-1] >= steps


def load_reference(path: str = REFERENCE) -> dict:
    """{task: {'xs': [env steps], 'seeds': {seed: [returns]}}} of the published runs."""
    with open(path) as f:
        return json.load(f)['tasks']


def reference_at(reference: dict, task: str, step: int) -> tuple[float, float, float] | None:
    """(min, mean, max) over the published seeds at exactly `step` env steps, or None where nothing is published."""
    curves = reference.get(task)
    if not curves or step not in curves['xs']:
        return None
    i = curves['xs'].index(step)
    values = [seed[i] for seed in curves['seeds'].values()]
    return min(values), sum(values) / len(values), max(values)


def collect(root: str, tasks, seeds) -> dict:
    """{task: {seed: (steps, returns)}} for the run folders that exist and have evaluations."""
    found = {}
    for task in tasks:
        for seed in seeds:
            steps, values = eval_curve(run_dir(root, task, seed))
            if steps:
                found.setdefault(task, {})[seed] = (steps, values)
    return found


def table(found: dict, reference: dict) -> str:
    """Markdown: per task and evaluation step, this project's return per seed and their mean, and the published
    seeds' min, mean and max (published curves start at 30k env steps, every 30k)."""
    lines = ['| task | env steps | this project: seeds | mean | published min | published mean | published max | '
             'vs published |',
             '|---|---|---|---|---|---|---|---|']
    for task, runs in found.items():
        steps = sorted({s for curve_steps, _ in runs.values() for s in curve_steps})
        for step in steps:
            ours = [dict(zip(*curve)).get(step) for curve in runs.values()]
            ours = [v for v in ours if v is not None]
            mean = sum(ours) / len(ours)
            ref = reference_at(reference, task, step)
            if ref:
                verdict = 'below' if mean < ref[0] else 'above' if mean > ref[2] else 'inside'
                ref_text = f'{ref[0]:.1f} | {ref[1]:.1f} | {ref[2]:.1f} | {verdict}'
            else:
                ref_text = '– | – | – | –'
            seeds_text = ', '.join(f'{v:.1f}' for v in ours)
            lines.append(f'| {task} | {step // 1000}k | {seeds_text} | {mean:.1f} | {ref_text} |')
    return '\n'.join(lines) + '\n'


def plot(found: dict, reference: dict, path: str, max_step: int) -> None:
    """One panel per task: the published seeds' min-max band and mean, and this project's seeds."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    tasks = list(found)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        curves = reference.get(task)
        if curves:
            xs = [x for x in curves['xs'] if x <= max_step]
            cols = [[seed[i] for seed in curves['seeds'].values()] for i in range(len(xs))]
            ax.fill_between(xs, [min(c) for c in cols], [max(c) for c in cols], color='0.8',
                            label=f'DreamerV2 published ({len(curves["seeds"])} seeds, min-max)')
            ax.plot(xs, [sum(c) / len(c) for c in cols], color='0.45', ls='--', marker='s', ms=3,
                    label='published mean')
        for seed, (steps, values) in sorted(found[task].items()):
            ax.plot(steps, values, marker='o', ms=3, label=f'this project, seed {seed}')
        ax.set_title(task)
        ax.set_xlabel('environment steps')
        ax.set_xlim(0, max_step)
        ax.set_ylim(0, 1000)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel('evaluation return')
    axes[0][0].legend(fontsize=7, loc='upper left')
    fig.tight_layout()
    tmp = path + '.tmp.png'
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def report(args) -> int:
    found = collect(args.root, args.tasks, args.seeds)
    if not found:
        print(f'No evaluations yet under {args.root} for tasks {", ".join(args.tasks)}, seeds {args.seeds}.')
        return 1
    reference = load_reference()
    os.makedirs(args.out, exist_ok=True)
    table_path = os.path.join(args.out, 'learning_table.md')
    text = table(found, reference)
    with open(table_path + '.tmp', 'w') as f:
        f.write(text)
    os.replace(table_path + '.tmp', table_path)
    png_path = os.path.join(args.out, 'learning_curves.png')
    plot(found, reference, png_path, args.steps)
    print(text)
    print(f'Table: {table_path}\nCurves: {png_path}')
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    words = lambda text: [w for w in text.split(',') if w]  # noqa: E731
    parser.add_argument('--tasks', type=words, default=list(TASKS), help='DMC tasks without the dmc2gym_ prefix')
    parser.add_argument('--seeds', type=lambda t: [int(s) for s in words(t)], default=[0])
    parser.add_argument('--steps', type=int, default=60_000, help='env steps per run (default 60k)')
    parser.add_argument('--precision', default='bf16', choices=['32', 'bf16', '16'])
    parser.add_argument('--threads', type=int, default=2, help='torch threads per run')
    parser.add_argument('--root', default='runs/learning', help='folder of the run folders')
    parser.add_argument('--out', default=None, help='folder for the table and PNG (default: --root)')
    parser.add_argument('--progress', default='True', choices=['True', 'False'], help="dreamer.py's progress bar")
    parser.add_argument('--report_only', action='store_true', help='only write the table and PNG')
    parser.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
    parser.add_argument('extra', nargs='*', help='further dreamer.py flags after --, e.g. -- --compile True')
    args = parser.parse_args(argv)
    unknown = [t for t in args.tasks if t not in load_reference()]
    if unknown:
        parser.error(f'no published curves for {", ".join(unknown)}; known: {", ".join(load_reference())}')
    args.out = args.out or args.root
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.report_only:
        for task in args.tasks:
            for seed in args.seeds:
                cmd = build_command(task, seed, args)
                folder = run_dir(args.root, task, seed)
                if args.dry_run:
                    print(' '.join(cmd))
                    continue
                if is_finished(folder, args.steps):
                    print(f'{task} seed {seed}: finished ({folder}); skipped.')
                    continue
                print(f'== {task} seed {seed}: {folder}', flush=True)
                start = time.time()
                rc = subprocess.call(cmd, cwd=ROOT, env=dict(os.environ, MUJOCO_GL=os.environ.get('MUJOCO_GL', 'egl')))
                print(f'== {task} seed {seed}: exit {rc} after {(time.time() - start) / 60:.1f} min', flush=True)
                if rc != 0:
                    return rc
        if args.dry_run:
            return 0
    return report(args)


if __name__ == '__main__':
    sys.exit(main())
