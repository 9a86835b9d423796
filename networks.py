"""Building blocks: the RSSM (action-conditioned and action-free paths in one class), encoders, decoders, heads.

Shapes: images enter as (..., 64, 64, 3) floats in [-0.5, 0.5]; sequences are batch-major (B, T, ...).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

import tools


def _flatten_image(x: torch.Tensor):
    """(..., H, W, C) -> (N, C, H, W) in channels_last memory (a free view of the NHWC data)."""
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2)
    return x.contiguous(memory_format=torch.channels_last), lead


def conv_transpose_1x1_input(layer: nn.ConvTranspose2d, x: torch.Tensor) -> torch.Tensor:
    """`layer` applied to a 1x1 input (N, C_in), computed as one matmul (same math as the layer, much faster on
    CPUs than the transposed-convolution kernel). Returns (N, C_out, k, k) in channels_last memory."""
    weight = layer.weight                                            # (C_in, C_out, k, k)
    out = (x @ weight.reshape(weight.shape[0], -1)).view(x.shape[0], *weight.shape[1:])
    out = out + layer.bias[None, :, None, None]
    return out.contiguous(memory_format=torch.channels_last)


class _ConvTransposeFn(torch.autograd.Function):
    """F.conv_transpose2d whose backward takes the bias gradient as a plain sum over (N, H, W).

    ATen's oneDNN backward of a transposed convolution computes the bias gradient in a slow separate pass: for the
    beta-VAE decoder's 32->32 layer at 800 x 16 x 16 it is 105 ms of a 179 ms backward, against 4 ms for the sum.
    Input and weight gradients come from the same `convolution_backward` call as before: same math.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, phases):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        if phases:
            return _conv_transpose_by_phases(x, weight, bias, stride[0])
        return F.conv_transpose2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x or need_w:
            grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
                grad, x, weight, None, ctx.stride, ctx.padding, [1, 1], True, [0, 0], 1, [need_x, need_w, False])
        if need_b:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None


