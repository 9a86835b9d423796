"""Pretraining (stage 1) and the finetuning methods (DisWM, DV2 Finetune, APV) built on its checkpoints."""
import json
import os

import numpy as np
import pytest
import torch

import models
import networks
import replay as replay_lib
import tools
from helpers import load_script, random_batch, run_dreamer
from tools import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config(*argv, logdir='/tmp/unused'):
    return tools.make_config(['--configs', 'defaults', 'dmc2gym', 'debug', '--logdir', logdir, '--device', 'cpu',
                              *argv])


def make_checkpoint(directory, z_dim=20, seed=0):
    torch.manual_seed(seed)
    cfg = config('--beta_vae_pretrain', 'True', '--beta_vae', 'True', '--z_dim', str(z_dim))
    wm = models.WorldModel(cfg, cfg.pretrain_action_num, models.METHOD_SPECS['pretrain'])
    models.save_video_model(str(directory), wm, dict(z_dim=z_dim, pretrain_action_num=2))
    return wm


def method_config(method, ckpt, *extra):
    return config('--method_name', method, '--beta_vae', 'True', '--pretrain_checkpoint_path', str(ckpt),
                  '--source_action_num', '2', '--action_num_gap', '4', *extra)


def test_teacher_is_truly_frozen(tmp_path):
    make_checkpoint(tmp_path)
    agent = models.Agent(method_config('diswm', tmp_path), 6)
    distill = next(p for p in agent.wm.parts if isinstance(p, models.Distillation))
    teacher = distill.teacher
    saved = torch.load(tmp_path / 'encoder.pt')
    opt_params = {id(p) for group in agent.model_opt.opt.param_groups for p in group['params']}
    assert not any(id(p) in opt_params for p in teacher.parameters())
    student_before = [p.clone() for p in agent.wm.encoder.parameters()]
    for i in range(3):
        metrics = agent.update(random_batch(seed=i), step=100)
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, saved[name]), name             # bit-identical
    assert any(not torch.equal(a, b) for a, b in zip(student_before, agent.wm.encoder.parameters()))
    assert metrics['distill_loss'] > 0 and metrics['distill_eta'] == pytest.approx(0.1 * (1 - 100 / 5e4))
    # the student starts from scratch, not from the teacher's weights
    assert not torch.equal(agent.wm.encoder.head.weight, saved['head.weight'])


def test_release_compat_trains_teacher_and_freezes_eta(tmp_path):
    make_checkpoint(tmp_path)
    agent = models.Agent(method_config('diswm', tmp_path, '--release_compat', 'True'), 6, step=2500)
    teacher = next(p for p in agent.wm.parts if isinstance(p, models.Distillation)).teacher
    saved = torch.load(tmp_path / 'encoder.pt')
    metrics = agent.update(random_batch(), step=40_000)
    assert metrics['distill_eta'] == pytest.approx(0.1 * (1 - 2500 / 5e4))   # frozen at construction
    assert any(not torch.equal(v, saved[k]) for k, v in teacher.state_dict().items())
    # a fresh run builds its agent at step 0, before the prefill; the release builds it after: eta at the prefill
    fresh = models.Agent(method_config('diswm', tmp_path, '--release_compat', 'True', '--prefill', '2500'), 6, step=0)
    assert fresh.update(random_batch(), step=10)['distill_eta'] == pytest.approx(0.1 * (1 - 2500 / 5e4))


def test_dv2_finetune_loads_and_pads_actions(tmp_path):
    video = make_checkpoint(tmp_path)
    agent = models.Agent(method_config('dv2_finetune', tmp_path), 5)    # union 2 + 4 = 6 > 5 target actions
    assert torch.equal(agent.wm.encoder.head.weight, video.encoder.head.weight)
    assert torch.equal(agent.wm.decoder.deconvs[-1].weight, video.decoder.deconvs[-1].weight)
    weight = agent.wm.rssm.img_in[0].weight
    stoch = agent.config.dyn_stoch
    assert weight.shape[1] == stoch + 6
    assert torch.equal(weight[:, :stoch + 2], video.rssm.img_in[0].weight)
    assert torch.count_nonzero(weight[:, stoch + 2:]) == 0           # new action columns start at zero
    metrics = agent.update(random_batch(A=5), step=0)
    assert torch.isfinite(metrics['model_loss'])
    with pytest.raises(ConfigError, match='action_num_gap to 5'):
        models.Agent(method_config('dv2_finetune', tmp_path), 7)


