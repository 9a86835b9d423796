"""The learning protocol (docs/learning.md): DreamerV2 on clean DMC from pixels, compared with the published
DreamerV2 curves; and the small-scale DisWM-vs-DreamerV2 comparison under the colour distractor.

    python scripts/learning.py                                   # 3 tasks x seed 0, 60k env steps each, then report
    python scripts/learning.py --tasks cartpole_balance --seeds 0,1 --precision 32    # fp32 on any machine
    python scripts/learning.py --report_only                     # table + PNG from the runs on disk
    python scripts/learning.py --report_only --compare runs/learning_bf16   # the same runs made differently, side by side
    python scripts/learning.py --report_only --compare runs/learning_bf16 --labels fp32,bf16   # ... named in the report
    python scripts/learning.py --dry_run                         # print the commands, run nothing
    python scripts/learning.py --model official --tasks cheetah_run   # official DreamerV2's model (runs/learning_official)
    python scripts/learning.py --model official_all --tasks finger_spin   # ... trained as official does (all settable)
    python scripts/learning.py --experiment diswm                # the DisWM pipeline at small scale (below)

Runs go to `<root>/<task>/seed_<n>` (one dreamer.py run folder each; rerunning the same command resumes an unfinished
run and skips a finished one). The report is `<out>/learning_table.md` (the mean training return per 30k window, the
statistic the published curves hold, and the evaluation returns, against the published seeds),
`<out>/learning_training.md` (training metrics per logged step) and `<out>/learning_curves.png` (out defaults to
root). Published curves: `scripts/reference/dreamerv2_dmc_vision.json` (its `source` names where they come from).

`--experiment diswm` runs the paper's pipeline with the same schedule, under `<root>/diswm/`: videos of finger_spin
with the colour distractor collected by the finished finger_spin protocol run's checkpoint (`videos/`; or
`--video_policy random|CHECKPOINT`), a shortened
stage-1 pretraining (`pretrain/`), then DisWM and DreamerV2 with `--color_distractor True` on `--target`
(`<target>/<method>/seed_<n>`); its report is `diswm_table.md` and `diswm_curves.png` (returns and the distillation
terms `distill_loss`, `distill_eta`).
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))
sys.path.insert(0, ROOT)

import rundata  # noqa: E402
import sweep  # noqa: E402

REFERENCE = os.path.join(ROOT, 'scripts', 'reference', 'dreamerv2_dmc_vision.json')
TASKS = ('cartpole_balance', 'finger_spin', 'cheetah_run')

# The official DreamerV2 DMC-vision schedule on this project's default model: batch 16 x 50, one update every 5 agent
# steps, action repeat 2, 1000 prefill agent steps and 100 updates at the first training call, evaluation every 10k
# env steps with 10 episodes; clean rendering (no distractor), as in the published runs. Training metrics (losses,
# actor entropy and gradient norms, imagined returns) are averaged every 2500 env steps. The dmc2gym preset's other
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
    'prefill_updates': '100',
    'eval_every': '1e4',
    'eval_episodes': '10',
    'log_every': '2500',
}


# The DisWM experiment: source (video) task and its action size; the target's method-specific flags.
DISWM_SOURCE, DISWM_SOURCE_ACTIONS = 'finger_spin', 2
DISWM_METHODS = {
    'diswm': {'method_name': 'diswm', 'beta_vae': 'True'},
    'dreamerv2': {'method_name': 'dreamerv2'},
}


def run_dir(root: str, task: str, seed: int) -> str:
    return os.path.join(root, task, f'seed_{seed}')


# `--model`: which world model and heads the protocol trains. release: this project's default (the DisWM release's
# DMC model, Gaussian latents); official: official DreamerV2's DMC-vision model (configs.yaml, dreamerv2_official),
# the model behind the published curves; official_all: that model trained as official DreamerV2 trains it in every
# respect this project can set (+ dreamerv2_official_training: Glorot init, actor offset 1, within-episode replay).
MODEL_PRESETS = {'release': [], 'official': ['dreamerv2_official'],
                 'official_all': ['dreamerv2_official', 'dreamerv2_official_training']}


def _dreamer(task: str, flags: dict, args) -> list[str]:
    presets = MODEL_PRESETS[args.model]
    cmd = [sys.executable, os.path.join(ROOT, 'dreamer.py'), '--configs', 'defaults', 'dmc2gym', *presets,
           '--task', f'dmc2gym_{task}']
    for key, value in flags.items():
        cmd += [f'--{key}', value]
    return cmd + list(args.extra)


def build_command(task: str, seed: int, args) -> list[str]:
    """The dreamer.py command of one protocol run (flags in a fixed order, so reruns are the same command)."""
    logdir = run_dir(args.root, task, seed)
    flags = dict(PROTOCOL, steps=str(args.steps), precision=run_precision(logdir, args), seed=str(seed),
                 threads=str(args.threads), logdir=logdir, progress=str(args.progress))
    return _dreamer(task, flags, args)


def diswm_root(args) -> str:
    return os.path.join(args.root, 'diswm')


def video_policy(args, seed: int) -> str:
    """What collects the DisWM experiment's videos: `--video_policy` (a checkpoint, or `random`), by default the
    finger_spin protocol run's checkpoint of the same seed."""
    return args.video_policy or os.path.join(run_dir(args.root, DISWM_SOURCE, seed), 'checkpoint.pt')