def _conv_transpose_by_phases(x, weight, bias, stride: int):
    """An unpadded transposed convolution as one dense m x m convolution (padding m - 1, m = ceil(kernel / stride))
    with stride^2 x C_out channels followed by pixel_shuffle: output pixel (s q + a, s r + b) is
    sum_{i,j < m} x[q - i, r - j] W[a + s i, b + s j]. Same products and sums. A kernel that is not a multiple of the
    stride is padded with zero taps at its end; they only reach the last stride * m - kernel output rows and columns,
    which are cropped. On CPUs the dense convolution is much faster than the transposed one when C_out is small
    (DreamerV2's 32->3 output layer: 148 -> 66 ms forward) and in bf16 (its 128->64 kernel-5 layer: 80 -> 21 ms)."""
    c_in, c_out, k = weight.shape[0], weight.shape[1], weight.shape[2]
    m = -(-k // stride)
    extra = m * stride - k
    if extra:
        weight = F.pad(weight, (0, extra, 0, extra))
    w = weight.reshape(c_in, c_out, m, stride, m, stride).flip(2, 4)            # (ci, co, i', a, j', b), i' = m-1-i
    w = w.permute(1, 3, 5, 0, 2, 4).reshape(c_out * stride * stride, c_in, m, m)
    b = bias.repeat_interleave(stride * stride) if bias is not None else None
    out = F.pixel_shuffle(F.conv2d(x, w, b, padding=m - 1), stride)
    if extra:
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        out = out[:, :, :-extra, :-extra].contiguous(memory_format=layout)
    return out


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a layer applied to x computes in: autocast's on x's device when it is on, else x's own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def conv_transpose(layer: nn.ConvTranspose2d, x: torch.Tensor, phases: bool = False) -> torch.Tensor:
    """`layer(x)` (same math) with the faster backward of `_ConvTransposeFn`; follows autocast like the layer.

    `phases`: compute the forward as a dense convolution + pixel_shuffle (`_conv_transpose_by_phases`; needs no
    padding and equal strides and kernel sizes in both directions)."""
    assert layer.dilation == (1, 1) and layer.groups == 1 and layer.output_padding == (0, 0)
    if phases:
        assert layer.padding == (0, 0) and layer.stride[0] == layer.stride[1] and \
            layer.kernel_size[0] == layer.kernel_size[1]
    weight, bias = layer.weight, layer.bias
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = compute_dtype(x)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    with torch.autocast(device, enabled=False):
        return _ConvTransposeFn.apply(x, weight, bias, list(layer.stride), list(layer.padding), phases)


def run_deconvs(layers: nn.Sequential, x: torch.Tensor, phases: tuple[int, ...] = ()) -> torch.Tensor:
    """A Sequential of transposed convolutions and activations, the convolutions through `conv_transpose`; the
    convolutions whose positions among them are in `phases` (0 = the first) compute their forward by phases."""
    convs = 0
    for layer in layers:
        if isinstance(layer, nn.ConvTranspose2d):
            x = conv_transpose(layer, x, phases=convs in phases)
            convs += 1
        else:
            x = layer(x)
    return x


def conv_full_window(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A convolution whose kernel covers the whole (unpadded) input, i.e. a 1x1 output, as one matmul: (N, C_out)."""
    return F.linear(x.flatten(1), layer.weight.flatten(1), layer.bias)


def _zero_bias_if_missing(state: dict, prefix: str) -> None:
    weight, bias = prefix + 'weight', prefix + 'bias'
    if weight in state and bias not in state:
        state[bias] = state[weight].new_zeros(state[weight].shape[0])


def fill_missing_gru_bias(state: dict, module: nn.Module) -> dict:
    """A copy of `state` (a state dict for `module`) with the GRU input biases that older checkpoints lack set to
    zero, for code that compares keys before `load_state_dict`."""
    state = dict(state)
    for name, sub in module.named_modules():
        if isinstance(sub, GRUCell):
            _zero_bias_if_missing(state, f'{name}.layer.' if name else 'layer.')
    return state


class GRUCell(nn.Module):
    """DreamerV2's GRU: one Linear over [input, state] (LayerNorm'd when `norm`), update gate biased by -1.

    The Linear has a bias also before the LayerNorm, as in official DreamerV2 and the DisWM release. Checkpoints
    written before the bias existed load with it zero (the same function as before).
    """

    def __init__(self, inp_size: int, size: int, norm: bool = True, update_bias: float = -1.0):
        super().__init__()
        self.size = size
        self.update_bias = update_bias
        self.layer = nn.Linear(inp_size + size, 3 * size)
        self.norm = nn.LayerNorm(3 * size) if norm else nn.Identity()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _zero_bias_if_missing(state_dict, prefix + 'layer.')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, inputs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        parts = self.norm(self.layer(torch.cat([inputs, state], -1)))
        reset, cand, update = parts.split(self.size, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update + self.update_bias)
        return update * cand + (1 - update) * state


def categorical_straight_through(logit: torch.Tensor, classes: int, sample: bool) -> torch.Tensor:
    """One-hot sample (Gumbel-max: an exact categorical draw) or mode of each group of `classes` logits along the
    last dim, flattened back; its gradient is that of the class probabilities (straight-through, DreamerV2)."""
    shape = logit.shape
    logit = logit.float().reshape(*shape[:-1], shape[-1] // classes, classes)
    probs = torch.softmax(logit, -1)
    score = logit - torch.log(-torch.log(torch.rand_like(logit).clamp_min(1e-20))) if sample else logit
    onehot = F.one_hot(score.argmax(-1), classes).to(probs.dtype)
    return (onehot + (probs - probs.detach())).reshape(shape)      # exactly one-hot in the forward pass


class RSSM(nn.Module):
    """Recurrent state-space model (DreamerV2) with Gaussian latents (`discrete=0`, the release's and this project's
    default) or categorical ones (`discrete=K`: `stoch` variables of K classes each, as official DreamerV2's 32 x 32).

    The action-conditioned path (`observe`, `imagine`) and the action-free path of the video model
    (`observe_action_free`: zero actions, distribution mode instead of samples) share one set of weights and one scan.
    A state is a dict of `stoch` (B, stoch_size) and `deter` (B, deter) plus its distribution: `mean` and `std`
    (B, stoch) for Gaussian latents, `logit` (B, stoch * K) for categorical ones, whose `stoch` is the one-hot sample
    (or mode) with straight-through gradients (the class probabilities' gradient), flattened to stoch * K.
    """

    def __init__(self, stoch=50, deter=200, hidden=200, action_size=6, embed_size=20, cell='gru_layer_norm',
                 min_std=0.1, label_size=0, discrete=0):
        super().__init__()
        self.classes = discrete       # 1 (a constant per variable) is refused by tools.finalize_config
        self.stoch_size = stoch * discrete if discrete else stoch
        self.deter_size, self.action_size = deter, action_size
        self.embed_size, self.min_std, self.label_size = embed_size, min_std, label_size
        stats = self.stoch_size if discrete else 2 * stoch
        self.img_in = nn.Sequential(nn.Linear(self.stoch_size + action_size + label_size, hidden), nn.ELU())
        if cell not in ('gru', 'gru_layer_norm'):
            raise tools.ConfigError(f"Unknown --dyn_cell '{cell}' (use gru or gru_layer_norm).")
        self.cell = GRUCell(hidden, deter, norm=cell == 'gru_layer_norm')
        self.img_out = nn.Sequential(nn.Linear(deter, hidden), nn.ELU(), nn.Linear(hidden, stats))
        self.obs_out = nn.Sequential(nn.Linear(deter + embed_size, hidden), nn.ELU(), nn.Linear(hidden, stats))

    @property
    def feat_size(self) -> int:
        return self.stoch_size + self.deter_size

    def initial(self, batch: int, device=None) -> dict:
        device = device or self.img_out[0].weight.device
        zeros = lambda n: torch.zeros(batch, n, device=device)
        dist = dict(logit=zeros(self.stoch_size)) if self.classes else dict(mean=zeros(self.stoch_size),
                                                                             std=zeros(self.stoch_size))
        return dict(dist, stoch=zeros(self.stoch_size), deter=zeros(self.deter_size))

    @staticmethod
    def feat(state: dict) -> torch.Tensor:
        return torch.cat([state['stoch'], state['deter']], -1)

    def _dist(self, stats: torch.Tensor, sample: bool) -> dict:
        if self.classes:
            return dict(logit=stats, stoch=categorical_straight_through(stats, self.classes, sample))
        mean, raw = stats.chunk(2, -1)
        std = tools.gaussian_std(raw, self.min_std)
        stoch = mean + std * torch.randn_like(std) if sample else mean
        return dict(mean=mean, std=std, stoch=stoch)

    def img_step(self, prev: dict, action: torch.Tensor, sample: bool = True, label=None) -> dict:
        inputs = [prev['stoch'], action] + ([label] if label is not None else [])
        x = self.img_in(torch.cat(inputs, -1))
        deter = self.cell(x, prev['deter'])
        return dict(self._dist(self.img_out(deter), sample), deter=deter)

    def obs_step(self, prev: dict, action: torch.Tensor, embed: torch.Tensor, is_first=None, sample=True,
                 label=None):
        """One filtering step; returns (posterior, prior). `is_first` resets the state and action to zero."""
        if is_first is not None:
            keep = (1.0 - is_first.float())[:, None]
            prev = {k: v * keep for k, v in prev.items()}
            action = action * keep
        prior = self.img_step(prev, action, sample, label)
        post = dict(self._dist(self.obs_out(torch.cat([prior['deter'], embed], -1)), sample), deter=prior['deter'])
        return post, prior

    def observe(self, embed, action, is_first, state=None, sample=True, label=None):
        """Scans the filter over time. embed (B, T, E), action (B, T, A), is_first (B, T).

        Same math as calling `obs_step` per step, but the input-side halves of the two input layers (embedding ->
        posterior, action -> prior) are applied to the whole sequence in one matmul each, so the loop only does the
        recurrent part. Returns (post, prior) dicts of (B, T, ...) tensors, each stacked once after the loop.
        """
        batch, length = embed.shape[:2]
        state = state or self.initial(batch, embed.device)
        S, D = self.stoch_size, self.deter_size
        img_w, img_b = self.img_in[0].weight, self.img_in[0].bias
        obs_w, obs_b = self.obs_out[0].weight, self.obs_out[0].bias
        keep = (1.0 - is_first.float()).unsqueeze(-1)                                  # (B, T, 1)
        extra = [action * keep]
        if label is not None:
            extra.append(label if label.dim() == 3 else label[:, None].expand(-1, length, -1))
        img_extra = F.linear(torch.cat(extra, -1), img_w[:, S:])                       # (B, T, H)
        obs_embed = F.linear(embed, obs_w[:, D:], obs_b)                               # (B, T, H)
        posts, priors = [], []
        for t in range(length):
            k = keep[:, t]
            stoch, deter = state['stoch'] * k, state['deter'] * k
            x = F.elu(F.linear(stoch, img_w[:, :S], img_b) + img_extra[:, t])
            deter = self.cell(x, deter)
            prior = dict(self._dist(self.img_out(deter), sample), deter=deter)
            hidden = F.elu(F.linear(deter, obs_w[:, :D]) + obs_embed[:, t])
            state = dict(self._dist(self.obs_out[2](hidden), sample), deter=deter)
            posts.append(state)
            priors.append(prior)
        stack = lambda seq: {k: torch.stack([s[k] for s in seq], 1) for k in seq[0]}
        return stack(posts), stack(priors)

    def observe_action_free(self, embed, is_first, state=None):
        """The video model's path: zero actions and the distribution mode (no sampling)."""
        action = embed.new_zeros(*embed.shape[:2], self.action_size)
        return self.observe(embed, action, is_first, state, sample=False)



# Conv stacks use in-place ELUs (ELU's backward needs only its output): less memory traffic, same math.
def _init_kaiming(module: nn.Module):
    """The release's beta-VAE initialisation: Kaiming-normal weights and zero biases for Conv2d and Linear layers;
    transposed convolutions keep PyTorch's default initialisation (the release's init skips them)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def glorot_init_(module: nn.Module) -> nn.Module:
    """Official DreamerV2's initialisation (`--weight_init glorot`): its layers are Keras layers with their defaults,
    Glorot-uniform weights (U(±sqrt(6 / (fan_in + fan_out))), fans counted over the kernel's receptive field) and zero
    biases, where PyTorch draws U(±1/sqrt(fan_in)) for both. Applied to every Linear, Conv2d and ConvTranspose2d in
    `module` except inside the beta-VAE networks, which keep the release's Kaiming initialisation (`_init_kaiming`).
    An `ActionHead`'s output layer is initialised as official DreamerV2's two layers (mean and std, each
    `action_size` wide). LayerNorms already start as Keras's (ones and zeros)."""
    skip = set()
    for m in module.modules():
        if isinstance(m, (BetaVAEEncoder, BetaVAEDecoder)):
            skip.update(id(sub) for sub in m.modules())
    for m in module.modules():
        if id(m) in skip or not isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            continue
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, ActionHead) and id(m) not in skip:
            for half in m.net[-1].weight.data.chunk(2, 0):
                nn.init.xavier_uniform_(half)
    return module


class BetaVAEEncoder(nn.Module):
    """The DisWM beta-VAE conv encoder: 64x64x3 -> (mean, logvar, sample) of size z_dim (the RSSM's embed)."""

    def __init__(self, z_dim: int = 20, in_channels: int = 3):
        super().__init__()
        self.z_dim = z_dim
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, 32, 4, 2, 1), nn.ELU(inplace=True),
            nn.Conv2d(32, 32, 4, 2, 1), nn.ELU(inplace=True),
            nn.Conv2d(32, 64, 4, 2, 1), nn.ELU(inplace=True),
            nn.Conv2d(64, 64, 4, 2, 1), nn.ELU(inplace=True),
            nn.Conv2d(64, 256, 4, 1), nn.ELU(inplace=True))
        self.head = nn.Linear(256, 2 * z_dim)
        _init_kaiming(self)
        self.to(memory_format=torch.channels_last)

    @property
    def embed_size(self) -> int:
        return self.z_dim

    def forward(self, image: torch.Tensor, sample: bool = True) -> dict:
        x, lead = _flatten_image(image)
        x = self.convs[:-2](x)
        x = F.elu(conv_full_window(self.convs[-2], x))               # 64x4x4 -> 256 (kernel 4 on a 4x4 map)
        mean, logvar = self.head(x).chunk(2, -1)
        mean, logvar = mean.reshape(*lead, -1), logvar.reshape(*lead, -1)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean) if sample else mean
        return dict(embed=z, mean=mean, logvar=logvar)


