#!/usr/bin/env python
"""Learning curves (Figure-4 style) and a table of final evaluation results from every run under a folder.

    scripts/plot.py runs/                               # -> runs/plots/{curves.png,curves.pdf,final_results.md,...}
    scripts/plot.py runs/ --out figs --window 5 --experiment fig4
    scripts/plot.py runs/ --metric train_return         # any logged scalar; default: the paper's metric per task

Runs are found recursively (any folder with metrics.jsonl / config.yaml); task, method and seed come from the run's
config.yaml, else from the layout `<task>/<method>/seed_<n>`. Seeds of one (task, method, video source) are
interpolated onto the union of their evaluation steps; a step's mean and std (ddof 0) use the seeds that reached it.
Pretraining and --mode eval runs are not curves and are skipped here (report.py lists them).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import experiments as ex  # noqa: E402
import rundata  # noqa: E402

AUTO = 'auto'


@dataclasses.dataclass
class Group:
    """The seeds of one (task, method, source) and what was measured on them."""
    task: str
    method: str
    source: str | None
    metric: str
    scale: float
    runs: list
    series: list = dataclasses.field(default_factory=list)   # per run: (steps, values), possibly empty

    @property
    def label(self) -> str:
        return ex.method_label(self.method)

    @property
    def teacher_sources(self) -> list[str]:
        """A method with a teacher (Vid2Act): the source tasks its runs were given, else its teacher stage's."""
        method = ex.METHODS.get(self.method)
        if method is None or not method.teacher:
            return []
        for run in self.runs:
            tasks = rundata.source_tasks(run.config)
            if tasks:
                return tasks
        return list(ex.EXPERIMENTS[method.teacher].sources) if method.teacher in ex.EXPERIMENTS else []

    @property
    def unit(self) -> str:
        if self.metric == 'eval_success_rate':
            return 'success %'
        return 'return' if self.metric in ('eval_return_average', 'eval_return', 'train_return') else self.metric


def metric_for(task: str, metric: str) -> tuple[str, float]:
    """The metric plotted for `task` and its display scale (success rates in %)."""
    if metric == AUTO:
        known = ex.TASKS.get(task)
        return (known.metric, known.scale) if known else ('eval_return_average', 1.0)
    return metric, 100.0 if metric == 'eval_success_rate' else 1.0


def load_groups(root: str, metric: str = AUTO, experiment: str | None = None, warn=print) -> list[Group]:
    """Online runs under `root`, grouped by (task, method, source) in the paper's order."""
    targets = None
    if experiment:
        targets = {t for _, t in ex.EXPERIMENTS[experiment].pairs}
    groups: dict[tuple, Group] = {}
    runs = rundata.discover(root)
    partial = [r.path for r in runs if r.bad_lines]
    if partial:
        warn(f'skipped unreadable lines of metrics.jsonl in {len(partial)} run(s), e.g. {partial[0]} '
             f'(a partial last line is normal while a run is writing)')
    for run in runs:
        if run.kind != 'online' or (targets is not None and run.task not in targets):
            continue
        name, scale = metric_for(run.task, metric)
        key = (run.task, run.method, run.source)
        group = groups.setdefault(key, Group(run.task, run.method, run.source, name, scale, []))
        group.runs.append(run)
        group.series.append(rundata.series(run.rows, name, scale))
    order = {t: i for i, t in enumerate(ex.task_order())}
    methods = {m: i for i, m in enumerate(ex.METHODS)}
    return sorted(groups.values(), key=lambda g: (order.get(g.task, len(order)), g.task,
                                                  methods.get(g.method, len(methods)), g.method, g.source or ''))


