"""Building agents: the one factory that picks each method's agent class, and the one way to rebuild a trained agent
from a run folder or checkpoint (`load_agent`, used by eval-only runs and video collection; the disentanglement
script reads only the encoder's weights with `read_checkpoint`). It sits above `models` and `vid2act` (both define
agent classes), so neither needs to import the other.
"""
from __future__ import annotations

import os
import tempfile

import torch

import models
import networks
import tools
import vid2act
from methods import METHOD_SPECS


def make_agent(config, action_size: int, step: int = 0) -> models.Agent:
    """The one place where the method picks its agent class (Vid2Act extends the DreamerV2 agent)."""
    spec = METHOD_SPECS.get(config.method_name)
    if spec is not None and spec.own_teacher:
        return vid2act.Vid2ActAgent(config, action_size, step)
    return models.Agent(config, action_size, step)


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------------
def read_checkpoint(path: str, device='cpu') -> dict:
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as e:
        raise tools.ConfigError(f"Checkpoint '{path}' is unreadable ({type(e).__name__}: {str(e)[:200]}); delete it "
                                f"to restart the run, or restore it from a --keep_checkpoints snapshot.") from None


def load_checkpoint(path: str, agent, replay, state: dict | None = None) -> dict:
    """Loads a checkpoint (or its already read `state`) into `agent` (and the replay's sampling RNG)."""
    state = read_checkpoint(path, agent.config.device) if state is None else state
    try:
        agent.load_state_dict(state['agent'])
    except RuntimeError as e:   # e.g. written by a code version whose APV bonus kept other buffers
        details = ' '.join(str(e).split())[:300]
        raise tools.ConfigError(f"Checkpoint '{path}' does not fit the agent this code builds ({details}): it was "
                                f"written by another version of the code. Use that version to resume it, or a new "
                                f"--logdir.") from None
    agent.load_optimizer_state(state['optimizers'])
    agent.updates = state['counters'].get('updates', 0)
    tools.set_rng_state(state['rng'])
    if replay is not None:
        replay.rng.bit_generator.state = state['replay_rng']
    return state['counters']


def checkpoint_file(path: str) -> str:
    """A run folder or a checkpoint file -> the checkpoint file (one message when there is none)."""
    ckpt = os.path.join(path, 'checkpoint.pt') if os.path.isdir(path) else path
    if not os.path.isfile(ckpt):
        what = f"Run folder '{path}' has no checkpoint.pt" if os.path.isdir(path) else f"Checkpoint '{ckpt}' not found"
        raise tools.ConfigError(f"{what}: give a run folder holding checkpoint.pt or a checkpoint file (dreamer.py "
                                f"writes <logdir>/checkpoint.pt at every evaluation, every checkpoint_every minutes "
                                f"and at the end).")
    return ckpt


def checkpoint_action_size(agent_state: dict) -> int | None:
    """Action size of a saved agent, read from its actor's output layer (mean and std per action)."""
    weights = [k for k in agent_state if k.startswith('behavior.actor.') and k.endswith('.weight')]
    if not weights:
        return None
    last = max(weights, key=lambda k: [int(p) if p.isdigit() else -1 for p in k.split('.')])
    return int(agent_state[last].shape[0]) // 2


def _update_known(base: dict, saved: dict, prefix: str = '') -> list[str]:
    """Copies the saved run's values into the current defaults; returns the keys this code no longer knows."""
    unknown = []
    for key, value in saved.items():
        if key not in base:
            unknown.append(prefix + key)
        elif isinstance(base[key], dict) and isinstance(value, dict):
            unknown += _update_known(base[key], value, f'{prefix}{key}.')
        else:
            base[key] = value
    return unknown


def run_config(ckpt_path: str, state: dict) -> tools.Config:
    """The run's resolved config: the copy stored in the checkpoint, else `config.yaml` next to it."""
    saved = state.get('config') if isinstance(state.get('config'), dict) else None
    yaml_path = os.path.join(os.path.dirname(ckpt_path), 'config.yaml')
    if saved is None and os.path.exists(yaml_path):
        from ruamel.yaml import YAML
        with open(yaml_path) as f:
            saved = YAML(typ='safe', pure=True).load(f)
    if saved is None:
        raise tools.ConfigError(f"No config stored in '{ckpt_path}' and no config.yaml next to it: copy the run's "
                                f"config.yaml into {os.path.dirname(ckpt_path) or '.'}.")
    saved = tools.upgrade_saved_config(saved)
    if saved['mode'] in ('video_pretrain', 'teacher_pretrain'):
        raise tools.ConfigError(f"'{ckpt_path}' belongs to a pretraining run (no policy): give the checkpoint.pt of "
                                f"an online training run.")
    base = tools.make_config(['--configs', 'defaults']).to_dict()
    unknown = _update_known(base, saved)
    if unknown:
        print(f"Note: ignoring keys of the run's config unknown to this code: {', '.join(unknown[:8])}.")
    return tools.Config(base)


def load_agent(path: str, overrides: dict | None = None, state: dict | None = None):
    """The one way to rebuild a trained agent: from a run folder or checkpoint file, with the architecture from the
    config stored in the checkpoint (only run-time keys such as `device`, `precision`, `eval_state_mean` may be
    overridden), the pretrained parts taken from the checkpoint itself, and every weight shape checked before
    loading. Returns (agent in eval mode, its config, the checkpoint path)."""
    ckpt_path = checkpoint_file(path)
    state = read_checkpoint(ckpt_path) if state is None else state
    if not isinstance(state, dict) or 'agent' not in state:
        raise tools.ConfigError(f"'{ckpt_path}' is not a dreamer.py checkpoint (no 'agent' weights).")
    config = run_config(ckpt_path, state)
    config.mode = 'eval'                 # rebuilt to act: no training-only inputs (e.g. Vid2Act's source datasets)
    for key, value in (overrides or {}).items():
        setattr(config, key, value)
    config = tools.finalize_config(config)
    action_size = checkpoint_action_size(state['agent'])
    spec = models.method_spec(config)
    with tempfile.TemporaryDirectory() as parts_dir:
        if spec.needs_checkpoint:   # the pretrained parts are inside the checkpoint: no pretraining folder needed
            models.write_pretrained_parts(state['agent'], spec, parts_dir)
            config.pretrain_checkpoint_path = parts_dir
        agent = make_agent(config, action_size)
    own = agent.state_dict()
    weights = networks.fill_missing_gru_bias(state['agent'], agent)
    problems = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}' for k, v in weights.items()
                if k in own and own[k].shape != v.shape]
    missing, extra = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
    if problems or missing or extra:
        details = '; '.join(problems[:3] + ([f'missing {missing[:3]}'] if missing else []) +
                            ([f'unexpected {extra[:3]}'] if extra else []))
        raise tools.ConfigError(f"'{ckpt_path}' does not fit the agent built from its run's config ({details}): "
                                f"it was written by another version of the code.")
    load_checkpoint(ckpt_path, agent, None, state)
    agent.eval()
    return agent, config, ckpt_path
