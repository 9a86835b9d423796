"""Numbers checked against slow, obvious versions: lambda-returns, the RSSM scan, KL terms, schedules."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import numpy as np
import pytest
import torch

import agents
import models
import networks
import tools
from helpers import wait_until_stopped


def test_lambda_return_matches_plain_loop():
    torch.manual_seed(0)
    T, N, lam = 7, 3, 0.9
    reward, value, disc = torch.randn(T, N), torch.randn(T, N), torch.rand(T, N)
    bootstrap = torch.randn(N)
    next_value = torch.cat([value[1:], bootstrap[None]], 0)
    out = tools.lambda_return(reward, next_value, disc, lam)
    expected = torch.zeros(T, N)
    for n in range(N):
        for t in range(T):
            # Definition by expansion: G_t^lambda as a weighted sum of n-step returns.
            total, weight_sum = 0.0, 0.0
            values = list(value[:, n]) + [bootstrap[n]]
            for k in range(1, T - t + 1):
                ret, g = 0.0, 1.0
                for j in range(k):
                    ret += g * reward[t + j, n]
                    g *= disc[t + j, n]
                ret += g * values[t + k]
                w = (1 - lam) * lam ** (k - 1) if k < T - t else lam ** (k - 1)
                total += w * ret
                weight_sum += w
            expected[t, n] = total
            assert abs(weight_sum - 1) < 1e-6
    assert torch.allclose(out, expected, atol=1e-5)
    # release_compat reproduces the time-reversed order of the release
    assert torch.allclose(tools.lambda_return(reward, next_value, disc, lam, reverse_bug=True),
                          expected.flip(0), atol=1e-5)


def test_rssm_scan_matches_step_loop():
    torch.manual_seed(0)
    rssm = networks.RSSM(stoch=8, deter=16, hidden=12, action_size=3, embed_size=5)
    B, T = 4, 6
    embed, action = torch.randn(B, T, 5), torch.randn(B, T, 3)
    is_first = torch.zeros(B, T)
    is_first[:, 0] = 1
    is_first[1, 3] = 1
    post, prior = rssm.observe(embed, action, is_first, sample=False)
    state = rssm.initial(B)
    for t in range(T):
        keep = (1 - is_first[:, t])[:, None]
        prev = {k: v * keep for k, v in state.items()}
        x = rssm.img_in(torch.cat([prev['stoch'], action[:, t] * keep], -1))
        deter = rssm.cell(x, prev['deter'])
        pm, pr = rssm.img_out(deter).chunk(2, -1)
        qm, qr = rssm.obs_out(torch.cat([deter, embed[:, t]], -1)).chunk(2, -1)
        assert torch.allclose(prior['mean'][:, t], pm, atol=1e-6)
        assert torch.allclose(prior['std'][:, t], 2 * torch.sigmoid(pr / 2) + 0.1, atol=1e-6)
        assert torch.allclose(post['mean'][:, t], qm, atol=1e-6)
        state = dict(mean=qm, std=2 * torch.sigmoid(qr / 2) + 0.1, stoch=qm, deter=deter)
    # a reset in the middle makes row 1 from t=3 on identical to a fresh sequence
    fresh, _ = rssm.observe(embed[1:2, 3:], action[1:2, 3:], is_first[1:2, 3:], sample=False)
    assert torch.allclose(fresh['deter'][0], post['deter'][1, 3:], atol=1e-6)


def test_action_free_path_ignores_actions():
    torch.manual_seed(0)
    rssm = networks.RSSM(stoch=8, deter=16, hidden=12, action_size=2, embed_size=5)
    embed, is_first = torch.randn(2, 5, 5), torch.zeros(2, 5)
    a, _ = rssm.observe_action_free(embed, is_first)
    b, _ = rssm.observe_action_free(embed, is_first)
    zero, _ = rssm.observe(embed, torch.zeros(2, 5, 2), is_first, sample=False)
    other, _ = rssm.observe(embed, torch.randn(2, 5, 2), is_first, sample=False)
    assert torch.equal(a['stoch'], b['stoch']) and torch.allclose(a['stoch'], zero['stoch'])
    assert not torch.allclose(a['stoch'], other['stoch'])     # the action-conditioned path does use actions


def test_kl_balancing_by_hand():
    post = dict(mean=torch.tensor([[0.5, -1.0]]), std=torch.tensor([[0.8, 1.2]]))
    prior = dict(mean=torch.tensor([[0.0, 0.0]]), std=torch.tensor([[1.0, 1.0]]))
    kl = 0.0
    for m, s in zip([0.5, -1.0], [0.8, 1.2]):
        kl += np.log(1.0 / s) + (s ** 2 + m ** 2) / 2 - 0.5
    loss, value = tools.balanced_kl(post, prior, 0.8, 0.0, 1.0)
    assert abs(value.item() - kl) < 1e-5 and abs(loss.item() - kl) < 1e-5
    loss, _ = tools.balanced_kl(post, prior, 0.8, 5.0, 2.0)
    assert abs(loss.item() - 2 * 5.0) < 1e-6                  # free nats clamp the batch mean
    # the gradient split: 0.8 of the gradient reaches the prior, 0.2 the posterior
    pm = torch.zeros(1, 2, requires_grad=True)
    qm = torch.tensor([[0.5, -1.0]], requires_grad=True)
    loss, _ = tools.balanced_kl(dict(mean=qm, std=post['std']), dict(mean=pm, std=prior['std']), 0.8, 0.0, 1.0)
    loss.backward()
    assert torch.allclose(pm.grad, -0.8 * torch.tensor([[0.5, -1.0]]), atol=1e-6)
    assert torch.allclose(qm.grad, 0.2 * torch.tensor([[0.5, -1.0]]), atol=1e-6)


def test_beta_vae_kl_by_hand():
    mean, logvar = torch.tensor([[0.3, -0.2]]), torch.tensor([[0.1, -0.5]])
    expected = [0.5 * (np.exp(lv) + m ** 2 - 1 - lv) for m, lv in [(0.3, 0.1), (-0.2, -0.5)]]
    assert np.allclose(tools.standard_normal_kl(mean, logvar).numpy()[0], expected, atol=1e-6)
    prior = models.BetaVAEPrior(0.015)
    out = {'enc': {'mean': mean[None].expand(2, 3, 2), 'logvar': logvar[None].expand(2, 3, 2)}}
    terms, metrics, context = prior(out, 0)
    assert context is None
    value, weight = terms['beta_vae_kl']
    assert weight == 0.015 and abs(value.item() - sum(expected)) < 1e-5
    assert abs(metrics['beta_vae_kl_dim/01'].item() - expected[1]) < 1e-6


def test_distillation_loss_by_hand():
    torch.manual_seed(0)
    t, s = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    total = 0.0
    for b in range(3):
        for k in range(4):
            p = np.exp(t[b, k].numpy()) / np.exp(t[b, k].numpy()).sum()
            q = np.exp(s[b, k].numpy()) / np.exp(s[b, k].numpy()).sum()
            total += (p * np.log(p / q)).sum()
    assert abs(models.distillation_loss(t, s).item() - total / 3) < 1e-5
    ref = torch.nn.functional.kl_div(torch.log_softmax(s, -1), torch.softmax(t, -1), reduction='batchmean')
    assert abs(models.distillation_loss(t, s).item() - ref.item()) < 1e-5     # the release's formulation


@pytest.mark.parametrize('cross,expected', [(False, [0.1, 0.05, 0.01, 0.01]), (True, [0.0, 0.0, 0.1, 0.01])])
def test_distillation_weight_schedule(cross, expected):
    c = types.SimpleNamespace(distill_eta=0.1, distill_decay=5e4, distill_floor=0.1, distill_delay=5e4,
                              cross_domain=cross)
    got = [models.distill_weight(s, c) for s in (0, 25_000, 50_000, 100_000)]
    assert np.allclose(got, expected)
    if cross:
        assert models.distill_weight(49_999, c) == 0 and models.distill_weight(75_000, c) == pytest.approx(0.05)


def test_clipped_normal_stays_in_bounds_with_gradient():
    mean = torch.zeros(1000, 2, requires_grad=True)
    dist = tools.ClippedNormal(torch.tanh(mean), torch.full((1000, 2), 3.0))
    sample = dist.rsample()
    assert sample.abs().max() < 1
    sample.sum().backward()
    assert torch.allclose(mean.grad, torch.ones_like(mean))   # straight-through clip


def _truncnorm(mean, std):
    from scipy import stats
    return stats.truncnorm((-1 - mean) / std, (1 - mean) / std, loc=mean, scale=std)


@pytest.mark.parametrize('mean,std', [(0.0, 1.5), (0.9, 0.3), (-1.0, 0.1), (0.99, 2.1)])
def test_trunc_normal_matches_scipy_truncated_normal(mean, std):
    """Samples, density and entropy of the actor distribution against scipy's truncated Normal (official DreamerV2's
    TruncatedNormal), including a mean on the bound and a small std."""
    torch.manual_seed(0)
    n = 200_000
    dist = tools.TruncNormal(torch.full((n, 1), mean), torch.full((n, 1), std))
    sample = dist.rsample().squeeze(-1).numpy().astype(np.float64)
    ref = _truncnorm(mean, std)
    assert np.all(np.abs(sample) < 1)
    from scipy import stats
    assert stats.kstest(sample, ref.cdf).statistic < 0.005           # 200k samples: the 1% critical value is 0.0036
    x = torch.linspace(-0.999, 0.999, 7)
    one = lambda v: torch.full((7, 1), v)
    assert np.allclose(tools.TruncNormal(one(mean), one(std)).log_prob(x[:, None]).numpy(), ref.logpdf(x.numpy()),
                       atol=1e-4)
    assert float(dist.entropy()[0]) == pytest.approx(ref.entropy(), abs=1e-4)


def test_trunc_normal_pathwise_gradient_matches_finite_differences():
    """With the uniform noise fixed, d sample / d (mean, std) from autograd equals central differences."""
    mean = torch.tensor([[0.3, -0.8]], dtype=torch.float64, requires_grad=True)
    std = torch.tensor([[0.7, 1.2]], dtype=torch.float64, requires_grad=True)

    def draw(m, s):
        torch.manual_seed(3)
        return tools.TruncNormal(m, s).rsample()

    draw(mean, std).sum().backward()
    eps = 1e-4
    for param, grad in ((mean, mean.grad), (std, std.grad)):
        for j in range(2):
            delta = torch.zeros_like(param)
            delta[0, j] = eps
            plus = draw(mean.detach() + (delta if param is mean else 0), std.detach() + (delta if param is std else 0))
            minus = draw(mean.detach() - (delta if param is mean else 0), std.detach() - (delta if param is std else 0))
            assert float(grad[0, j]) == pytest.approx(float((plus - minus)[0, j]) / (2 * eps), rel=1e-3, abs=1e-5)


def test_trunc_normal_puts_few_samples_on_the_bounds_unlike_the_release_clipped_normal():
    """At the actor's std for a zero pre-activation (1.1) the release's clipped Normal puts 39 % of its samples beyond
    +-0.95 (36 % exactly on +-1); the truncated Normal spreads them over [-1, 1] (P(|x| > 0.95) = 3.8 %)."""
    torch.manual_seed(0)
    mean, std = torch.zeros(100_000, 1), torch.full((100_000, 1), 2 * torch.sigmoid(torch.tensor(0.0)).item() + 0.1)
    near_bound = lambda d: float((d.rsample().abs() > 0.95).float().mean())
    expected = 1 - (_truncnorm(0.0, float(std[0])).cdf(0.95) - _truncnorm(0.0, float(std[0])).cdf(-0.95))
    assert near_bound(tools.TruncNormal(mean, std)) == pytest.approx(expected, abs=0.005)
    assert expected == pytest.approx(0.0385, abs=0.001) and near_bound(tools.ClippedNormal(mean, std)) > 0.37


def test_gaussian_nll_matches_torch_normal():
    torch.manual_seed(0)
    mean, target = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    expected = -torch.distributions.Normal(mean, 1.0).log_prob(target).sum(dim=(-2, -1))
    assert torch.allclose(tools.gaussian_nll(mean, target, 2), expected, atol=1e-4)
    assert torch.allclose(tools.gaussian_nll(mean, target, 0), -torch.distributions.Normal(mean, 1.0).log_prob(target),
                          atol=1e-5)


@pytest.mark.parametrize('event_dims', [1, 3])
def test_gaussian_nll_gradient_matches_the_plain_expression(event_dims):
    """The fused squared error (saves only the difference) gives the plain autograd graph's value and gradients."""
    torch.manual_seed(0)
    shape = (2, 3, 8, 8, 3)[:2 + event_dims]
    mean = torch.randn(shape, requires_grad=True)
    target = torch.randn(shape, requires_grad=True)
    weights = torch.rand(shape[:2])
    fast = tools.gaussian_nll(mean, target, event_dims)
    dims = tuple(range(-event_dims, 0))
    count = int(np.prod(shape[2:]))
    plain = 0.5 * (target - mean).square().sum(dims) + 0.5 * np.log(2 * np.pi) * count
    assert torch.allclose(fast, plain, rtol=1e-5)
    g_fast = torch.autograd.grad((weights * fast).sum(), [mean, target])
    g_plain = torch.autograd.grad((weights * plain).sum(), [mean, target])
    for a, b in zip(g_fast, g_plain):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    half = mean.detach().bfloat16().requires_grad_(True)
    (g_half,) = torch.autograd.grad(tools.gaussian_nll(half, target.detach(), event_dims).sum(), [half])
    assert g_half.dtype == torch.bfloat16


