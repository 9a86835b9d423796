"""The methods, declared once (torch-free): which pretrained parts each one loads and which extra parts it has.

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
