"""Each fast path against the plain computation on the same inputs and weights."""
import numpy as np
import pytest
import torch

import networks
import replay as replay_lib


def plain_forward(module, x):
    """Runs a Sequential of the original layers in the default NCHW layout."""
    return module(x.contiguous())


@pytest.mark.parametrize('depth', [8])
def test_conv_encoder_matches_plain_network(depth):
    torch.manual_seed(0)
    enc = networks.ConvEncoder(depth)
    image = torch.randn(2, 3, 64, 64, 3)
    fast = enc(image)['embed']
    x = image.reshape(-1, 64, 64, 3).permute(0, 3, 1, 2).contiguous()
    plain = enc.convs(x).reshape(2, 3, -1)
    assert torch.allclose(fast, plain, atol=1e-5)


def test_beta_vae_encoder_matches_plain_network():
    torch.manual_seed(0)
    enc = networks.BetaVAEEncoder(20)
    image = torch.randn(5, 64, 64, 3)
    fast = enc(image, sample=False)
    plain = enc.head(enc.convs(image.permute(0, 3, 1, 2).contiguous()).flatten(1))
    assert torch.allclose(fast['mean'], plain[:, :20], atol=1e-4)
    assert torch.allclose(fast['logvar'], plain[:, 20:], atol=1e-4)


def test_decoders_match_plain_networks():
    torch.manual_seed(0)
    feat = torch.randn(3, 4, 250, requires_grad=True)
    dec = networks.ConvDecoder(250, 8)
    fast = dec(feat)
    plain = dec.deconvs(dec.linear(feat.reshape(-1, 250))[:, :, None, None]).permute(0, 2, 3, 1).reshape(3, 4, 64, 64, 3)
    assert torch.allclose(fast, plain, atol=1e-4)
    (g_fast,) = torch.autograd.grad(fast.square().sum(), feat)
    (g_plain,) = torch.autograd.grad(plain.square().sum(), feat)
    assert torch.allclose(g_fast, g_plain, rtol=1e-3, atol=1e-3)
    bdec = networks.BetaVAEDecoder(250, 20)
    fast = bdec(feat)
    plain = bdec.deconvs(bdec.bottleneck(feat.reshape(-1, 250))[:, :, None, None]).permute(0, 2, 3, 1)
    assert torch.allclose(fast, plain.reshape(3, 4, 64, 64, 3), atol=1e-4)


def test_replay_gather_matches_a_loop():
    r = replay_lib.Replay(capacity=50, seed=0)
    rng = np.random.default_rng(0)
    for i in range(7):
        r.add_episode(dict(image=rng.integers(0, 255, (13, 64, 64, 3), dtype=np.uint8),
                           reward=np.arange(13, dtype=np.float32) + 100 * i))
    state = r.rng.bit_generator.state
    batch = r.sample(6, 5)
    # the slow obvious version: walk the ring buffer from its oldest step
    r.rng.bit_generator.state = state
    offsets = r.rng.integers(0, len(r) - 5 + 1, size=6)
    cap = r.capacity
    oldest = r._ptr
    for b, off in enumerate(offsets):
        for t in range(5):
            index = (oldest + off + t) % cap
            assert batch['reward'][b, t] == r._data['reward'][index]
            assert np.array_equal(batch['image'][b, t], r._data['image'][index])


def test_prefetcher_gives_the_same_batches_as_direct_sampling():
    def filled(seed):
        r = replay_lib.Replay(seed=seed)
        rng = np.random.default_rng(0)
        for i in range(5):
            r.add_episode(dict(image=rng.integers(0, 255, (20, 64, 64, 3), dtype=np.uint8),
                               reward=np.arange(20, dtype=np.float32) + 100 * i))
        return r
    direct = filled(3)
    expected = [direct.sample(4, 6) for _ in range(5)]
    prefetcher = replay_lib.Prefetcher(filled(3), 4, 6, depth=2)
    try:
        for want in expected:
            got = prefetcher.next()
            assert all(np.array_equal(got[k], want[k]) for k in want)
    finally:
        prefetcher.close()