def test_gru_has_an_input_bias_and_loads_checkpoints_written_without_it():
    """The LayerNorm GRU's Linear has a bias (official DreamerV2, the release); a state dict from before the bias
    existed loads with it zero and then computes the old function: norm(W [x, h]) without a bias."""
    torch.manual_seed(0)
    cell = networks.GRUCell(5, 4, norm=True)
    assert cell.layer.bias is not None and cell.layer.bias.shape == (12,)
    old_state = {k: v for k, v in cell.state_dict().items() if k != 'layer.bias'}
    fresh = networks.GRUCell(5, 4, norm=True)
    fresh.load_state_dict(old_state)
    assert torch.equal(fresh.layer.bias, torch.zeros(12))
    x, h = torch.randn(3, 5), torch.randn(3, 4)
    parts = torch.nn.functional.layer_norm(torch.cat([x, h], -1) @ cell.layer.weight.T, (12,),
                                           cell.norm.weight, cell.norm.bias)
    reset, cand, update = parts.split(4, -1)
    update = torch.sigmoid(update - 1)
    expected = update * torch.tanh(torch.sigmoid(reset) * cand) + (1 - update) * h
    assert torch.allclose(fresh(x, h), expected, atol=1e-6)


def _acting_agent(*flags):
    """A fresh debug-size DMC agent (seed 0) with `flags`, and a first observation to act on."""
    config = tools.make_config(['--configs', 'defaults', 'dmc2gym', 'debug', '--device', 'cpu', *flags])
    torch.manual_seed(0)
    agent = agents.make_agent(config, 2)
    obs = dict(image=np.random.default_rng(0).integers(0, 255, (1, 64, 64, 3), dtype=np.uint8),
               is_first=np.ones(1, bool))
    return agent, obs


