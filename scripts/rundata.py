"""Reading run folders written by dreamer.py: `config.yaml`, `metrics.jsonl`, and what a run is (task, method, seed).

Shared by `sweep.py` (progress, skipping finished runs), `plot.py` and `report.py`. Tolerant by design: runs may be
still writing (a partial last line), have no evaluation yet, or lack a config (then the folder layout
`<task>/<method>/seed_<n>` is used). No torch import.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

import experiments as ex
from methods import mode_of

SEED_DIR = re.compile(r'^seed_(\d+)$')


def read_metrics(path: str) -> tuple[list[dict], int]:
    """Rows of a metrics.jsonl and the number of unreadable lines skipped (a run still writing leaves one)."""
    rows, bad = [], 0
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError:
        return [], 0
    for line in data.decode('utf-8', errors='replace').splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict) and isinstance(row.get('step'), (int, float)):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def read_config(run_dir: str) -> dict:
    """The resolved config dreamer.py wrote, or {} if missing or unreadable."""
    path = os.path.join(run_dir, 'config.yaml')
    if not os.path.exists(path):
        return {}
    try:   # a missing package is an error, not a run reported as "not started"
        from ruamel.yaml import YAML
    except ImportError:
        raise ModuleNotFoundError("Reading a run's config.yaml needs ruamel.yaml (in requirements.txt): run the "
                                  "scripts in the project's environment (`source scripts/setup_env.sh`) or "
                                  "`pip install -r requirements.txt`.") from None
    try:
        with open(path) as f:
            config = YAML(typ='safe', pure=True).load(f)
        return config if isinstance(config, dict) else {}
    except Exception:  # a half-written or foreign file: fall back to the folder layout
        return {}


def series(rows: list[dict], metric: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    """(steps, values) of `metric`, sorted by step. When a resumed run logged a step twice, the later row wins."""
    by_step = {}
    for row in rows:
        value = row.get(metric)
        if isinstance(value, (int, float)) and value == value:   # drops None and NaN
            by_step[int(row['step'])] = float(value) * scale
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


@dataclasses.dataclass
class Run:
    """One run folder: what it is and what it logged so far."""
    path: str
    kind: str                  # 'online' | 'pretrain' | 'teacher' (Vid2Act teacher pretraining) | 'eval' (--mode eval)
    task: str                  # TASKS key when known, else the task name as found (a teacher's: its target)
    method: str                # METHODS key ('pretrain' for pretraining runs; a teacher's: the method owning it)
    seed: int | None
    source: str | None         # video source task of pretrained methods, when it can be told; a teacher's: its
    #                            source tasks, comma-separated
    config: dict
    rows: list
    bad_lines: int = 0

    @property
    def target_steps(self) -> int | None:
        """The last step this run will log: env steps (online) or updates (pretraining)."""
        return target_steps(self.config, self.kind)

    @property
    def last_step(self) -> int:
        return max((int(r['step']) for r in self.rows), default=0)


def in_use(run_dir: str, locks=('.run.lock', '.sweep.lock')) -> bool:
    """Whether a live process holds one of the run folder's locks (dreamer.py's `.run.lock`, a sweep's
    `.sweep.lock`): flock locks die with their process, so a crashed run never reads as running."""
    import fcntl
    for name in locks:
        path = os.path.join(run_dir, name)
        if not os.path.exists(path):
            continue
        with open(path, 'a') as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
    return False


def target_steps(config: dict, kind: str, steps: int | None = None, pretrain_steps: int | None = None):
    try:
        if kind in ('pretrain', 'teacher'):   # updates, as logged
            total = float(pretrain_steps if pretrain_steps is not None else config['pretrain_steps'])
            return max(1, int(total) // int(config['batch_size']))
        total, repeat = int(float(steps if steps is not None else config['steps'])), int(config['action_repeat'])
        return total // repeat * repeat   # the final evaluation is logged at (steps // repeat) agent steps
    except (KeyError, TypeError, ValueError):
        return None


def _source_of(config: dict, run_dir: str) -> str | None:
    """The video source: `<...>/<source>/seed_<n>` in --pretrain_checkpoint_path, else the task in its meta.json."""
    path = str(config.get('pretrain_checkpoint_path') or '')
    if not path:
        return None
    parts = os.path.normpath(path).split(os.sep)
    if len(parts) >= 2 and SEED_DIR.match(parts[-1]):
        task = ex.find_task(parts[-2])
        return task.key if task else parts[-2]
    for base in (path, os.path.join(run_dir, path)):
        try:
            with open(os.path.join(base, 'meta.json')) as f:
                name = json.load(f).get('task', '')
            task = ex.find_task(name)
            return task.key if task else name
        except (OSError, ValueError, AttributeError):
            continue
    return os.path.basename(os.path.normpath(path)) or None


def source_tasks(config: dict) -> list[str]:
    """A Vid2Act run's --source_tasks (a list in config.yaml; a comma-separated string is accepted too)."""
    value = config.get('source_tasks') or []
    items = value.split(',') if isinstance(value, str) else value
    return [str(t).strip() for t in items if str(t).strip()]


