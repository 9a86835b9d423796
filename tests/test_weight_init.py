"""`--weight_init glorot`: official DreamerV2's initialisation (Keras defaults) for the DreamerV2 networks.

Keras draws a kernel from U(±sqrt(6 / (fan_in + fan_out))), where a convolution's fans are its input and output
channels times the kernel's area, and sets biases to zero. The limits below are computed from each layer's sizes, not
read back from the tensors.
"""
import math

import pytest
import torch
from torch import nn

import models
import networks
import tools
from tools import ConfigError
from helpers import random_batch
from test_methods import config, make_checkpoint, method_config


def keras_limit(layer: nn.Module) -> float:
    if isinstance(layer, nn.Linear):
        fan_in, fan_out = layer.in_features, layer.out_features
    else:   # Conv2d (out, in, k, k) and ConvTranspose2d (in, out, k, k): the sum of the fans is the same either way
        area = layer.kernel_size[0] * layer.kernel_size[1]
        fan_in, fan_out = layer.in_channels * area, layer.out_channels * area
    return math.sqrt(6.0 / (fan_in + fan_out))


def check_glorot(weight: torch.Tensor, limit: float):
    assert weight.abs().max() <= limit
    if weight.numel() >= 2000:      # uniform on ±limit: variance limit^2 / 3, the largest draws close to the limit
        assert weight.abs().max() > 0.98 * limit
        assert weight.var().item() == pytest.approx(limit ** 2 / 3, rel=0.1)


def layers(module: nn.Module):
    return [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d))]


def test_dreamerv2_networks_start_as_official_dreamerv2s():
    torch.manual_seed(0)
    agent = models.Agent(config('--weight_init', 'glorot'), 6)
    wm, behavior = agent.wm, agent.behavior
    nets = [wm.encoder, wm.rssm, wm.decoder, wm.reward, behavior.critic]
    checked = 0
    for net in nets:
        for layer in layers(net):
            check_glorot(layer.weight, keras_limit(layer))
            assert torch.count_nonzero(layer.bias) == 0
            checked += 1
    assert checked == 4 + 6 + 5 + 3 + 4      # conv layers, RSSM Linears (GRU included), decoder, reward, critic
    # The actor's output is official DreamerV2's two layers (mean, std), each action_size wide.
    out = behavior.actor.net[-1]
    for half in out.weight.chunk(2, 0):
        check_glorot(half, math.sqrt(6.0 / (out.in_features + 6)))
    for layer in layers(behavior.actor)[:-1]:
        check_glorot(layer.weight, keras_limit(layer))
    assert torch.count_nonzero(out.bias) == 0
    for slow, fast in zip(behavior.slow_critic.parameters(), behavior.critic.parameters()):
        assert torch.equal(slow, fast)                # the slow critic starts as the critic it copies
    for _ in range(2):
        metrics = agent.update(random_batch(A=6), step=0)
        assert all(torch.isfinite(metrics[k]) for k in ('model_loss', 'actor_loss', 'critic_loss'))
    # PyTorch's default (the release's), for contrast: non-zero biases, a smaller weight range.
    plain = models.Agent(config(), 6).wm.reward.net[0]
    assert torch.count_nonzero(plain.bias) > 0 and plain.weight.abs().max() <= 1 / math.sqrt(plain.in_features)


def test_beta_vae_networks_and_pretrained_parts_keep_their_weights(tmp_path):
    video = make_checkpoint(tmp_path)
    torch.manual_seed(0)
    reference = models.Agent(method_config('dv2_finetune', tmp_path), 6)
    torch.manual_seed(0)
    agent = models.Agent(method_config('dv2_finetune', tmp_path, '--weight_init', 'glorot'), 6)
    # Loaded after the initialisation: the video model's encoder, decoder and RSSM arrive unchanged.
    assert torch.equal(agent.wm.encoder.head.weight, video.encoder.head.weight)
    assert torch.equal(agent.wm.decoder.deconvs[-1].weight, video.decoder.deconvs[-1].weight)
    stoch = agent.config.dyn_stoch
    assert torch.equal(agent.wm.rssm.img_in[0].weight[:, :stoch + 2], video.rssm.img_in[0].weight)
    # The heads are initialised the official way, unlike the default run's.
    head = agent.wm.reward.net[0]
    assert torch.count_nonzero(head.bias) == 0
    assert not torch.equal(head.weight, reference.wm.reward.net[0].weight)


def test_glorot_skips_beta_vae_networks():
    torch.manual_seed(0)
    enc = networks.BetaVAEEncoder(20)
    before = [p.clone() for p in enc.parameters()]
    networks.glorot_init_(nn.Sequential(enc, nn.Linear(20, 30)))
    assert all(torch.equal(a, b) for a, b in zip(before, enc.parameters()))


@pytest.mark.parametrize('choice, glorot_model, glorot_behavior', [
    ('torch', False, False), ('glorot', True, True), ('glorot_model', True, False), ('glorot_behavior', False, True)])
def test_weight_init_can_start_one_part_the_official_way(choice, glorot_model, glorot_behavior):
    """The ablation choices: Glorot in the world model only, or in the actor and critic only."""
    torch.manual_seed(0)
    agent = models.Agent(config('--weight_init', choice), 6)
    parts = {'model': ([agent.wm.encoder, agent.wm.rssm, agent.wm.decoder, agent.wm.reward], glorot_model),
             'behavior': ([agent.behavior.actor, agent.behavior.critic], glorot_behavior)}
    for part, (nets, glorot) in parts.items():
        biases = [layer.bias for net in nets for layer in layers(net) if layer.bias is not None]
        assert len(biases) > 5
        # Glorot's biases start at zero, PyTorch's from U(±1/sqrt(fan_in)): no bias of theirs is all zeros.
        assert all((torch.count_nonzero(b) == 0) == glorot for b in biases), (choice, part)


def test_unknown_weight_init_is_a_clear_error():
    with pytest.raises(ConfigError, match='--weight_init must be one of torch, glorot, glorot_model, glorot_behavior'):
        config('--weight_init', 'xavier')


def test_same_seed_same_initial_weights():
    weights = []
    for _ in range(2):
        tools.set_seed(3)
        agent = models.Agent(config('--weight_init', 'glorot'), 6)
        weights.append(torch.cat([p.flatten() for p in agent.parameters()]))
    assert torch.equal(weights[0], weights[1])
