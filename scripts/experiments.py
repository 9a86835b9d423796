"""The paper's experiments as data: tasks, methods, source -> target pairs and the published numbers.

`sweep.py` turns these tables into dreamer.py commands, `plot.py` / `report.py` use them to name, order and compare
results. Adding a method or a pair is one entry here; nothing else hard-codes the lists. A method with a pretraining
stage of its own (Vid2Act's multi-task teacher) names that stage's experiment in `Method.teacher`.
Numbers are from the DisWM paper (arXiv 2503.08751): Fig. 4 values are read off the curves by eye (≈), Tables A
and B are exact. Pure data and small helpers: no torch, importable in a fraction of a second.
"""
from __future__ import annotations

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from methods import METHOD_SPECS  # noqa: E402  (the methods, declared once; torch-free)


@dataclasses.dataclass(frozen=True)
class Task:
    """An environment as the sweeps and plots see it."""
    key: str                      # short name: the run folder (runs/<key>/...) and the --tasks filter
    env: str                      # dreamer.py --task
    preset: str                   # configs.yaml preset of its suite
    action_size: int
    label: str                    # shown in plots and tables
    cross_domain: bool = False    # the video source comes from another simulator (adds --cross_domain True)
    metric: str = 'eval_return_average'   # what the paper reports for this task
    scale: float = 1.0            # multiplies `metric` for display (success rate -> %)
    unit: str = 'return'