def test_apv_stacks_video_model_and_adds_bonus(tmp_path):
    video = make_checkpoint(tmp_path)
    agent = models.Agent(method_config('apv', tmp_path, '--queue_size', '64', '--intr_k', '2'), 6)
    assert torch.equal(agent.wm.video_rssm.img_in[0].weight, video.rssm.img_in[0].weight)
    for i in range(2):
        metrics = agent.update(random_batch(seed=i), step=0)
    assert {'video_kl_loss', 'intr_reward'} <= set(metrics) and metrics['intr_reward'] > 0


def reference_bonus(video_feat, projection, queue, filled, magnitude, k, seq_length):
    """APV's bonus the slow, obvious way (numpy float64): window means, projection, push into the front of the FIFO
    queue, every distance, sort, mean of the k smallest, running magnitude (0.99, 0.01), divide by it + 1e-8.
    Returns (bonus (B, T - S + 1), new queue, new filled, new magnitude)."""
    feat, proj = np.asarray(video_feat, np.float64), np.asarray(projection, np.float64)
    batch, length, _ = feat.shape
    steps = length - seq_length + 1
    keys = [feat[b, i:i + seq_length].mean(0) @ proj for b in range(batch) for i in range(steps)]
    size = len(queue)
    new_queue = np.concatenate([np.array(keys), np.asarray(queue, np.float64)], 0)[:size]
    new_filled = min(filled + len(keys), size)
    raw = []
    for key in keys:
        dists = sorted(float(np.sqrt(((key - entry) ** 2).sum())) for entry in new_queue[:new_filled])
        raw.append(np.mean(dists[:min(k, new_filled)]))
    raw = np.array(raw)
    new_magnitude = 0.99 * float(magnitude) + 0.01 * np.abs(raw).mean()
    return (raw / (new_magnitude + 1e-8)).reshape(batch, steps), new_queue, new_filled, new_magnitude


def test_intrinsic_bonus_matches_slow_reference():
    """APV's bonus on a small example (queue of 8, k = 3, windows of 2 steps) equals the slow computation, update
    after update: k is capped by the filled queue, the queue overflows FIFO, the magnitude starts at 1."""
    cfg = config('--queue_size', '8', '--queue_dim', '4', '--intr_k', '3', '--intr_seq_length', '2')
    bonus = models.VideoIntrinsicBonus(5, cfg)
    assert not list(bonus.parameters())                               # projection, queue, magnitude: buffers only
    assert np.allclose(bonus.projection.std().item(), 1 / 4, rtol=0.5)   # N(0, (1/queue_dim)^2)
    gen = torch.Generator().manual_seed(0)
    queue, filled, magnitude = np.zeros((8, 4)), 0, 1.0
    for shape in [(1, 2, 5), (2, 3, 5), (2, 4, 5), (1, 6, 5)]:      # 1 key (k -> 1), 4, 6 (overflow), 5 keys
        feat = torch.randn(*shape, generator=gen)
        expected, queue, filled, magnitude = reference_bonus(feat.numpy(), bonus.projection.numpy(), queue, filled,
                                                             magnitude, 3, 2)
        out = bonus(feat)
        assert out.shape == expected.shape and out.dtype == torch.float32
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(bonus.queue.numpy(), queue, rtol=1e-12, atol=1e-12)
        assert bonus.filled == filled and bonus.magnitude.item() == pytest.approx(magnitude, rel=1e-12)
    assert filled == 8 and magnitude != 1.0
    # its state (queue, fill count, magnitude) survives a state_dict round trip
    fresh = models.VideoIntrinsicBonus(5, cfg, seed=1)
    fresh.load_state_dict(bonus.state_dict())
    assert fresh.filled == 8 and torch.equal(fresh.queue, bonus.queue)
    assert torch.equal(fresh.projection, bonus.projection) and torch.equal(fresh.magnitude, bonus.magnitude)
    with pytest.raises(ConfigError, match='intr_seq_length 5'):
        models.VideoIntrinsicBonus(5, config('--intr_seq_length', '5', '--batch_length', '4'))


