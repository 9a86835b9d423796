#!/usr/bin/env python
"""One self-contained HTML page summarising a runs folder (images embedded, opens from disk without a server).

    scripts/report.py runs/                           # -> runs/report.html (plots also in runs/plots/)
    scripts/report.py runs/ --out fig4.html --experiment fig4 --gifs 6

Sections: learning curves and the final-results table (from plot.py, with the paper's numbers), every run's
progress, the latest latent traversal of each DisWM run, pretraining traversals, a few evaluation GIFs
(`eval_videos/*.gif` of --mode eval runs), --mode eval results, and any `disentanglement.md` /
`disentanglement/*.md` found under the runs folder.
"""
from __future__ import annotations

import argparse
import base64
import glob
import html
import json
import math
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import experiments as ex  # noqa: E402
import plot  # noqa: E402
import rundata  # noqa: E402

MAX_EMBED_BYTES = 8 * 2 ** 20     # a single GIF/PNG larger than this is linked by path instead of embedded
STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px auto; max-width: 1280px;
       padding: 0 16px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; } .caption { color: #555; font-size: 12.5px; max-width: 1100px; }
.gallery { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.gallery figure { margin: 0; display: table; }   /* the caption wraps to the image's width */
.gallery figcaption { display: table-caption; caption-side: bottom; }
.gallery img.video { width: 192px; height: 192px; image-rendering: pixelated; }
.gallery img.traversal { max-height: 640px; image-rendering: pixelated; }
figcaption { font-size: 12px; color: #444; overflow-wrap: anywhere; } .muted { color: #888; }
nav a { margin-right: 12px; } code { background: #f4f4f4; padding: 0 3px; }
"""


def esc(value) -> str:
    return html.escape(str(value))


def data_uri(path: str) -> str | None:
    """The file as a data: URI, or None if it is too large or unreadable."""
    mime = {'.png': 'image/png', '.gif': 'image/gif', '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg'}.get(
        os.path.splitext(path)[1].lower(), 'application/octet-stream')
    try:
        if os.path.getsize(path) > MAX_EMBED_BYTES:
            return None
        with open(path, 'rb') as f:
            return f'data:{mime};base64,{base64.b64encode(f.read()).decode("ascii")}'
    except OSError:
        return None


def image(path: str, alt: str, css_class: str = '') -> str:
    uri = data_uri(path)
    if uri is None:
        return f'<p class="muted">{esc(path)} not embedded (larger than {MAX_EMBED_BYTES >> 20} MiB or unreadable)</p>'
    cls = f' class="{css_class}"' if css_class else ''
    return f'<img{cls} src="{uri}" alt="{esc(alt)}">'


def table(header: list, rows: list[list], numeric: set = frozenset()) -> str:
    head = ''.join(f'<th>{esc(h)}</th>' for h in header)
    body = ''.join('<tr>' + ''.join(f'<td class="num">{esc(c)}</td>' if i in numeric else f'<td>{esc(c)}</td>'
                                    for i, c in enumerate(row)) + '</tr>' for row in rows)
    return f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def rel(path: str, root: str) -> str:
    return os.path.relpath(path, root)


def run_name(run: rundata.Run) -> str:
    seed = '' if run.seed is None else f' seed {run.seed}'
    if run.kind == 'pretrain':
        return f'pretraining {ex.task_label(run.task)}{seed}'
    if run.kind == 'teacher':
        return f'{ex.method_label(run.method)} teacher for {ex.task_label(run.task)}{seed}'
    return f'{ex.task_label(run.task)} / {ex.method_label(run.method)}{seed}'


# ----------------------------------------------------------------------------------------------------------- sections
def results_section(summaries: list, window: int) -> str:
    rows = []
    for s in summaries:
        g = s.group
        rows.append([ex.task_label(g.task) + (f' ({g.unit})' if g.unit != 'return' else ''), plot._source_text(g),
                     g.label, plot._value_text(s.mean, s.std), s.n, s.evals_used,
                     plot._steps_text(s.last_step) if s.n else 'no eval yet', plot._paper_text(s.paper)])
    out = [f'<p class="caption">{esc(plot.table_caption(window))}</p>',
           table(['Task', 'Video source', 'Method', 'Ours (mean ± std)', 'n', 'Evals', 'Last step', 'Paper'], rows,
                 numeric={3, 4, 5, 6})]
    others = []
    for task in dict.fromkeys(s.group.task for s in summaries):
        rest = [r for r in ex.PAPER_RESULTS if r.target == task and r.method in ex.PAPER_ONLY_METHODS]
        if rest:
            others.append(f'<li>{esc(ex.task_label(task))}: ' + esc(', '.join(
                f'{ex.method_label(r.method)} {r.text()} ({r.where})' for r in rest)) + '</li>')
    if others:
        out.append('<p>Paper baselines not run here:</p><ul>' + ''.join(others) + '</ul>')
    return '\n'.join(out)


def inventory_section(runs: list, root: str) -> str:
    rows = []
    for run in runs:
        target = run.target_steps
        last = run.last_step
        if run.kind == 'eval':
            state = 'evaluation run'
        elif not run.rows:
            state = 'no metrics yet'
        elif target and last >= target:
            state = 'done'
        else:
            state = f'{last / target:.0%}' if target else 'running?'
        metric, scale = plot.metric_for(run.task, plot.AUTO)
        _, values = rundata.series(run.rows, metric, scale)
        latest = f'{values[-1]:.1f}' if values else ''
        rows.append([rel(run.path, root), run.kind, ex.task_label(run.task), ex.method_label(run.method),
                     '' if run.seed is None else run.seed, source_text(run),
                     '' if run.kind == 'eval' else f'{last:,}' + (f' / {target:,}' if target else ''), state,
                     latest])
    unit = 'steps are env steps (updates for pretraining and teachers)'
    return (f'<p class="caption">Every run folder found; {unit}. "Latest eval" is the last logged '
            f'evaluation (return, or success % on DrawerWorld).</p>' +
            table(['Run', 'Kind', 'Task', 'Method', 'Seed', 'Source', 'Step / target', 'Progress', 'Latest eval'],
                  rows, numeric={4, 6, 8}))


def latest(pattern: str) -> str | None:
    paths = sorted(glob.glob(pattern))
    return paths[-1] if paths else None


def traversal_section(runs: list, root: str) -> str:
    figures = []
    for run in runs:
        if run.kind == 'online' and run.method == 'diswm':
            path = latest(os.path.join(run.path, 'traversals', '*.png'))
            if path:
                step = os.path.splitext(os.path.basename(path))[0].rsplit('_', 1)[-1]
                step_text = f'env step {int(step):,}' if step.isdigit() else os.path.basename(path)
                figures.append(f'<figure>{image(path, run_name(run), "traversal")}<figcaption>{esc(run_name(run))}, '
                               f'{esc(step_text)} ({esc(rel(path, root))})</figcaption></figure>')
    if not figures:
        return '<p class="muted">No DisWM run has written traversals yet (they need --traverse True).</p>'
    return ('<p class="caption">Latest latent traversal of each DisWM run: rows are the z dimensions, columns '
            'offsets added to one dimension of the last frame\'s latent, decoded through the world model.</p>'
            '<div class="gallery">' + ''.join(figures) + '</div>')


def source_text(run: rundata.Run) -> str:
    """The video source of a run, or a teacher's source tasks."""
    if not run.source:
        return ''
    return ', '.join(ex.source_label(s) for s in run.source.split(',')) if run.kind == 'teacher' else \
        ex.task_label(run.source)


def pretrain_section(runs: list, root: str) -> str:
    pre = [r for r in runs if r.kind in ('pretrain', 'teacher')]   # DisWM video models, Vid2Act teachers
    if not pre:
        return ''
    rows, figures = [], []
    losses = ('image_loss', 'kl_loss', 'beta_vae_kl_loss')
    for run in pre:
        last = {k: v for row in run.rows for k, v in row.items() if k in losses}   # latest value of each
        source = ex.task_label(run.task) if run.kind == 'pretrain' else \
            f'{source_text(run)} (teacher for {ex.task_label(run.task)})'
        rows.append([rel(run.path, root), source, '' if run.seed is None else run.seed,
                     f'{run.last_step:,}' + (f' / {run.target_steps:,}' if run.target_steps else '')] +
                    [f'{last[k]:.3g}' if k in last else '' for k in losses])
        path = os.path.join(run.path, 'traverse.png')
        if os.path.exists(path):
            figures.append(f'<figure>{image(path, run_name(run), "traversal")}<figcaption>{esc(run_name(run))} '
                           f'({esc(rel(path, root))})</figcaption></figure>')
    return (table(['Run', 'Source', 'Seed', 'Updates / target', *losses], rows, numeric={2, 3, 4, 5, 6}) +
            ('<div class="gallery">' + ''.join(figures) + '</div>' if figures else ''))


def video_section(runs: list, root: str, max_gifs: int) -> str:
    """Up to `max_gifs` evaluation GIFs, one per run, spread over tasks and methods (DisWM first)."""
    candidates = []
    for run in runs:
        gifs = sorted(glob.glob(os.path.join(run.path, 'eval_videos', '*.gif')))
        if gifs:
            candidates.append((run, gifs[0]))
    order = {t: i for i, t in enumerate(ex.task_order())}
    methods = {m: i for i, m in enumerate(ex.METHODS)}
    candidates.sort(key=lambda c: (methods.get(c[0].method, 99), order.get(c[0].task, 99), c[0].seed or 0))
    chosen, seen = [], set()
    for run, gif in candidates:   # first one per (task, method), then fill up
        if (run.task, run.method) not in seen and len(chosen) < max_gifs:
            chosen.append((run, gif))
            seen.add((run.task, run.method))
    chosen += [c for c in candidates if c not in chosen][:max(0, max_gifs - len(chosen))]
    if not chosen:
        return ('<p class="muted">No evaluation videos yet: an eval-only run writes them, e.g. '
                '<code>python dreamer.py --configs defaults dmc2gym --task ... --mode eval --checkpoint '
                'RUN/checkpoint.pt --logdir RUN/eval</code>.</p>')
    figures = [f'<figure>{image(gif, run_name(run), "video")}<figcaption>{esc(run_name(run))}<br>'
               f'<span class="muted">{esc(rel(gif, root))}</span></figcaption></figure>' for run, gif in chosen]
    note = f' ({len(candidates)} runs have videos; showing {len(chosen)})' if len(candidates) > len(chosen) else ''
    return f'<p class="caption">Evaluation episodes, agent view{esc(note)}.</p><div class="gallery">' + \
        ''.join(figures) + '</div>'


def eval_results_section(runs: list, root: str) -> str:
    rows = []
    for run in runs:
        path = os.path.join(run.path, 'eval_result.json')
        if not os.path.exists(path):
            continue
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, ValueError):
            continue
        mean, std = result.get('mean', math.nan), result.get('std', math.nan)
        acting = ' (sampled actions)' if result.get('eval_sample') else ''    # dreamer.py --eval_sample True
        rows.append([rel(run.path, root), ex.task_label(run.task), ex.method_label(run.method),
                     run.config.get('eval_distractor', ''), len(result.get('returns', [])),
                     f'{mean:.1f} ± {std:.1f}{acting}',
                     f"{100 * result['success_rate']:.0f}%" if 'success_rate' in result else '',   # DrawerWorld
                     result.get('checkpoint', '')])
    if not rows:
        return ''
    return table(['Run', 'Task', 'Method', 'Distractor set', 'Episodes', 'Return (mean ± std)', 'Success',
                  'Checkpoint'], rows, numeric={4, 5})


def markdown_to_html(text: str) -> str:
    try:
        import markdown   # installed with tensorboard
        body = markdown.markdown(text, extensions=['tables', 'fenced_code'])
        return re.sub(r'<(/?)h([1-6])\b', lambda m: f'<{m[1]}h{min(6, int(m[2]) + 3)}', body)   # under our h3
    except ImportError:
        return f'<pre>{esc(text)}</pre>'


def disentanglement_files(root: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ('train_eps', 'eval_eps', 'eval_only_eps'))
        if 'disentanglement.md' in filenames:
            found.append(os.path.join(dirpath, 'disentanglement.md'))
        if os.path.basename(dirpath) == 'disentanglement':
            found += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith('.md')]
    return found


def disentanglement_section(root: str, out: str) -> str:
    """Each disentanglement table, its own images embedded; images it links to (heat maps) embedded below it."""
    parts = []
    for path in disentanglement_files(root):
        base, linked = os.path.dirname(path), []

        def local(match):
            attr, target = match[1], match[2]
            if re.match(r'^([a-z]+:|/|#)', target):      # URLs, absolute paths and anchors stay as they are
                return match[0]
            full = os.path.normpath(os.path.join(base, html.unescape(target)))
            if attr == 'src' and data_uri(full):
                return f'src="{data_uri(full)}"'
            if full.lower().endswith(('.png', '.gif', '.jpg', '.jpeg')) and os.path.exists(full):
                linked.append(full)
            return f'{attr}="{esc(os.path.relpath(full, os.path.dirname(os.path.abspath(out))))}"'

        with open(path, encoding='utf-8', errors='replace') as f:
            body = re.sub(r'\b(href|src)="([^"]*)"', local, markdown_to_html(f.read()))
        if linked:
            figures = ''.join(f'<figure>{image(p, os.path.basename(p))}<figcaption>{esc(os.path.basename(p))}'
                              f'</figcaption></figure>' for p in dict.fromkeys(linked))
            body += (f'<details><summary>The {len(set(linked))} images linked above</summary>'
                     f'<div class="gallery">{figures}</div></details>')
        parts.append(f'<h3>{esc(rel(path, root))}</h3>\n{body}')
    return '\n'.join(parts)


# ----------------------------------------------------------------------------------------------------------- page
def build(root: str, out: str, plots_dir: str, metric: str = plot.AUTO, window: int = 10,
          experiment: str | None = None, max_gifs: int = 4, title: str | None = None) -> str:
    """Writes the page to `out` (and the plots to `plots_dir`); returns the path."""
    result = plot.make_all(root, plots_dir, metric, window, experiment,
                           warn=lambda m: print(f'warning: {m}', file=sys.stderr))
    runs = rundata.discover(root)
    if experiment:
        pairs = ex.EXPERIMENTS[experiment].pairs
        sources, targets = {s for s, _ in pairs}, {t for _, t in pairs}
        runs = [r for r in runs if r.task in (sources if r.kind == 'pretrain' else targets)]
    title = title or f'DisWM experiments: {os.path.abspath(root)}' + (
        f' ({ex.EXPERIMENTS[experiment].title})' if experiment else '')
    sections = []
    if result['figures']:
        png = [p for p in result['figures'] if p.endswith('.png')][0]
        curves = (image(png, 'learning curves') +
                  '<p class="caption">Mean over seeds (solid where every seed has reached the step, dotted where '
                  'only some have) ± std (band). Dashed grey line: the distractor switch at half the steps. Stars: '
                  f'the paper\'s final value at 1M steps. PDF and CSV: {esc(plots_dir)}.</p>')
    else:
        curves = '<p class="muted">No evaluations logged yet.</p>'
    sections.append(('curves', 'Learning curves', curves))
    sections.append(('results', 'Final results vs. the paper',
                     results_section(result['summaries'], window) if result['summaries'] else
                     '<p class="muted">No online runs found.</p>'))
    sections.append(('runs', 'Runs', inventory_section(runs, root) if runs else '<p class="muted">None.</p>'))
    sections.append(('traversals', 'Latent traversals (DisWM)', traversal_section(runs, root)))
    for key, name, body in (('pretraining', 'Pretraining', pretrain_section(runs, root)),
                            ('videos', 'Evaluation videos', video_section(runs, root, max_gifs)),
                            ('eval', 'Evaluation-only runs', eval_results_section(runs, root)),
                            ('disentanglement', 'Disentanglement', disentanglement_section(root, out))):
        if body:
            sections.append((key, name, body))
    nav = ' '.join(f'<a href="#{key}">{esc(name)}</a>' for key, name, _ in sections)
    body = '\n'.join(f'<h2 id="{key}">{esc(name)}</h2>\n{content}' for key, name, content in sections)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<style>{STYLE}</style></head>\n<body>\n<h1>{esc(title)}</h1>\n'
            f'<p class="muted">Generated {time.strftime("%Y-%m-%d %H:%M")} by scripts/report.py from '
            f'{len(runs)} run folders.</p>\n<nav>{nav}</nav>\n{body}\n</body></html>\n')
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = f'{out}.tmp{os.getpid()}'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(page)
    os.replace(tmp, out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('runs', help='folder searched recursively for runs (e.g. runs/)')
    parser.add_argument('--out', help='the HTML file (default RUNS/report.html)')
    parser.add_argument('--plots', help='where the curves and tables are written too (default RUNS/plots)')
    parser.add_argument('--metric', default=plot.AUTO, help='as in plot.py')
    parser.add_argument('--window', type=int, default=10, help='K of the final-results table, as in plot.py')
    parser.add_argument('--experiment', choices=[k for k, e in ex.EXPERIMENTS.items() if e.pairs],
                        help='only the tasks of this experiment')
    parser.add_argument('--gifs', type=int, default=4, help='at most this many evaluation GIFs (default 4)')
    parser.add_argument('--title', help='page title')
    args = parser.parse_args(argv)
    if not os.path.isdir(args.runs):
        parser.error(f'{args.runs} is not a folder')
    if args.window < 1:
        parser.error('--window must be >= 1')
    out = build(args.runs, args.out or os.path.join(args.runs, 'report.html'),
                args.plots or os.path.join(args.runs, 'plots'), args.metric, args.window, args.experiment,
                args.gifs, args.title)
    print(f'wrote {out} ({os.path.getsize(out) / 2 ** 20:.1f} MiB); open it in a browser (no server needed)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
