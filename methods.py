"""What dreamer.py runs, declared once (torch-free): the methods (which pretrained parts each one loads and which extra
parts it has) and the modes (which program: online training, evaluation, one of the two pretraining stages).

`tools` validates `--method_name` and resolves the release's alias flags from this table, `models` builds an agent's
parts from a method's spec, and the sweep's experiment table (`scripts/experiments.py`) derives which runs need a
pretrained video model or the union action space from it (docs/method.md, "Baselines").
"""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """What distinguishes a method: which pretrained parts it loads and which extra parts it has."""
    name: str
    load: tuple = ()              # pretrained files loaded into the world model: 'encoder', 'decoder', 'rssm'
    teacher: bool = False         # DisWM: a frozen pretrained encoder distilled into the world model's encoder
    video_stack: bool = False     # APV: the pretrained action-free RSSM stacked under a new action-conditioned one
    intrinsic: bool = False       # APV: video-based kNN bonus added to the reward head's target on real sequences
    pad_actions: bool = False     # DV2 Finetune: actions zero-padded to the union action space
    action_free: bool = False     # the pretraining video model: zero actions, no reward head
    own_teacher: bool = False     # Vid2Act: its own multi-task teacher pretraining stage (vid2act.py), no video model
    release_flag: str | None = None   # the release's flag selecting it (`--distillation True` ...), an alias here

    @property
    def needs_checkpoint(self) -> bool:
        """Built on the pretrained beta-VAE video model (`--pretrain_checkpoint_path`)."""
        return bool(self.load) or self.teacher or self.video_stack


METHOD_SPECS = {spec.name: spec for spec in [
    MethodSpec('dreamerv2'),
    MethodSpec('diswm', teacher=True, release_flag='distillation'),
    # The release's comments swap these two flags: `fine_tune` is APV, `naive_fine_tune` is DV2 Finetune.
    MethodSpec('dv2_finetune', load=('encoder', 'decoder', 'rssm'), pad_actions=True, release_flag='naive_fine_tune'),
    MethodSpec('apv', load=('encoder', 'decoder'), video_stack=True, intrinsic=True, release_flag='fine_tune'),
    # Vid2Act: its frozen teacher, extra loss terms and actor context come from vid2act.Vid2ActAgent.
    MethodSpec('vid2act', own_teacher=True),
    MethodSpec('pretrain', action_free=True),    # stage 1's video model, not a --method_name
]}

# What --method_name accepts, and the release's flags that select a method.
METHODS = tuple(name for name, spec in METHOD_SPECS.items() if not spec.action_free)
METHOD_ALIASES = {spec.release_flag: name for name, spec in METHOD_SPECS.items() if spec.release_flag}


# The programs dreamer.py runs, picked by --mode (docs/method.md, "The three stages"), and the flags that select one as
# an alias (`--beta_vae_pretrain True` is the release's). `tools.finalize_config` resolves them once; code reads
# `config.mode` only.
MODES = {
    'train': 'online training, evaluating every eval_every env steps',
    'eval': 'evaluation only, of --checkpoint',
    'video_pretrain': 'stage 1: the action-free beta-VAE video model on --pretrain_datasets_path',
    'teacher_pretrain': "Vid2Act's multi-task teacher on --offline_dir",
}
MODE_ALIASES = {'beta_vae_pretrain': 'video_pretrain', 'vid2act_pretrain': 'teacher_pretrain'}


def mode_of(config) -> str:
    """The mode a config selects (a Config or a saved config dict, also one written before `mode` named the
    pretraining stages, when only the alias flags did). ValueError when it is unknown or the flags contradict it."""
    mode = config.get('mode') or 'train'
    for flag, name in MODE_ALIASES.items():
        if config.get(flag) and mode != name:
            if mode != 'train':
                raise ValueError(f"--{flag} True selects --mode {name} but --mode is '{mode}': give one of them.")
            mode = name
    if mode not in MODES:
        raise ValueError(f"Unknown --mode '{mode}'. Modes: " + '; '.join(f'{k} ({v})' for k, v in MODES.items())
                         + '.')
    return mode