def test_apv_reward_head_target_includes_bonus(tmp_path):
    """APV's reward loss is the NLL of the reward head on the first T - S + 1 real steps against reward + beta *
    bonus, the bonus measured on the video model's features; the target has no gradient path (video model, queue),
    and the imagined rewards are the reward head's alone."""
    make_checkpoint(tmp_path)
    agent = models.Agent(method_config('apv', tmp_path, '--queue_size', '32', '--intr_k', '3', '--intr_beta', '0.5',
                                       '--intr_seq_length', '3'), 6)
    wm, bonus = agent.wm, agent.wm.intrinsic
    agent.update(random_batch(seed=5), step=0)                       # a queue that is not empty
    before = dict(queue=bonus.queue.numpy().copy(), filled=bonus.filled, magnitude=bonus.magnitude.item())
    data = agent.to_torch(random_batch(B=2, T=8, seed=6))
    wm.requires_grad_(True)
    torch.manual_seed(0)
    _, out, metrics = wm.loss(data, 0)
    video_feat = out['video_feat']
    assert video_feat.requires_grad and not out['reward_target'].requires_grad
    expected, *_ = reference_bonus(video_feat.detach().numpy(), bonus.projection.numpy(), before['queue'],
                                   before['filled'], before['magnitude'], 3, 3)
    assert expected.shape == (2, 6)                                   # T - S + 1 steps
    target = data['reward'][:, :6] + 0.5 * torch.as_tensor(expected, dtype=torch.float32)
    torch.testing.assert_close(out['reward_target'], target, rtol=1e-6, atol=1e-6)
    by_hand = tools.gaussian_nll(wm.reward(out['feat'][:, :6]), target, 0).mean()
    assert metrics['reward_loss'].item() == pytest.approx(by_hand.item(), rel=1e-6)
    extrinsic_only = tools.gaussian_nll(wm.reward(out['feat'][:, :6]), data['reward'][:, :6], 0).mean()
    assert abs(by_hand.item() - extrinsic_only.item()) > 1e-3
    assert metrics['intr_reward'].item() == pytest.approx(expected.mean(), rel=1e-6)
    # no gradient path from the bonus into the video model (or the queue): the bonus of features that require
    # gradients is a constant, and the bonus holds no parameters and sits in no optimizer
    probe = bonus(video_feat)
    assert video_feat.requires_grad and probe.grad_fn is None and not probe.requires_grad
    wm.requires_grad_(False)
    opt_params = {id(p) for group in agent.model_opt.opt.param_groups for p in group['params']}
    assert not list(bonus.parameters()) and not any(id(b) in opt_params for b in bonus.buffers())
    # imagination: the reward head alone (the bonus is inside it)
    feats = torch.randn(4, 3, wm.rssm.feat_size)
    assert torch.equal(agent.reward_fn(feats), wm.reward(feats[:-1]))


def test_apv_bonus_statistics_update_once_per_update(tmp_path, monkeypatch):
    """The queue and the running magnitude change once per update, in the world-model loss; logging, acting and
    open-loop predictions leave them alone."""
    make_checkpoint(tmp_path)
    agent = models.Agent(method_config('apv', tmp_path, '--queue_size', '64', '--intr_k', '2'), 6)
    bonus = agent.wm.intrinsic
    calls = []
    original = models.VideoIntrinsicBonus.update_magnitude
    monkeypatch.setattr(models.VideoIntrinsicBonus, 'update_magnitude',
                        lambda self, raw: (calls.append(raw.clone()), original(self, raw))[1])
    S = agent.config.intr_seq_length
    for i in range(3):
        magnitude = bonus.magnitude.item()
        metrics = agent.update(random_batch(B=2, T=8, seed=i), step=0)
        assert len(calls) == i + 1 and bonus.filled == min(64, (i + 1) * 2 * (8 - S + 1))
        assert bonus.magnitude.item() == pytest.approx(0.99 * magnitude + 0.01 * calls[-1].abs().mean().item())
        assert {'intr_reward', 'intr_magnitude'} <= set(metrics)
        {k: float(v) for k, v in metrics.items()}                    # what the logger does
    state = {k: v.clone() for k, v in bonus.state_dict().items() if torch.is_tensor(v)}
    batch = random_batch(B=2, T=8, seed=9)
    agent.policy({'image': batch['image'][:, 0], 'is_first': batch['is_first'][:, 0]}, None, training=True)
    agent.wm.open_loop(agent.to_torch(batch))
    assert len(calls) == 3
    assert all(torch.equal(v, bonus.state_dict()[k]) for k, v in state.items())