class ConvEncoder(nn.Module):
    """DreamerV2's conv encoder (depth 32, kernels 4, stride 2): 64x64x3 -> 32 * depth features."""

    def __init__(self, depth: int = 32, in_channels: int = 3):
        super().__init__()
        layers, channels = [], in_channels
        for i in range(4):
            layers += [nn.Conv2d(channels, depth * 2 ** i, 4, 2), nn.ELU(inplace=True)]
            channels = depth * 2 ** i
        self.convs = nn.Sequential(*layers)
        self.embed_size = depth * 32
        self.to(memory_format=torch.channels_last)

    def forward(self, image: torch.Tensor, sample: bool = True) -> dict:
        x, lead = _flatten_image(image)
        # flatten in (C, H, W) order whatever the memory layout, as the plain NCHW network would
        return dict(embed=self.convs(x).contiguous().reshape(*lead, -1))


class BetaVAEDecoder(nn.Module):
    """The DisWM decoder: feature -> z_dim bottleneck -> beta-VAE deconv stack -> 64x64x3 mean."""

    def __init__(self, feat_size: int, z_dim: int = 20):
        super().__init__()
        self.bottleneck = nn.Sequential(nn.Linear(feat_size, z_dim), nn.ELU(inplace=True), nn.Linear(z_dim, 256))
        self.deconvs = nn.Sequential(
            nn.ELU(inplace=True),
            nn.ConvTranspose2d(256, 64, 4), nn.ELU(inplace=True),
            nn.ConvTranspose2d(64, 64, 4, 2, 1), nn.ELU(inplace=True),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ELU(inplace=True),
            nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.ELU(inplace=True),
            nn.ConvTranspose2d(32, 3, 4, 2, 1))
        _init_kaiming(self)
        self.to(memory_format=torch.channels_last)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        lead = feat.shape[:-1]
        x = F.elu(self.bottleneck(feat.reshape(-1, feat.shape[-1])))
        x = conv_transpose_1x1_input(self.deconvs[1], x)             # 256x1x1 -> 64x4x4
        return run_deconvs(self.deconvs[2:], x).permute(0, 2, 3, 1).reshape(*lead, 64, 64, 3)