@pytest.mark.parametrize('state_mean', [False, True])
def test_evaluation_samples_the_latent_unless_eval_state_mean(state_mean):
    """Evaluation acts with the actor's mean action; the filter samples its latent as in DreamerV2 unless
    --eval_state_mean True, which makes evaluation deterministic given the observations."""
    agent, obs = _acting_agent('--eval_state_mean', str(state_mean))
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        action, state = agent.policy(obs, None, training=False)
        action, state = agent.policy(dict(obs, is_first=np.zeros(1, bool)), state, training=False)
        runs.append((action, state[0]['stoch']))
    same = np.array_equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert same == state_mean


@pytest.mark.parametrize('eval_sample', [False, True])
def test_eval_sample_acts_with_sampled_actions(eval_sample):
    """--eval_sample True makes evaluation act with actions drawn from the actor (a diagnostic); by default it acts
    with the actor's mean. Latents filtered with their means, so only the action can differ between seeds."""
    agent, obs = _acting_agent('--eval_state_mean', 'True', '--eval_sample', str(eval_sample))
    actions = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        action, state = agent.policy(obs, None, training=False)
        actions.append(action)
    feat = agent.wm.rssm.feat(state[0])
    mean = agent.behavior.actor(feat).mode().numpy()
    assert np.all(np.abs(actions[0]) <= 1) and np.all(np.abs(actions[1]) <= 1)
    if eval_sample:
        assert not np.array_equal(actions[0], actions[1])
        assert not np.allclose(actions[0], mean, atol=1e-3)
    else:
        assert np.array_equal(actions[0], actions[1])
        np.testing.assert_allclose(actions[0], mean, atol=1e-6)