def diswm_stages(args, seed: int) -> list[tuple[str, str, list[str]]]:
    """(name, output folder, command) of the DisWM experiment's stages for one seed, in order."""
    root = diswm_root(args)
    videos, pretrain = os.path.join(root, 'videos', DISWM_SOURCE), os.path.join(root, 'pretrain', f'seed_{seed}')
    checkpoint = video_policy(args, seed)
    stages = [
        ('videos', videos, [sys.executable, os.path.join(ROOT, 'scripts', 'collect_videos.py'),
                            '--task', f'dmc2gym_{DISWM_SOURCE}', '--policy', checkpoint,
                            '--episodes', str(args.video_episodes), '--out', videos, '--seed', str(seed),
                            '--progress', 'False']),
        ('pretrain', pretrain, _dreamer(DISWM_SOURCE, {
            'beta_vae_pretrain': 'True', 'beta_vae': 'True', 'pretrain_action_num': str(DISWM_SOURCE_ACTIONS),
            'pretrain_datasets_path': videos, 'batch_size': '16', 'batch_length': '50',
            'pretrain_steps': str(args.pretrain_updates * 16), 'pretrain_save_every': '1000',
            'precision': run_precision(pretrain, args), 'seed': str(seed), 'threads': str(args.threads),
            'logdir': pretrain, 'progress': str(args.progress)}, args)),
    ]
    online = {k: v for k, v in PROTOCOL.items() if k not in ('method_name', 'clean_render')}
    for method, method_flags in DISWM_METHODS.items():
        logdir = os.path.join(root, args.target, method, f'seed_{seed}')
        flags = dict(online, **method_flags, color_distractor='True', steps=str(args.steps),
                     precision=run_precision(logdir, args), seed=str(seed), threads=str(args.threads), logdir=logdir,
                     progress=str(args.progress))
        if method == 'diswm':
            flags.update(pretrain_checkpoint_path=pretrain, pretrain_action_num=str(DISWM_SOURCE_ACTIONS))
        stages.append((method, logdir, _dreamer(args.target, flags, args)))
    return stages


def stage_done(name: str, folder: str, args) -> bool:
    if name == 'videos':
        return len([f for f in os.listdir(folder) if f.endswith('.npz')]) >= args.video_episodes \
            if os.path.isdir(folder) else False
    if name == 'pretrain':
        try:
            with open(os.path.join(folder, 'meta.json')) as f:
                return json.load(f).get('updates', 0) >= args.pretrain_updates
        except (OSError, ValueError):
            return False
    return is_finished(folder, args.steps)


def eval_curve(run: str, rows: list[dict] | None = None) -> tuple[list[int], list[float]]:
    """(env steps, mean evaluation return) of one run folder, from its metrics.jsonl (or its rows, already read)."""
    if rows is None:
        rows, _ = rundata.read_metrics(os.path.join(run, 'metrics.jsonl'))
    steps, values = rundata.series(rows, 'eval_return_average')
    if not steps:
        steps, values = rundata.series(rows, 'eval_return')
    return steps, values


def is_finished(run: str, steps: int, rows: list[dict] | None = None) -> bool:
    done, _ = eval_curve(run, rows)
    return bool(done) and done[-1] >= steps


EPISODE_NAME = re.compile(r'^(\d{8}T\d{12})-[0-9a-f]+-(\d+)\.npz$')   # replay.save_episode's names