@pytest.mark.parametrize('release_compat', [False, True])
def test_behavior_losses_match_heads_on_all_imagined_states(release_compat):
    """The actor-critic evaluates the reward head on s_0..s_{H-1} and the slow critic on s_1..s_H only; losses and
    gradients equal the plain computation that runs both heads on all H+1 states and slices."""
    import models
    import tools
    config = tools.make_config(['--configs', 'defaults', 'dmc2gym', 'debug', '--logdir', '/tmp/unused',
                                '--release_compat', str(release_compat), '--device', 'cpu'])
    torch.manual_seed(0)
    agent = models.Agent(config, 6)
    behavior = agent.behavior
    for p in behavior.slow_critic.parameters():        # a slow critic different from the critic
        p.data.normal_(0, 0.1)
    start = {k: v for k, v in agent.wm.rssm.initial(12).items()}
    start = {k: v + torch.randn_like(v) for k, v in start.items()}

    def plain_losses():
        # The release keeps H states (s_0 .. s_{H-1}); official DreamerV2 H + 1.
        states = config.imag_horizon if release_compat else config.imag_horizon + 1
        feats, entropy = behavior.imagine(agent.wm, start, states - 1)
        reward = agent.wm.reward(feats)
        value = behavior.slow_critic(feats)
        discount = torch.full_like(reward, config.discount)
        next_value = value[1:]                                     # V(s_1) ... V(s_H); V(s_H) bootstraps
        target = tools.lambda_return(reward[:-1], next_value, discount[:-1], config.discount_lambda,
                                     reverse_bug=release_compat)
        weight = torch.cumprod(torch.cat([torch.ones_like(discount[:1]), discount[:-2]], 0), 0)
        actor_loss = -(weight * (target + config.actor_entropy * entropy)).mean()
        critic_loss = (weight * tools.gaussian_nll(behavior.critic(feats[:-1].detach()), target.detach(), 0)).mean()
        return actor_loss, critic_loss

    results = []
    for fn in (plain_losses, lambda: behavior.losses(agent.wm, start, agent.reward_fn)[:2]):
        torch.manual_seed(1)
        behavior.requires_grad_(True)
        behavior.slow_critic.requires_grad_(False)
        actor_loss, critic_loss = fn()
        grads = torch.autograd.grad(actor_loss, list(behavior.actor.parameters()))
        grads += torch.autograd.grad(critic_loss, list(behavior.critic.parameters()))
        results.append((actor_loss.detach(), critic_loss.detach(), grads))
        behavior.requires_grad_(False)
    (a0, c0, g0), (a1, c1, g1) = results
    assert torch.allclose(a0, a1, rtol=1e-5, atol=1e-6) and torch.allclose(c0, c1, rtol=1e-5, atol=1e-6)
    for x, y in zip(g0, g1):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-6)


def test_optimizer_zeroes_gradients_in_place():
    """Gradient buffers are allocated once and reused; each step sees only its own loss's gradient."""
    import tools
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    opt = tools.Optimizer('test', layer.parameters(), 1e-3, 1e-5, 100.0)
    buffers = [p.grad.data_ptr() for p in layer.parameters()]
    x = torch.randn(4, 3)
    for _ in range(3):
        expected = torch.autograd.grad(layer(x).square().sum(), list(layer.parameters()))
        norm = opt.step(layer(x).square().sum())
        assert torch.allclose(norm, torch.linalg.vector_norm(torch.cat([g.flatten() for g in expected])))
    assert [p.grad.data_ptr() for p in layer.parameters()] == buffers