def aggregate(series: list[tuple[list, list]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, std, n): seeds linearly interpolated onto the union of their steps, each only inside its own
    range, so a step's statistics use the seeds that reached it (std with ddof 0; 0 for a single seed)."""
    series = [(np.asarray(s, float), np.asarray(v, float)) for s, v in series if len(s)]
    if not series:
        empty = np.zeros(0)
        return empty, empty, empty, empty.astype(int)
    grid = np.unique(np.concatenate([s for s, _ in series]))
    table = np.full((len(series), len(grid)), np.nan)
    for i, (steps, values) in enumerate(series):
        inside = (grid >= steps[0]) & (grid <= steps[-1])
        table[i, inside] = np.interp(grid[inside], steps, values)
    n = np.sum(~np.isnan(table), 0)
    with np.errstate(invalid='ignore'):
        mean = np.nansum(table, 0) / np.maximum(n, 1)
        std = np.sqrt(np.nansum((table - mean) ** 2, 0) / np.maximum(n, 1))
    return grid, mean, std, n


def final_per_seed(steps: list, values: list, window: int) -> tuple[float, int, int] | None:
    """(mean of the last `window` evaluations, how many were used, last step) of one run; None without any."""
    if not values:
        return None
    used = values[-window:]
    return float(np.mean(used)), len(used), int(steps[-1])


@dataclasses.dataclass
class Summary:
    """One line of the final-results table."""
    group: Group
    seeds: list             # seeds with at least one evaluation
    finals: list            # their final values
    evals_used: int         # fewest evaluations averaged in a seed
    last_step: int          # smallest last step across seeds
    mean: float
    std: float
    paper: ex.PaperResult | None

    @property
    def n(self) -> int:
        return len(self.finals)


def summarise(groups: list[Group], window: int) -> list[Summary]:
    rows = []
    for group in groups:
        seeds, finals, used, last = [], [], [], []
        for run, (steps, values) in zip(group.runs, group.series):
            final = final_per_seed(steps, values, window)
            if final is not None:
                seeds.append(run.seed)
                finals.append(final[0])
                used.append(final[1])
                last.append(final[2])
        mean = float(np.mean(finals)) if finals else math.nan
        std = float(np.std(finals)) if finals else math.nan
        paper = None
        task = ex.TASKS.get(group.task)
        if task is not None and group.metric == task.metric:
            hits = ex.paper_results(group.task, group.method, group.source)
            paper = hits[0] if hits else None
        rows.append(Summary(group, seeds, finals, min(used, default=0), min(last, default=0), mean, std, paper))
    return rows


def _steps_text(step: int) -> str:
    if step >= 1e6:
        return f'{step / 1e6:.2f}M'
    return f'{step / 1e3:.0f}k' if step >= 1e3 else str(step)


def _tick(x, _pos=None) -> str:
    if x >= 1e6:
        return f'{x / 1e6:g}M'
    return f'{x / 1e3:g}k' if x >= 1e3 else f'{x:g}'


def _value_text(mean: float, std: float) -> str:
    return '—' if math.isnan(mean) else f'{mean:.1f} ± {std:.1f}'


def table_caption(window: int) -> str:
    return (f'Final evaluation: for each seed the mean of its last K = {window} evaluations (fewer if it has fewer; '
            f'"evals" is the fewest used), then mean ± std over seeds (std with ddof 0, so 0 for n = 1). '
            f'"Last step" is the smallest final env step across the seeds. DrawerWorld reports eval_success_rate '
            f'in %, the other tasks eval_return_average unless --metric says otherwise. Paper: ≈ marks values read '
            f'by eye off Fig. 4 at 1M steps; Tables A/B are exact (docs/method.md, "The paper\'s experiments").')


def _paper_text(paper: ex.PaperResult | None) -> str:
    return f'{paper.text()} ({paper.where})' if paper else ''


def _source_text(group: Group) -> str:
    if group.teacher_sources:   # Vid2Act: offline data of several tasks, through its teacher
        return 'teacher: ' + ', '.join(ex.source_label(t) for t in group.teacher_sources)
    return ex.task_label(group.source) if group.source else ('from scratch' if group.method == 'dreamerv2' else '')


def markdown_table(summaries: list[Summary], window: int) -> str:
    lines = [f'**Table.** {table_caption(window)}', '',
             '| Task | Video source | Method | Ours (mean ± std) | n | Evals | Last step | Paper |',
             '|---|---|---|---|---|---|---|---|']
    for s in summaries:
        g = s.group
        unit = f' ({g.unit})' if g.unit != 'return' else ''
        lines.append(f'| {ex.task_label(g.task)}{unit} | {_source_text(g)} | {g.label} | '
                     f'{_value_text(s.mean, s.std)} | {s.n} | {s.evals_used} | '
                     f'{_steps_text(s.last_step) if s.n else "no eval yet"} | {_paper_text(s.paper)} |')
    others = []
    for task in dict.fromkeys(s.group.task for s in summaries):
        rest = [r for r in ex.PAPER_RESULTS if r.target == task and r.method in ex.PAPER_ONLY_METHODS]
        if rest:
            others.append(f'- {ex.task_label(task)}: ' + ', '.join(
                f'{ex.method_label(r.method)} {r.text()} ({r.where})' for r in rest))
    if others:
        lines += ['', 'Paper baselines not run here:', *others]
    return '\n'.join(lines) + '\n'


CSV_FIELDS = ['task', 'task_env', 'source', 'method', 'metric', 'n_seeds', 'seeds', 'mean', 'std', 'window',
              'evals_used_min', 'last_step_min', 'per_seed', 'paper_mean', 'paper_std', 'paper_approx',
              'paper_where']


def csv_rows(summaries: list[Summary], window: int) -> list[dict]:
    out = []
    for s in summaries:
        g, p = s.group, s.paper
        out.append(dict(task=g.task, task_env=ex.TASKS[g.task].env if g.task in ex.TASKS else g.task,
                        source=g.source or '+'.join(g.teacher_sources), method=g.method, metric=g.metric, n_seeds=s.n,
                        seeds=' '.join(str(x) for x in s.seeds), mean='' if math.isnan(s.mean) else f'{s.mean:.6g}',
                        std='' if math.isnan(s.std) else f'{s.std:.6g}', window=window,
                        evals_used_min=s.evals_used, last_step_min=s.last_step,
                        per_seed=' '.join(f'{v:.6g}' for v in s.finals),
                        paper_mean='' if p is None else f'{p.mean:g}',
                        paper_std='' if p is None or p.std is None else f'{p.std:g}',
                        paper_approx='' if p is None else p.approx, paper_where='' if p is None else p.where))
    return out


def write_tables(summaries: list[Summary], window: int, out: str) -> tuple[str, str]:
    md, table = os.path.join(out, 'final_results.md'), os.path.join(out, 'final_results.csv')
    with open(md, 'w') as f:
        f.write(markdown_table(summaries, window))
    with open(table, 'w', newline='') as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        writer.writerows(csv_rows(summaries, window))
    return md, table


def write_curves_csv(groups: list[Group], out: str) -> str:
    path = os.path.join(out, 'curves.csv')
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['task', 'source', 'method', 'metric', 'step', 'mean', 'std', 'n'])
        for g in groups:
            for step, mean, std, n in zip(*aggregate(g.series)):
                writer.writerow([g.task, g.source or '', g.method, g.metric, int(step), f'{mean:.6g}', f'{std:.6g}',
                                 int(n)])
    return path


