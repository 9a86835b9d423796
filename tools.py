"""Shared utilities: configuration, distributions, returns, schedules, checkpoints, logging.

Episode storage and replay sampling live in `replay.py` (split out of this file to keep both readable).
"""
from __future__ import annotations

import datetime
import difflib
import errno
import io
import json
import os
import random
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import distributions as td

# The methods and the release's flags that select one (aliases, so the authors' README commands run unchanged).
from methods import METHOD_ALIASES, METHODS, MODE_ALIASES, mode_of

ROOT = os.path.dirname(os.path.abspath(__file__))


class ConfigError(ValueError):
    """A user-caused configuration problem; the message names the fix."""


# --------------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------------
class Config(dict):
    """A dict with attribute access (nested dicts become Configs)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, value in self.items():
            if isinstance(value, dict) and not isinstance(value, Config):
                self[key] = Config(value)

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = Config(value) if isinstance(value, dict) and not isinstance(value, Config) else value

    def to_dict(self):
        return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}


def load_presets(path: str | None = None) -> dict:
    from ruamel.yaml import YAML

    path = path or os.path.join(ROOT, 'configs.yaml')
    with open(path) as f:
        return YAML(typ='safe', pure=True).load(f)


def config_help(path: str | None = None) -> str:
    """`dreamer.py --help`: usage, the presets with the keys they set, and every key of `defaults` with its default
    and its comment, grouped as in configs.yaml (read from the file itself: one source of truth)."""
    import re
    path = path or os.path.join(ROOT, 'configs.yaml')
    presets = load_presets(path)
    lines = ['usage: python dreamer.py --configs defaults [PRESET ...] --logdir DIR [--key value ...]', '',
             'Rerunning the same command resumes the run in --logdir. Presets (merged in order after defaults):']
    for name, values in presets.items():
        if name != 'defaults':
            lines.append(f'  {name}: ' + ', '.join(f'{k} {v}' for k, v in (values or {}).items()))
    lines += ['', 'Keys (--key value; nested keys with dots; lists as a,b; null for none), defaults first:']
    in_defaults, parent = False, None
    with open(path) as f:
        for raw in f:
            line = raw.rstrip('\n')
            if re.match(r'^\S', line):                       # a top-level line: a preset name or a file comment
                in_defaults = line.startswith('defaults:')
                continue
            if not in_defaults or not line.strip():
                continue
            group = re.match(r'^\s+# -+ (.+)$', line)
            if group:
                lines += ['', f'{group.group(1)}:']
                continue
            entry = re.match(r'^( +)([A-Za-z_][\w]*):\s*(.*?)\s*(?:#\s?(.*))?$', line)
            if entry:
                indent, key, value, comment = entry.groups()
                if len(indent) == 2:
                    parent = key if not value else None
                    name = key
                else:
                    name = f'{parent}.{key}' if parent else key
                text = f'  --{name} {value}' if value else f'  --{name}.*'
                lines.append(f'{text:<44}{comment or ""}'.rstrip())
            elif line.strip().startswith('#') and lines:      # a comment continued on the next line
                lines.append(' ' * 44 + line.strip()[1:].strip())
    return '\n'.join(lines)


def _close(name, options):
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ''


def _merge(base: dict, update: dict, where: str) -> None:
    for key, value in update.items():
        if key not in base:
            raise ConfigError(f"Preset '{where}' sets unknown key '{key}'.{_close(key, base)}")
        if isinstance(base[key], dict) and isinstance(value, dict):
            _merge(base[key], value, where)
        else:
            base[key] = value


_TRUE = {'true', '1', 'yes', 'on'}
_FALSE = {'false', '0', 'no', 'off'}
_NONE = {'null', 'none', '~'}


def parse_value(text: str, default: Any, key: str) -> Any:
    """Parses a CLI string into the type of the key's default value."""
    low = text.strip().lower()
    if low in _NONE:
        return None
    try:
        if isinstance(default, bool):
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if isinstance(default, int):
            number = float(text)
            if number != int(number):
                raise ValueError
            return int(number)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, (list, tuple)):
            items = [t for t in text.split(',') if t.strip() != ''] if text.strip() else []
            if default:
                return [parse_value(t, default[0], key) for t in items]
            return [_guess(t) for t in items]
        if isinstance(default, str) or default is None:
            return _guess(text) if default is None else text
    except ValueError:
        kind = type(default).__name__
        hint = ' (True/False/1/0)' if isinstance(default, bool) else ' (comma-separated)' if isinstance(
            default, (list, tuple)) else ''
        raise ConfigError(f"--{key} expects a {kind}{hint}, got '{text}'.") from None
    raise ConfigError(f"--{key} cannot be set from the command line (default {default!r}).")


def _guess(text: str) -> Any:
    low = text.strip().lower()
    if low in ('true', 'false'):
        return low == 'true'
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


PRESET_TYPOS = {'metawolrd': 'metaworld'}


