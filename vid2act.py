"""Vid2Act baseline (Pan et al., "Model-Based RL with Multi-Task Offline Pretraining"; docs/vid2act.md).

Two stages, both run through `dreamer.py`:

1. `--mode teacher_pretrain` (alias `--vid2act_pretrain True`): `dreamer.pretrain_teacher` (the run loop; its parts
   are here) trains ONE action-conditioned DreamerV2 world model conditioned on a one-hot source-task label
   (`LabelledWorldModel`: K label planes on the encoder input, the label appended to the prior's input, decoder and
   reward head see it too) on one offline dataset per source task (`<offline_dir>/<task>/**/*.npz`, actions
   zero-padded to one common size). "Teacher k" is that network with label k.
   Output: `<logdir>/teacher.pt` + `teacher_meta.json` (ordered source tasks, padded action size, sizes).
2. `--method_name vid2act`: `Vid2ActAgent`, a fresh DreamerV2 student plus
   - the frozen teacher (encoder + RSSM; not a registered submodule, so it is in no optimizer, no `state_dict` and
     never switched to train mode; run under `no_grad`),
   - `Vid2ActDistill`, a world-model loss part: per-state softmax weights over the teachers from `imp([t_k ; f])`,
     the clamped weighted distillation loss, and the label-conditioned BCQ-style CVAE (`ActionReplayVAE`) trained on
     (distilled teacher feature at t, action at t+1) pairs of every source dataset,
   - `Vid2ActBehavior`: the actor sees [f ; CVAE decoder hidden for the highest-weight teacher k*], the critic f only,
   - acting with one recurrent state per teacher, reset at episode starts.

Release bugs fixed here (docs/vid2act.md, "Release bugs fixed"): weights are stacked before the softmax (1); no
hard-coded 2500/50 or bare squeeze (2); the adaptive weighting is the only path, so there is no undefined branch (3);
the CVAE's action and latent sizes follow the padded action size (4); per-teacher acting states (5; reproduced with
`release_compat`); a working label-conditioned pretraining with per-task folders (6); DMC actions padded to one size
(7); the teacher runs under `no_grad` (8). The reversed lambda-returns (9) are handled by `tools.lambda_return` via
`ImagBehavior`.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

import models
import networks
import replay as replay_lib
import tools
from tools import ConfigError

TEACHER_FILE = 'teacher.pt'
TEACHER_META = 'teacher_meta.json'
TEACHER_STATE = 'teacher_state.pt'       # resumable pretraining state (model, optimizer, RNGs)
TEACHER_FORMAT = 'vid2act_teacher/1'


# --------------------------------------------------------------------------------------------------------------------
# Source tasks and their datasets
# --------------------------------------------------------------------------------------------------------------------
def source_tasks(config) -> list[str]:
    """The ordered source tasks (label k = position k), without the target's suite prefix."""
    suite = config.task.partition('_')[0]
    tasks = [str(t).strip() for t in (config.source_tasks or []) if str(t).strip()]
    tasks = [t[len(suite) + 1:] if t.startswith(suite + '_') else t for t in tasks]
    if not tasks:
        raise ConfigError('Vid2Act needs its source tasks: pass --source_tasks a,b (e.g. --source_tasks '
                          'cheetah_run,hopper_stand,walker_walk,walker_run), each with episodes in '
                          '<offline_dir>/<task>/.')
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f'--source_tasks lists a task twice: {",".join(tasks)}.')
    target = config.task.partition('_')[2]
    if target in tasks:
        raise ConfigError(f'The target task {target} is also a source task (--source_tasks {",".join(tasks)}): its '
                          f'teacher would be trained on target data. Drop it from --source_tasks or pick another '
                          f'--task.')
    return tasks


def source_dir(config, task: str) -> str:
    if not config.offline_dir:
        raise ConfigError('Vid2Act needs --offline_dir: a folder holding one subfolder of .npz episodes (with actions) '
                          'per source task, e.g. D/cheetah_run/ (see scripts/collect_vid2act_sources.sh).')
    if not os.path.isdir(config.offline_dir):
        raise ConfigError(f"--offline_dir '{config.offline_dir}' does not exist.")
    directory = os.path.join(config.offline_dir, task)
    prefixed = os.path.join(config.offline_dir, f"{config.task.partition('_')[0]}_{task}")
    if not os.path.isdir(directory) and os.path.isdir(prefixed):
        directory = prefixed
    if not replay_lib.list_episodes(directory, recursive=True):
        root = config.offline_dir
        present = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        raise ConfigError(f"No .npz episodes for source task '{task}' under '{directory}' (searched recursively). "
                          f"Folders in --offline_dir: {', '.join(present) or 'none'}; collect them with "
                          f"scripts/collect_vid2act_sources.sh or fix --source_tasks.")
    return directory


