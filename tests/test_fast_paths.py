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