def split_argv(argv: list[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """Splits `--configs a b --key v ...` into the preset names and (key, value tokens) pairs."""
    presets, pairs = [], []
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith('--') or len(token) == 2:
            raise ConfigError(f"Unexpected argument '{token}': use --key value pairs (e.g. --seed 0).")
        key = token[2:]
        if '=' in key:
            key, value = key.split('=', 1)
            values = [value]
            i += 1
        else:
            values = []
            i += 1
            while i < len(argv) and not (argv[i].startswith('--') and len(argv[i]) > 2 and not _is_number(argv[i])):
                values.append(argv[i])
                i += 1
        key = key.replace('-', '_') if key not in ('configs',) else key
        if key == 'configs':
            presets.extend(v for value in values for v in value.split(',') if v)
        else:
            pairs.append((key, values))
    return presets, pairs


def _is_number(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


# Keys renamed since runs were written (old -> new). The old name stays accepted on the command line (`pretrain` is
# also DreamerV2's and the release's name) and in saved configs (`upgrade_saved_config`).
RENAMED_KEYS = {'pretrain': 'prefill_updates'}
# Keys added after runs were written that a preset or a command may set to something else than the behaviour before
# them: a saved config without one ran with this value. Filling it in makes resuming such a run with the key set a
# conflict (dreamer.check_run_identity) instead of a silent change of what the run does.
ADDED_KEYS = {'opt_eps_keras': False, 'legacy_inertia': False}


def upgrade_saved_config(saved: dict) -> dict:
    """A saved config (a run's config.yaml, a checkpoint's copy) in this code's terms: renamed keys under their new
    names, keys added since with the value the run had, and `mode` resolved from the alias flags as
    `finalize_config` does."""
    saved = dict(saved or {})
    for old, new in RENAMED_KEYS.items():
        if old in saved and new not in saved:
            saved[new] = saved.pop(old)
    for key, value in ADDED_KEYS.items():
        saved.setdefault(key, value)
    try:
        saved['mode'] = mode_of(saved)
    except ValueError as e:
        raise ConfigError(f"A saved run config is inconsistent: {e}") from None
    return saved


def make_config(argv: list[str], presets_path: str | None = None) -> Config:
    """Resolves presets and CLI overrides into one config (strict: unknown names are errors)."""
    presets = load_presets(presets_path)
    names, pairs = split_argv(argv)
    names = names or ['defaults']
    if names[0] != 'defaults':
        names = ['defaults'] + names
    config = json.loads(json.dumps(presets['defaults']))  # deep copy
    for name in names[1:]:
        if name in PRESET_TYPOS:
            print(f"Warning: preset '{name}' is a misspelling of '{PRESET_TYPOS[name]}' (as in the release README); "
                  f"using '{PRESET_TYPOS[name]}'.", file=sys.stderr)
            name = PRESET_TYPOS[name]
        if name not in presets:
            raise ConfigError(f"Unknown preset '{name}'.{_close(name, presets)} Presets: {', '.join(presets)}.")
        _merge(config, presets[name], name)
    for key, values in pairs:
        key = RENAMED_KEYS.get(key, key)
        parts = key.split('.')
        node = config
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                options = node.keys() if isinstance(node, dict) else []
                flat = list(options) + [f'{k}.{s}' for k, v in config.items() if isinstance(v, dict) for s in v]
                raise ConfigError(f"Unknown config key '--{key}'.{_close(key, flat)} "
                                  f"See configs.yaml for every key.")
            if depth < len(parts) - 1:
                node = node[part]
        last = parts[-1]
        if isinstance(node[last], dict):
            raise ConfigError(f"--{key} is a group; set its entries, e.g. --{key}.{next(iter(node[last]))} VALUE.")
        if not values:
            raise ConfigError(f"--{key} needs a value.")
        text = ','.join(values) if isinstance(node[last], (list, tuple)) else ' '.join(values)
        node[last] = parse_value(text, node[last], key)
    return finalize_config(Config(config))


def finalize_config(config: Config) -> Config:
    """Derived fields, computed once: numeric types, device, method (from the release's aliases)."""
    for key in ('steps', 'eval_every', 'log_every', 'prefill', 'pretrain_steps', 'dataset_size', 'time_limit',
                'pretrain_save_every'):
        if key in config and config[key] is not None:
            config[key] = int(float(config[key]))
    if config.device in (None, 'auto'):
        config.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    try:
        config.mode = mode_of(config)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for flag, mode in MODE_ALIASES.items():      # the alias flags follow the mode, so a saved config is consistent
        if flag in config:
            config[flag] = config.mode == mode
    method = config.method_name
    for flag, name in METHOD_ALIASES.items():
        if config.get(flag):
            if method not in ('dreamerv2', name):
                raise ConfigError(f"--{flag} True selects method '{name}' but --method_name is '{method}'.")
            method = name
    if method not in METHODS:
        raise ConfigError(f"Unknown --method_name '{method}'.{_close(method, METHODS)} Methods: {', '.join(METHODS)}.")
    config.method_name = method
    config.precision = str(config.precision)
    if config.precision not in ('32', 'bf16', '16'):
        raise ConfigError(f"--precision must be 32, bf16 or 16, got '{config.precision}'.")
    if config.get('weight_init', 'torch') not in WEIGHT_INITS:
        raise ConfigError(f"--weight_init must be one of {', '.join(WEIGHT_INITS)}, got '{config.weight_init}'.")
    if config.compile_mode not in COMPILE_MODES:
        raise ConfigError(f"--compile_mode must be one of {', '.join(COMPILE_MODES)}, got '{config.compile_mode}'.")
    if config.batch_size < 1 or config.batch_length < 2:
        raise ConfigError('--batch_size must be >= 1 and --batch_length >= 2.')
    for key, low in POSITIVE_KEYS.items():
        value = config.get(key)
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < low):
            raise ConfigError(f'--{key} must be a number >= {low}, got {value!r}.')
    if config.get('dyn_discrete') == 1:
        raise ConfigError('--dyn_discrete 1 makes every latent variable a constant: use 0 (Gaussian latents) or 2 or '
                          'more classes (official DreamerV2: 32).')
    if config.get('weight_decay') and config.get('weight_decay_step'):
        raise ConfigError('--weight_decay and --weight_decay_step are two forms of the same decay: set one of them '
                          '(the other to 0).')
    if config.get('actor_return_offset', 0) not in (0, 1) or isinstance(config.get('actor_return_offset'), bool):
        raise ConfigError(f"--actor_return_offset must be 0 (R_t with s_t, the release's form) or 1 (R_{{t+1}} with "
                          f"s_t, official DreamerV2's final version), got {config.actor_return_offset!r}.")
    if config.get('actor_return_offset') and config.get('release_compat'):
        raise ConfigError('--actor_return_offset 1 is official DreamerV2\'s actor objective; --release_compat True '
                          'reproduces the release, whose objective is offset 0: set one of them.')
    if config.get('actor_return_offset') and config.get('imag_horizon') == 1:
        raise ConfigError('--actor_return_offset 1 needs --imag_horizon >= 2 (it leaves out the first return).')
    if config.get('release_compat') and config.get('imag_horizon') == 1:
        raise ConfigError('--imag_horizon must be >= 2 with --release_compat True (the release imagines '
                          'imag_horizon - 1 steps).')
    if config.mode == 'train':
        if config.steps // config.action_repeat <= config.prefill:
            print(f'Warning: --steps {config.steps} ({config.steps // config.action_repeat} agent steps) is not above '
                  f'--prefill {config.prefill} agent steps: the run collects random episodes and trains nothing.',
                  file=sys.stderr)
    return config


# networks.glorot_init_ (official DreamerV2's initialisation) on every DreamerV2 network, or on the world model's /
# the actor-critic's alone (an ablation: which part needs it)
WEIGHT_INITS = ('torch', 'glorot', 'glorot_model', 'glorot_behavior')
# Counts and sizes with their smallest valid value (checked once, in finalize_config).
POSITIVE_KEYS = {
    'steps': 1, 'eval_every': 1, 'log_every': 1, 'eval_episodes': 1, 'action_repeat': 1, 'envs': 1,
    'time_limit': 1, 'train_every': 1, 'train_steps': 1, 'prefill_updates': 0, 'prefill': 0, 'dataset_size': 0,
    'threads': 0, 'checkpoint_every': 1e-3, 'pretrain_steps': 1, 'pretrain_save_every': 1, 'imag_horizon': 1,
    'dyn_stoch': 1, 'dyn_deter': 1, 'dyn_hidden': 1, 'cnn_depth': 1, 'units': 1, 'z_dim': 1, 'model_lr': 0,
    'actor_lr': 0, 'value_lr': 0, 'grad_clip': 0, 'eval_videos': 0, 'slow_target_update': 1, 'dyn_discrete': 0,
    'weight_decay': 0, 'weight_decay_step': 0,
}


def configure_torch(config) -> None:
    """What every program does with torch before building anything: seeds from --seed, the allocator setting, the
    thread count, TF32, and a warning for bf16 on a CPU that would emulate it."""
    set_seed(config.seed, config.deterministic)
    keep_freed_memory(config.malloc_cache)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.precision == 'bf16' and str(config.device) == 'cpu' and not cpu_has_native_bf16():
        print('Warning: --precision bf16 on a CPU without hardware bf16 (no AVX-512 BF16 / AMX): oneDNN emulates it '
              'and updates run ~15x slower than fp32 (docs/benchmarks.md). Use --precision 32 on this machine.',
              file=sys.stderr)
    set_tf32(config.device, config.tf32)


def glorot_init_for(config, part: str) -> bool:
    """Whether `--weight_init` starts `part` ('model': the world model, 'behavior': actor and critic) the official
    DreamerV2 way (`networks.glorot_init_`)."""
    assert part in ('model', 'behavior'), part
    return config.get('weight_init', 'torch') in ('glorot', f'glorot_{part}')


def save_config(config: Config, path: str) -> None:
    from ruamel.yaml import YAML

    buffer = io.StringIO()
    YAML(typ='safe', pure=True).dump(config.to_dict(), buffer)
    atomic_write_bytes(path, buffer.getvalue().encode())


# --------------------------------------------------------------------------------------------------------------------
# Files, seeding, checkpoints
# --------------------------------------------------------------------------------------------------------------------
def atomic_write_bytes(path: str, data: bytes) -> None:
    """Writes via a temp file + rename so a crash never leaves a half-written file behind."""
    tmp = f'{path}.tmp{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if e.errno == errno.ENOSPC:
            raise ConfigError(f"No space left on the device of '{os.path.dirname(path) or '.'}' while writing "
                              f"{os.path.basename(path)} ({len(data) / 2 ** 20:.1f} MiB needed); the partial file "
                              f"was removed and the previous version kept. Free space or choose another "
                              f"folder.") from None
        raise


def atomic_torch_save(obj: Any, path: str) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4      # glibc mallopt parameters (malloc.h)


def to_device(batch: dict, device, keys=None) -> dict:
    """numpy batch -> tensors on `device` (pinned memory and a non-blocking copy to a GPU): `image` stays uint8 until
    the model normalises it on the device, `label` stays int64, the rest becomes float32. `keys`: only these."""
    out = {}
    for key in batch if keys is None else [k for k in keys if k in batch]:
        tensor = torch.as_tensor(batch[key])
        if str(device) != 'cpu' and tensor.device.type == 'cpu':
            tensor = tensor.pin_memory().to(device, non_blocking=True)
        out[key] = tensor if key in ('image', 'label') else tensor.float()
    return out


def autocast(config):
    """The autocast context of `--precision` for an update: bf16 or fp16 (16) on the config's device, else off.
    Losses, KL terms and optimizer state stay fp32."""
    device = 'cuda' if str(config.device).startswith('cuda') else 'cpu'
    dtype = {'bf16': torch.bfloat16, '16': torch.float16}.get(str(config.precision))
    return torch.autocast(device, dtype=dtype, enabled=dtype is not None)


def check_device(config) -> None:
    """Stops with one message (before any file is written) when the config asks for a GPU this machine lacks."""
    if str(config.device).startswith('cuda') and not torch.cuda.is_available():
        raise ConfigError(f"--device {config.device} requested but CUDA is not available: use --device cpu.")


def set_tf32(device, enabled: bool) -> None:
    """`--tf32`: on a CUDA device, TF32 (10-bit mantissa) in matmuls and cuDNN convolutions when enabled, full fp32 in
    both when not (PyTorch's own default is TF32 convolutions with fp32 matmuls, so False must set cuDNN's flag too).
    No effect on a CPU."""
    if str(device).startswith('cuda'):
        torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
        torch.backends.cudnn.allow_tf32 = bool(enabled)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (x86 AVX-512 BF16 or AMX; read from /proc/cpuinfo on Linux).
    Without it oneDNN emulates bf16 and a CPU update is ~15x slower than fp32 (docs/benchmarks.md)."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {'avx512_bf16', 'amx_bf16'})


def keep_freed_memory(enabled: bool = True) -> bool:
    """Make glibc's malloc keep freed blocks in the process instead of handing them back to the OS.

    By default glibc serves every block over 128 KB-32 MB with a fresh `mmap` and unmaps it on free, so each update's
    large activations (e.g. 800 x 32 x 32 x 32 floats = 105 MB) are page-faulted in and zeroed by the kernel again:
    on a 2-core CPU that is 15-25 % of a training update (measured in docs/benchmarks.md). With `mmap` off and a high
    trim threshold the heap is reused from one update to the next. The math is unchanged; the process keeps its peak
    heap instead of shrinking between updates. Returns whether it applied (glibc only; a no-op elsewhere).
    """
    if not enabled or not sys.platform.startswith('linux'):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL('libc.so.6')
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):        # not glibc (musl, ...): keep the default allocator
        return False


def set_seed(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def rng_state() -> dict:
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


# --------------------------------------------------------------------------------------------------------------------
# Distributions and losses
# --------------------------------------------------------------------------------------------------------------------
def gaussian_std(raw: torch.Tensor, min_std: float) -> torch.Tensor:
    """DreamerV2's bounded std: 2 * sigmoid(x / 2) + min_std."""
    return 2 * torch.sigmoid(raw / 2) + min_std


def normal_kl(mean1, std1, mean2, std2) -> torch.Tensor:
    """KL(N(mean1, std1) || N(mean2, std2)) summed over the last dim."""
    mean1, std1, mean2, std2 = (x.float() for x in (mean1, std1, mean2, std2))  # fp32 under autocast
    var_ratio = (std1 / std2) ** 2
    return 0.5 * (var_ratio + ((mean1 - mean2) / std2) ** 2 - 1 - torch.log(var_ratio)).sum(-1)


def categorical_kl(logit1, logit2, classes: int) -> torch.Tensor:
    """KL(Cat(logit1) || Cat(logit2)) per group of `classes` logits along the last dim, summed over the groups."""
    shape = logit1.shape[:-1] + (logit1.shape[-1] // classes, classes)
    log1 = torch.log_softmax(logit1.float().reshape(shape), -1)
    log2 = torch.log_softmax(logit2.float().reshape(shape), -1)
    return (log1.exp() * (log1 - log2)).sum((-2, -1))


def state_kl(state1: dict, state2: dict, classes: int = 0) -> torch.Tensor:
    """KL between two RSSM states' latent distributions, summed over the latent dims: Gaussian (`mean`, `std`) or,
    with `classes` > 0, categorical (`logit`, groups of `classes`)."""
    if classes:
        return categorical_kl(state1['logit'], state2['logit'], classes)
    return normal_kl(state1['mean'], state1['std'], state2['mean'], state2['std'])


def balanced_kl(post: dict, prior: dict, balance: float, free: float, scale: float, classes: int = 0):
    """DreamerV2 KL balancing with free nats applied to the batch mean (`classes`: see `state_kl`).

    balance * max(mean KL(sg(post) || prior), free) + (1 - balance) * max(mean KL(post || sg(prior)), free).
    Returns (loss, mean KL value) where the value is the plain KL(post || prior).
    """
    sg = lambda s: {k: v.detach() for k, v in s.items()}
    post_sg, prior_sg = sg(post), sg(prior)
    lhs = state_kl(post_sg, prior, classes).mean()
    rhs = state_kl(post, prior_sg, classes).mean()
    free_t = torch.tensor(free, device=lhs.device, dtype=lhs.dtype)
    loss = balance * torch.maximum(lhs, free_t) + (1 - balance) * torch.maximum(rhs, free_t)
    return scale * loss, rhs.detach()


class _HalfSquaredError(torch.autograd.Function):
    """0.5 * ||target - mean||^2 over the last dim, fp32. Saves only the difference and returns the mean's gradient
    in one op: the autograd graph of the plain expression allocates the square and two more image-sized gradient
    tensors, at the moment (start of the backward) when memory use is highest. Same math."""

    @staticmethod
    def forward(ctx, mean, target):
        diff = target.float() - mean.float()
        ctx.save_for_backward(diff)
        ctx.mean_dtype = mean.dtype
        return 0.5 * torch.linalg.vector_norm(diff, dim=-1).square()

    @staticmethod
    def backward(ctx, grad):
        (diff,) = ctx.saved_tensors
        grad_mean = diff * -grad.unsqueeze(-1)
        grad_target = -grad_mean if ctx.needs_input_grad[1] else None
        return grad_mean.to(ctx.mean_dtype), grad_target


def gaussian_nll(mean: torch.Tensor, target: torch.Tensor, event_dims: int) -> torch.Tensor:
    """-log N(target; mean, 1), summed over the last `event_dims` dims (includes the 0.5 log 2pi constant)."""
    if not event_dims:
        diff = target.float() - mean.float()
        return 0.5 * diff.square() + 0.5 * np.log(2 * np.pi)
    count = int(np.prod(mean.shape[-event_dims:]))
    flat = lambda x: x.reshape(*x.shape[:x.dim() - event_dims], count)
    return _HalfSquaredError.apply(flat(mean), flat(target)) + 0.5 * np.log(2 * np.pi) * count


def standard_normal_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per dimension (the beta-VAE term)."""
    mean, logvar = mean.float(), logvar.float()
    return -0.5 * (1 + logvar - mean ** 2 - logvar.exp())


class TruncNormal:
    """The DreamerV2 actor distribution: a Normal(mean, std) truncated to [low, high], as official DreamerV2.

    Samples come from the truncated density itself (inverse CDF: x = mean + std * Phi^-1(Phi(a) + u (Phi(b) - Phi(a))),
    u ~ U(0, 1)), so the pathwise gradient flows to mean and std; a last clip to [low + clip, high - clip] passes the
    gradient straight through (it only moves float round-off at the bounds). Entropy and log-density are those of the
    truncated Normal. The release uses `ClippedNormal` (README, `--release_compat` table; docs/learning.md).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, low=-1.0, high=1.0, clip=1e-6):
        low_precision = (torch.float16, torch.bfloat16)     # fp32 under autocast: Phi^-1 near 1 needs the bits
        self.mean, self.std = (x.float() if x.dtype in low_precision else x for x in (mean, std))
        mean, std = self.mean, self.std
        self._low, self._high, self._clip = low, high, clip
        self._alpha = (low - mean) / std
        self._beta = (high - mean) / std
        self._cdf_low = torch.special.ndtr(self._alpha)
        self._mass = (torch.special.ndtr(self._beta) - self._cdf_low).clamp_min(1e-8)

    def rsample(self) -> torch.Tensor:
        u = torch.rand_like(self.mean)
        tiny = torch.finfo(self.mean.dtype).tiny
        p = (self._cdf_low + u * self._mass).clamp(tiny, 1 - 1e-7)
        event = self.mean + self.std * torch.special.ndtri(p)
        clipped = event.clamp(self._low + self._clip, self._high - self._clip)
        return event - event.detach() + clipped.detach()

    sample = rsample

    def mode(self) -> torch.Tensor:
        return self.mean

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z = (x - self.mean) / self.std
        log_density = -0.5 * z ** 2 - 0.5 * np.log(2 * np.pi) - torch.log(self.std) - torch.log(self._mass)
        return log_density.sum(-1)

    def entropy(self) -> torch.Tensor:
        pdf = lambda z: torch.exp(-0.5 * z ** 2) / np.sqrt(2 * np.pi)
        edge = (self._alpha * pdf(self._alpha) - self._beta * pdf(self._beta)) / (2 * self._mass)
        return (0.5 * np.log(2 * np.pi * np.e) + torch.log(self.std) + torch.log(self._mass) + edge).sum(-1)


class ClippedNormal:
    """The actor distribution of dreamer-torch and the DisWM release (`--release_compat`): a Normal sample clipped to
    [-1, 1] with a straight-through gradient; log-density and entropy are the untruncated Normal's. At std ~1 about a
    third of the samples sit exactly on a bound, against a few percent for `TruncNormal`.

    `clip_rsample=False` is the release exactly: only `sample` (acting) clips, while `rsample` (imagination) returns
    the raw Normal sample, so imagined actions leave [-1, 1] (a third of them at the initial std).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, low=-1.0, high=1.0, clip=1e-6,
                 clip_rsample: bool = True):
        self.mean, self.std = mean, std
        self._normal = td.Normal(mean, std)
        self._low, self._high, self._clip = low, high, clip
        self._clip_rsample = clip_rsample

    def sample(self) -> torch.Tensor:
        event = self._normal.rsample()
        clipped = event.clamp(self._low + self._clip, self._high - self._clip)
        return event - event.detach() + clipped.detach()

    def rsample(self) -> torch.Tensor:
        return self.sample() if self._clip_rsample else self._normal.rsample()

    def mode(self) -> torch.Tensor:
        return self.mean

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self._normal.log_prob(x).sum(-1)

    def entropy(self) -> torch.Tensor:
        return self._normal.entropy().sum(-1)


def weighted_terms(terms: dict) -> tuple:
    """{name: (loss, weight)} -> (the weighted sum, metrics `<name>_loss` (unweighted) and `model_loss`): the one
    place every world model (online, stage 1, the Vid2Act teacher) sums its named loss terms."""
    total = sum(value * weight for value, weight in terms.values())
    metrics = {f'{name}_loss': value.detach() for name, (value, _) in terms.items()}
    metrics['model_loss'] = total.detach()
    return total, metrics


def lambda_return(reward, next_value, discount, lambda_: float, reverse_bug: bool = False):
    """TD(lambda) returns, time-major (T, ...): R_t = r_t + g_t * ((1 - l) V_{t+1} + l R_{t+1}), R_T = V_T.

    `next_value[t]` is V(s_{t+1}), so `next_value[-1]` is the bootstrap (V(s_0) is never needed). With `reverse_bug`
    the outputs come back in reversed time order, reproducing dreamer-torch / the DisWM release
    (docs/method.md, "The released code's behaviours and --release_compat").
    """
    inputs = reward + discount * next_value * (1 - lambda_)
    outputs = [None] * reward.shape[0]
    last = next_value[-1]
    for t in reversed(range(reward.shape[0])):
        last = inputs[t] + discount[t] * lambda_ * last
        outputs[t] = last
    returns = torch.stack(outputs, 0)
    return returns.flip(0) if reverse_bug else returns


# --------------------------------------------------------------------------------------------------------------------
# Optimisation helpers
# --------------------------------------------------------------------------------------------------------------------
class Every:
    """Due once each time a counter passes the next multiple of `interval` (counted from the multiple after
    `start`): `every(value)` is True at most once per call and then moves to the following multiple."""

    def __init__(self, interval: int, start: int = 0):
        self.interval = interval
        self.next = (start // interval + 1) * interval

    def __call__(self, value: int) -> bool:
        if value < self.next:
            return False
        self.next += self.interval
        return True


class Ratio:
    """How many actions are due: one per `every` units the counter advanced since the last call that counted
    (`ratio(value)` returns that many and keeps the remainder); `restart(value)` counts from `value` again."""

    def __init__(self, every: int, start: int = 0):
        self.every, self.last = every, start

    def restart(self, value: int) -> None:
        self.last = value

    def __call__(self, value: int) -> int:
        due = (value - self.last) // self.every
        self.last += due * self.every
        return due


_PAUSED = [0.0]   # seconds this process spent stopped through SIGTSTP, see count_pauses()


def paused_seconds() -> float:
    """Seconds this process has spent stopped by SIGTSTP (Ctrl-Z, `kill -TSTP PID`) since `count_pauses()`."""
    return _PAUSED[0]


def _stop_and_count(signum, frame) -> None:
    import signal
    tick = time.perf_counter()
    os.kill(os.getpid(), signal.SIGSTOP)     # returns once a SIGCONT (`fg`, `kill -CONT PID`) resumes the process
    _PAUSED[0] += time.perf_counter() - tick


def count_pauses() -> bool:
    """Makes SIGTSTP stop this process as usual while timing the stop, so that run clocks can leave it out.

    SIGSTOP itself cannot be caught: a process stopped with `kill -STOP` has the pause counted by whichever clock was
    running. Returns False where it cannot be installed (no SIGTSTP on this platform, or not the main thread)."""
    import signal
    import threading
    if not hasattr(signal, 'SIGTSTP') or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTSTP, _stop_and_count)
    return True


def run_clock() -> float:
    """Seconds of a monotonic clock less the time spent paused through SIGTSTP."""
    return time.perf_counter() - _PAUSED[0]


class Timer:
    """Adds the seconds spent inside `with timer('key'):` to `totals['key']`: wall-clock time less any SIGTSTP pause
    in between (`count_pauses()`)."""

    def __init__(self, totals: dict):
        self.totals = totals

    def __call__(self, key: str):
        import contextlib

        @contextlib.contextmanager
        def timed():
            tick = run_clock()
            try:
                yield
            finally:
                self.totals[key] += run_clock() - tick
        return timed()


class FiniteGuard:
    """Stops a run at the first non-finite loss (`*_loss`) or gradient norm (`*_grad_norm`) among an update's metrics.

    On a CPU every update is checked at once (reading a scalar costs nothing there). On a GPU the flags stay on the
    device (no host sync per update) and `check()`, called before every log write and every save, raises for the
    first bad update since the last check; nothing is saved from that state. With fp16 (`skip_grad_norms`) the grad
    scaler skips overflowing steps itself, so only the losses are checked.
    """

    def __init__(self, device: str, skip_grad_norms: bool = False):
        self.each_update = not str(device).startswith('cuda')
        self.skip_grad_norms = skip_grad_norms
        self.pending = []

    def watch(self, metrics: dict, update: int) -> None:
        names = [k for k, v in metrics.items() if torch.is_tensor(v) and (
            k.endswith('_loss') or (k.endswith('_grad_norm') and not self.skip_grad_norms))]
        if not names:
            return
        values = torch.stack([metrics[k].detach().float().reshape(-1)[0] for k in names])
        self.pending.append((update, names, values))
        if self.each_update:
            self.check()

    def check(self) -> None:
        pending, self.pending = self.pending, []
        for update, names, values in pending:
            finite = torch.isfinite(values).tolist()
            if not all(finite):
                bad = [f'{name} = {value:g}' for name, value, ok in zip(names, values.tolist(), finite) if not ok]
                raise NonFiniteError(
                    f"Non-finite {', '.join(bad)} at update {update}. The run stopped without saving anything from "
                    f"this state (the last checkpoint on disk is from before it). Common fixes: a lower learning rate "
                    f"(--model_lr, --actor_lr, --value_lr), --grad_clip, or --precision 32.")


class NonFiniteError(ConfigError):
    """A loss or gradient norm became NaN or infinite (see FiniteGuard)."""


class Optimizer:
    """Adam with gradient clipping over a fixed parameter list; `step(loss)` returns the grad norm tensor.

    With `scaler=True` (fp16 training) the loss is scaled and steps with inf/nan gradients are skipped.
    With `eps_keras=True` epsilon sits where TensorFlow/Keras's Adam (official DreamerV2's optimizer) puts it: added
    to the square root of the *uncorrected* second moment, p -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps),
    i.e. torch's bias-corrected form with eps / sqrt(1 - b2^t) at step t (~32 eps at t = 1, 3.2 eps at t = 100,
    1.26 eps at t = 1000). It only matters where gradients are as small as eps (the actor's, early on).
    """

    def __init__(self, name, parameters, lr, eps, clip, weight_decay=0.0, scaler=False, eps_keras=False):
        self.name = name
        self.parameters = list(parameters)
        self.clip = clip
        self.eps, self.eps_keras = eps, eps_keras
        kwargs = dict(lr=lr, eps=eps, weight_decay=weight_decay, foreach=True)
        self.opt = torch.optim.AdamW(self.parameters, **kwargs) if weight_decay else torch.optim.Adam(
            self.parameters, **kwargs)
        device = self.parameters[0].device.type if self.parameters else 'cpu'
        self.scaler = torch.amp.GradScaler(device) if scaler else None
        # Gradients live in buffers allocated once, here, and are zeroed in place before each backward (as torch < 2
        # did): no allocation per update, and these long-lived blocks sit below the activations in the heap.
        for p in self.parameters:
            p.grad = torch.zeros_like(p)

    @classmethod
    def for_config(cls, name, parameters, lr, config):
        """Adam with the config's eps, gradient clip and weight decay; a gradient scaler with --precision 16.

        `weight_decay_step` w (official DreamerV2's wd) multiplies every parameter by 1 - w before each step; AdamW
        multiplies by 1 - lr x weight_decay, so it is AdamW with weight_decay = w / lr."""
        decay = config.weight_decay or (config.get('weight_decay_step', 0.0) / lr if lr else 0.0)
        return cls(name, parameters, lr, config.opt_eps, config.grad_clip, decay, scaler=str(config.precision) == '16',
                   eps_keras=bool(config.get('opt_eps_keras', False)))

    def zero_grad(self):
        grads = []
        for p in self.parameters:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            else:
                grads.append(p.grad)
        if grads:
            torch._foreach_zero_(grads)

    def _set_keras_eps(self):
        """Sets this step's eps for `eps_keras` (t = the step about to be taken, as torch's Adam counts it)."""
        state = self.opt.state.get(self.parameters[0])
        t = int(state['step']) + 1 if state else 1
        group = self.opt.param_groups[0]
        group['eps'] = self.eps / (1 - group['betas'][1] ** t) ** 0.5

    def step(self, loss: torch.Tensor) -> torch.Tensor:
        self.zero_grad()
        if self.eps_keras and self.parameters:
            self._set_keras_eps()
        if self.scaler is None:
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.clip, foreach=True)
            self.opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.opt)
            norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.clip, foreach=True)
            self.scaler.step(self.opt)
            self.scaler.update()
        return norm.detach()

    def state_dict(self):
        state = {'opt': self.opt.state_dict()}
        if self.scaler is not None:
            state['scaler'] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state):
        self.opt.load_state_dict(state['opt'] if 'opt' in state else state)
        if self.scaler is not None and 'scaler' in state:
            self.scaler.load_state_dict(state['scaler'])


# --------------------------------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------------------------------
class Logger:
    """stdout + `<logdir>/metrics.jsonl` + TensorBoard (+ wandb when asked). Values may be tensors until written."""

    def __init__(self, logdir: str, config=None, use_tensorboard=True, use_wandb=False):
        self.logdir = logdir
        self._scalars: dict[str, list] = {}
        self._videos: dict[str, np.ndarray] = {}
        self._images: dict[str, np.ndarray] = {}
        self._writer = None
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._writer = SummaryWriter(logdir, max_queue=1000)
            except Exception as e:  # tensorboard missing: keep jsonl logging
                print(f'TensorBoard disabled ({e}).', file=sys.stderr)
        self._wandb = None
        if use_wandb:
            try:
                import wandb  # only imported when asked
            except ImportError:
                raise ConfigError('--wandb True needs the wandb package: pip install wandb '
                                  '(WANDB_MODE=offline works without network).') from None
            self._wandb = wandb.init(project='diswm', dir=logdir, config=config.to_dict() if config else None,
                                     name=os.path.basename(os.path.normpath(logdir)), resume='allow')
        self._last_time = time.time()

    def scalar(self, name: str, value) -> None:
        self._scalars.setdefault(name, []).append(value)

    def scalars(self, metrics: dict, prefix: str = '') -> None:
        for key, value in metrics.items():
            self.scalar(prefix + key, value)

    def video(self, name: str, value: np.ndarray) -> None:
        self._videos[name] = value

    def image(self, name: str, value: np.ndarray) -> None:
        self._images[name] = value

    def write(self, step: int, echo: bool = True) -> dict:
        row = {'step': int(step)}
        for name, values in self._scalars.items():
            vals = np.array([float(v.detach().float().mean().cpu()) if torch.is_tensor(v) else float(v)
                             for v in values])
            finite = np.isfinite(vals)
            # A non-finite value (e.g. the gradient norm of a step the fp16 grad scaler skipped) would make the
            # window's mean inf: average the finite ones and count the others in `<name>_nonfinite`.
            row[name] = float(vals[finite].mean() if finite.any() else vals.mean())
            if not finite.all():
                row[name + '_nonfinite'] = int((~finite).sum())
        self._scalars.clear()
        if len(row) > 1:
            with open(os.path.join(self.logdir, 'metrics.jsonl'), 'a') as f:
                f.write(json.dumps(row) + '\n')
            if echo:
                # Per-dimension groups (name/index) stay in the files, not on the terminal.
                shown = ' / '.join(f'{k} {v:.4g}' for k, v in row.items() if k != 'step' and '/' not in k)
                print(f'[{step}] {shown}', flush=True)
        if self._writer is not None:
            for name, value in row.items():
                if name != 'step':
                    self._writer.add_scalar(name, value, step)
            for name, video in self._videos.items():
                # video: (B, T, H, W, C) uint8 -> TensorBoard expects (N, T, C, H, W)
                self._writer.add_video(name, np.transpose(video, (0, 1, 4, 2, 3)), step, fps=16)
            for name, image in self._images.items():
                self._writer.add_image(name, image, step, dataformats='HWC')
            self._writer.flush()
        if self._wandb is not None:
            import wandb
            payload = {k: v for k, v in row.items() if k != 'step'}
            payload.update({k: wandb.Video(np.transpose(v[0], (0, 3, 1, 2)), fps=16) for k, v in self._videos.items()})
            payload.update({k: wandb.Image(v) for k, v in self._images.items()})
            self._wandb.log(payload, step=step)
        self._videos.clear()
        self._images.clear()
        return row

    def close(self):
        if self._writer is not None:
            self._writer.close()
        if self._wandb is not None:
            self._wandb.finish()


def timestamp() -> str:
    return datetime.datetime.now().strftime('%Y%m%dT%H%M%S')


def append_jsonl(path: str, record: dict) -> None:
    """Appends `record` as one JSON line to a log such as resumes.jsonl or collections.jsonl."""
    with open(path, 'a') as f:
        f.write(json.dumps(record) + '\n')


COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def compiled(fn, name: str, mode: str = 'default'):
    """torch.compile(fn, mode=mode), falling back to the eager function (once, with a warning) if compilation fails."""
    compiled_fn = torch.compile(fn, dynamic=False, mode=mode)
    state = {'fn': compiled_fn}

    def call(*args, **kwargs):
        try:
            return state['fn'](*args, **kwargs)
        except Exception as e:  # compiler missing, unsupported op, ...: keep training in eager mode
            if state['fn'] is fn:
                raise
            print(f'Warning: torch.compile failed for {name} ({type(e).__name__}: {str(e)[:200]}); '
                  f'running it eagerly.', file=sys.stderr)
            state['fn'] = fn
            return fn(*args, **kwargs)
    call.compiled = compiled_fn
    return call


def uses_cuda_graphs(config) -> bool:
    """Whether `--compile` records CUDA graphs (mode reduce-overhead or max-autotune on a GPU): each update then starts
    a new graph generation (`torch.compiler.cudagraph_mark_step_begin`)."""
    return (bool(config.compile) and str(config.device).startswith('cuda')
            and config.compile_mode in ('reduce-overhead', 'max-autotune'))


def mark_update_begin(config) -> None:
    """Tell torch.compile's CUDA-graph trees that a new update (iteration) starts; nothing otherwise."""
    if uses_cuda_graphs(config):
        torch.compiler.cudagraph_mark_step_begin()