def test_checkpoint_shape_mismatch_names_both_sizes(tmp_path):
    make_checkpoint(tmp_path, z_dim=10)
    with pytest.raises(ConfigError, match='z_dim 10.*z_dim 20'):
        models.Agent(method_config('diswm', tmp_path), 6)
    with pytest.raises(ConfigError, match='not found'):
        models.Agent(method_config('diswm', tmp_path / 'missing'), 6)
    with pytest.raises(ConfigError, match='--beta_vae True'):
        models.Agent(config('--method_name', 'diswm'), 6)


def moving_square_dataset(directory, episodes=4, length=24):
    """Tiny learnable videos: a coloured square moving across a plain background (scripts/same_numbers.py's)."""
    load_script('same_numbers').write_videos(directory, episodes, length)


def test_pretraining_loss_goes_down(tmp_path):
    moving_square_dataset(tmp_path)
    torch.manual_seed(0)
    cfg = config('--beta_vae_pretrain', 'True', '--beta_vae', 'True')
    wm = models.WorldModel(cfg, 2, models.METHOD_SPECS['pretrain'])
    opt = tools.Optimizer('m', wm.parameters(), 1e-3, 1e-5, 100)
    episodes, _ = replay_lib.load_video_dataset(str(tmp_path), min_length=16)
    buffer = replay_lib.Replay(seed=0)
    for ep in episodes:
        buffer.add_episode(ep)
    losses = []
    for _ in range(40):
        batch = buffer.sample(4, 16)
        data = {'image': torch.as_tensor(batch['image']), 'is_first': torch.as_tensor(batch['is_first']).float()}
        loss, _, metrics = wm.loss(data, 0)
        opt.step(loss)
        losses.append(metrics['image_loss'].item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 50


def run(args, timeout=300):
    return run_dreamer(args, timeout)


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp('pretrain')
    moving_square_dataset(root / 'videos' / 'nested')
    (root / 'videos' / 'corrupt-0-1.npz').write_bytes(b'broken')
    logdir = root / 'run'
    args = ['--configs', 'defaults', 'dmc2gym', '--task', 'dmc2gym_reacher_easy', '--logdir', str(logdir), '--seed',
            '0', '--beta_vae_pretrain', 'True', '--beta_vae', 'True', '--pretrain_action_num', '2',
            '--pretrain_datasets_path', str(root / 'videos'), '--batch_size', '4', '--batch_length', '16',
            '--pretrain_save_every', '5', '--progress', 'False', '--threads', '1']
    first = run(args + ['--pretrain_steps', '40'])                 # 40 sequences / batch 4 = 10 updates
    second = run(args + ['--pretrain_steps', '60'])                # resumes at update 10, stops at 15
    return logdir, first, second


def test_pretraining_run_writes_loadable_checkpoints(pretrained):
    logdir, first, second = pretrained
    assert 'for 10 updates' in first.stdout and 'Skipped 1 unreadable' in first.stdout
    assert 'Resuming pretraining' in second.stdout and 'at update 10' in second.stdout
    for directory in (logdir, logdir / 'checkpoints' / '15', logdir / 'checkpoints' / '5'):
        for name in ('encoder.pt', 'decoder.pt', 'rssm.pt', 'meta.json', 'traverse.png'):
            assert (directory / name).exists(), directory / name
    meta = json.loads((logdir / 'meta.json').read_text())
    assert meta['z_dim'] == 20 and meta['updates'] == 15 and meta['pretrain_action_num'] == 2
    # the files load into fresh modules that give identical outputs
    encoder, fresh = networks.BetaVAEEncoder(20), networks.BetaVAEEncoder(20)
    encoder.load_state_dict(torch.load(logdir / 'encoder.pt'))
    fresh.load_state_dict(torch.load(logdir / 'checkpoints' / '15' / 'encoder.pt'))
    image = torch.rand(1, 2, 64, 64, 3) - 0.5
    assert torch.equal(encoder(image, sample=False)['mean'], fresh(image, sample=False)['mean'])
    rows = [json.loads(line) for line in open(logdir / 'metrics.jsonl')]
    assert any('beta_vae_kl_loss' in r and 'image_loss' in r and 'beta_vae_kl_dim/00' in r for r in rows)
    import imageio.v2 as imageio
    assert imageio.imread(logdir / 'traverse.png').shape == (20 * 64, 7 * 64, 3)


@pytest.mark.parametrize('method,terms', [('diswm', {'distill_loss', 'distill_eta', 'beta_vae_kl_loss'}),
                                          ('dv2_finetune', {'beta_vae_kl_loss'}),
                                          ('apv', {'intr_reward', 'video_kl_loss'})])
def test_methods_run_from_pretrained_checkpoint(pretrained, tmp_path, method, terms):
    logdir = tmp_path / method
    args = ['--device', 'cpu', '--task', 'dmc2gym_cheetah_run', '--logdir', str(logdir), '--pretrain_checkpoint_path',
            str(pretrained[0]), '--seed', '0', '--configs', 'defaults', 'dmc2gym', 'debug', '--traverse', 'True',
            '--beta_vae', 'True', '--method_name', method, '--cross_domain', 'False', '--source_action_num', '2',
            '--action_num_gap', '4', '--color_distractor', 'True', '--steps', '300', '--prefill', '60',
            '--time_limit', '60', '--eval_every', '300', '--eval_episodes', '1', '--batch_length', '8',
            '--progress', 'False', '--threads', '1', '--distill_decay', '100']
    if method == 'diswm':
        args += ['--distillation', 'True']
    run(args)
    rows = [json.loads(line) for line in open(logdir / 'metrics.jsonl')]
    keys = set().union(*rows)
    assert terms | {'train_return', 'eval_return', 'model_loss'} <= keys
    assert list((logdir / 'traversals').glob('*.png'))
    if method == 'diswm':
        etas = [r['distill_eta'] for r in rows if 'distill_eta' in r]
        assert etas[-1] < etas[0]                                # eta follows the advancing agent step


def test_release_compat_first_action_horizon_and_unclipped_imagination(monkeypatch):
    """The three release behaviours of the online update under --release_compat: (1) the first step of a sequence
    that does not start an episode sees its stored action (zero state either way); (2) imag_horizon H imagines
    H - 1 steps (H states, H - 1 targets); (3) imagined actions are raw Normal samples, not clipped to [-1, 1]."""
    torch.manual_seed(0)
    rssm = networks.RSSM(action_size=2, embed_size=8)
    embed, action = torch.randn(4, 3, 8), torch.randn(4, 3, 2)
    first = torch.zeros(4, 3)
    _, prior_released = rssm.observe(embed, action, first, sample=False)
    _, prior_zeroed = rssm.observe(embed, action, first.index_fill(1, torch.tensor([0]), 1.0), sample=False)
    _, prior_zero_action = rssm.observe(embed, action.index_fill(1, torch.tensor([0]), 0.0), first, sample=False)
    assert not torch.allclose(prior_released['mean'][:, 0], prior_zeroed['mean'][:, 0])
    assert torch.allclose(prior_zeroed['mean'], prior_zero_action['mean'], atol=1e-6)

    for compat, horizon, outside in ((False, 15, False), (True, 14, True)):
        cfg = config('--release_compat', str(compat), '--imag_horizon', '15')
        torch.manual_seed(0)
        agent = models.Agent(cfg, 2)
        seen = {}
        original = agent.behavior.imagine

        def imagine(wm, start, h, ctx=None):
            seen['horizon'] = h
            dist = agent.behavior.actor(wm.rssm.feat({k: v.reshape(-1, v.shape[-1]) for k, v in start.items()}))
            seen['action'] = dist.rsample()
            return original(wm, start, h, ctx)

        monkeypatch.setattr(agent.behavior, 'imagine', imagine)
        agent.update(random_batch(A=2), step=0)
        assert seen['horizon'] == horizon
        assert bool((seen['action'].abs() > 1).any()) == outside
    with pytest.raises(ConfigError, match='imag_horizon must be >= 2'):
        config('--release_compat', 'True', '--imag_horizon', '1')