def test_pretrained_rssm_without_gru_bias_loads(tmp_path):
    """A stage-1 rssm.pt written before the GRU bias existed still loads as a pretrained part (bias zero)."""
    config = tools.make_config(['--configs', 'defaults', '--beta_vae', 'True'])
    rssm = networks.RSSM(action_size=2, embed_size=config.z_dim)
    old = {k: v for k, v in rssm.state_dict().items() if not k.endswith('cell.layer.bias')}
    assert len(old) == len(rssm.state_dict()) - 1
    torch.save(old, tmp_path / 'rssm.pt')
    fresh = networks.RSSM(action_size=2, embed_size=config.z_dim)
    models.load_checkpoint_part(str(tmp_path), 'rssm', fresh, config)
    assert torch.equal(fresh.cell.layer.bias, torch.zeros_like(fresh.cell.layer.bias))
    assert torch.equal(fresh.cell.layer.weight, rssm.cell.layer.weight)


def test_beta_vae_init_as_released_kaiming_for_conv_and_linear_default_for_transposed_convs():
    torch.manual_seed(0)
    decoder = networks.BetaVAEDecoder(feat_size=250, z_dim=20)
    for m in decoder.modules():
        if isinstance(m, torch.nn.ConvTranspose2d):
            fan_in = m.weight.shape[1] * m.weight[0, 0].numel()      # PyTorch's default: U(+-1/sqrt(fan_in))
            assert m.weight.abs().max() <= 1 / np.sqrt(fan_in) and m.bias.abs().max() <= 1 / np.sqrt(fan_in)
            assert m.bias.abs().sum() > 0
        elif isinstance(m, torch.nn.Linear):                         # Kaiming normal: std sqrt(2 / fan_in)
            assert torch.all(m.bias == 0)
            assert float(m.weight.detach().std()) == pytest.approx(np.sqrt(2 / m.weight.shape[1]), rel=0.15)