def dataset_action_size(directory: str) -> int:
    """Action size of a source dataset, read from its first readable episode (only the `action` array)."""
    for path in replay_lib.list_episodes(directory, recursive=True):
        try:
            with np.load(path) as data:
                if 'action' not in data.files:
                    raise ConfigError(f"Episode '{path}' has no `action` array: Vid2Act's source datasets need "
                                      f"actions (collect with scripts/collect_videos.py, --save_actions True).")
                action = data['action']
        except (OSError, ValueError, zipfile.BadZipFile, EOFError):
            continue
        if action.ndim != 2:
            raise ConfigError(f"Episode '{path}' has actions of shape {action.shape}; expected (T, A).")
        return int(action.shape[1])
    raise ConfigError(f"No readable episode under '{directory}'.")


def padded_action_size(config, source_sizes: dict, target_size: int | None) -> int:
    """`--action_pad`, or (0) the largest action size over the source tasks and the target task."""
    largest = max(list(source_sizes.values()) + ([target_size] if target_size else []))
    if config.action_pad and config.action_pad < largest:
        sizes = ', '.join(f'{k} {v}' for k, v in source_sizes.items())
        raise ConfigError(f'--action_pad {config.action_pad} is smaller than the largest action size {largest} '
                          f'(sources: {sizes}; target {target_size}): pass --action_pad {largest} or 0.')
    return int(config.action_pad or largest)


def _image_bytes(path: str) -> int:
    with zipfile.ZipFile(path) as archive:
        return archive.getinfo('image.npy').file_size


class SourceData:
    """One replay per source task; batches are drawn per task, labelled with the task index, actions zero-padded.

    Loading is explicit (`load`) so that building an agent (for evaluation, collection) never reads the datasets.
    """

    def __init__(self, config, tasks: list[str], seed_offset: int = 0):
        self.config, self.tasks = config, list(tasks)
        self.dirs = [source_dir(config, task) for task in self.tasks]
        self.action_sizes = {task: dataset_action_size(d) for task, d in zip(self.tasks, self.dirs)}
        self.seed_offset = seed_offset
        self.replays: list[replay_lib.Replay] | None = None
        self.has_reward: list[bool] = []
        self.action_size = None

    @property
    def loaded(self) -> bool:
        return self.replays is not None

    def load(self, action_size: int, rewards: bool) -> None:
        """Reads every episode (image, action, is_first, and reward when `rewards`) into one replay per task."""
        config = self.config
        files = [replay_lib.list_episodes(d, recursive=True) for d in self.dirs]
        needed = 0
        for paths in files:
            for path in paths:
                try:
                    needed += _image_bytes(path)
                except (OSError, KeyError, zipfile.BadZipFile):
                    pass
        available = replay_lib.available_memory_bytes()
        if needed > config.model_memory_fraction * available:
            raise ConfigError(f'The Vid2Act source datasets need {needed / 2 ** 30:.1f} GiB of RAM as uint8 images but '
                              f'only {available / 2 ** 30:.1f} GiB are available ({config.model_memory_fraction:.0%} '
                              f'may be used): move some episodes out of the <offline_dir>/<task>/ folders.')
        self.action_size = action_size
        keys = ('image', 'action', 'is_first') + (('reward',) if rewards else ())
        self.replays, self.has_reward = [], []
        for k, (task, paths) in enumerate(zip(self.tasks, files)):
            seed = np.random.SeedSequence([self.config.seed, 7919, k, self.seed_offset])
            buffer = replay_lib.Replay(None, seed=int(seed.generate_state(1)[0]))
            episodes, unreadable = [], 0
            for path in paths:
                try:
                    episodes.append((path, replay_lib.load_episode(path, keys)))
                except (OSError, ValueError, zipfile.BadZipFile, EOFError):
                    unreadable += 1
            with_reward = rewards and all('reward' in ep for _, ep in episodes)
            for path, ep in episodes:
                self._check(ep, path, task)
                ep = {key: ep[key] for key in ('image', 'action', 'is_first', 'reward') if key in ep}
                if not with_reward:
                    ep.pop('reward', None)
                buffer.add_episode(ep)
            if len(buffer) < config.batch_length:
                raise ConfigError(f"Source task '{task}' has {len(buffer)} steps in {self.dirs[k]}, fewer than one "
                                  f"sequence of --batch_length {config.batch_length}: collect more episodes.")
            if unreadable:
                print(f'Skipped {unreadable} unreadable episode(s) of {task}.')
            if rewards and not with_reward:
                print(f"Note: some episodes of '{task}' have no `reward`; its reward loss is skipped.")
            self.replays.append(buffer)
            self.has_reward.append(with_reward)

    def _check(self, ep: dict, path: str, task: str) -> None:
        size = tuple(self.config.size)
        if 'image' not in ep or 'action' not in ep:
            raise ConfigError(f"Episode '{path}' lacks `image` or `action`: Vid2Act's source datasets need both.")
        if ep['image'].ndim != 4 or tuple(ep['image'].shape[1:]) != (*size, 3) or ep['image'].dtype != np.uint8:
            raise ConfigError(f"Episode '{path}' has images {ep['image'].dtype} {tuple(ep['image'].shape[1:])}; "
                              f"expected uint8 {(*size, 3)}.")
        if ep['action'].shape[-1] != self.action_sizes[task]:
            raise ConfigError(f"Episode '{path}' has {ep['action'].shape[-1]} actions but other episodes of '{task}' "
                              f"have {self.action_sizes[task]}: keep one task per folder.")

    def sample(self, sizes: list[int], length: int) -> dict:
        """`sizes[k]` sequences of task k, concatenated: image, action (padded), is_first, reward, reward_mask,
        label (N,) int64."""
        parts = []
        for k, (count, buffer) in enumerate(zip(sizes, self.replays)):
            if count <= 0:
                continue
            batch = buffer.sample(count, length)
            action = batch['action'].astype(np.float32)
            pad = self.action_size - action.shape[-1]
            parts.append(dict(
                image=batch['image'], is_first=batch['is_first'],
                action=np.pad(action, ((0, 0), (0, 0), (0, pad))) if pad else action,
                reward=batch['reward'].astype(np.float32) if 'reward' in batch else np.zeros((count, length),
                                                                                             np.float32),
                reward_mask=np.full(count, float(self.has_reward[k]), np.float32),
                label=np.full(count, k, np.int64)))
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    def rng_states(self) -> list:
        return [r.rng.bit_generator.state for r in self.replays]

    def set_rng_states(self, states: list) -> None:
        for r, state in zip(self.replays, states):
            r.rng.bit_generator.state = state