def test_keep_freed_memory_applies_on_glibc_and_can_be_turned_off():
    import platform
    import tools
    assert tools.keep_freed_memory(False) is False
    applied = tools.keep_freed_memory(True)
    assert applied == (platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc')


@pytest.mark.parametrize('channels_last', [True, False])
@pytest.mark.parametrize('shape', [(32, 3, 4, 2, 1, 8, False), (16, 8, 6, 2, 0, 5, False), (8, 4, 5, 2, 0, 3, False),
                                   (16, 3, 6, 2, 0, 5, True), (8, 4, 4, 2, 0, 3, True), (6, 5, 6, 3, 0, 4, True),
                                   (8, 4, 5, 2, 0, 3, True), (6, 5, 7, 3, 0, 4, True), (5, 3, 3, 2, 0, 4, True)])
def test_conv_transpose_matches_the_layer_with_all_gradients(shape, channels_last):
    """networks.conv_transpose (bias gradient as a sum; forward by phases where asked) against
    nn.ConvTranspose2d: output and every gradient."""
    cin, cout, kernel, stride, padding, size, phases = shape
    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose2d(cin, cout, kernel, stride, padding)
    x = torch.randn(6, cin, size, size)
    if channels_last:
        layer = layer.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    results = []
    for fn in (layer, lambda inp: networks.conv_transpose(layer, inp, phases)):
        inp = x.clone().requires_grad_(True)
        out = fn(inp)
        target = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        grads = torch.autograd.grad((out * target).sum(), [inp, layer.weight, layer.bias])
        results.append((out, *grads))
    for plain, fast in zip(*results):
        assert torch.allclose(plain, fast, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('phases,kernel', [(False, 6), (True, 6), (True, 5)])
def test_conv_transpose_follows_autocast(phases, kernel):
    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose2d(8, 4, kernel, 2, 0 if phases else 1)
    x = torch.randn(3, 8, 5, 5)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        plain, fast = layer(x), networks.conv_transpose(layer, x, phases)
    assert fast.dtype == plain.dtype == torch.bfloat16
    assert torch.allclose(plain.float(), fast.float(), rtol=2e-2, atol=2e-2)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        networks.conv_transpose(layer, x.requires_grad_(True), phases).float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and layer.bias.grad.dtype == torch.float32


def test_decoder_parameter_gradients_match_plain_networks():
    torch.manual_seed(0)
    feat = torch.randn(2, 3, 250)
    for dec, first in ((networks.ConvDecoder(250, 8), 'linear'), (networks.BetaVAEDecoder(250, 20), 'bottleneck')):
        fast = dec(feat)
        plain = dec.deconvs(getattr(dec, first)(feat.reshape(-1, 250))[:, :, None, None]).permute(0, 2, 3, 1)
        params = list(dec.deconvs.parameters())
        g_fast = torch.autograd.grad(fast.square().sum(), params)
        g_plain = torch.autograd.grad(plain.square().sum(), params)
        for a, b in zip(g_fast, g_plain):
            assert torch.allclose(a, b, rtol=1e-3, atol=1e-3 * b.abs().max().item())


def test_bf16_decoder_takes_the_phase_forward_and_matches_the_plain_network(monkeypatch):
    """In bf16 on a CPU, ConvDecoder's kernel-5 and output layers run their forward by phases (the fp32 decoder only
    the output layer); output and parameter gradients match the plain layers under the same autocast."""
    torch.manual_seed(0)
    dec = networks.ConvDecoder(250, 8)
    feat = torch.randn(2, 3, 250)
    calls = []
    original = networks.conv_transpose
    monkeypatch.setattr(networks, 'conv_transpose', lambda layer, x, phases=False: (
        calls.append((layer.kernel_size[0], phases)), original(layer, x, phases))[1])
    dec(feat)
    assert calls == [(5, False), (6, False), (6, True)]
    calls.clear()
    params = list(dec.deconvs.parameters())
    with torch.autocast('cpu', dtype=torch.bfloat16):
        fast = dec(feat)
        plain = dec.deconvs(dec.linear(feat.reshape(-1, 250))[:, :, None, None]).permute(0, 2, 3, 1)
        g_fast = torch.autograd.grad(fast.float().square().sum(), params)
        g_plain = torch.autograd.grad(plain.float().square().sum(), params)
    assert calls == [(5, True), (6, False), (6, True)]
    assert fast.dtype == torch.bfloat16
    scale = plain.float().abs().max().item()
    assert torch.allclose(fast.float().reshape(plain.shape), plain.float(), rtol=0, atol=2e-2 * scale)
    for a, b in zip(g_fast, g_plain):
        assert torch.allclose(a, b, rtol=0, atol=3e-2 * b.abs().max().item())