class ConvDecoder(nn.Module):
    """DreamerV2's conv decoder: Linear -> 32*depth x 1 x 1 -> ConvT kernels [5, 5, 6, 6] -> 64x64x3 mean."""

    def __init__(self, feat_size: int, depth: int = 32):
        super().__init__()
        self.linear = nn.Linear(feat_size, 32 * depth)
        chans = [32 * depth, 4 * depth, 2 * depth, depth, 3]
        layers = []
        for i, kernel in enumerate([5, 5, 6, 6]):
            layers.append(nn.ConvTranspose2d(chans[i], chans[i + 1], kernel, 2))
            if i < 3:
                layers.append(nn.ELU(inplace=True))
        self.deconvs = nn.Sequential(*layers)
        self.to(memory_format=torch.channels_last)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        lead = feat.shape[:-1]
        x = self.linear(feat.reshape(-1, feat.shape[-1]))
        x = conv_transpose_1x1_input(self.deconvs[0], x)             # 1024x1x1 -> 128x5x5
        # Forwards by phases (docs/benchmarks.md): the 32->3 output layer (2-3x faster on CPUs), and in bf16 on CPUs
        # also the 128->64 kernel-5 layer (oneDNN's bf16 transposed convolution is slow there: 80 -> 21 ms at 800
        # images; in fp32 the phase form is a little slower). The 64->32 layer gains nothing either way.
        bf16_on_cpu = x.device.type == 'cpu' and compute_dtype(x) == torch.bfloat16
        phases = (0, 2) if bf16_on_cpu else (2,)
        return run_deconvs(self.deconvs[1:], x, phases=phases).permute(0, 2, 3, 1).reshape(*lead, 64, 64, 3)