def _mode(config: dict) -> str:
    """The run's mode from its config.yaml (also one written before `mode` named the pretraining stages)."""
    try:
        return mode_of(config)
    except ValueError:
        return str(config.get('mode'))


def describe(run_dir: str) -> Run:
    """What the run in `run_dir` is, from its config.yaml, falling back to the folder layout."""
    config = read_config(run_dir)
    rows, bad = read_metrics(os.path.join(run_dir, 'metrics.jsonl'))
    parts = os.path.normpath(os.path.abspath(run_dir)).split(os.sep)
    seed_match = SEED_DIR.match(parts[-1])
    layout_seed = int(seed_match.group(1)) if seed_match else None
    layout_method = parts[-2] if seed_match and len(parts) >= 2 else None
    layout_task = parts[-3] if seed_match and len(parts) >= 3 else None

    stages = {e.key for e in ex.EXPERIMENTS.values() if e.kind == 'teacher'}
    if config:
        kinds = {'video_pretrain': 'pretrain', 'teacher_pretrain': 'teacher', 'eval': 'eval'}
        kind = kinds.get(_mode(config), 'online')
    else:
        kind = 'pretrain' if layout_task == 'pretrain' else 'teacher' if layout_task in stages else 'online'
    if kind in ('pretrain', 'teacher') and not config:
        layout_task = layout_method            # runs/pretrain/<source>/seed_<n>, runs/vid2act_teacher/<target>/seed_<n>
    name = config.get('task') or layout_task or os.path.basename(run_dir)
    task = ex.find_task(str(name))
    if kind == 'pretrain':
        method = 'pretrain'
    elif kind == 'teacher' and not config:
        method = next(iter(ex.teacher_owners(parts[-3])), 'unknown')
    else:
        method = str(config.get('method_name') or layout_method or 'unknown')
    seed = config.get('seed', layout_seed)
    source = _source_of(config, run_dir) if method in ex.METHODS and ex.METHODS[method].pretrained else None
    if kind == 'teacher':
        source = ','.join(source_tasks(config)) or None
    return Run(path=run_dir, kind=kind, task=task.key if task else str(name), method=method,
               seed=int(seed) if isinstance(seed, (int, float)) else layout_seed, source=source, config=config,
               rows=rows, bad_lines=bad)


def discover(root: str) -> list[Run]:
    """Every run folder under `root` (a folder holding config.yaml or metrics.jsonl), sorted by path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ('train_eps', 'eval_eps', 'eval_only_eps',
                                                              'traversals', 'eval_videos', 'checkpoints'))
        if 'config.yaml' in filenames or 'metrics.jsonl' in filenames:
            found.append(describe(dirpath))
    return sorted(found, key=lambda r: r.path)
