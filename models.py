"""World model (one class, loss built from named parts), behaviour learning, the DreamerV2 agent, the architecture
keys, and the pretrained video model's files.

A method (DreamerV2, DisWM, DV2 Finetune, APV; the action-free video model for pretraining) is a `MethodSpec`
(declared in methods.py) chosen once from `config.method_name`; it decides which parts the world model is built from
and what is loaded from the pretrained checkpoints. The training step itself never tests the method again. Building
and loading whole agents is agents.py.
"""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

import networks
import tools
from methods import METHOD_SPECS, MethodSpec  # noqa: F401  (the methods are declared in methods.py)


# --------------------------------------------------------------------------------------------------------------------
# Architecture keys and methods
# --------------------------------------------------------------------------------------------------------------------
# The config keys that shape the networks, listed once. Whatever is rebuilt from saved weights takes them from what
# was saved: an agent from its checkpoint's config (`agents.load_agent`; eval-only runs take them over too), the
# Vid2Act teacher from `sizes` in its meta, the video model's files from meta.json.
WORLD_MODEL_KEYS = ('dyn_stoch', 'dyn_deter', 'dyn_hidden', 'dyn_cell', 'dyn_min_std', 'dyn_discrete', 'cnn_depth',
                    'units', 'reward_layers')
VIDEO_MODEL_KEYS = WORLD_MODEL_KEYS + ('z_dim', 'pretrain_action_num')
ARCHITECTURE_KEYS = ('method_name', 'beta_vae', 'release_compat') + VIDEO_MODEL_KEYS + (
    'value_layers', 'actor_layers', 'actor_min_std', 'source_action_num', 'action_num_gap',   # behaviour, DV2 Finetune
    'queue_size', 'queue_dim', 'intr_k', 'intr_seq_length',                                 # APV's bonus
    'source_tasks', 'teacher_checkpoint_path', 'action_pad', 'vid2act_vae_hidden', 'vid2act_vae_bottleneck')  # Vid2Act


def method_spec(config) -> MethodSpec:
    if config.mode == 'video_pretrain':
        return METHOD_SPECS['pretrain']
    if config.method_name not in METHOD_SPECS:
        raise tools.ConfigError(f"Method '{config.method_name}' is not available in this build.")
    spec = METHOD_SPECS[config.method_name]
    if spec.needs_checkpoint and not config.beta_vae:
        raise tools.ConfigError(f"--method_name {spec.name} uses the pretrained beta-VAE video model; "
                                f"add --beta_vae True.")
    return spec


# --------------------------------------------------------------------------------------------------------------------
# Pretrained checkpoints (encoder.pt, decoder.pt, rssm.pt, meta.json)
# --------------------------------------------------------------------------------------------------------------------
CHECKPOINT_FILES = ('encoder', 'decoder', 'rssm')


def save_video_model(directory: str, wm: 'WorldModel', meta: dict) -> None:
    """Writes encoder.pt, decoder.pt, rssm.pt and meta.json atomically into `directory`."""
    os.makedirs(directory, exist_ok=True)
    for name in CHECKPOINT_FILES:
        tools.atomic_torch_save(getattr(wm, name).state_dict(), os.path.join(directory, f'{name}.pt'))
    tools.atomic_write_bytes(os.path.join(directory, 'meta.json'), json.dumps(meta, indent=2).encode())


def load_checkpoint_part(directory: str, name: str, module: nn.Module, config, adapt=None) -> None:
    """Loads `<directory>/<name>.pt` into `module`, failing with one clear message on any mismatch."""
    path = os.path.join(directory, f'{name}.pt')
    if not os.path.exists(path):
        raise tools.ConfigError(
            f"Pretrained checkpoint '{path}' not found. Pretrain first (--mode video_pretrain, or the release's "
            f"--beta_vae_pretrain True) and copy "
            f"encoder.pt/decoder.pt/rssm.pt/meta.json into --pretrain_checkpoint_path (now '{directory}').")
    meta_path = os.path.join(directory, 'meta.json')
    meta = {}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if 'z_dim' in meta and meta['z_dim'] != config.z_dim:
            raise tools.ConfigError(f"Checkpoint in '{directory}' has z_dim {meta['z_dim']} but this run expects "
                                    f"z_dim {config.z_dim}: pass --z_dim {meta['z_dim']} or pretrain with "
                                    f"--z_dim {config.z_dim}.")
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise tools.ConfigError(f"Pretrained checkpoint '{path}' is unreadable ({type(e).__name__}: {str(e)[:200]}): "
                                f"copy it again from the pretraining run, or pretrain again.") from None
    if adapt is not None:
        state = adapt(state)
    state = networks.fill_missing_gru_bias(state, module)
    own = module.state_dict()
    problems = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}' for k, v in state.items()
                if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    if problems or missing or extra:
        details = '; '.join(problems[:4] + ([f'missing {missing[:3]}'] if missing else []) +
                            ([f'unexpected {extra[:3]}'] if extra else []))
        raise tools.ConfigError(f"Checkpoint '{path}' does not fit this model ({details}). Check --z_dim, "
                                f"--dyn_stoch/--dyn_deter/--dyn_hidden, --source_action_num/--action_num_gap and "
                                f"--pretrain_action_num against the pretraining run's meta.json.")
    module.load_state_dict(state)
    print(f"Loaded pretrained {name} from {path} (pretraining updates {meta.get('updates', 'unknown')}, z_dim "
          f"{meta.get('z_dim', 'unknown')}, source task {meta.get('task', 'unknown')}).")