def mlp(inp: int, out: int, layers: int, units: int) -> nn.Sequential:
    mods, size = [], inp
    for _ in range(layers):
        mods += [nn.Linear(size, units), nn.ELU()]
        size = units
    mods.append(nn.Linear(size, out))
    return nn.Sequential(*mods)


def mlp_fp32_out(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """`net(x)` with the last (output) Linear in fp32 even under autocast; the hidden layers follow autocast.

    Official DreamerV2 casts its heads' outputs to float32 before building their distributions. Under bf16 the output
    layer itself must run in fp32 too: a bf16 value of ~50 has a resolution of 0.25, which would quantize the critic,
    the imagined rewards and so the lambda-returns the actor climbs. Without autocast this is `net(x)` exactly (the
    casts are no-ops)."""
    for layer in net[:-1]:
        x = layer(x)
    last = net[-1]
    with torch.autocast(x.device.type, enabled=False):
        return F.linear(x.float(), last.weight, last.bias)


class DenseHead(nn.Module):
    """MLP predicting the mean of a unit-variance Normal (reward, value); the output layer in fp32 (`mlp_fp32_out`)."""

    def __init__(self, inp: int, layers: int, units: int, out: int = 1):
        super().__init__()
        self.net = mlp(inp, out, layers, units)
        self.out = out

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        x = mlp_fp32_out(self.net, feat)
        return x.squeeze(-1) if self.out == 1 else x


class ActionHead(nn.Module):
    """DreamerV2 actor: MLP -> truncated Normal (tanh mean, std 2 sigmoid(x/2) + min_std) on [-1, 1].

    `clipped=True` gives the release's Normal instead (`tools.ClippedNormal`, `--release_compat`), whose
    reparameterised samples (imagination) are not clipped, as in the release.
    """

    def __init__(self, inp: int, action_size: int, layers: int, units: int, min_std: float = 0.1,
                 clipped: bool = False):
        super().__init__()
        self.net = mlp(inp, 2 * action_size, layers, units)
        self.min_std = min_std
        self.clipped = clipped

    def forward(self, feat: torch.Tensor):
        mean, raw = mlp_fp32_out(self.net, feat).chunk(2, -1)   # tanh and sigmoid in fp32, as official DreamerV2
        mean, std = torch.tanh(mean), tools.gaussian_std(raw, self.min_std)
        if self.clipped:
            return tools.ClippedNormal(mean, std, clip_rsample=False)
        return tools.TruncNormal(mean, std)