def test_schedule_helpers_match_the_plain_counters():
    """`tools.Every` / `tools.Ratio` against the hand-kept counters the training loop used before (next_log +=
    interval when due; last_train += due * every), over irregular counter jumps."""
    rng = np.random.default_rng(0)
    values = np.cumsum(rng.integers(0, 7, 300)) + 13
    every, ratio = tools.Every(10, start=13), tools.Ratio(5, start=13)
    next_log, last_train = (13 // 10 + 1) * 10, 13
    for v in values:
        expected_log = v >= next_log
        if expected_log:
            next_log += 10
        assert every(int(v)) == expected_log
        expected_due = (v - last_train) // 5
        last_train += expected_due * 5
        assert ratio(int(v)) == expected_due
    ratio.restart(1000)
    assert ratio(1004) == 0 and ratio(1005) == 1
    totals = {'time_x': 1.0}
    with tools.Timer(totals)('time_x'):
        pass
    assert totals['time_x'] >= 1.0


@pytest.mark.skipif(not hasattr(signal, 'SIGTSTP') or not os.path.exists('/proc/self/stat'),
                    reason='needs SIGTSTP and /proc')
def test_a_sigtstp_pause_stops_the_process_and_is_left_out_of_its_clocks():
    """Ctrl-Z / `kill -TSTP`: the process stops until SIGCONT, as without the handler, and `tools.Timer` (the run's
    time_* clocks) leaves the stopped seconds out; `paused_seconds()` has them."""
    child = textwrap.dedent(f"""
        import json, sys, time
        sys.path.insert(0, {tools.ROOT!r})
        import tools
        assert tools.count_pauses()
        totals = {{'time_x': 0.0}}
        tick = time.perf_counter()
        with tools.Timer(totals)('time_x'):
            print('timing', flush=True)
            sys.stdin.readline()
        print(json.dumps(dict(totals, wall=time.perf_counter() - tick, paused=tools.paused_seconds())), flush=True)
    """)
    proc = subprocess.Popen([sys.executable, '-c', child], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == 'timing'
        proc.send_signal(signal.SIGTSTP)
        assert wait_until_stopped(proc.pid)
        time.sleep(1.5)
        assert wait_until_stopped(proc.pid, timeout=0)   # stays stopped until continued
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.2)
        out, _ = proc.communicate('go\n', timeout=30)
    finally:
        proc.kill()
    result = json.loads(out)
    assert result['paused'] >= 1.5
    assert result['time_x'] == pytest.approx(result['wall'] - result['paused'], abs=0.01)
    assert result['time_x'] < result['wall'] - 1.5


# --------------------------------------------------------------------------------------------------------------------
# Categorical latents (--dyn_discrete K)
# --------------------------------------------------------------------------------------------------------------------
def test_categorical_straight_through_is_one_hot_with_the_probabilities_gradient():
    torch.manual_seed(0)
    logit = torch.randn(5, 3 * 4, requires_grad=True)                  # 5 states, 3 variables of 4 classes
    mode = networks.categorical_straight_through(logit, 4, sample=False)
    groups = mode.detach().reshape(5, 3, 4)
    assert torch.equal(groups.sum(-1), torch.ones(5, 3)) and set(groups.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(groups.argmax(-1), logit.detach().reshape(5, 3, 4).argmax(-1))
    weight = torch.randn(5, 12)
    (grad,) = torch.autograd.grad((weight * mode).sum(), logit)
    (expected,) = torch.autograd.grad((weight * torch.softmax(logit.reshape(5, 3, 4), -1).reshape(5, 12)).sum(),
                                      logit)
    assert torch.allclose(grad, expected, atol=1e-6)
    # samples are one-hot draws from the softmax: class frequencies over 40000 draws within 0.01 of the probabilities
    logit = torch.tensor([[2.0, 0.0, -1.0, 0.5]]).expand(40000, 4)
    draws = networks.categorical_straight_through(logit, 4, sample=True).detach()
    assert torch.equal(draws.sum(-1), torch.ones(40000))
    assert torch.allclose(draws.mean(0), torch.softmax(logit[0], -1), atol=0.01)


def test_categorical_kl_and_its_balancing_by_hand():
    torch.manual_seed(0)
    q, p = torch.randn(2, 3 * 5), torch.randn(2, 3 * 5)
    slow = torch.zeros(2)
    for n in range(2):
        for v in range(3):
            qa, pa = torch.softmax(q[n, 5 * v:5 * v + 5], -1), torch.softmax(p[n, 5 * v:5 * v + 5], -1)
            slow[n] += sum(float(qa[k] * (torch.log(qa[k]) - torch.log(pa[k]))) for k in range(5))
    assert torch.allclose(tools.categorical_kl(q, p, 5), slow, atol=1e-5)
    post = dict(logit=q, stoch=networks.categorical_straight_through(q, 5, False))
    prior = dict(logit=p, stoch=networks.categorical_straight_through(p, 5, False))
    loss, value = tools.balanced_kl(post, prior, 0.8, 0.0, 1.0, classes=5)
    assert abs(value.item() - slow.mean().item()) < 1e-5 and abs(loss.item() - slow.mean().item()) < 1e-5
    loss, _ = tools.balanced_kl(post, prior, 0.8, 100.0, 2.0, classes=5)
    assert abs(loss.item() - 200.0) < 1e-4                             # free nats clamp the batch mean
    # the gradient split: 0.8 of the KL's gradient reaches the prior's logits, 0.2 the posterior's
    ql, pl = q.clone().requires_grad_(True), p.clone().requires_grad_(True)
    loss, _ = tools.balanced_kl(dict(logit=ql), dict(logit=pl), 0.8, 0.0, 1.0, classes=5)
    loss.backward()
    qf, pf = q.clone().requires_grad_(True), p.clone().requires_grad_(True)
    tools.categorical_kl(qf, pf, 5).mean().backward()
    assert torch.allclose(pl.grad, 0.8 * pf.grad, atol=1e-6) and torch.allclose(ql.grad, 0.2 * qf.grad, atol=1e-6)


def test_categorical_rssm_scan_matches_step_loop():
    with pytest.raises(tools.ConfigError, match='dyn_discrete 1'):
        tools.make_config(['--configs', 'defaults', 'dmc2gym', '--dyn_discrete', '1'])
    torch.manual_seed(0)
    rssm = networks.RSSM(stoch=3, deter=16, hidden=12, action_size=2, embed_size=5, discrete=4)
    assert rssm.stoch_size == 12 and rssm.feat_size == 28
    B, T = 3, 5
    embed, action = torch.randn(B, T, 5), torch.randn(B, T, 2)
    is_first = torch.zeros(B, T)
    is_first[:, 0] = 1
    post, prior = rssm.observe(embed, action, is_first, sample=False)
    state = rssm.initial(B)
    assert set(state) == {'logit', 'stoch', 'deter'}
    for t in range(T):
        keep = (1 - is_first[:, t])[:, None]
        prev = {k: v * keep for k, v in state.items()}
        deter = rssm.cell(rssm.img_in(torch.cat([prev['stoch'], action[:, t] * keep], -1)), prev['deter'])
        prior_logit = rssm.img_out(deter)
        logit = rssm.obs_out(torch.cat([deter, embed[:, t]], -1))
        onehot = torch.nn.functional.one_hot(logit.reshape(B, 3, 4).argmax(-1), 4).float().reshape(B, 12)
        assert torch.allclose(prior['logit'][:, t], prior_logit, atol=1e-6)
        assert torch.allclose(post['logit'][:, t], logit, atol=1e-6)
        assert torch.allclose(post['stoch'][:, t], onehot, atol=1e-6)
        state = dict(logit=logit, stoch=onehot, deter=deter)


def test_an_agent_with_categorical_latents_trains_and_acts():
    config = tools.make_config(['--configs', 'defaults', 'dmc2gym', 'debug', '--device', 'cpu', '--units', '32',
                                '--dyn_deter', '32', '--dyn_hidden', '32', '--dyn_stoch', '4', '--dyn_discrete', '8',
                                '--cnn_depth', '8', '--batch_size', '3', '--batch_length', '6'])
    torch.manual_seed(0)
    agent = agents.make_agent(config, 2)
    assert agent.wm.rssm.feat_size == 4 * 8 + 32
    rng = np.random.default_rng(0)
    batch = dict(image=rng.integers(0, 255, (3, 6, 64, 64, 3), dtype=np.uint8),
                 action=rng.uniform(-1, 1, (3, 6, 2)).astype(np.float32),
                 reward=rng.uniform(0, 1, (3, 6)).astype(np.float32), is_first=np.eye(1, 6, dtype=bool).repeat(3, 0))
    before = [p.detach().clone() for p in agent.wm.rssm.parameters()]
    metrics = agent.update(agent.training_batch(batch), 0)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(metrics['kl_value']) > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.wm.rssm.parameters()))
    obs = dict(image=batch['image'][:, 0], is_first=np.ones(3, bool))
    action, state = agent.policy(obs, None, training=True)
    assert tuple(action.shape) == (3, 2) and set(state[0]) == {'logit', 'stoch', 'deter'}