def _widen_action_input(state: dict, stoch: int, new_action: int) -> dict:
    """Pads the RSSM input layer's action columns with zeros (the pretrained dynamics are unchanged at first)."""
    weight = state['img_in.0.weight']
    old_inputs = weight.shape[1]
    if old_inputs < stoch + new_action:
        pad = weight.new_zeros(weight.shape[0], stoch + new_action - old_inputs)
        state = dict(state, **{'img_in.0.weight': torch.cat([weight, pad], 1)})
    return state


# --------------------------------------------------------------------------------------------------------------------
# Loss parts: part(out, step) -> (terms {name: (loss, weight)}, metrics, context for the actor or None). A part gets
# everything it needs in `out` (the world model's outputs and `out['data']`, the batch on the device) and does no I/O.
# --------------------------------------------------------------------------------------------------------------------
class BetaVAEPrior(nn.Module):
    """The disentanglement constraint: beta * KL(q(z|o) || N(0, I)) on the beta-VAE encoder (both stages)."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def forward(self, out: dict, step: int):
        kl_dims = tools.standard_normal_kl(out['enc']['mean'], out['enc']['logvar']).mean(dim=(0, 1))
        metrics = {f'beta_vae_kl_dim/{i:02d}': kl_dims[i].detach() for i in range(kl_dims.shape[0])}
        return {'beta_vae_kl': (kl_dims.sum(), self.beta)}, metrics, None


def distillation_loss(teacher_z: torch.Tensor, student_z: torch.Tensor) -> torch.Tensor:
    """KL(softmax(z_teacher) || softmax(z_student)) over the latent dims; summed over time, mean over batch.

    Inputs are (B, T, z) reparameterised samples, as the release's kl_div 'batchmean' on (B, T, z)
    (docs/method.md, "Stage 2").
    """
    log_t = F.log_softmax(teacher_z.float(), -1)
    log_s = F.log_softmax(student_z.float(), -1)
    return (log_t.exp() * (log_t - log_s)).sum(dim=(1, 2)).mean(0)


def distill_weight(step: int, cfg) -> float:
    """The DisWM distillation weight eta at an agent step (docs/method.md, "Stage 2"; paper-faithful by default).

    same domain:  eta0 * max(1 - step / decay, floor)
    cross domain: 0 before `delay` agent steps, then eta0 * max(1 - (step - delay) / decay, floor)
    """
    offset = cfg.distill_delay if cfg.cross_domain else 0
    if step < offset:
        return 0.0
    return float(cfg.distill_eta * max(1.0 - (step - offset) / cfg.distill_decay, cfg.distill_floor))


class Distillation(nn.Module):
    """DisWM latent distillation from a frozen pretrained beta-VAE encoder (the teacher) into the world model's.

    Paper-faithful by default: the teacher is in eval mode, receives no gradient, sits in no optimizer, and eta follows
    the real agent step. With `release_compat` the teacher is trained through the KL target and eta is frozen at its
    construction value, as in the authors' release (docs/method.md, "Stage 2" and
    "The released code's behaviours and --release_compat").
    """

    def __init__(self, teacher: nn.Module, config, construction_step: int):
        super().__init__()
        self.teacher = teacher
        self.config = config
        self.release_compat = config.release_compat
        # The release builds its agent after the prefill (or at the resume step) and freezes eta there.
        self.frozen_eta = distill_weight(max(construction_step, config.prefill), config)
        if not self.release_compat:
            self.teacher.requires_grad_(False)
            self.teacher.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.release_compat:
            self.teacher.eval()  # stays in eval mode whatever the world model does
        return self

    def eta(self, step: int) -> float:
        return self.frozen_eta if self.release_compat else distill_weight(step, self.config)

    def forward(self, out: dict, step: int):
        if self.release_compat:
            teacher_z = self.teacher(out['image'])['embed']
        else:
            with torch.no_grad():
                teacher_z = self.teacher(out['image'])['embed']
        loss = distillation_loss(teacher_z, out['enc']['embed'])
        eta = self.eta(step)
        return {'distill': (loss, eta)}, {'distill_eta': eta}, None


# --------------------------------------------------------------------------------------------------------------------
# World model
# --------------------------------------------------------------------------------------------------------------------
def preprocess_image(image: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 64, 64, 3) -> float in [-0.5, 0.5] (done on the model's device)."""
    return image.float().div_(255.0).sub_(0.5)  # in place on the fresh float copy