@dataclasses.dataclass(frozen=True)
class Method:
    """A method as launched by the sweeps: its dreamer.py flags and whether it starts from a pretrained video model."""
    key: str                      # --method_name and the run folder (runs/<task>/<key>/...)
    label: str
    flags: tuple = ()             # dreamer.py flags besides --method_name
    color: str = 'k'              # line colour in the plots
    teacher: str | None = None    # key of the experiment that pretrains this method's own teacher (Vid2Act:
    #                               'vid2act_teacher'); its online runs load that stage's run of the same target

    @property
    def pretrained(self) -> bool:
        """Needs --pretrain_checkpoint_path (and --pretrain_action_num of the source): from `methods.METHOD_SPECS`."""
        return METHOD_SPECS[self.key].needs_checkpoint

    @property
    def union_actions(self) -> bool:
        """DV2 Finetune: --source_action_num / --action_num_gap for the union action space (`methods`)."""
        return METHOD_SPECS[self.key].pad_actions


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A set of runs from one figure or table of the paper."""
    key: str
    title: str
    pairs: tuple = ()             # (source, target) task keys; empty for pretraining. The source is the video
    #                               source of the pretrained methods; a method with a teacher uses its teacher's sources
    sources: tuple = ()           # pretraining: the video source tasks (one run each); a teacher stage: the offline
    #                               source tasks of every teacher, in label order (--source_tasks)
    methods: tuple = ()           # method keys run for every pair
    targets: tuple = ()           # a teacher stage: one teacher per target task (its --task: suite, action padding)

    @property
    def kind(self) -> str:
        """'pretrain' (DisWM video pretraining), 'teacher' (a method's own pretraining stage) or 'online'."""
        return 'teacher' if self.targets else 'pretrain' if self.sources else 'online'


@dataclasses.dataclass(frozen=True)
class PaperResult:
    """One published number: final return (or success %) of `method` on `target`, pretrained on `source`."""
    source: str
    target: str
    method: str                   # a METHODS key, or a baseline we do not run (PAPER_ONLY_METHODS)
    mean: float
    std: float | None = None
    approx: bool = False          # read off a figure (≈) rather than printed in a table
    where: str = ''               # 'Fig. 4', 'Table A', 'Table B'

    def text(self) -> str:
        value = f'{self.mean:g}' if self.std is None else f'{self.mean:g} ± {self.std:g}'
        return ('≈' if self.approx else '') + value


def _dmc(key: str, actions: int) -> Task:
    return Task(key, f'dmc2gym_{key}', 'dmc2gym', actions, key.replace('_', ' ').title())


TASKS = {t.key: t for t in [
    _dmc('cheetah_run', 6), _dmc('walker_walk', 6), _dmc('hopper_stand', 4), _dmc('reacher_easy', 2),
    _dmc('finger_spin', 2), _dmc('cartpole_swingup', 1), _dmc('humanoid_walk', 21),
    _dmc('quadruped_walk', 12), _dmc('quadruped_run', 12),
    Task('pusher', 'gymnasium_Pusher-v5', 'gymnasium', 7, 'MuJoCo Pusher', cross_domain=True),
    Task('drawer_open', 'metaworld_drawer-open-v1', 'metaworld', 4, 'Drawer Open', cross_domain=True,
         metric='eval_success_rate', scale=100.0, unit='success %'),
    Task('drawer_close', 'metaworld_drawer-close-v1', 'metaworld', 4, 'Drawer Close', cross_domain=True,
         metric='eval_success_rate', scale=100.0, unit='success %'),
]}

METHODS = {m.key: m for m in [
    Method('diswm', 'DisWM', ('--beta_vae', 'True', '--traverse', 'True', '--distillation', 'True'), color='tab:red'),
    Method('dv2_finetune', 'DV2 Finetune', ('--beta_vae', 'True'), color='tab:blue'),
    Method('apv', 'APV', ('--beta_vae', 'True'), color='tab:green'),
    Method('dreamerv2', 'DreamerV2', ('--beta_vae', 'False'), color='tab:orange'),
    # Vid2Act (docs/vid2act.md): a DreamerV2 student distilled from a frozen multi-task teacher pretrained offline by
    # the `vid2act_teacher` stage; the sweep adds --source_tasks, --offline_dir and --teacher_checkpoint_path.
    Method('vid2act', 'Vid2Act', teacher='vid2act_teacher', color='tab:purple'),
]}
# The DisWM paper's methods: what Fig. 4 and Tables A/B run. Vid2Act is not among them: the Fig. 4 targets
# walker_walk, cheetah_run and hopper_stand are its own source tasks (its teacher would be trained on target data),
# and Pusher / DrawerWorld have no Vid2Act sources in this project's `env`.
ONLINE_METHODS = ('diswm', 'dv2_finetune', 'apv', 'dreamerv2')

# Vid2Act's DMC setting (docs/vid2act.md, "Commands"; the release's DMC preset): four source tasks with offline
# data (actions and rewards, scripts/collect_vid2act_sources.sh) -> Quadruped Walk / Run, an embodiment absent from
# the sources.
# The release's Meta-World setting (six sources -> door-lock) is left out: `env` has only the DrawerWorld tasks.
VID2ACT_DMC_SOURCES = ('cheetah_run', 'hopper_stand', 'walker_walk', 'walker_run')

# Baselines the paper compares against that this project does not run (shown as context in the tables).
PAPER_ONLY_METHODS = {'ted': 'TED', 'curl': 'CURL', 'dreamerv3': 'DreamerV3', 'tdmpc2': 'TD-MPC2',
                      'contextwm': 'ContextWM'}

EXPERIMENTS = {e.key: e for e in [
    Experiment('pretrain', 'Stage 1: action-free beta-VAE video pretraining on each source',
               sources=('cheetah_run', 'finger_spin', 'reacher_easy', 'walker_walk')),
    Experiment('fig4', 'Figure 4: DMC and cross-domain transfer (episode return)',
               pairs=(('cheetah_run', 'walker_walk'), ('reacher_easy', 'cheetah_run'),
                      ('cheetah_run', 'hopper_stand'), ('finger_spin', 'reacher_easy'),
                      ('finger_spin', 'cartpole_swingup'), ('reacher_easy', 'pusher')),
               methods=ONLINE_METHODS),
    Experiment('tableA', 'Table A: strong baselines on DMC (episode return)',
               pairs=(('reacher_easy', 'cheetah_run'), ('walker_walk', 'humanoid_walk')), methods=ONLINE_METHODS),
    # Table B prints DisWM, TD-MPC2 and ContextWM only. DV2 Finetune and APV would load the finger_spin video
    # model's decoder / RSSM (dmc2gym preset: LayerNorm GRU) into the metaworld preset's plain-GRU model, and the
    # paper has no number to compare them with, so they are not run; DreamerV2 (no pretrained parts) is kept as the
    # from-scratch reference.
    Experiment('tableB', 'Table B: DrawerWorld texture variations (success rate %)',
               pairs=(('finger_spin', 'drawer_open'), ('finger_spin', 'drawer_close')),
               methods=('diswm', 'dreamerv2')),
    Experiment('vid2act_teacher', 'Vid2Act stage 1: multi-task teacher pretraining on the offline DMC sources',
               sources=VID2ACT_DMC_SOURCES, targets=('quadruped_walk', 'quadruped_run')),
    # DisWM and APV need one video source: walker_walk (a Vid2Act source, pretrained by `pretrain`).
    Experiment('vid2act', 'Vid2Act setting: DMC sources -> Quadruped (episode return)',
               pairs=(('walker_walk', 'quadruped_walk'), ('walker_walk', 'quadruped_run')),
               methods=('vid2act', 'dreamerv2', 'apv', 'diswm')),
]}


def _fig4(source, target, diswm, dv2_finetune, apv, dreamerv2, ted, curl):
    values = dict(diswm=diswm, dv2_finetune=dv2_finetune, apv=apv, dreamerv2=dreamerv2, ted=ted, curl=curl)
    return [PaperResult(source, target, m, float(v), approx=True, where='Fig. 4') for m, v in values.items()]


def _table(where, source, target, **values):
    return [PaperResult(source, target, m, float(v[0]), float(v[1]), where=where) for m, v in values.items()]


PAPER_RESULTS = [
    *_fig4('cheetah_run', 'walker_walk', 915, 890, 880, 870, 845, 450),
    *_fig4('reacher_easy', 'cheetah_run', 815, 690, 700, 650, 380, 180),
    *_fig4('cheetah_run', 'hopper_stand', 850, 700, 570, 690, 440, 0),
    *_fig4('finger_spin', 'reacher_easy', 960, 930, 920, 950, 740, 420),
    *_fig4('finger_spin', 'cartpole_swingup', 860, 790, 540, 795, 780, 250),
    *_fig4('reacher_easy', 'pusher', -45, -45, -60, -45, -60, -60),
    *_table('Table A', 'reacher_easy', 'cheetah_run', dreamerv3=(662, 9), tdmpc2=(510, 15), contextwm=(661, 49),
            diswm=(817, 59)),
    *_table('Table A', 'walker_walk', 'humanoid_walk', dreamerv3=(12, 17), tdmpc2=(1, 0), contextwm=(1, 0),
            diswm=(147, 85)),
    *_table('Table B', 'finger_spin', 'drawer_close', tdmpc2=(3, 6), contextwm=(37, 12), diswm=(77, 6)),
    *_table('Table B', 'finger_spin', 'drawer_open', tdmpc2=(43, 25), contextwm=(23, 25), diswm=(70, 10)),
]


# ----------------------------------------------------------------------------------------------------------- helpers
def method_label(key: str) -> str:
    if key in METHODS:
        return METHODS[key].label
    return PAPER_ONLY_METHODS.get(key, key)


def task_label(key: str) -> str:
    return TASKS[key].label if key in TASKS else key


def source_label(key: str) -> str:
    """A source task's label; offline-only sources (walker_run) are not in TASKS but are named like the DMC ones."""
    return TASKS[key].label if key in TASKS else key.replace('_', ' ').title()


def teacher_owners(stage: str) -> list[str]:
    """The methods whose own pretraining stage is the experiment `stage` (['vid2act'] for 'vid2act_teacher')."""
    return [m.key for m in METHODS.values() if m.teacher == stage]


def find_task(name: str) -> Task | None:
    """A Task from its key, its dreamer.py task name or a loose spelling ('Pusher', 'drawer-open', 'Pusher-v5')."""
    norm = name.strip().lower().replace('-', '_')
    for task in TASKS.values():
        env = task.env.lower().replace('-', '_')
        bare = env.split('_', 1)[1]                       # without the suite prefix
        if norm in (task.key, env, bare, bare.rsplit('_v', 1)[0]):
            return task
    return None


def paper_results(target: str, method: str, source: str | None = None) -> list[PaperResult]:
    """Published numbers for (target, method), exact tables first, then Fig. 4 read-offs."""
    hits = [r for r in PAPER_RESULTS if r.target == target and r.method == method
            and (source is None or r.source == source)]
    return sorted(hits, key=lambda r: r.approx)


def paper_sources(target: str) -> list[str]:
    """The video sources the paper used for `target` (in the order of EXPERIMENTS)."""
    seen = []
    for exp in EXPERIMENTS.values():
        for source, tgt in exp.pairs:
            if tgt == target and source not in seen:
                seen.append(source)
    return seen


def task_order() -> list[str]:
    """Targets in the order the paper shows them (Fig. 4, then Table A, then Table B)."""
    order = []
    for exp in EXPERIMENTS.values():
        for _, target in exp.pairs:
            if target not in order:
                order.append(target)
    return order + [k for k in TASKS if k not in order]