def task_shares(batch: int, tasks: int, update: int) -> list[int]:
    """An equal share of the batch per task; the remainder rotates over the tasks from one update to the next."""
    shares = [batch // tasks] * tasks
    extra = batch % tasks
    for j in range(extra):
        shares[(update * extra + j) % tasks] += 1
    return shares


# --------------------------------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------------------------------
class LabelledWorldModel(nn.Module):
    """The multi-task teacher: a DreamerV2 world model conditioned on a one-hot source-task label.

    The label enters as K constant image planes after RGB (`ConvEncoder(in_channels=3 + K)`), appended to the prior's
    input (`RSSM(label_size=K)`) and, with `heads`, to the decoder's and reward head's input.
    """

    def __init__(self, num_labels: int, action_size: int, sizes: dict, heads: bool = True):
        super().__init__()
        self.num_labels, self.action_size, self.sizes = num_labels, action_size, dict(sizes)
        self.encoder = networks.ConvEncoder(sizes['cnn_depth'], in_channels=3 + num_labels)
        self.rssm = networks.RSSM(stoch=sizes['dyn_stoch'], deter=sizes['dyn_deter'], hidden=sizes['dyn_hidden'],
                                  action_size=action_size, embed_size=self.encoder.embed_size, cell=sizes['dyn_cell'],
                                  min_std=sizes['dyn_min_std'], label_size=num_labels,
                                  discrete=sizes.get('dyn_discrete', 0))
        feat = self.rssm.feat_size
        if heads:
            self.decoder = networks.ConvDecoder(feat + num_labels, sizes['cnn_depth'])
            self.reward = networks.DenseHead(feat + num_labels, sizes['reward_layers'], sizes['units'])
        else:
            self.decoder = self.reward = None

    @property
    def feat_size(self) -> int:
        return self.rssm.feat_size

    def onehot(self, label: torch.Tensor) -> torch.Tensor:
        return F.one_hot(label.long(), self.num_labels).float()

    def embed(self, image: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """image (N, T, 64, 64, 3) in [-0.5, 0.5], onehot (N, K) -> embed (N, T, E)."""
        planes = onehot.to(image.dtype)[:, None, None, None, :].expand(*image.shape[:-1], self.num_labels)
        return self.encoder(torch.cat([image, planes], -1))['embed']

    def observe(self, image, action, is_first, onehot, sample: bool = True):
        """Filters sequences of task `onehot` (N, K); returns (post, prior) of (N, T, ...) tensors."""
        return self.rssm.observe(self.embed(image, onehot), action, is_first, sample=sample, label=onehot)

    def features(self, image, action, is_first, onehot, sample: bool = True) -> torch.Tensor:
        return self.rssm.feat(self.observe(image, action, is_first, onehot, sample)[0])

    def loss(self, data: dict, config):
        """DreamerV2 loss on a labelled batch: image NLL + reward_scale * reward NLL + KL balancing.

        Returns (total, metrics, per-sequence image NLL (N,) for per-task logging).
        """
        onehot = self.onehot(data['label'])
        image = models.preprocess_image(data['image'])
        post, prior = self.observe(image, data['action'], data['is_first'], onehot)
        feat = self.rssm.feat(post)
        lab = onehot[:, None].expand(-1, feat.shape[1], -1).to(feat.dtype)
        cond = torch.cat([feat, lab], -1)
        image_nll = tools.gaussian_nll(self.decoder(cond), image, 3).mean(1)                 # (N,)
        reward_nll = tools.gaussian_nll(self.reward(cond), data['reward'], 0).mean(1)        # (N,)
        mask = data['reward_mask']
        reward_loss = (reward_nll * mask).sum() / mask.sum().clamp_min(1.0)
        kl_loss, kl_value = tools.balanced_kl(post, prior, config.kl_balance, config.kl_free, config.kl_scale,
                                              self.rssm.classes)
        terms = {'image': (image_nll.mean(), 1.0), 'reward': (reward_loss, config.reward_scale), 'kl': (kl_loss, 1.0)}
        total, metrics = tools.weighted_terms(terms)
        metrics['kl_value'] = kl_value
        return total, metrics, image_nll.detach()


class ActionReplayVAE(nn.Module):
    """BCQ-style conditional VAE over source actions, conditioned on a state feature and the one-hot task label.

    Encoder [state, action, label] -> hidden -> hidden -> (mean, log std clamped to [-4, 15]) of `latent` dims;
    decoder [state, z, label] -> hidden -> bottleneck -> action (max_action * tanh). The bottleneck activation
    (after ReLU) is what the Vid2Act actor sees. Sampling draws z ~ N(0, I) clipped to [-z_clip, z_clip].
    """

    def __init__(self, state_size: int, action_size: int, num_labels: int, hidden: int = 750, bottleneck: int = 50,
                 latent: int | None = None, max_action: float = 1.0, z_clip: float = 0.5):
        super().__init__()
        self.latent = latent or 2 * action_size
        self.num_labels, self.max_action, self.z_clip = num_labels, max_action, z_clip
        self.encoder = nn.Sequential(nn.Linear(state_size + action_size + num_labels, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden), nn.ReLU())
        self.mean = nn.Linear(hidden, self.latent)
        self.log_std = nn.Linear(hidden, self.latent)
        self.decoder = nn.Sequential(nn.Linear(state_size + self.latent + num_labels, hidden), nn.ReLU(),
                                     nn.Linear(hidden, bottleneck), nn.ReLU())
        self.out = nn.Linear(bottleneck, action_size)

    def forward(self, state, action, onehot):
        """Returns (reconstructed action, mean, std) with the reparameterised (unclipped) posterior sample."""
        h = self.encoder(torch.cat([state, action, onehot], -1))
        mean, std = self.mean(h), self.log_std(h).clamp(-4, 15).exp()
        z = mean + std * torch.randn_like(std)
        return self.decode(state, onehot, z)[0], mean, std

    def decode(self, state, onehot, z=None):
        """Returns (action, bottleneck hidden); z defaults to a clipped standard-normal sample."""
        if z is None:
            z = torch.randn(*state.shape[:-1], self.latent, device=state.device, dtype=state.dtype)
            z = z.clamp(-self.z_clip, self.z_clip)
        hidden = self.decoder(torch.cat([state, z, onehot.to(state.dtype)], -1))
        return self.max_action * torch.tanh(self.out(hidden)), hidden


def vae_kl(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(N(mean, std) || N(0, 1)) (BCQ's form, averaged by the caller)."""
    return -0.5 * (1 + torch.log(std.pow(2)) - mean.pow(2) - std.pow(2))


def transition_pairs(feat: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor):
    """(state at t, action taken in it) pairs of sequences (N, T, ...).

    In the DreamerV2 layout `action[t]` led to observation t, so the action taken in state t is `action[t + 1]`.
    A pair is invalid when step t + 1 starts a new episode (replay sequences may cross episode boundaries).
    Returns states (N, T-1, F), actions (N, T-1, A), valid (N, T-1) float.
    """
    return feat[:, :-1], action[:, 1:], 1.0 - is_first[:, 1:].float()


def teacher_weights(imp: nn.Module, teacher_feat: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
    """Softmax over teachers of imp([t_k ; f]): teacher_feat (K, ..., Ft), feat (..., Fs) -> weights (..., K)."""
    both = torch.cat([teacher_feat, feat.unsqueeze(0).expand(teacher_feat.shape[0], *feat.shape)], -1)
    scores = imp(both).squeeze(-1)                                   # (K, ...)
    return torch.softmax(scores.movedim(0, -1).float(), -1)


def distill_loss(distilled: torch.Tensor, feat: torch.Tensor, weights: torch.Tensor, min_weight: float):
    """sum_k mean_{b,t}[max(m, w_k) * mean_d (distiller(t_k) - f)^2]; distilled (K, B, T, F), weights (B, T, K).

    Returns (loss, per-teacher mean squared error (K,))."""
    error = (distilled.float() - feat.float().unsqueeze(0)).pow(2).mean(-1)          # (K, B, T)
    clamped = torch.clamp(weights.movedim(-1, 0), min=min_weight)                   # (K, B, T)
    return (clamped * error).mean(dim=(1, 2)).sum(), error.detach().mean(dim=(1, 2))


# --------------------------------------------------------------------------------------------------------------------
# Online stage: the world-model part, the behaviour and the agent
# --------------------------------------------------------------------------------------------------------------------
class Vid2ActDistill(nn.Module):
    """Vid2Act's world-model loss part: domain-selective distillation from the frozen teacher + the action-replay CVAE.

    forward(out, step) -> ({'vid2act_distill': (L_dist, w), 'vid2act_vae': (L_vae, w)}, metrics, k*): k* (B, T) is
    the highest-weight teacher per posterior state, the context of the actor in imagination. The source batch comes
    in `out['data']['sources']` (see `Vid2ActAgent.training_batch`).
    """

    def __init__(self, config, teacher: LabelledWorldModel, meta: dict, feat_size: int, sources: SourceData | None):
        super().__init__()
        self.config = config
        self.tasks = list(meta['source_tasks'])
        self.num_teachers = len(self.tasks)
        self.action_size = int(meta['action_size'])
        self.source_action_sizes = [int(meta['source_action_sizes'][t]) for t in self.tasks]
        self.min_weight = config.vid2act_min_weight
        self.release_compat = config.release_compat
        self._teacher = (teacher,)        # a tuple: not a submodule (frozen; no optimizer, state_dict or .train())
        self.sources = sources
        self.imp = nn.Linear(teacher.feat_size + feat_size, 1)
        self.distiller = nn.Linear(teacher.feat_size, feat_size)
        self.vae = ActionReplayVAE(feat_size, self.action_size, self.num_teachers, config.vid2act_vae_hidden,
                                   config.vid2act_vae_bottleneck, 2 * self.action_size)
        mask = torch.zeros(self.num_teachers, self.action_size)
        for k, size in enumerate(self.source_action_sizes):
            mask[k, :size] = 1.0
        self.register_buffer('action_mask', mask, persistent=False)   # the real (unpadded) dims of each task

    @property
    def teacher(self) -> LabelledWorldModel:
        return self._teacher[0]

    def pad(self, action: torch.Tensor) -> torch.Tensor:
        extra = self.action_size - action.shape[-1]
        return F.pad(action, (0, extra)) if extra > 0 else action

    def weights(self, teacher_feat, feat):
        return teacher_weights(self.imp, teacher_feat, feat)

    def actor_context(self, feat: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """The CVAE decoder's bottleneck hidden for states (N, F) and teacher labels (N,), with a fresh z."""
        return self.vae.decode(feat, F.one_hot(label.long(), self.num_teachers))[1]

    def sample_sources(self, batch: int, length: int) -> dict:
        """One source batch (numpy): `batch` sequences of each source task with its label, read from disk at the
        first call. Sampled by the agent next to the target batch (`Vid2ActAgent.training_batch`), not by the loss."""
        if not self.sources.loaded:
            self.sources.load(self.action_size, rewards=False)
            print('Vid2Act source datasets: ' + ', '.join(
                f'{task} ({self.sources.action_sizes[task]} actions, {len(r)} steps)'
                for task, r in zip(self.tasks, self.sources.replays)) + f'; actions padded to {self.action_size}.')
        return self.sources.sample([batch] * self.num_teachers, length)

    def forward(self, out: dict, step: int):
        feat, data = out['feat'], out['data']
        B, T = feat.shape[:2]
        K = self.num_teachers
        src = data['sources']                # the source batch, on the device (sampled with the target batch)
        with torch.no_grad():  # the teacher: target sequences once per label, then each task's own source batch
            image = models.preprocess_image(torch.cat([data['image'].repeat(K, 1, 1, 1, 1), src['image']]))
            action = torch.cat([self.pad(data['action']).repeat(K, 1, 1), src['action']])
            is_first = torch.cat([data['is_first'].repeat(K, 1), src['is_first']])
            label = torch.cat([torch.arange(K, device=feat.device).repeat_interleave(B), src['label']])
            teacher_feat = self.teacher.features(image, action, is_first, self.teacher.onehot(label))
        target_teacher = teacher_feat[:K * B].reshape(K, B, T, -1)
        weights = self.weights(target_teacher, feat)                                  # (B, T, K)
        dist_loss, mse = distill_loss(self.distiller(target_teacher), feat, weights, self.min_weight)

        # CVAE on (distilled teacher feature at t, action at t + 1) of each source task; the state is detached.
        states, actions, valid = transition_pairs(self.distiller(teacher_feat[K * B:]).detach(), src['action'],
                                                  src['is_first'])
        onehot = F.one_hot(src['label'], K).float()                                   # (N, K)
        pair_onehot = onehot[:, None].expand(-1, T - 1, -1)
        recon, mean, std = self.vae(states, actions, pair_onehot)
        dims = self.action_mask[src['label']][:, None]                                # (N, 1, A)
        recon_err = ((recon.float() - actions).pow(2) * dims).sum(-1) / dims.sum(-1)  # (N, T-1)
        kl = vae_kl(mean.float(), std.float()).mean(-1)                               # (N, T-1)
        count = torch.einsum('nt,nk->k', valid, onehot).clamp_min(1.0)
        recon_k = torch.einsum('nt,nk->k', valid * recon_err, onehot) / count
        kl_k = torch.einsum('nt,nk->k', valid * kl, onehot) / count
        vae_loss = (recon_k + self.config.vid2act_vae_kl * kl_k).sum()

        k_star = weights.argmax(-1)
        metrics = {'vid2act_vae_recon': recon_k.sum().detach(), 'vid2act_vae_kl': kl_k.sum().detach()}
        mean_weights = weights.detach().mean(dim=(0, 1))
        chosen = F.one_hot(k_star, K).float().mean(dim=(0, 1))
        for k, task in enumerate(self.tasks):
            metrics[f'vid2act_weight/{task}'] = mean_weights[k]
            metrics[f'vid2act_chosen/{task}'] = chosen[k]
            metrics[f'vid2act_distill_mse/{task}'] = mse[k]
        terms = {'vid2act_distill': (dist_loss, self.config.vid2act_distill_weight),
                 'vid2act_vae': (vae_loss, self.config.vid2act_vae_weight)}
        return terms, metrics, k_star.detach()        # context: the teacher label k* of every posterior state


class Vid2ActBehavior(models.ImagBehavior):
    """DreamerV2 behaviour whose actor sees [f ; CVAE hidden(f, k*)] (detached), k* fixed per imagined trajectory
    from its start state; the critic sees f only."""

    def __init__(self, config, feat_size: int, action_size: int, part: Vid2ActDistill):
        super().__init__(config, feat_size, action_size, feat_size + config.vid2act_vae_bottleneck)
        self._context = part.actor_context    # a bound method: the CVAE stays a part of the world model only

    def actor_input(self, feat: torch.Tensor, ctx) -> torch.Tensor:
        if ctx is None:
            raise ValueError('Vid2Act imagination needs the teacher labels (out["behavior_context"]).')
        with torch.no_grad():
            hidden = self._context(feat, ctx.reshape(-1))
        return torch.cat([feat, hidden.to(feat.dtype)], -1)


class Vid2ActAgent(models.Agent):
    """DreamerV2 agent + frozen multi-task teacher, distillation, action-replay CVAE (see the module docstring).

    Policy state: (student latent, previous action, teacher latents of all K labels stacked label-major (K*B, ...)).
    """

    def make_world_model(self, config, action_size: int, step: int) -> models.WorldModel:
        wm = super().make_world_model(config, action_size, step)
        teacher, meta = load_teacher(config, action_size)
        sources = None
        if config.mode == 'train':
            sources = SourceData(config, meta['source_tasks'], seed_offset=step)   # a resumed run draws anew
            check_source_sizes(sources.action_sizes, meta)
        wm.parts.append(Vid2ActDistill(config, teacher, meta, wm.rssm.feat_size, sources))
        return wm

    def make_behavior(self, config, action_size: int) -> Vid2ActBehavior:
        return Vid2ActBehavior(config, self.wm.rssm.feat_size, action_size, self.distill)

    def training_batch(self, batch: dict) -> dict:
        """The target batch and one source batch of the same shape per task, both on the device (on a GPU in the
        prefetch thread, like the target batch). A batch that already holds its sources keeps them."""
        data = super().training_batch(batch)
        if self.distill.sources is not None:
            sources = batch['sources'] if 'sources' in batch else self.distill.sample_sources(*batch['image'].shape[:2])
            data['sources'] = tools.to_device(sources, self.config.device)
        return data

    @property
    def distill(self) -> Vid2ActDistill:
        return next(part for part in self.wm.parts if isinstance(part, Vid2ActDistill))

    @torch.no_grad()
    def policy(self, obs: dict, state, training: bool):
        """One acting step: student filter step, one step of every teacher from its own state (reset at episode
        starts; with release_compat from the student's posterior, as in the release), weights, k*, actor."""
        device = self.config.device
        part = self.distill
        teacher, K = part.teacher, part.num_teachers
        image = models.preprocess_image(torch.as_tensor(obs['image'], device=device)[:, None])
        is_first = torch.as_tensor(obs['is_first'], device=device, dtype=torch.float32)
        batch = image.shape[0]
        if state is None:
            state = (self.wm.rssm.initial(batch, device), torch.zeros(batch, self.action_size, device=device),
                     teacher.rssm.initial(K * batch, device))
        latent, action, teacher_latent = state
        sample = training or not self.config.eval_state_mean       # as models.Agent.policy
        embed = self.wm.encoder(image, sample=sample)['embed'][:, 0]
        latent, _ = self.wm.rssm.obs_step(latent, self.wm.pad_action(action), embed, is_first, sample=sample)
        feat = self.wm.rssm.feat(latent)
        onehot = teacher.onehot(torch.arange(K, device=device).repeat_interleave(batch))
        teacher_embed = teacher.embed(image.repeat(K, 1, 1, 1, 1), onehot)[:, 0]
        if self.config.release_compat:   # bug 5 of the release: every teacher starts from the student's posterior
            prev, first = {k: v.repeat(K, 1) for k, v in latent.items()}, None
        else:
            prev, first = teacher_latent, is_first.repeat(K)
        teacher_latent, _ = teacher.rssm.obs_step(prev, part.pad(action).repeat(K, 1), teacher_embed, first,
                                                  sample=sample, label=onehot)
        teacher_feat = teacher.rssm.feat(teacher_latent).reshape(K, batch, -1)
        k_star = part.weights(teacher_feat, feat).argmax(-1)
        action = self.act(self.behavior.actor(self.behavior.actor_input(feat, k_star)), training)
        return action.cpu().numpy(), (latent, action, teacher_latent)


# --------------------------------------------------------------------------------------------------------------------
# Teacher checkpoint
# --------------------------------------------------------------------------------------------------------------------
def teacher_files(path: str) -> tuple[str, str]:
    """(teacher.pt, teacher_meta.json) of a pretraining run folder or of a teacher.pt path."""
    if path and os.path.isdir(path):
        return os.path.join(path, TEACHER_FILE), os.path.join(path, TEACHER_META)
    return path, os.path.join(os.path.dirname(path or '.'), TEACHER_META)


def save_teacher(directory: str, teacher: LabelledWorldModel, meta: dict) -> None:
    """Writes teacher.pt (all weights + meta) and teacher_meta.json atomically."""
    os.makedirs(directory, exist_ok=True)
    state = {name: getattr(teacher, name).state_dict() for name in ('encoder', 'rssm', 'decoder', 'reward')
             if getattr(teacher, name) is not None}
    tools.atomic_torch_save(dict(state, meta=meta), os.path.join(directory, TEACHER_FILE))
    tools.atomic_write_bytes(os.path.join(directory, TEACHER_META), json.dumps(meta, indent=2).encode())


def check_source_sizes(dataset_sizes: dict, meta: dict) -> None:
    recorded = meta['source_action_sizes']
    wrong = {t: (recorded.get(t), s) for t, s in dataset_sizes.items() if recorded.get(t) != s}
    if wrong:
        details = '; '.join(f'{t}: teacher {a} vs dataset {b}' for t, (a, b) in wrong.items())
        raise ConfigError(f'The source datasets in --offline_dir do not match the ones the teacher was pretrained on '
                          f'({details}): point --offline_dir at the pretraining data.')


def load_teacher(config, target_action_size: int):
    """Loads the frozen teacher (encoder + RSSM, strictly) on `config.device` and returns (teacher, meta).

    Fails with one ConfigError when the checkpoint's source tasks (number or order) or padded action size differ from
    what this run expects.
    """
    path = config.teacher_checkpoint_path
    if not path:
        raise ConfigError('--method_name vid2act needs --teacher_checkpoint_path: the folder of a teacher pretraining '
                          'run (--mode teacher_pretrain), or its teacher.pt.')
    ckpt_path, _ = teacher_files(path)
    if not os.path.isfile(ckpt_path):
        raise ConfigError(f"Teacher checkpoint '{ckpt_path}' not found: pretrain it first with --method_name vid2act "
                          f"--mode teacher_pretrain --source_tasks ... --offline_dir ... --logdir DIR, then pass "
                          f"--teacher_checkpoint_path DIR.")
    try:
        state = torch.load(ckpt_path, map_location='cpu', weights_only=True)
        meta = state['meta']
    except Exception as e:
        raise ConfigError(f"'{ckpt_path}' is not a Vid2Act teacher checkpoint ({type(e).__name__}: {e}).") from None
    tasks = source_tasks(config)
    saved = list(meta['source_tasks'])
    if saved != tasks:
        raise ConfigError(f"The teacher in '{ckpt_path}' has {len(saved)} teachers (source tasks {','.join(saved)}) "
                          f"but this run has {len(tasks)} (--source_tasks {','.join(tasks)}): pass --source_tasks "
                          f"{','.join(saved)} (same order) or pretrain a teacher on these tasks.")
    # With --action_pad 0 a teacher padded wider than this run needs is fine (zeros); a narrower one is not.
    sizes = dict(meta['source_action_sizes'])
    needed = padded_action_size(config, sizes, target_action_size)
    saved_size = int(meta['action_size'])
    if saved_size < needed or (config.action_pad and saved_size != config.action_pad):
        hint = (f'pass --action_pad {saved_size} or 0' if saved_size > needed
                else f'pretrain the teacher with --action_pad {needed}')
        raise ConfigError(f"The teacher in '{ckpt_path}' was pretrained with padded action size {saved_size} but "
                          f"this run needs {needed} (target {target_action_size} actions, sources "
                          f"{', '.join(f'{t} {s}' for t, s in sizes.items())}, --action_pad {config.action_pad}): "
                          f"{hint}.")
    teacher = LabelledWorldModel(len(saved), int(meta['action_size']), meta['sizes'], heads=False)
    for name in ('encoder', 'rssm'):
        module = getattr(teacher, name)
        try:
            module.load_state_dict(state[name])
        except (RuntimeError, KeyError) as e:
            raise ConfigError(f"The {name} in '{ckpt_path}' does not fit its own meta ({str(e)[:300]}).") from None
    zero_unfed_action_columns(teacher, max(sizes.values()))
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher.to(config.device), meta


def zero_unfed_action_columns(teacher: 'LabelledWorldModel', fed: int) -> None:
    """Zeroes the prior's input weights of the padded action dims that no source task ever fed (>= `fed`). They kept
    their random initial values through pretraining (their inputs were always zero); online, the target's actions
    reach them, and random weights would move the teacher's prior in a way it never learned."""
    stoch = teacher.rssm.stoch_size
    with torch.no_grad():
        teacher.rssm.img_in[0].weight[:, stoch + fed:stoch + teacher.action_size] = 0


# --------------------------------------------------------------------------------------------------------------------
# Stage 1: multi-task teacher pretraining (the run loop is `dreamer.pretrain_teacher`)
# --------------------------------------------------------------------------------------------------------------------
def target_action_size(config) -> int:
    """The target task's action size (from its environment)."""
    import env as envs
    try:
        distractor = envs.distractor_schedule(config.task, config.color_distractor, config.clean_render)['train_1']
        environment = envs.make_env(config.task, config, config.seed, distractor)
    except ValueError as e:  # unknown task: the env's message names the closest valid ones
        raise ConfigError(str(e)) from None
    try:
        return int(environment.action_size)
    finally:
        environment.close()