def test_weight_decay_step_is_official_dreamerv2s_lr_independent_decay():
    """--weight_decay_step w: every parameter times (1 - w), then the plain Adam step (official DreamerV2's order)."""
    w, lr = 1e-3, 5e-2           # large so that the decay is far above float round-off
    config = tools.make_config(['--configs', 'defaults', '--weight_decay_step', str(w), '--opt_eps', '1e-5',
                                '--grad_clip', '1e9'])
    torch.manual_seed(0)
    layer, plain, undecayed = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    plain.load_state_dict(layer.state_dict())
    undecayed.load_state_dict(layer.state_dict())
    opt = tools.Optimizer.for_config('m', layer.parameters(), lr, config)
    refs = [torch.optim.Adam(m.parameters(), lr=lr, eps=1e-5) for m in (plain, undecayed)]
    x = torch.randn(8, 4)
    for _ in range(3):
        opt.step(layer(x).pow(2).sum())
        with torch.no_grad():
            for p in plain.parameters():
                p.mul_(1 - w)
        for m, ref in zip((plain, undecayed), refs):
            ref.zero_grad()
            m(x).pow(2).sum().backward()
            ref.step()
    for a, b in zip(layer.parameters(), plain.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert (layer.weight - undecayed.weight).abs().max() > 1e-4      # the decay changed something
    with pytest.raises(tools.ConfigError, match='weight_decay_step'):
        tools.make_config(['--weight_decay', '1e-4', '--weight_decay_step', '1e-6'])


def test_opt_eps_keras_is_tensorflow_adams_update_written_out():
    """--opt_eps_keras True: p -= lr sqrt(1 - b2^t) / (1 - b1^t) m_t / (sqrt(v_t) + eps) on the raw moments, as
    TensorFlow's Adam (official DreamerV2's optimizer) steps, here with official DreamerV2's weight decay before it;
    gradients as small as eps, where the two placements of eps differ."""
    eps, lr, w, b1, b2 = 1e-5, 1e-3, 1e-3, 0.9, 0.999
    args = ['--configs', 'defaults', '--opt_eps', str(eps), '--grad_clip', '1e9', '--weight_decay_step', str(w)]
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    start = torch.nn.Linear(4, 3).state_dict()
    loss = lambda m: 1e-5 * m(x).pow(2).sum()        # gradients of order eps
    results = {}
    for keras in (False, True):
        layer = torch.nn.Linear(4, 3)
        layer.load_state_dict(start)
        config = tools.make_config(args + ['--opt_eps_keras', str(keras)])
        opt = tools.Optimizer.for_config('m', layer.parameters(), lr, config)
        for _ in range(5):
            opt.step(loss(layer))
        results[keras] = [p.detach().clone() for p in layer.parameters()]
    # The same five steps by hand, in float64.
    ref = torch.nn.Linear(4, 3).double()
    ref.load_state_dict({k: v.double() for k, v in start.items()})
    m = [torch.zeros_like(p) for p in ref.parameters()]
    v = [torch.zeros_like(p) for p in ref.parameters()]
    for t in range(1, 6):
        ref.zero_grad()
        (1e-5 * ref(x.double()).pow(2).sum()).backward()
        with torch.no_grad():
            for i, p in enumerate(ref.parameters()):
                p.mul_(1 - w)
                m[i] = b1 * m[i] + (1 - b1) * p.grad
                v[i] = b2 * v[i] + (1 - b2) * p.grad ** 2
                p.sub_(lr * (1 - b2 ** t) ** 0.5 / (1 - b1 ** t) * m[i] / (v[i].sqrt() + eps))
    for got, want in zip(results[True], ref.parameters()):
        assert torch.allclose(got.double(), want, atol=1e-7, rtol=0)
    moved = lambda params: sum(float((p - start[k]).abs().sum()) for p, k in zip(params, ('weight', 'bias')))
    assert moved(results[True]) < 0.5 * moved(results[False])     # early steps much smaller than torch's form


def test_actor_return_offset_one_is_official_dreamerv2s_actor_objective():
    """--actor_return_offset 1: -mean_t<H-1 w_t (R_{t+1} + eta H[pi(.|s_t)]) (official DreamerV2's final version);
    0 (the default): -mean_t<H w_t (R_t + eta H[pi(.|s_t)]). Both from one imagined rollout, written out by hand."""
    losses = {}
    for offset in (0, 1):
        config = tools.make_config(['--configs', 'defaults', 'dmc2gym', 'debug', '--device', 'cpu',
                                    '--actor_return_offset', str(offset), '--actor_entropy', '0.3'])
        torch.manual_seed(0)
        agent = models.Agent(config, 2)
        behavior = agent.behavior
        start = {k: v + torch.randn_like(v) for k, v in agent.wm.rssm.initial(6).items()}
        torch.manual_seed(1)
        got = behavior.losses(agent.wm, start, agent.reward_fn)[0]
        torch.manual_seed(1)
        feats, entropy = behavior.imagine(agent.wm, start, config.imag_horizon)      # s_0 .. s_H, H entropies
        H, gamma, lam = config.imag_horizon, config.discount, config.discount_lambda
        reward, value = agent.wm.reward(feats), behavior.slow_critic(feats)
        returns = [value[H]]                                                         # R_H = v(s_H)
        for t in reversed(range(H)):
            returns.insert(0, reward[t] + gamma * ((1 - lam) * value[t + 1] + lam * returns[0]))
        terms = [gamma ** t * (returns[t + offset] + 0.3 * entropy[t]) for t in range(H - offset)]
        want = -torch.stack(terms).mean()
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (offset, got, want)
        losses[offset] = got
    assert not torch.allclose(losses[0], losses[1], rtol=1e-3)     # the two objectives are different numbers
    with pytest.raises(tools.ConfigError, match='actor_return_offset'):
        tools.make_config(['--actor_return_offset', '2'])
    with pytest.raises(tools.ConfigError, match='release_compat'):
        tools.make_config(['--actor_return_offset', '1', '--release_compat', 'True'])