def plot_curves(groups: list[Group], out: str, dpi: int = 150) -> list[str]:
    """One panel per task, a line and a ±std band per method; PNG and PDF. Returns the paths ([] if no data)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    tasks = list(dict.fromkeys(g.task for g in groups if any(len(s[0]) for s in g.series)))
    if not tasks:
        return []
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.3 * rows), squeeze=False)
    handles, paper_handle = {}, None
    for ax, task in zip(axes.flat, tasks):
        panel = [g for g in groups if g.task == task]
        sources = {g.source for g in panel if g.source}
        scratch_only = all(not g.teacher_sources for g in panel)   # Vid2Act has no single video source
        named = sources or (set(ex.paper_sources(task)[:1]) if scratch_only else set())   # the paper's pairing
        title = ex.task_label(task)
        if len(named) == 1:
            title = f'{ex.task_label(next(iter(named)))} → {title}'
        xmax = max((s[0][-1] for g in panel for s in g.series if len(s[0])), default=0)
        for g in panel:
            steps, mean, std, n = aggregate(g.series)
            if not len(steps):
                continue
            label = g.label + (f' ({ex.task_label(g.source)})' if len(sources) > 1 and g.source else '')
            method = ex.METHODS.get(g.method)
            color = method.color if method else None
            full = n == n.max()
            line, = ax.plot(steps, mean, ':', color=color, lw=1.2)   # dotted where fewer seeds reached
            ax.plot(np.where(full, steps, np.nan), np.where(full, mean, np.nan), '-', color=line.get_color(), lw=1.6)
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.18, lw=0)
            handles.setdefault(label, Line2D([], [], color=line.get_color(), lw=1.6, label=label))
            paper = ex.paper_results(task, g.method, g.source) if task in ex.TASKS and g.metric == ex.TASKS[
                task].metric else []
            if paper and xmax >= 0.5e6:   # the paper's values are at 1M env steps
                ax.plot([1e6], [paper[0].mean], marker='*', ms=11, color=line.get_color(), mec='k', mew=0.6,
                        ls='none', clip_on=False)
                paper_handle = Line2D([], [], marker='*', ms=10, color='0.6', mec='k', mew=0.6, ls='none',
                                      label='paper, final (≈ Fig. 4 / Tables A, B)')
        for g in panel:   # the distractor switch at half the steps (the dip at 0.5M in the paper's Fig. 4)
            config = g.runs[0].config
            switch = float(config.get('steps') or 0) / 2
            if 0 < switch <= xmax and (config.get('color_distractor') or
                                       str(config.get('task', '')).startswith('metaworld_')):
                ax.axvline(switch, color='0.5', ls='--', lw=0.8, zorder=0)
                break
        ax.set_title(title, fontsize=11)
        ax.set_xlabel('environment steps')
        ax.set_ylabel(panel[0].unit if panel[0].unit != 'return' else 'episode return')
        ax.xaxis.set_major_formatter(FuncFormatter(_tick))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis('off')
    handles = list(handles.values()) + ([paper_handle] if paper_handle else [])
    fig.legend(handles=handles, loc='lower center', ncol=min(len(handles), 5), frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.06 if rows == 1 else 0.04, 1, 1))
    paths = [os.path.join(out, 'curves.png'), os.path.join(out, 'curves.pdf')]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return paths


def make_all(root: str, out: str, metric: str = AUTO, window: int = 10, experiment: str | None = None,
             warn=print) -> dict:
    """Writes every output into `out`; returns the groups, summaries and paths (used by report.py)."""
    os.makedirs(out, exist_ok=True)
    groups = load_groups(root, metric, experiment, warn)
    summaries = summarise(groups, window)
    md, table = write_tables(summaries, window, out)
    return dict(groups=groups, summaries=summaries, markdown=md, csv=table, curves_csv=write_curves_csv(groups, out),
                figures=plot_curves(groups, out))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', help='folder searched recursively for runs (e.g. runs/)')
    parser.add_argument('--out', help='output folder (default RUNS/plots)')
    parser.add_argument('--metric', default=AUTO,
                        help='scalar of metrics.jsonl to plot and tabulate (default: eval_return_average, '
                             'eval_success_rate in %% for DrawerWorld)')
    parser.add_argument('--window', type=int, default=10, help='K: final value = mean of the last K evaluations '
                        'of a seed (default 10)')
    parser.add_argument('--experiment', choices=[k for k, e in ex.EXPERIMENTS.items() if e.pairs],
                        help='only the target tasks of this experiment')
    args = parser.parse_args(argv)
    if args.window < 1:
        parser.error('--window must be >= 1')
    if not os.path.isdir(args.runs):
        parser.error(f'{args.runs} is not a folder')
    args.out = args.out or os.path.join(args.runs, 'plots')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    result = make_all(args.runs, args.out, args.metric, args.window, args.experiment,
                      warn=lambda m: print(f'warning: {m}', file=sys.stderr))
    summaries = result['summaries']
    print(f'{len(summaries)} (task, method) groups from {sum(len(s.group.runs) for s in summaries)} runs; '
          f'{sum(1 for s in summaries if s.n)} with evaluations.')
    print(open(result['markdown']).read())
    for path in result['figures'] + [result['markdown'], result['csv'], result['curves_csv']]:
        print(f'wrote {path}')
    if not result['figures']:
        print('no evaluations yet: no curves drawn.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