class WorldModel(nn.Module):
    """Encoder -> [action-free video RSSM (APV)] -> RSSM -> decoder and reward head.

    Loss = image NLL + reward_scale * reward NLL + KL balancing + the weighted terms of `self.parts`
    (beta-VAE prior, distillation, ...), each reported under its own name. APV's reward NLL is against the reward
    plus its video-based bonus (`VideoIntrinsicBonus`).
    """

    def __init__(self, config, action_size: int, spec: MethodSpec, step: int = 0):
        super().__init__()
        self.config, self.spec = config, spec
        self.action_size = action_size
        if spec.pad_actions:
            union = config.source_action_num + config.action_num_gap
            if union < action_size:
                raise tools.ConfigError(
                    f"The union action space --source_action_num {config.source_action_num} + --action_num_gap "
                    f"{config.action_num_gap} = {union} is smaller than this task's {action_size} actions: raise "
                    f"--action_num_gap to {action_size - config.source_action_num}.")
            self.rssm_action_size = union
        else:
            self.rssm_action_size = action_size
        self.encoder = networks.BetaVAEEncoder(config.z_dim) if config.beta_vae else networks.ConvEncoder(
            config.cnn_depth)
        rssm_kwargs = dict(stoch=config.dyn_stoch, deter=config.dyn_deter, hidden=config.dyn_hidden,
                           cell=config.dyn_cell, min_std=config.dyn_min_std, discrete=config.dyn_discrete)
        embed = self.encoder.embed_size
        if spec.video_stack:
            self.video_rssm = networks.RSSM(action_size=config.pretrain_action_num, embed_size=embed, **rssm_kwargs)
            embed = self.video_rssm.feat_size
        else:
            self.video_rssm = None
        self.rssm = networks.RSSM(action_size=self.rssm_action_size, embed_size=embed, **rssm_kwargs)
        # APV's bonus, on the video model's features of real sequences; `intr_beta 0` disables it (APV, the release)
        self.intrinsic = VideoIntrinsicBonus(self.video_rssm.feat_size, config, config.seed) \
            if spec.intrinsic and config.intr_beta != 0 else None
        feat = self.rssm.feat_size
        self.decoder = networks.BetaVAEDecoder(feat, config.z_dim) if config.beta_vae else networks.ConvDecoder(
            feat, config.cnn_depth)
        self.reward = None if spec.action_free else networks.DenseHead(feat, config.reward_layers, config.units)
        if tools.glorot_init_for(config, 'model'):     # before any pretrained part is loaded into these networks
            for net in (self.encoder, self.video_rssm, self.rssm, self.decoder, self.reward):
                if net is not None:
                    networks.glorot_init_(net)
        parts = []
        if config.beta_vae:
            parts.append(BetaVAEPrior(config.beta_vae_beta))
        if spec.teacher:
            teacher = networks.BetaVAEEncoder(config.z_dim)
            load_checkpoint_part(config.pretrain_checkpoint_path, 'encoder', teacher, config)
            parts.append(Distillation(teacher, config, step))
        self.parts = nn.ModuleList(parts)
        self._load_pretrained()

    def _load_pretrained(self):
        directory = self.config.pretrain_checkpoint_path
        for name in self.spec.load:
            adapt = None
            if name == 'rssm':
                adapt = lambda s: _widen_action_input(s, self.rssm.stoch_size, self.rssm_action_size)
            load_checkpoint_part(directory, name, getattr(self, name), self.config, adapt)
        if self.video_rssm is not None:
            load_checkpoint_part(directory, 'rssm', self.video_rssm, self.config)

    def trainable_parameters(self):
        """Everything the world-model optimizer updates (never the frozen teacher, unless release_compat)."""
        frozen = {id(p) for part in self.parts if isinstance(part, Distillation) and not part.release_compat
                  for p in part.teacher.parameters()}
        return [p for p in self.parameters() if id(p) not in frozen]

    def pad_action(self, action: torch.Tensor) -> torch.Tensor:
        extra = self.rssm_action_size - action.shape[-1]
        return F.pad(action, (0, extra)) if extra > 0 else action

    def embed(self, image: torch.Tensor, is_first: torch.Tensor, sample: bool = True):
        """Encoder (+ the APV video RSSM); returns (embedding for the RSSM, encoder output, video model states)."""
        enc = self.encoder(image, sample=sample)
        if self.video_rssm is None:
            return enc['embed'], enc, None
        video_post, video_prior = self.video_rssm.observe_action_free(enc['embed'], is_first)
        return self.video_rssm.feat(video_post), enc, (video_post, video_prior)

    def observe(self, data: dict, sample: bool = True):
        image = preprocess_image(data['image'])
        embed, enc, video = self.embed(image, data['is_first'], sample)
        if self.spec.action_free:
            post, prior = self.rssm.observe_action_free(embed, data['is_first'])
        else:
            post, prior = self.rssm.observe(embed, self.pad_action(data['action']), data['is_first'], sample=sample)
        # video_feat: the video model's posterior features, the RSSM's input (APV's bonus is measured on them)
        return dict(image=image, enc=enc, post=post, prior=prior, video=video,
                    video_feat=embed if video is not None else None)

    def loss(self, data: dict, step: int):
        """Returns (total loss, outputs, metrics as tensors). `step` is the real agent step (schedules)."""
        cfg = self.config
        out = self.observe(data)
        feat = self.rssm.feat(out['post'])
        out['feat'] = feat
        out['data'] = data
        terms, metrics = {}, {}
        recon = self.decoder(feat)
        terms['image'] = (tools.gaussian_nll(recon, out['image'], 3).mean(), 1.0)
        if self.reward is not None:
            reward_feat, target = feat, data['reward']
            if self.intrinsic is not None:
                # APV: the reward head learns reward + beta * bonus on the T - S + 1 steps that start a window
                bonus = self.intrinsic(out['video_feat'])                          # (B, T - S + 1), no gradient
                steps = bonus.shape[1]
                reward_feat, target = feat[:, :steps], data['reward'][:, :steps] + self.intrinsic.beta * bonus
                metrics['intr_reward'] = bonus.mean()
                metrics['intr_magnitude'] = self.intrinsic.magnitude.float()
            out['reward_target'] = target
            terms['reward'] = (tools.gaussian_nll(self.reward(reward_feat), target, 0).mean(), cfg.reward_scale)
        kl_loss, kl_value = tools.balanced_kl(out['post'], out['prior'], cfg.kl_balance, cfg.kl_free, cfg.kl_scale,
                                               self.rssm.classes)
        terms['kl'] = (kl_loss, 1.0)
        metrics['kl_value'] = kl_value
        if out['video'] is not None:
            video_kl, video_value = tools.balanced_kl(*out['video'], cfg.kl_balance, cfg.kl_free, cfg.kl_scale,
                                                           self.video_rssm.classes)
            terms['video_kl'] = (video_kl, 1.0)
            metrics['video_kl_value'] = video_value
        for part in self.parts:
            part_terms, part_metrics, context = part(out, step)
            terms.update(part_terms)
            metrics.update(part_metrics)
            if context is not None:      # per-posterior-state context for the actor in imagination (Vid2Act's k*)
                out['behavior_context'] = context
        total, loss_metrics = tools.weighted_terms(terms)
        metrics.update(loss_metrics)
        out['loss_terms'] = terms        # {name: (loss, weight)}, with their graphs (scripts/diagnose.py --terms)
        return total, out, metrics

    @torch.no_grad()
    def open_loop(self, data: dict, context: int = 5, count: int = 4) -> np.ndarray:
        """Open-loop video prediction: `context` observed frames, the rest imagined from the actions.

        Returns uint8 (count, T, 64, 3 * 64, 3): truth | model | error, side by side.
        """
        data = {k: v[:count] for k, v in data.items()}
        out = self.observe({k: v[:, :context] for k, v in data.items()}, sample=False)
        recon = self.decoder(self.rssm.feat(out['post']))
        state = {k: v[:, -1] for k, v in out['post'].items()}
        frames = []
        for t in range(context, data['image'].shape[1]):
            action = state['deter'].new_zeros(state['deter'].shape[0], self.rssm_action_size) \
                if self.spec.action_free else self.pad_action(data['action'][:, t])
            state = self.rssm.img_step(state, action, sample=False)
            frames.append(self.decoder(self.rssm.feat(state)))
        model = torch.cat([recon] + ([torch.stack(frames, 1)] if frames else []), 1) + 0.5
        truth = preprocess_image(data['image']) + 0.5
        error = (model - truth + 1) / 2
        video = torch.cat([truth, model, error], 3).clamp(0, 1)
        return (video * 255).to(torch.uint8).cpu().numpy()

    @torch.no_grad()
    def traverse(self, image: torch.Tensor, offsets=(-9, -6, -3, 0, 3, 6, 9)) -> np.ndarray:
        """Latent traversal: one row per z dim, the last frame's z of the first sequence shifted by each offset and
        decoded through the RSSM posterior from the initial state. uint8 (z_dim * 64, len(offsets) * 64, 3)."""
        if not isinstance(self.encoder, networks.BetaVAEEncoder):
            raise ValueError('Traversals need the beta-VAE encoder (--beta_vae True).')
        z = self.encoder(preprocess_image(image[:1, -1:]))['embed'][:, 0]          # (1, z)
        z_dim = z.shape[-1]
        offsets_t = torch.tensor(offsets, dtype=z.dtype, device=z.device)
        codes = z.repeat(z_dim * len(offsets), 1)
        rows = torch.arange(z_dim, device=z.device).repeat_interleave(len(offsets))
        codes[torch.arange(len(codes)), rows] += offsets_t.repeat(z_dim)
        embed = codes if self.video_rssm is None else self.video_rssm.feat(self.video_rssm.obs_step(
            self.video_rssm.initial(len(codes)), codes.new_zeros(len(codes), self.video_rssm.action_size), codes,
            sample=False)[0])
        state = self.rssm.initial(len(codes))
        post, _ = self.rssm.obs_step(state, codes.new_zeros(len(codes), self.rssm_action_size), embed, sample=False)
        images = (self.decoder(self.rssm.feat(post)) + 0.5).clamp(0, 1)
        grid = images.reshape(z_dim, len(offsets), 64, 64, 3).permute(0, 2, 1, 3, 4).reshape(
            z_dim * 64, len(offsets) * 64, 3)
        return (grid * 255).to(torch.uint8).cpu().numpy()