def run_status(run: str, steps: int) -> dict:
    """Where a protocol run stands, from its folder: state (not started | running | stopped | done), env steps
    collected (the training episodes on disk), the last evaluation and train return, and the wall time per 1000 env
    steps over its last five episodes after the prefill (from the episodes' timestamps) with the time left at that pace."""
    config = rundata.read_config(run)
    if not config:
        return dict(state='not started', env_steps=0)
    repeat = int(config.get('action_repeat', 1))
    episodes = []
    for name in sorted(os.listdir(os.path.join(run, 'train_eps'))) if os.path.isdir(os.path.join(run, 'train_eps')) \
            else []:
        match = EPISODE_NAME.match(name)
        if match:
            stamp = datetime.datetime.strptime(match.group(1), '%Y%m%dT%H%M%S%f').timestamp()
            episodes.append((stamp, int(match.group(2)) * repeat))
    status = dict(env_steps=sum(n for _, n in episodes))
    rows, _ = rundata.read_metrics(os.path.join(run, 'metrics.jsonl'))
    eval_steps, eval_values = eval_curve(run, rows)
    status['state'] = 'done' if is_finished(run, steps, rows) else 'running' if rundata.in_use(run) else 'stopped'
    if eval_steps:
        status['eval'] = (eval_steps[-1], eval_values[-1])
    train_steps, train_values = rundata.series(rows, 'train_return')
    if train_steps:
        status['train'] = (train_steps[-1], train_values[-1])
    windows = train_windows(rows)
    if windows:                  # the last complete 30k window: the published curves' statistic
        end = max(windows)
        status['window'] = (end, windows[end][0])
    # Episodes after the random prefill only (those are written back to back, without updates).
    prefill_env_steps = int(float(config.get('prefill', 0))) * repeat
    before = itertools.accumulate((n for _, n in episodes), initial=0)   # env steps collected before each episode
    trained = [e for e, done in zip(episodes, before) if done >= prefill_env_steps]
    last = trained[-6:]
    paces = [(t1 - t0) / n1 * 1000 for (t0, _), (t1, n1) in zip(last, last[1:])]
    if paces and status['state'] != 'done':
        pace = sorted(paces)[len(paces) // 2]   # median: a resume gap or a pause does not set the pace
        status['minutes_per_1k'] = pace / 60
        status['hours_left'] = max(0, steps - status['env_steps']) / 1000 * pace / 3600
    return status


def print_status(runs: list[str], steps: int) -> None:
    print(f"{'state':<12} {'env steps':>17}  {'last eval':>16}  {'last train':>16}  {'train, 30k window':>18}  "
          f"{'min/1k':>6}  {'left':>6}  run")
    for run in runs:
        st = run_status(run, steps)
        at = lambda key: f'{st[key][1]:.1f} @{st[key][0] / 1000:g}k' if key in st else '-'  # noqa: E731
        window = f"{st['window'][1]:.1f} @{window_name(st['window'][0])}" if 'window' in st else '-'
        pace = f"{st['minutes_per_1k']:.1f}" if 'minutes_per_1k' in st else '-'
        left = f"{st['hours_left']:.1f} h" if 'hours_left' in st else '-'
        print(f"{st['state']:<12} {st['env_steps']:>8} / {steps:<7}  {at('eval'):>16}  {at('train'):>16}  "
              f"{window:>18}  {pace:>6}  {left:>6}  {run}")


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


# What the published curves hold (docs/learning.md, "What the published curves measure"): official DreamerV2's
# plotting script bins each run's logged returns into 30k-env-step windows and keeps each window's mean. With one
# evaluation episode every 10k env steps and one training episode every 1000, only the training episodes fill a
# window 29-30 times, as the published values' exact fractions show: the value at x is the mean return of the
# training episodes (sampled actions) that ended in (x - 30k, x], not an evaluation at the checkpoint x.
WINDOW = 30_000


def train_windows(rows: list[dict], width: int = WINDOW) -> dict[int, tuple[float, int]]:
    """{window end: (mean training-episode return, episodes)} per complete `width`-env-step window (0, width],
    (width, 2 width], ... from a run's metrics rows: each logged row holds the mean return of the episodes that
    ended since the row before and the episode counter, so a window's mean weights each row by its episodes (rows
    without a counter, from runs older than it, count once). A window is complete once a row at its end is logged;
    when a resumed run logged a step twice the later row wins, as everywhere in these reports."""
    by_step = {}
    for row in rows:
        if isinstance(row.get('train_return'), (int, float)) and row['train_return'] == row['train_return']:
            by_step[int(row['step'])] = row
    windows, before = {}, 0
    for step in sorted(by_step):
        row = by_step[step]
        count = row.get('episodes')
        weight = count - before if isinstance(count, (int, float)) and count > before else 1
        before = count if isinstance(count, (int, float)) else before
        end = -(-step // width) * width          # the window (end - width, end] this row falls in
        total, episodes = windows.get(end, (0.0, 0))
        windows[end] = (total + row['train_return'] * weight, episodes + weight)
    last = max(by_step, default=0)
    return {end: (total / episodes, int(episodes)) for end, (total, episodes) in sorted(windows.items())
            if end <= last and episodes}


def window_name(end: int) -> str:
    """How a window is named in tables and the status line: '30-60k' for the window ending at 60k."""
    return f'{(end - WINDOW) // 1000}-{end // 1000}k'


def collect_windows(root: str, tasks, seeds) -> dict:
    """{task: {seed: {window end: (mean training return, episodes)}}} for the runs with a complete window."""
    found = {}
    for task in tasks:
        for seed in seeds:
            rows, _ = rundata.read_metrics(os.path.join(run_dir(root, task, seed), 'metrics.jsonl'))
            windows = train_windows(rows)
            if windows:
                found.setdefault(task, {})[seed] = windows
    return found


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
            lines.append(f'| {task} | {step // 1000}k | {against_published(ours, reference, task, step)} |')
    return '\n'.join(lines) + '\n'


def against_published(ours: list, reference: dict, task: str, step: int) -> str:
    """Table cells: this project's values (None: a seed without one) and their mean, then the published seeds'
    min, mean and max at `step` with the mean's verdict (inside / below / above), or dashes where none is published."""
    ours = [v for v in ours if v is not None]
    mean = sum(ours) / len(ours)
    ref = reference_at(reference, task, step)
    if ref:
        verdict = 'below' if mean < ref[0] else 'above' if mean > ref[2] else 'inside'
        ref_text = f'{ref[0]:.1f} | {ref[1]:.1f} | {ref[2]:.1f} | {verdict}'
    else:
        ref_text = '– | – | – | –'
    return ', '.join(f'{v:.1f}' for v in ours) + f' | {mean:.1f} | {ref_text}'


def window_table(found: dict, reference: dict) -> str:
    """Markdown: per task and 30k window, this project's mean training-episode return per seed and their mean,
    against the published seeds' values for the same window (the statistic they hold: `train_windows`)."""
    lines = ['| task | window (env steps) | this project: seeds | mean | published min | published mean | '
             'published max | vs published |',
             '|---|---|---|---|---|---|---|---|']
    for task, runs in found.items():
        for end in sorted({e for windows in runs.values() for e in windows}):
            ours = [windows[end][0] for windows in runs.values() if end in windows]
            lines.append(f'| {task} | {window_name(end)} | {against_published(ours, reference, task, end)} |')
    return '\n'.join(lines) + '\n'


WINDOW_HEADING = '## Training return per 30k window: the statistic of the published curves\n\n'
TABLE_HEADINGS = (
    WINDOW_HEADING +
    'Mean return of the training episodes (sampled actions) that ended in each window, as official DreamerV2\'s '
    'published curves hold it (docs/learning.md, "What the published curves measure").\n\n',
    '\n## Evaluation return at each evaluation\n\n'
    'Mean of the evaluation episodes (the actor\'s mean action) at each evaluation; the published column repeats '
    'the window means above at their window\'s end: the published runs have no evaluation of this kind.\n\n')


# What the training table shows per logged step (docs/learning.md, "Results"): the signs of learning and of the
# failure modes the investigation looked for (bang-bang actor, stalled world model, collapsing values).
TRAINING_COLUMNS = (('train_return', 'train return', '.1f'), ('eval_return_average', 'eval return', '.1f'),
                    ('actor_entropy', 'actor entropy', '.3f'), ('actor_grad_norm', 'actor grad norm', '.3g'),
                    ('imag_value', 'imagined value', '.2f'), ('image_loss', 'image loss', '.0f'),
                    ('reward_loss', 'reward loss', '.3f'), ('kl_loss', 'KL loss', '.2f'), ('updates', 'updates', '.0f'))


def training_table(root: str, tasks, seeds) -> str:
    """Markdown: per run and logged step, the training metrics of TRAINING_COLUMNS ('–' where not logged)."""
    names = [title for _, title, _ in TRAINING_COLUMNS]
    lines = ['| task | seed | env steps | ' + ' | '.join(names) + ' |', '|---|---|---|' + '---|' * len(names)]
    for task in tasks:
        for seed in seeds:
            rows, _ = rundata.read_metrics(os.path.join(run_dir(root, task, seed), 'metrics.jsonl'))
            columns = [dict(zip(*rundata.series(rows, key))) for key, _, _ in TRAINING_COLUMNS]
            for step in sorted(set().union(*columns)):
                cells = ['–' if step not in c else format(c[step], fmt) for c, (_, _, fmt) in zip(columns,
                                                                                                TRAINING_COLUMNS)]
                lines.append(f'| {task} | {seed} | {step / 1000:g}k | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def published_band(ax, curves: dict | None, max_step: int) -> None:
    """The published seeds' min-max band and mean up to `max_step` on a matplotlib axis (nothing without curves)."""
    if not curves:
        return
    xs = [x for x in curves['xs'] if x <= max_step]
    cols = [[seed[i] for seed in curves['seeds'].values()] for i in range(len(xs))]
    ax.fill_between(xs, [min(c) for c in cols], [max(c) for c in cols], color='0.8',
                    label=f'DreamerV2 published ({len(curves["seeds"])} seeds, min-max)')
    ax.plot(xs, [sum(c) / len(c) for c in cols], color='0.45', ls='--', marker='s', ms=3, label='published mean')


def steps_axis(ax, max_step: int) -> None:
    """An x axis of environment steps from 0 to `max_step`, its ticks in thousands (10k, 20k, ...)."""
    from matplotlib.ticker import FuncFormatter
    ax.set_xlabel('environment steps')
    ax.set_xlim(0, max_step)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f'{x / 1000:g}k' if x else '0'))


def plot(found: dict, reference: dict, path: str, max_step: int, windows: dict | None = None) -> None:
    """One panel per task: the published seeds' min-max band and mean, this project's seeds' evaluation curves and,
    where given (`collect_windows`), their mean training returns per 30k window, the published curves' statistic,
    as open squares at each window's end."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    tasks = list(found)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    seeds = sorted({seed for task in tasks for seed in found[task]})   # one colour per seed in every panel
    for ax, task in zip(axes[0], tasks):
        published_band(ax, reference.get(task), max_step)
        for seed, (steps, values) in sorted(found[task].items()):
            ax.plot(steps, values, marker='o', ms=3, color=f'C{seeds.index(seed) % 10}',
                    label=f'seed {seed}: evaluation')
        for seed, means in sorted((windows or {}).get(task, {}).items()):
            ends = sorted(means)
            colour = f'C{seeds.index(seed) % 10}' if seed in seeds else f'C{len(seeds) % 10}'
            ax.plot(ends, [means[e][0] for e in ends], marker='s', ms=6, mfc='none', ls=':', color=colour,
                    label=f'seed {seed}: train return, 30k window')
        ax.set_title(task)
        steps_axis(ax, max_step)
        ax.set_ylim(0, 1000)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel('return')
    shown = set()
    for ax in axes[0]:        # the first panel's legend, and another wherever a panel has seeds not listed yet
        labels = set(ax.get_legend_handles_labels()[1])
        if not labels <= shown:
            ax.legend(fontsize=7, loc='upper left')
            shown |= labels
    fig.tight_layout()
    tmp = path + '.tmp.png'
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def run_label(run: str) -> str:
    """How a compared run is named in the tables: its precision as dreamer.py recorded it (fp32, bf16, fp16)."""
    precision = str(rundata.read_config(run).get('precision', '?'))
    return {'32': 'fp32', '16': 'fp16'}.get(precision, precision)


def compare_runs(roots: list[str], tasks, seeds, names: list[str] | None = None, windows: bool = False
                 ) -> list[tuple[str, int, list[tuple[str, dict]]]]:
    """(task, seed, [(label, {env step: (eval mean, eval std)}) per root]) for every task and seed that has
    evaluations under at least two of the roots; with `windows`, {window end: (mean training return, None)} per
    complete 30k window instead (`train_windows`). Labels are `names` (one per root, `--labels`) where given, else
    the runs' precisions, with their root where two agree."""
    found = []
    for task in tasks:
        for seed in seeds:
            runs = []
            for index, root in enumerate(roots):
                folder = run_dir(root, task, seed)
                rows, _ = rundata.read_metrics(os.path.join(folder, 'metrics.jsonl'))
                if windows:
                    curve = {end: (mean, None) for end, (mean, _) in train_windows(rows).items()}
                else:
                    steps, means = eval_curve(folder, rows)
                    stds = dict(zip(*rundata.series(rows, 'eval_return_std')))
                    curve = {s: (m, stds.get(s)) for s, m in zip(steps, means)}
                if curve:
                    label = names[index] if names else run_label(folder)
                    runs.append((label, root, curve))
            if len(runs) >= 2:
                labels = [label for label, _, _ in runs]   # `names` are distinct; precisions may repeat
                found.append((task, seed, [(label if labels.count(label) == 1 else f'{label} ({root})', curve)
                                           for label, root, curve in runs]))
    return found


def compare_table(found, reference: dict, windows: bool = False) -> str:
    """Markdown: per task, seed and evaluation step, each compared run's eval return (mean ± std over its episodes),
    the difference of every other run from the first, and the published DreamerV2 seeds' spread (max - min) where
    published: a difference inside that spread is within seed noise at that step ("within it", one verdict per
    difference, in the order of the difference columns). With `windows` (`compare_runs(..., windows=True)`), per
    30k window the mean training returns, the published curves' statistic."""
    lines, current = [], None
    for task, seed, runs in found:
        labels = [label for label, _ in runs]
        if labels != current:        # a new header wherever the compared runs are named differently
            lines += ([''] if lines else []) + [_compare_header(labels, 'window (env steps)' if windows else
                                                                'env steps'),
                                               '|---|---|---|' + '---|' * (2 * len(labels) + 1)]
            current = labels
        for step in sorted(set().union(*[curve for _, curve in runs])):
            cells = []
            for _, curve in runs:
                mean, std = curve.get(step, (None, None))
                cells.append('–' if mean is None else f'{mean:.1f}' + ('' if std is None else f' ± {std:.1f}'))
            first = runs[0][1].get(step)
            diffs = [None if first is None or curve.get(step) is None else curve[step][0] - first[0]
                     for _, curve in runs[1:]]
            ref = reference_at(reference, task, step)
            spread = None if ref is None else ref[2] - ref[0]
            verdicts = ['–' if diff is None or spread is None else 'yes' if abs(diff) <= spread else 'no'
                        for diff in diffs]
            cells += ['–' if diff is None else f'{diff:+.1f}' for diff in diffs]
            cells += ['–' if spread is None else f'{spread:.1f}', ' / '.join(verdicts)]
            at = window_name(step) if windows else f'{step / 1000:g}k'
            lines.append(f'| {task} | {seed} | {at} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def _compare_header(labels: list[str], steps: str = 'env steps') -> str:
    diffs = ' | '.join(f'{label} − {labels[0]}' for label in labels[1:])
    return (f'| task | seed | {steps} | ' + ' | '.join(labels) + f' | {diffs} | '
            'published spread (max − min) | within it |')


def colour_per_label(found) -> dict[str, str]:
    """{label: matplotlib colour}, in the order the labels first appear in `compare_runs`' result."""
    labels = list(dict.fromkeys(label for _, _, runs in found for label, _ in runs))
    return {label: f'C{index % 10}' for index, label in enumerate(labels)}


def compare_plot(found, reference: dict, path: str, max_step: int) -> None:
    """One panel per task and seed: the published band and each compared run's curve with its episodes' std. A
    label keeps its colour in every panel, also in panels where an earlier root has no run."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    colours = colour_per_label(found)
    fig, axes = plt.subplots(1, len(found), figsize=(4.2 * len(found), 3.4), squeeze=False)
    for ax, (task, seed, runs) in zip(axes[0], found):
        published_band(ax, reference.get(task), max_step)
        for label, curve in runs:
            steps = sorted(curve)
            ax.errorbar(steps, [curve[s][0] for s in steps], yerr=[curve[s][1] or 0 for s in steps], marker='o',
                        ms=3, capsize=2, color=colours[label], label=f'{label}, seed {seed}')
        ax.set_title(f'{task}, seed {seed}')
        steps_axis(ax, max_step)
        ax.set_ylim(0, 1000)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc='upper left')
    axes[0][0].set_ylabel('evaluation return')
    fig.tight_layout()
    tmp = path + '.tmp.png'
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def diswm_curves(args, seeds) -> dict:
    """{method: {seed: rows of metrics.jsonl}} of the DisWM experiment's online runs."""
    found = {}
    for method in DISWM_METHODS:
        for seed in seeds:
            rows, _ = rundata.read_metrics(os.path.join(diswm_root(args), args.target, method, f'seed_{seed}',
                                                        'metrics.jsonl'))
            if rows:
                found.setdefault(method, {})[seed] = rows
    return found


def diswm_table(found: dict) -> str:
    """Markdown, the two methods side by side: per seed and logged step, each method's eval and train return and
    DisWM's distillation terms. A '–' is a value not logged at that step (evaluations come every 10k env steps, the
    training log every 2.5k)."""
    methods = list(DISWM_METHODS)
    header = (['seed', 'env steps'] + [f'{m} eval' for m in methods] + [f'{m} train' for m in methods]
              + ['distill_loss', 'distill_eta'])
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    fmt = lambda v: '–' if v is None else f'{v:.4g}'  # noqa: E731
    for seed in sorted(set().union(*[runs.keys() for runs in found.values()])):
        columns = []
        for key in ('eval_return_average', 'train_return'):
            for method in methods:
                rows = found.get(method, {}).get(seed, [])
                columns.append(dict(zip(*rundata.series(rows, key))))
        distill = found.get('diswm', {}).get(seed, [])
        columns += [dict(zip(*rundata.series(distill, key))) for key in ('distill_loss', 'distill_eta')]
        for step in sorted(set().union(*[c.keys() for c in columns])):
            cells = [str(seed), f'{step / 1000:g}k'] + [fmt(c.get(step)) for c in columns]
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def diswm_plot(found: dict, path: str, max_step: int) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, (ax_ret, ax_loss, ax_eta) = plt.subplots(1, 3, figsize=(12.6, 3.4))
    for method, runs in found.items():
        for seed, rows in sorted(runs.items()):
            label = f'{method} seed {seed}'
            ax_ret.plot(*rundata.series(rows, 'eval_return_average'), marker='o', ms=3, label=label)
            if method == 'diswm':
                ax_loss.plot(*rundata.series(rows, 'distill_loss'), marker='o', ms=3, label=label)
                ax_eta.plot(*rundata.series(rows, 'distill_eta'), marker='o', ms=3, label=label)
    # the distractor switches to its second colour set half-way through training (and evaluation with it)
    ax_ret.axvline(max_step / 2, color='grey', ls='--', lw=1, label='colour set 2 from here')
    for ax, title in ((ax_ret, 'evaluation return (colour distractor)'), (ax_loss, 'distill_loss'),
                      (ax_eta, 'distill_eta')):
        ax.set_title(title)
        steps_axis(ax, max_step)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path + '.tmp.png'
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
    with open(path + '.tmp', 'w') as f:
        f.write(text)
    os.replace(path + '.tmp', path)


def diswm_report(args) -> int:
    found = diswm_curves(args, args.seeds)
    if not found:
        print(f'No DisWM-experiment runs yet under {diswm_root(args)}.')
        return 1
    os.makedirs(args.out, exist_ok=True)
    text = diswm_table(found)
    write_text(os.path.join(args.out, 'diswm_table.md'), text)
    diswm_plot(found, os.path.join(args.out, 'diswm_curves.png'), args.steps)
    print(text)
    print(f"Table: {os.path.join(args.out, 'diswm_table.md')}\nCurves: {os.path.join(args.out, 'diswm_curves.png')}")
    return 0


def report(args) -> int:
    found = collect(args.root, args.tasks, args.seeds)
    if not found:
        print(f'No evaluations yet under {args.root} for tasks {", ".join(args.tasks)}, seeds {args.seeds}.')
        return 1
    reference = load_reference()
    os.makedirs(args.out, exist_ok=True)
    table_path = os.path.join(args.out, 'learning_table.md')
    windows = collect_windows(args.root, args.tasks, args.seeds)
    text = TABLE_HEADINGS[0] + window_table(windows, reference) + TABLE_HEADINGS[1] + table(found, reference)
    write_text(table_path, text)
    png_path = os.path.join(args.out, 'learning_curves.png')
    plot(found, reference, png_path, args.steps, windows)
    training_path = os.path.join(args.out, 'learning_training.md')
    write_text(training_path, training_table(args.root, args.tasks, args.seeds))
    print(text)
    print(f'Table: {table_path}\nTraining metrics: {training_path}\nCurves: {png_path}')
    if args.compare:
        compared = compare_runs([args.root] + args.compare, args.tasks, args.seeds, args.labels)
        if not compared:
            where = (f'both {args.root} and {args.compare[0]}' if len(args.compare) == 1 else
                     f'at least two of {", ".join([args.root] + args.compare)}')
            print(f'--compare: no task and seed has evaluations under {where}.')
            return 1
        compare_path = os.path.join(args.out, 'compare_table.md')
        compared_windows = compare_runs([args.root] + args.compare, args.tasks, args.seeds, args.labels, windows=True)
        text = compare_table(compared, reference)
        if compared_windows:
            text = (WINDOW_HEADING + compare_table(compared_windows, reference, windows=True)
                    + '\n## Evaluation return at each evaluation (mean ± std of its episodes)\n\n' + text)
        write_text(compare_path, text)
        compare_png = os.path.join(args.out, 'compare_curves.png')
        compare_plot(compared, reference, compare_png, args.steps)
        print(text)
        print(f'Comparison: {compare_path}\nCurves: {compare_png}')
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    words = lambda text: [w for w in text.split(',') if w]  # noqa: E731
    parser.add_argument('--experiment', default='dreamerv2', choices=['dreamerv2', 'diswm'],
                        help='dreamerv2: the clean-DMC protocol; diswm: the DisWM pipeline at small scale')
    parser.add_argument('--target', default='cartpole_balance', help='--experiment diswm: the online task')
    parser.add_argument('--video_episodes', type=int, default=50, help='--experiment diswm: finger_spin episodes')
    parser.add_argument('--video_policy', default=None,
                        help='--experiment diswm: what collects the finger_spin videos: a checkpoint.pt or random '
                             '(default: the finger_spin protocol run of the same seed, as the paper\'s trained agents)')
    parser.add_argument('--pretrain_updates', type=int, default=3000,
                        help='--experiment diswm: stage-1 updates at batch 16 x 50 (the release: 20k at 50 x 50)')
    parser.add_argument('--tasks', type=words, default=list(TASKS), help='DMC tasks without the dmc2gym_ prefix')
    parser.add_argument('--seeds', type=lambda t: [int(s) for s in words(t)], default=[0])
    parser.add_argument('--steps', type=int, default=60_000, help='env steps per run (default 60k)')
    parser.add_argument('--precision', default='auto', choices=['auto', '32', 'bf16', '16'],
                        help='auto (the protocol): bf16 for CPU runs where the CPU has hardware bf16 (AVX-512 BF16 / '
                             'AMX), else 32 (also on GPUs, where bf16 is slower); a run already started keeps the '
                             'precision it was started with | 32 | bf16 | 16 (docs/learning.md, "The protocol": '
                             'fp32 and bf16 learned alike within seed noise in two pairs)')
    parser.add_argument('--jobs', type=int, default=1,
                        help='runs at a time. 1: one after another, output on the console; more: output in '
                             '<run>/stdout.log (on this 2-core machine 2 runs of 1 thread make ~10%% more updates per '
                             'hour than 1 run of 2 threads, docs/benchmarks.md)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads per run (default: the CPU cores this process may use / --jobs)')
    parser.add_argument('--model', default='release', choices=list(MODEL_PRESETS),
                        help="release: this project's default model (the DisWM release's: 50-dim Gaussian latents, "
                             "conv depth 32); official: official DreamerV2's DMC-vision model, the one behind the "
                             "published curves (32 x 32 categorical latents, depth 48, 4-layer reward head and critic, "
                             "reward weight 1, weight decay 1e-6 per update; ~2x the update cost); official_all: "
                             "that model with the rest of official DreamerV2's training this project can set "
                             "(Glorot init, actor objective offset 1, replay sampled inside episodes)")
    parser.add_argument('--root', default=None,
                        help='folder of the run folders (default runs/learning; runs/learning_<model> with '
                             '--model official or official_all)')
    parser.add_argument('--out', default=None, help='folder for the table and PNG (default: --root)')
    parser.add_argument('--progress', default='True', choices=['True', 'False'], help="dreamer.py's progress bar")
    parser.add_argument('--report_only', action='store_true', help='only write the table and PNG')
    parser.add_argument('--compare', default=None, metavar='ROOT[,ROOT...]',
                        help='other results folders (comma-separated) with the same tasks and seeds run differently '
                             '(e.g. in bf16): the report also writes compare_table.md and compare_curves.png, the '
                             'runs side by side against the published seeds\' spread')
    parser.add_argument('--labels', default=None, metavar='NAME,NAME[,...]',
                        help='with --compare: names for the runs of --root and of each compared folder, in that order '
                             '(comma-separated), used in compare_table.md and compare_curves.png instead of their '
                             'precision and folder')
    parser.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
    parser.add_argument('--status', action='store_true',
                        help="print each run's state, env steps, last returns, pace and time left; run nothing")
    parser.add_argument('extra', nargs='*', help='further dreamer.py flags after --, e.g. -- --compile True')
    args = parser.parse_args(argv)
    unknown = [t for t in args.tasks if t not in load_reference()]
    if unknown:
        parser.error(f'no published curves for {", ".join(unknown)}; known: {", ".join(load_reference())}')
    if args.jobs < 1:
        parser.error('--jobs must be >= 1')
    if args.threads is None:
        args.threads = max(1, len(os.sched_getaffinity(0)) // args.jobs)
    if args.model != 'release' and args.experiment != 'dreamerv2':
        parser.error(f'--model {args.model} is for the DreamerV2 protocol (--experiment dreamerv2): the DisWM '
                     "experiment trains the release's model, whose video model it distils from")
    args.root = args.root or ('runs/learning' if args.model == 'release' else f'runs/learning_{args.model}')
    args.out = args.out or args.root
    if args.compare is not None:
        args.compare = [root for root in args.compare.split(',') if root]
        if not args.compare:
            parser.error('--compare needs at least one results folder')
    if args.labels is not None:
        args.labels = [name.strip() for name in args.labels.split(',')]
        if args.compare is None:
            parser.error('--labels names the runs of --compare; give --compare too')
        wanted = 1 + len(args.compare)
        if len(args.labels) != wanted or not all(args.labels) or len(set(args.labels)) != wanted:
            parser.error(f'--labels needs {wanted} distinct non-empty names (one for --root, one per '
                         f'--compare folder, in that order), got {len(args.labels)}: {",".join(args.labels)}')
    args.auto_precision = args.precision == 'auto'
    if args.auto_precision:
        args.precision = auto_precision(args.extra)
    return args


def run_precision(run: str, args) -> str:
    """The precision of one run's command: the one asked for; under `--precision auto`, a run folder that already
    holds a run keeps the precision that run was started with (a resume on another machine, or after the default
    changed, does not switch it halfway)."""
    if args.auto_precision:
        recorded = rundata.read_config(run).get('precision')
        if recorded is not None:
            return str(recorded)
    return args.precision


def auto_precision(extra: list[str]) -> str:
    """`--precision auto`: bf16 for runs on a CPU with hardware bf16, else fp32. Runs on a GPU (dreamer.py's device
    default when one is visible, or `-- --device cuda...`) get fp32: there an update is launch-bound and bf16 autocast
    is slower than fp32 (docs/benchmarks.md, the H200 table)."""
    import tools
    device = tools.make_config(['--configs', 'defaults', 'dmc2gym', *extra, '--logdir', 'unused']).device
    return 'bf16' if not str(device).startswith('cuda') and tools.cpu_has_native_bf16() else '32'


def run_stage(name: str, cmd: list[str], dry_run: bool) -> int:
    if dry_run:
        print(' '.join(cmd))
        return 0
    print(f'== {name}', flush=True)
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, MUJOCO_GL=os.environ.get('MUJOCO_GL', 'egl')))
    try:
        rc = proc.wait()
    except KeyboardInterrupt:        # Ctrl-C, or SIGTERM (sweep.interrupt_on_sigterm): the run stops with us
        sweep.stop_runs([(name, proc)], 'rerun the same command to resume it')
        raise SystemExit(130)
    print(f'== {name}: exit {rc} after {(time.time() - start) / 60:.1f} min', flush=True)
    return rc


def run_stages(stages, dry_run: bool) -> int:
    """Runs (label, done, command, ...) in order, skipping those whose `done()` is true; stops at the first failure."""
    for label, done, cmd, *_ in stages:
        if not dry_run and done():
            print(f'{label}: done; skipped.')
            continue
        rc = run_stage(label, cmd, dry_run)
        if rc != 0:
            return rc
    return 0


def launch(stages, args) -> int:
    """Runs (label, done, command, run folder, kind, needs) stages: with --jobs 1 one after another on the console
    (run_stages); with more, `jobs` at a time through scripts/sweep.py's local launcher (each run's output in
    <run>/stdout.log, one lock per run folder, pretraining before the runs that load it). Unfinished runs only."""
    if args.jobs == 1 or args.dry_run:
        return run_stages(stages, args.dry_run)
    todo = []
    for label, done, cmd, folder, kind, needs in stages:
        if done():
            print(f'{label}: done; skipped.')
        elif rundata.in_use(folder):
            print(f'{label}: another process is training it now; skipped.')
        else:
            todo.append(sweep.Run(folder, cmd, kind, needs=needs))
    if not todo:
        return 0
    os.environ.setdefault('MUJOCO_GL', 'egl')
    return 1 if sweep.launch_local(todo, args.jobs, sweep.gpu_ids()) else 0


def main_diswm(args) -> int:
    if not args.report_only:
        stages = []
        for seed in args.seeds:
            policy = video_policy(args, seed)
            if not args.dry_run and policy != 'random' and not os.path.exists(policy):
                if args.video_policy:
                    print(f'--video_policy {policy}: no such checkpoint (give a checkpoint.pt, a run folder\'s '
                          f'checkpoint, or random).')
                else:
                    print(f'The DisWM experiment collects its videos with the finger_spin protocol run of seed {seed}, '
                          f'which has no checkpoint yet: run  python scripts/learning.py --tasks {DISWM_SOURCE} '
                          f'--seeds {seed} --root {args.root}  first, or collect them with random actions: '
                          f'--video_policy random.')
                return 2
            seed_stages = diswm_stages(args, seed)
            pretrain = seed_stages[1][1]
            stages += [(f'{name} seed {seed}: {folder}', lambda n=name, f=folder: stage_done(n, f, args), cmd, folder,
                        name if name in ('videos', 'pretrain') else 'online', pretrain if name == 'diswm' else None)
                       for name, folder, cmd in seed_stages]
        # The videos (collected by a script, not a dreamer.py run) come first; the rest goes to the launcher.
        videos = [stage for stage in stages if stage[4] == 'videos']
        rc = run_stages(videos, args.dry_run)
        if rc == 0:
            rc = launch([stage for stage in stages if stage not in videos], args)
        if rc != 0 or args.dry_run:
            return rc
    return diswm_report(args)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.status:
        if args.experiment == 'diswm':
            runs = [folder for seed in args.seeds for name, folder, _ in diswm_stages(args, seed)
                    if name not in ('videos', 'pretrain')]
        else:
            runs = [run_dir(args.root, task, seed) for task in args.tasks for seed in args.seeds]
        print_status(runs, args.steps)
        return 0
    if args.experiment == 'diswm':
        return main_diswm(args)
    if not args.report_only:
        stages = [(f'{task} seed {seed}: {run_dir(args.root, task, seed)}',
                   lambda f=run_dir(args.root, task, seed): is_finished(f, args.steps), build_command(task, seed, args),
                   run_dir(args.root, task, seed), 'online', None)
                  for task in args.tasks for seed in args.seeds]
        rc = launch(stages, args)
        if rc != 0 or args.dry_run:
            return rc
    return report(args)


if __name__ == '__main__':
    sweep.interrupt_on_sigterm()
    try:
        sys.exit(main())
    except BrokenPipeError:          # e.g. `--status | head -3`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except KeyboardInterrupt:        # between runs or in the report (a running run is stopped by run_stage/launch)
        print('Interrupted.', file=sys.stderr)
        sys.exit(130)