# --------------------------------------------------------------------------------------------------------------------
# APV's video-based intrinsic bonus
# --------------------------------------------------------------------------------------------------------------------
class VideoIntrinsicBonus(nn.Module):
    """APV's video-based intrinsic bonus (Seo et al., ICML 2022), computed on REAL replay sequences.

    For a replay batch, with f_t the action-free video model's posterior feature (stoch ++ deter, the sampled
    `video_rssm` state the action-conditioned RSSM takes as its input; detached):
      1. seq_i = mean(f_i .. f_{i+S-1}) for every window of S = `intr_seq_length` steps inside each sequence (no
         padding: T - S + 1 windows per sequence of T steps);
      2. key_i = seq_i @ W, with W a fixed random (feat, `queue_dim`) matrix with N(0, (1/queue_dim)^2) entries;
      3. the batch's keys are pushed FIFO into the front of a queue of `queue_size` keys (the oldest fall out at the
         back), BEFORE the distances are measured, so the queue holds this batch's keys too;
      4. raw_i = the MEAN L2 distance from key_i to its k = min(`intr_k`, keys in the queue) nearest keys in the queue
         (a key is its own nearest neighbour, at distance 0: APV counts it);
      5. a running magnitude m (initialised to 1) is updated once per update, m <- 0.99 m + 0.01 mean_i |raw_i|, and
         then bonus_i = raw_i / (m + 1e-8) (DreamerV2's StreamNorm, momentum 0.99, scale 1, eps 1e-8);
      6. the reward head is trained on the first T - S + 1 steps of the batch against reward_i + `intr_beta` *
         bonus_i (the bonus carries no gradient); imagination then uses the reward head as usual, so the actor's
         gradient flows through the reward head and the imagined rewards get no separate bonus.
    Everything is computed in float64 outside autocast (the distance of a key to itself stays 0).

    Constants and their sources (APV: younggyoseo/apv, apv_finetuning/; the release: qiwang067/DisWM):
      - feature = the video model's posterior feature, windows of S = 5 (`intr_seq_length`): APV agent.py
        WorldModel.loss (`seq_feat = af_feat`, `sliding_window(..., intr_seq_length).mean`), configs.yaml
        `intr_seq_length: 5`; the release models.py WorldModel._train (`compute_bonus(data, embed_af)`),
        configs.yaml `intr_seq_length: 5`.
      - W with N(0, (1/queue_dim)^2) entries (std 1/queue_dim), queue_dim = 128: APV agent.py `random_projection_matrix`
        (`stddev=1.0 / config.queue_dim`), configs.yaml `queue_dim: 128`; the release exploration.py VideoIntrBonus
        (`std=... / queue_dim`), configs.yaml `queue_dim: 128`. W is seeded from `--seed` here.
      - queue of 4096 keys, filled first (newest at the front): APV agent.py `construct_queue` called before the
        distances, configs.yaml `queue_size: 4096`; the release exploration.py `construct_queue`, `queue_size: 4096`.
      - k = 16 (`intr_k`), mean of the k smallest distances: APV agent.py `top_k(-dist, k=min(k, len(queue)))
        .values.mean(1)`, configs.yaml `k: 16`; the release exploration.py `torch.topk(...).values.mean(1)`, `k: 16`.
      - normalisation m: momentum 0.99, init 1, eps 1e-8, scale 1: APV configs.yaml `intr_reward_norm: {momentum:
        0.99, scale: 1.0, eps: 1e-8}` with DreamerV2's StreamNorm (mag initialised to ones, update then transform);
        the release configs.yaml `intr_reward_norm: {momentum: 0.99, scale: 1.0, eps: 1e-8, init: 1.0}`, tools.py
        StreamNorm.
      - intr_beta = 1.0, added to the reward TARGET (`data["reward"][:, :t] + beta * int_rew`, reward head on
        `feat[:, :t]`): APV agent.py WorldModel.loss, configs.yaml `beta: 1.0` (Meta-world; APV's `dmc_vision`
        preset uses 0.1); the release exploration.py `beta_type: abs` branch, configs.yaml `intr_beta: 1.0` for
        every suite, which this reimplementation keeps as its default.
    The release ports APV's computation step for step; it differs from APV in none of the above, so
    `--release_compat` changes nothing here. `intr_beta 0` removes the bonus entirely (the reward head then sees all T
    steps), as in both.
    """

    MOMENTUM, EPS = 0.99, 1e-8     # APV / release `intr_reward_norm` (StreamNorm; scale 1.0)

    def __init__(self, feat_size: int, config, seed: int = 0):
        super().__init__()
        if config.batch_length < config.intr_seq_length:
            raise tools.ConfigError(f"APV's bonus averages windows of --intr_seq_length {config.intr_seq_length} "
                                    f"steps of a replay sequence: --batch_length {config.batch_length} is shorter.")
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer('projection', torch.randn(feat_size, config.queue_dim, generator=gen,
                                                       dtype=torch.float64) / config.queue_dim)
        self.register_buffer('queue', torch.zeros(config.queue_size, config.queue_dim, dtype=torch.float64))
        self.register_buffer('magnitude', torch.ones((), dtype=torch.float64))
        self.filled = 0  # a Python int (saved via extra state), so the update never syncs with the device
        self.k, self.seq_length, self.beta = config.intr_k, config.intr_seq_length, config.intr_beta

    def get_extra_state(self):
        return {'filled': self.filled}

    def set_extra_state(self, state):
        self.filled = int(state['filled'])

    def keys(self, feat: torch.Tensor) -> torch.Tensor:
        """(B, T, F) -> (B, T - S + 1, queue_dim): window means along time, projected (float64)."""
        windows = feat.double().unfold(1, self.seq_length, 1).mean(-1)
        return windows @ self.projection

    def push(self, keys: torch.Tensor) -> None:
        """Puts (N, D) keys at the front of the FIFO queue; the oldest keys fall out at the back."""
        size = self.queue.shape[0]
        self.queue.copy_(torch.cat([keys, self.queue], 0)[:size])
        self.filled = min(self.filled + len(keys), size)

    def knn_distance(self, keys: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,): mean distance to the min(k, filled) nearest keys in the queue. Changes nothing."""
        queue = self.queue[:self.filled]
        dist = torch.cdist(keys, queue)                               # float64, so a key's own distance stays ~0
        return dist.topk(min(self.k, len(queue)), dim=-1, largest=False).values.mean(-1)

    def update_magnitude(self, raw: torch.Tensor) -> None:
        """The running mean magnitude of the raw bonus; called once per update, by `forward` only."""
        self.magnitude.mul_(self.MOMENTUM).add_((1 - self.MOMENTUM) * raw.abs().mean())

    @torch.no_grad()
    def forward(self, video_feat: torch.Tensor) -> torch.Tensor:
        """One update's bonus for a replay batch of video-model features (B, T, F) -> (B, T - S + 1), normalised,
        without `intr_beta`. Pushes the batch into the queue and updates the running magnitude (once)."""
        with torch.autocast(video_feat.device.type, enabled=False):
            keys = self.keys(video_feat.detach())
            batch, steps = keys.shape[:2]
            keys = keys.reshape(batch * steps, -1)
            self.push(keys)
            raw = self.knn_distance(keys)
            self.update_magnitude(raw)
            bonus = raw / (self.magnitude + self.EPS)
        return bonus.reshape(batch, steps).float()


# --------------------------------------------------------------------------------------------------------------------
# Behaviour
# --------------------------------------------------------------------------------------------------------------------
class ImagBehavior(nn.Module):
    """DreamerV2 actor-critic on imagined rollouts (dynamics backprop, lambda-returns, slow critic)."""

    def __init__(self, config, feat_size: int, action_size: int, actor_input_size: int | None = None):
        super().__init__()
        self.config = config
        # The actor may see more than the feature (Vid2Act: + a context vector, see `actor_input`); the critic never.
        self.actor = networks.ActionHead(actor_input_size or feat_size, action_size, config.actor_layers, config.units,
                                         config.actor_min_std, clipped=config.release_compat)
        self.critic = networks.DenseHead(feat_size, config.value_layers, config.units)
        if tools.glorot_init_for(config, 'behavior'):
            networks.glorot_init_(self.actor)
            networks.glorot_init_(self.critic)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)

    def actor_input(self, feat: torch.Tensor, ctx) -> torch.Tensor:
        """What the actor sees for features (N, F); `ctx` is the per-start-state context of `losses` (None here)."""
        return feat

    def imagine(self, wm: WorldModel, start: dict, horizon: int, ctx=None):
        """Rolls the actor through the world model; returns feats (H+1, N, F), entropies (H, N)."""
        state = {k: v.reshape(-1, v.shape[-1]).detach() for k, v in start.items()}
        feats, entropies = [wm.rssm.feat(state)], []
        for _ in range(horizon):
            dist = self.actor(self.actor_input(feats[-1].detach(), ctx))
            state = wm.rssm.img_step(state, wm.pad_action(dist.rsample()))
            entropies.append(dist.entropy())
            feats.append(wm.rssm.feat(state))
        return torch.stack(feats, 0), torch.stack(entropies, 0)

    def losses(self, wm: WorldModel, start: dict, reward_fn, ctx=None):
        cfg = self.config
        # The release keeps H states and H - 1 targets for imag_horizon H (official DreamerV2: H + 1 and H).
        horizon = cfg.imag_horizon - 1 if cfg.release_compat else cfg.imag_horizon
        feats, entropy = self.imagine(wm, start, horizon, ctx)                 # (H+1, N, F), (H, N)
        # The returns use r(s_t) for t < H and V(s_t) for t >= 1 only, so neither head sees the other states.
        reward = reward_fn(feats)                                              # (H, N)
        next_value = self.slow_critic(feats[1:])                               # (H, N): V(s_1) ... V(s_H)
        discount = torch.full_like(reward, cfg.discount)
        target = tools.lambda_return(reward, next_value, discount, cfg.discount_lambda,
                                     reverse_bug=cfg.release_compat)        # (H, N)
        weight = torch.cumprod(torch.cat([torch.ones_like(discount[:1]), discount[:-1]], 0), 0).detach()
        # Official DreamerV2's final version (--actor_return_offset 1) leaves out R_0, which starts with the replayed
        # state's reward, and pairs R_{t+1} with s_t's weight and entropy for t < H - 1.
        offset = cfg.get('actor_return_offset', 0)
        terms = len(target) - offset                                           # states s_0 .. s_{terms-1}
        actor_loss = -(weight[:terms] * (target[offset:] + cfg.actor_entropy * entropy[:terms])).mean()
        value_pred = self.critic(feats[:-1].detach())
        critic_loss = (weight * tools.gaussian_nll(value_pred, target.detach(), 0)).mean()
        metrics = dict(actor_loss=actor_loss.detach(), critic_loss=critic_loss.detach(),
                       actor_entropy=entropy.mean().detach(), imag_reward=reward.mean().detach(),
                       imag_value=value_pred.mean().detach(), lambda_return=target.mean().detach())
        return actor_loss, critic_loss, metrics

    def update_slow_critic(self):
        fraction = self.config.slow_target_fraction
        for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
            slow.data.mul_(1 - fraction).add_(fraction * fast.data)


# --------------------------------------------------------------------------------------------------------------------
# Agent
# --------------------------------------------------------------------------------------------------------------------
class Agent(nn.Module):
    """World model + behaviour + their optimizers; `update` is one training step, `policy` one acting step."""

    def __init__(self, config, action_size: int, step: int = 0):
        super().__init__()
        self.config = config
        self.spec = method_spec(config)
        self.action_size = action_size
        self.wm = self.make_world_model(config, action_size, step)
        self.behavior = self.make_behavior(config, action_size)
        self.to(config.device)
        opt = lambda name, params, lr: tools.Optimizer.for_config(name, params, lr, config)
        self._wm_params = self.wm.trainable_parameters()
        self.model_opt = opt('model', self._wm_params, config.model_lr)
        self.actor_opt = opt('actor', self.behavior.actor.parameters(), config.actor_lr)
        self.critic_opt = opt('critic', self.behavior.critic.parameters(), config.value_lr)
        self.updates = 0
        self.requires_grad_(False)
        if config.compile:
            compile_networks(self)

    def make_world_model(self, config, action_size: int, step: int) -> WorldModel:
        """Hook for agents that add loss parts (built before the optimizers, so their parameters are trained)."""
        return WorldModel(config, action_size, self.spec, step)

    def make_behavior(self, config, action_size: int) -> ImagBehavior:
        """Hook for agents whose actor sees more than the world-model feature."""
        return ImagBehavior(config, self.wm.rssm.feat_size, action_size)

    def to_torch(self, batch: dict) -> dict:
        """A replay batch (numpy) -> the device tensors an update reads."""
        return tools.to_device(batch, self.config.device, keys=('image', 'action', 'reward', 'is_first'))

    def reward_fn(self, feats: torch.Tensor) -> torch.Tensor:
        """Imagined features (H+1, N, F) -> rewards of the first H states (H, N) (the last one's is never used).
        APV's bonus is in the reward head itself (trained on reward + beta * bonus), as in APV."""
        return self.wm.reward(feats[:-1])

    def training_batch(self, batch: dict) -> dict:
        """What an update trains on, on the device (the prefetcher prepares it in the background on a GPU); agents
        that train on more than the replay batch add it here (Vid2Act: its source batch)."""
        return self.to_torch(batch)

    def update(self, batch: dict, step: int) -> dict:
        """One world-model and one actor-critic update; metrics stay tensors (no host sync here)."""
        tools.mark_update_begin(self.config)
        data = self.training_batch(batch)
        out, metrics = self.update_world_model(data, step)
        metrics.update(self.update_behavior(out))
        return metrics

    def update_world_model(self, data: dict, step: int):
        for p in self._wm_params:
            p.requires_grad_(True)
        with self.autocast():
            loss, out, metrics = self.wm.loss(data, step)
        metrics['model_grad_norm'] = self.model_opt.step(loss)
        for p in self._wm_params:
            p.requires_grad_(False)
        return out, metrics

    def update_behavior(self, out: dict) -> dict:
        start = {k: v.detach() for k, v in out['post'].items()}
        self.behavior.actor.requires_grad_(True)
        self.behavior.critic.requires_grad_(True)
        with self.autocast():
            # The context a loss part returned for the actor (Vid2Act's k* per posterior state), if any.
            actor_loss, critic_loss, metrics = self.behavior.losses(self.wm, start, self.reward_fn,
                                                                    out.get('behavior_context'))
        metrics['actor_grad_norm'] = self.actor_opt.step(actor_loss)
        metrics['critic_grad_norm'] = self.critic_opt.step(critic_loss)
        self.behavior.actor.requires_grad_(False)
        self.behavior.critic.requires_grad_(False)
        self.updates += 1
        if self.updates % self.config.slow_target_update == 0:
            self.behavior.update_slow_critic()
        return metrics

    def autocast(self):
        return tools.autocast(self.config)

    @torch.no_grad()
    def policy(self, obs: dict, state, training: bool):
        """obs: dict of numpy arrays with a leading env axis. Returns (actions as numpy, new state)."""
        device = self.config.device
        image = torch.as_tensor(obs['image'], device=device)[:, None]
        is_first = torch.as_tensor(obs['is_first'], device=device, dtype=torch.float32)
        batch = image.shape[0]
        if state is None:
            video = self.wm.video_rssm.initial(batch, device) if self.wm.video_rssm is not None else None
            state = (self.wm.rssm.initial(batch, device), torch.zeros(batch, self.action_size, device=device), video)
        latent, action, video = state
        sample = training or not self.config.eval_state_mean       # DreamerV2 and the release sample in evaluation
        enc = self.wm.encoder(preprocess_image(image), sample=sample)
        embed = enc['embed'][:, 0]
        if video is not None:
            video, _ = self.wm.video_rssm.obs_step(video, embed.new_zeros(batch, self.wm.video_rssm.action_size),
                                                   embed, is_first, sample=False)
            embed = self.wm.video_rssm.feat(video)
        latent, _ = self.wm.rssm.obs_step(latent, self.wm.pad_action(action), embed, is_first, sample=sample)
        action = self.act(self.behavior.actor(self.wm.rssm.feat(latent)), training)
        return action.cpu().numpy(), (latent, action, video)

    def act(self, dist, training: bool) -> torch.Tensor:
        """The action from the actor's distribution: a sample in training (plus `expl_amount` noise) and with
        `--eval_sample True`, else its mean."""
        action = dist.sample() if training or self.config.eval_sample else dist.mode()
        if training and self.config.expl_amount > 0:
            action = (action + self.config.expl_amount * torch.randn_like(action)).clamp(-1, 1)
        return action

    def optimizer_state(self) -> dict:
        return {o.name: o.state_dict() for o in (self.model_opt, self.actor_opt, self.critic_opt)}

    def load_optimizer_state(self, state: dict) -> None:
        for o in (self.model_opt, self.actor_opt, self.critic_opt):
            o.load_state_dict(state[o.name])


def write_pretrained_parts(agent_state: dict, spec, directory: str) -> None:
    """Methods built on the pretrained video model (DisWM, APV, DV2 Finetune) load its files when constructed; their
    weights are overwritten by the checkpoint right after, so the copies inside the checkpoint are written out
    instead of requiring the original pretraining folder."""
    def subset(match) -> dict:
        return {k.split(match, 1)[1]: v for k, v in agent_state.items() if match in k}

    parts = {}
    if spec.teacher:
        parts['encoder'] = subset('.teacher.')
    for name in spec.load:
        parts[name] = subset(f'wm.{name}.')
    if spec.video_stack:
        parts['rssm'] = subset('wm.video_rssm.')
    for name, part in parts.items():
        torch.save(part, os.path.join(directory, f'{name}.pt'))


def compile_networks(agent: 'Agent') -> None:
    """torch.compile the networks that run inside an update (encoder, decoder, RSSM steps, heads, actor, critic).

    The RSSM's per-step functions are compiled rather than the whole 50-step scan, which keeps compile times short;
    any compilation error falls back to eager execution with a warning (`tools.compiled`).
    """
    behavior, mode = agent.behavior, agent.config.compile_mode
    compile_world_model(agent.wm, mode)
    for module in (behavior.actor, behavior.critic, behavior.slow_critic):
        module.forward = tools.compiled(module.forward, type(module).__name__, mode)


def compile_world_model(wm: WorldModel, mode: str = 'default') -> None:
    """torch.compile a world model's encoder, decoder, reward head and RSSM steps (see `compile_networks`)."""
    for module in (wm.encoder, wm.decoder, wm.reward):
        if module is not None:
            module.forward = tools.compiled(module.forward, type(module).__name__, mode)
    for rssm in (wm.rssm, wm.video_rssm):
        if rssm is not None:
            rssm.img_step = tools.compiled(rssm.img_step, 'RSSM.img_step', mode)
            rssm.obs_step = tools.compiled(rssm.obs_step, 'RSSM.obs_step', mode)


def video_model_update(wm: WorldModel, opt: tools.Optimizer, data: dict, step: int) -> dict:
    """One update of the action-free video model (stage 1) on a batch of `image` (uint8) and `is_first`."""
    tools.mark_update_begin(wm.config)
    with tools.autocast(wm.config):
        loss, _, metrics = wm.loss(data, step)
    metrics['model_grad_norm'] = opt.step(loss)
    return metrics
