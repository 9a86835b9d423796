"""scripts/diagnose.py: the reward and value checks of a trained agent, against slow obvious computations."""
import os

import numpy as np
import pytest
import torch

import agents
import tools
from helpers import load_script

diagnose = load_script('diagnose')


def test_discounted_returns_and_bins():
    rng = np.random.default_rng(0)
    reward = rng.uniform(0, 2, 30)
    slow = [sum(0.9 ** k * reward[t + k] for k in range(30 - t)) for t in range(30)]
    assert np.allclose(diagnose.discounted_returns(reward, 0.9), slow)
    true = np.array([0.1, 0.2, 0.3, 1.2, 2.0])
    pred = np.array([0.0, 0.4, 0.3, 1.0, 1.8])
    assert diagnose.binned(true, pred) == [(0.0, 0.25, 2, 0.15000000000000002, 0.2), (0.25, 0.5, 1, 0.3, 0.3),
                                           (1.0, 1.5, 1, 1.2, 1.0), (1.5, 2.0, 1, 2.0, 1.8)]


def test_diagnose_matches_a_direct_computation():
    torch.manual_seed(0)
    config = tools.make_config(['--configs', 'defaults', 'dmc2gym', 'debug', '--device', 'cpu', '--units', '32',
                                '--dyn_deter', '32', '--dyn_hidden', '32', '--dyn_stoch', '8', '--cnn_depth', '8',
                                '--discount', '0.5'])     # a 5-step tail: the value check covers most steps
    agent = agents.make_agent(config, 2).eval()
    rng = np.random.default_rng(1)
    length, window = 40, 20
    episodes = [dict(image=rng.integers(0, 255, (length, 64, 64, 3), dtype=np.uint8),
                     action=rng.uniform(-1, 1, (length, 2)).astype(np.float32),
                     reward=rng.uniform(0, 2, length).astype(np.float32), is_first=np.eye(1, length, dtype=bool)[0])
                for _ in range(2)]
    result = diagnose.diagnose(agent, episodes, window, horizons=[1, 5], context=4)
    assert result['steps'] == 2 * 2 * (window - 1)
    errors, values, returns = [], [], []
    tail = int(np.ceil(np.log(0.05) / np.log(config.discount)))
    with torch.no_grad():
        for ep in episodes:
            realized = diagnose.discounted_returns(ep['reward'].astype(np.float64), config.discount)
            for start in (0, window):
                data = {k: torch.as_tensor(ep[k][start:start + window][None]) for k in ('image', 'action', 'reward')}
                data = dict(image=data['image'], action=data['action'].float(), reward=data['reward'].float(),
                            is_first=torch.zeros(1, window).index_fill_(1, torch.tensor([0]), 1.0))
                feat = agent.wm.rssm.feat(agent.wm.observe(data, sample=False)['post'])
                for t in range(1, window):
                    errors.append(abs(float(agent.wm.reward(feat)[0, t]) - float(ep['reward'][start + t])))
                    if start + t + tail <= length:
                        values.append(float(agent.behavior.critic(feat)[0, t]))
                        returns.append(realized[start + t])
    assert np.isclose(result['reward_mae'], np.mean(errors), rtol=1e-5)
    assert result['value_steps'] == len(values) == 2 * (19 + 15)    # steps 1-19 and 21-35 have a 5-step tail
    assert np.isclose(result['value_mean'], np.mean(values), rtol=1e-5)
    assert np.isclose(result['return_mean'], np.mean(returns)) and np.isfinite(result['value_corr'])
    assert set(result['open_loop']) == {1, 5} and all(e >= 0 for e in result['open_loop'].values())
    text = diagnose.report(result)
    assert 'mean abs error' in text and 'open-loop reward error by steps ahead: 1:' in text


def tiny_agent_and_batch(*argv):
    torch.manual_seed(0)
    config = tools.make_config(['--configs', 'defaults', 'dmc2gym', 'debug', '--device', 'cpu', '--units', '32',
                                '--dyn_deter', '32', '--dyn_hidden', '32', '--dyn_stoch', '8', '--cnn_depth', '8',
                                '--imag_horizon', '4', *argv])
    agent = agents.make_agent(config, 2).eval()
    rng = np.random.default_rng(2)
    episodes = [dict(image=rng.integers(0, 255, (30, 64, 64, 3), dtype=np.uint8),
                     action=rng.uniform(-1, 1, (30, 2)).astype(np.float32),
                     reward=rng.uniform(0, 2, 30).astype(np.float32), is_first=np.eye(1, 30, dtype=bool)[0])
                for _ in range(2)]
    data = diagnose.training_batch(agent, episodes, 3, 10)
    assert data['image'].shape == (3, 10, 64, 64, 3) and bool(data['is_first'][:, 0].all())
    return agent, data


def test_update_gradients_are_those_of_an_update():
    """fp32 gradients per part equal a direct autograd computation of the world-model loss and, from its posterior
    states, the actor and critic losses, with the same seed; nothing is left requiring gradients."""
    agent, data = tiny_agent_and_batch()
    grads = diagnose.update_gradients(agent, data, '32', seed=5)
    assert set(grads) == set(diagnose.GRADIENT_PARTS)
    for p in agent.parameters():
        p.requires_grad_(True)
    torch.manual_seed(5)
    loss, out, _ = agent.wm.loss(data, 0)
    reward_params = list(agent.wm.reward.parameters())
    direct_reward = torch.cat([g.flatten() for g in torch.autograd.grad(loss, reward_params, retain_graph=True)])
    start = {k: v.detach() for k, v in out['post'].items()}
    actor_loss, critic_loss, _ = agent.behavior.losses(agent.wm, start, agent.reward_fn)
    actor_params = list(agent.behavior.actor.parameters())
    direct_actor = torch.cat([g.flatten() for g in torch.autograd.grad(actor_loss, actor_params, retain_graph=True)])
    critic_params = list(agent.behavior.critic.parameters())
    direct_critic = torch.cat([g.flatten() for g in torch.autograd.grad(critic_loss, critic_params)])
    agent.requires_grad_(False)
    assert torch.allclose(grads['reward'], direct_reward, rtol=1e-5, atol=1e-7)
    assert torch.allclose(grads['actor'], direct_actor, rtol=1e-5, atol=1e-7)
    assert torch.allclose(grads['critic'], direct_critic, rtol=1e-5, atol=1e-7)
    assert grads['encoder'].numel() == sum(p.numel() for p in agent.wm.encoder.parameters())
    diagnose.update_gradients(agent, data, 'bf16', seed=5)
    assert not any(p.requires_grad for p in agent.parameters())


def test_gradient_agreement_fp32_with_itself_and_bf16():
    """fp32 against fp32: the same gradients (cosine 1, equal norms), different seeds: not the same; bf16 autocast:
    the same direction broadly but not equal. The report names every part."""
    agent, data = tiny_agent_and_batch()
    same = diagnose.gradient_agreement(agent, data, '32', seeds=(0, 1))
    for part, r in same.items():
        assert abs(r['cos_same_seed'] - 1) < 1e-6 and np.isclose(r['norm_fp32'], r['norm_low'], rtol=1e-6), part
    assert same['actor']['cos_fp32_seeds'] < 0.9999          # another seed samples other latents and actions
    low = diagnose.gradient_agreement(agent, data, 'bf16', seeds=(0, 1))
    assert all(r['cos_same_seed'] > 0.5 for r in low.values()), low      # an untrained net's gradients: noisy
    assert any(r['cos_same_seed'] < 1 - 1e-6 for r in low.values()), low   # but bf16 rounding does change them
    text = diagnose.gradient_report(low, 'bf16')
    assert all(f'  {part}: ' in text for part in diagnose.GRADIENT_PARTS)


def test_gradient_terms_sum_to_each_part_and_reach_only_their_parts():
    """--terms: each world-model loss term's share of a part; the shares of a part sum to the part's gradient, the
    reward term does not reach the decoder nor the image term the reward head, and the actor and critic have none.
    (No free nats: an untrained model's KL lies below them, where its gradient is zero.)"""
    agent, data = tiny_agent_and_batch('--kl_free', '0')
    grads = diagnose.update_gradients(agent, data, '32', seed=3, terms=True)
    assert {'encoder/image', 'encoder/kl', 'encoder/reward', 'decoder/image', 'reward/reward'} <= set(grads)
    assert 'decoder/reward' not in grads and 'reward/image' not in grads and 'decoder/kl' not in grads
    assert not any(k.startswith(('actor/', 'critic/')) for k in grads)
    for part in diagnose.GRADIENT_PARTS[:4]:
        shares = [g for k, g in grads.items() if k.startswith(part + '/')]
        assert torch.allclose(sum(shares), grads[part], rtol=1e-4, atol=1e-6), part
    result = diagnose.gradient_agreement(agent, data, 'bf16', seeds=(0, 1), terms=True)
    assert 'encoder/kl' in result and 'encoder/kl' in diagnose.gradient_report(result, 'bf16')


def test_diagnose_rebuilds_the_agent_eager_on_the_cpu(monkeypatch, capsys):
    """A run trained with --compile True (or on a GPU) is diagnosed with eager networks on the CPU."""
    seen = {}

    def fake_load(path, overrides=None, state=None):
        seen.update(path=path, overrides=dict(overrides))
        raise tools.ConfigError('stop here')

    monkeypatch.setattr(agents, 'load_agent', fake_load)
    monkeypatch.setattr(agents, 'checkpoint_file', lambda path: path + '/checkpoint.pt')
    monkeypatch.setattr(agents, 'read_checkpoint', lambda path: {'counters': {}})
    assert diagnose.main(['some/run', '--gradients', 'bf16']) == 2
    assert seen == {'path': 'some/run', 'overrides': {'device': 'cpu', 'compile': False}}
    assert 'stop here' in capsys.readouterr().err


def test_imagination_check_matches_a_slow_computation(monkeypatch):
    """Per-episode imagination check: with a deterministic imagination (mean actions, prior means) it equals a loop
    over every start state, one at a time, with the lambda-return written out as its recursion."""
    config = tools.make_config(['--configs', 'defaults', 'dmc2gym', 'debug', '--device', 'cpu', '--units', '32',
                                '--dyn_deter', '32', '--dyn_hidden', '32', '--dyn_stoch', '8', '--cnn_depth', '8',
                                '--imag_horizon', '3', '--discount', '0.75'])
    torch.manual_seed(0)
    agent = agents.make_agent(config, 2).eval()
    wm, behavior = agent.wm, agent.behavior

    def imagine(wm, start, horizon, ctx=None):      # deterministic: what the check does with the rollouts is tested
        state = {k: v.reshape(-1, v.shape[-1]) for k, v in start.items()}
        feats = [wm.rssm.feat(state)]
        for _ in range(horizon):
            state = wm.rssm.img_step(state, wm.pad_action(behavior.actor(feats[-1]).mean), sample=False)
            feats.append(wm.rssm.feat(state))
        return torch.stack(feats, 0), None

    monkeypatch.setattr(behavior, 'imagine', imagine)
    rng = np.random.default_rng(3)
    length, window, stride, horizon = 60, 30, 10, 3
    episodes = [dict(image=rng.integers(0, 255, (length, 64, 64, 3), dtype=np.uint8),
                     action=rng.uniform(-1, 1, (length, 2)).astype(np.float32),
                     reward=rng.uniform(0, 2, length).astype(np.float32), is_first=np.eye(1, length, dtype=bool)[0])
                for _ in range(2)]
    rows = diagnose.imagination_check(agent, episodes, window, stride)
    tail = int(np.ceil(np.log(0.05) / np.log(config.discount)))            # 11 steps
    with torch.no_grad():
        for ep, row in zip(episodes, rows):
            realized_all = diagnose.discounted_returns(ep['reward'].astype(np.float64), config.discount)
            predicted, imagined, replayed, followed, lam, value, realized = [], [], [], [], [], [], []
            for start in (0, window):
                data = {k: torch.as_tensor(ep[k][start:start + window][None]) for k in ('image', 'action', 'reward')}
                data = dict(image=data['image'], action=data['action'].float(), reward=data['reward'].float(),
                            is_first=torch.zeros(1, window).index_fill_(1, torch.tensor([0]), 1.0))
                post = wm.observe(data, sample=False)['post']
                predicted += [float(r) for r in wm.reward(wm.rssm.feat(post))[0, 1:]]
                for i in (10, 20):                           # steps 10 .. window - horizon, every 10th
                    feats, _ = imagine(wm, {k: v[0, i:i + 1] for k, v in post.items()}, horizon)
                    r = [float(wm.reward(feats[t])[0]) for t in range(horizon)]
                    v_next = [float(behavior.slow_critic(feats[t])[0]) for t in range(1, horizon + 1)]
                    g = r[-1] + config.discount * v_next[-1]
                    for t in range(horizon - 2, -1, -1):
                        g = r[t] + config.discount * ((1 - config.discount_lambda) * v_next[t]
                                                      + config.discount_lambda * g)
                    imagined.append(np.mean(r))
                    state, r = {k: v[0, i:i + 1] for k, v in post.items()}, []
                    for j in range(horizon):                 # the episode's own actions, prior means
                        r.append(float(wm.reward(wm.rssm.feat(state))[0]))
                        state = wm.rssm.img_step(state, wm.pad_action(data['action'][:, i + j + 1]), sample=False)
                    replayed.append(np.mean(r))
                    followed.append(ep['reward'][start + i:start + i + horizon].mean())
                    if start + i + tail <= length:
                        lam.append(g)
                        value.append(float(behavior.critic(feats[0])[0]))
                        realized.append(realized_all[start + i])
            assert len(lam) == 3                             # starts 10, 20, 40 have an 11-step tail; 50 has not
            assert np.isclose(row['ret'], ep['reward'].sum(), rtol=1e-6)
            assert np.isclose(row['reward'], ep['reward'][1:].mean(), rtol=1e-6)
            for key, slow in (('predicted', predicted), ('imagined', imagined), ('replayed', replayed),
                              ('followed', followed),
                              ('lambda_return', lam), ('value', value), ('realized', realized)):
                assert np.isclose(row[key], np.mean(slow), rtol=1e-4, atol=1e-6), key
    text = diagnose.imagination_report(rows, horizon)
    assert len(text.splitlines()) == 2 + len(episodes) and 'lambda-return' in text
    # an episode too short for any realized return (20 steps, an 11-step tail from step 10): no values, said so
    short = diagnose.imagination_check(agent, [{k: v[:20] for k, v in episodes[0].items()}], 20, stride)
    assert np.isnan(short[0]['realized']) and np.isfinite(short[0]['imagined'])
    assert 'no visited state with enough of the episode left' in diagnose.imagination_report(short, horizon)


def test_imagination_frames_put_the_episode_above_its_imagined_rollouts():
    config = tools.make_config(['--configs', 'defaults', 'dmc2gym', 'debug', '--device', 'cpu', '--units', '32',
                                '--dyn_deter', '32', '--dyn_hidden', '32', '--dyn_stoch', '8', '--cnn_depth', '8'])
    torch.manual_seed(0)
    agent = agents.make_agent(config, 2).eval()
    rng = np.random.default_rng(4)
    length = 40
    episode = dict(image=rng.integers(0, 255, (length, 64, 64, 3), dtype=np.uint8),
                   action=rng.uniform(-1, 1, (length, 2)).astype(np.float32),
                   reward=rng.uniform(0, 2, length).astype(np.float32), is_first=np.eye(1, length, dtype=bool)[0])
    image = diagnose.imagination_frames(agent, episode, start=12, horizon=10, samples=3, every=5, context=4)
    assert image.shape == (4 * 64, 3 * 64, 3) and image.dtype == np.uint8       # steps 12, 17, 22; 1 + 3 rows
    assert np.array_equal(image[:64], np.concatenate([episode['image'][t] for t in (12, 17, 22)], 1))
    torch.manual_seed(1)
    with torch.no_grad():                    # the first imagined column decodes the posterior state at step 12
        data = {k: torch.as_tensor(episode[k][8:13][None]) for k in ('image', 'action', 'reward')}
        data = dict(image=data['image'], action=data['action'].float(), reward=data['reward'].float(),
                    is_first=torch.tensor([[1.0, 0, 0, 0, 0]]))
        post = agent.wm.observe(data, sample=False)['post']
        frame = (agent.wm.decoder(agent.wm.rssm.feat({k: v[:, -1] for k, v in post.items()})) + 0.5).clamp(0, 1)
    expected = (frame[0].numpy() * 255).round().astype(np.uint8)
    for row in (1, 2, 3):
        assert np.abs(image[row * 64:(row + 1) * 64, :64].astype(int) - expected).max() <= 1


def test_imagination_variants_match_the_open_loop_check_and_a_slow_closed_loop():
    """--imagine_variants: the episode's actions at latent modes are imagination_check's `replayed`; the actor's mean
    action at latent modes equals a loop over each start state; the sampled variants are seeded."""
    config = tools.make_config(['--configs', 'defaults', 'dmc2gym', 'debug', '--device', 'cpu', '--units', '32',
                                '--dyn_deter', '32', '--dyn_hidden', '32', '--dyn_stoch', '8', '--cnn_depth', '8',
                                '--imag_horizon', '3'])
    torch.manual_seed(0)
    agent = agents.make_agent(config, 2).eval()
    wm, behavior = agent.wm, agent.behavior
    rng = np.random.default_rng(4)
    length, window, horizon = 60, 30, 3
    episodes = [dict(image=rng.integers(0, 255, (length, 64, 64, 3), dtype=np.uint8),
                     action=rng.uniform(-1, 1, (length, 2)).astype(np.float32),
                     reward=rng.uniform(0, 2, length).astype(np.float32), is_first=np.eye(1, length, dtype=bool)[0])
                for _ in range(2)]
    rows = diagnose.imagination_variants(agent, episodes, window)
    checked = diagnose.imagination_check(agent, episodes, window)
    with torch.no_grad():
        for ep, row, check in zip(episodes, rows, checked):
            assert np.isclose(row['episode_mode'], check['replayed'], rtol=1e-5)
            assert np.isclose(row['followed'], check['followed'], rtol=1e-6)
            slow = []
            for start in (0, window):
                data = {k: torch.as_tensor(ep[k][start:start + window][None]) for k in ('image', 'action', 'reward')}
                data = dict(image=data['image'], action=data['action'].float(), reward=data['reward'].float(),
                            is_first=torch.zeros(1, window).index_fill_(1, torch.tensor([0]), 1.0))
                post = wm.observe(data, sample=False)['post']
                for i in (10, 20):
                    state = {k: v[0, i:i + 1] for k, v in post.items()}
                    r = []
                    for _ in range(horizon):
                        feat = wm.rssm.feat(state)
                        r.append(float(wm.reward(feat)[0]))
                        state = wm.rssm.img_step(state, behavior.actor(feat).mode(), sample=False)
                    slow.append(np.mean(r))
            assert np.isclose(row['actor_mean_mode'], np.mean(slow), rtol=1e-4, atol=1e-6)
            assert all(np.isfinite(row[name]) for name, _, _ in diagnose.VARIANTS)
    assert diagnose.imagination_variants(agent, episodes, window) == rows          # seeded
    text = diagnose.variants_report(rows, horizon)
    assert len(text.splitlines()) == 2 + len(episodes) and 'latent modes' in text


def test_stall_rows_match_a_loop():
    rng = np.random.default_rng(3)
    rewards = [rng.uniform(0.02, 1, n) * (rng.uniform(0, 1, n) < p) for n, p in ((500, 0.9), (500, 0.3), (120, 0.5))]
    rows = diagnose.stall_rows(rewards, tail=250, threshold=0.02, share=0.4)
    for reward, row in zip(rewards, rows):
        last = list(reward)[-250:]
        still = sum(1 for r in last if r < 0.02) / len(last)
        assert row['ret'] == pytest.approx(sum(reward)) and row['length'] == len(reward)
        assert row['still'] == pytest.approx(still) and row['stalled'] == (still >= 0.4)
    assert [r['stalled'] for r in rows] == [False, True, True]   # mostly moving; mostly still; a short episode


def test_stalls_command_reads_a_run_folder(tmp_path, capsys):
    import replay
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'config.yaml').write_text('action_repeat: 2\neval_episodes: 2\n')
    moving, still = np.full(501, 0.5, np.float32), np.zeros(501, np.float32)
    still[:200] = 0.5                                       # runs first, then lies still for its last 300 steps
    for source, rewards in (('train', [still, moving, still]), ('eval', [moving, still, still, still])):
        for reward in rewards:
            replay.save_episode(str(run / f'{source}_eps'), dict(image=np.zeros((501, 1, 1, 3), np.uint8),
                                                                reward=reward))
    assert diagnose.main([str(run), '--stalls', '--episodes', '0']) == 0
    out = capsys.readouterr().out
    assert '3 of 3 train episodes' in out and '0k-10k env steps: 2 of 3' in out
    assert [line.split()[0] for line in out.splitlines()[2:5]] == ['1000', '2000', '3000']
    assert diagnose.main([str(run), '--stalls', '--source', 'eval', '--episodes', '2']) == 0
    out = capsys.readouterr().out
    assert '2 of 4 eval episodes' in out and 'evaluation 2: 2 of 2' in out and 'evaluation 1' not in out
    assert diagnose.main([str(tmp_path), '--stalls']) == 2          # not a run folder: one clear error
    assert 'config.yaml' in capsys.readouterr().err


def test_action_rows_match_a_loop():
    rng = np.random.default_rng(5)
    held = np.stack([np.clip(-0.9 + 0.05 * rng.standard_normal(300), -1, 1), rng.uniform(-1, 1, 300)], 1)
    flipping = np.stack([np.where(np.arange(300) % 2, 1.0, -1.0), np.zeros(300)], 1)
    rewards = [np.zeros(300), np.ones(300)]
    rows = diagnose.action_rows([held, flipping], rewards)
    for action, reward, row in zip((held, flipping), rewards, rows):
        for d in range(2):
            column = list(action[:, d])
            changes = sum(1 for a, b in zip(column, column[1:]) if (a >= 0) != (b >= 0))
            assert row['changes'][d] == changes
            assert row['mean'][d] == pytest.approx(sum(column) / len(column))
            assert row['saturated'][d] == pytest.approx(sum(1 for a in column if abs(a) > 0.95) / len(column))
        assert row['ret'] == pytest.approx(sum(reward)) and row['length'] == 300
    assert rows[0]['changes'][0] == 0 and rows[1]['changes'][0] == 299 and rows[1]['saturated'][0] == 1.0
    assert rows[1]['changes'][1] == 0                       # zeros count as non-negative: no sign change


def test_actions_command_reads_a_run_folder(tmp_path, capsys):
    import replay
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'config.yaml').write_text('action_repeat: 2\neval_episodes: 2\n')
    held, flipping = np.full((501, 2), -1.0, np.float32), np.ones((501, 2), np.float32)
    flipping[::2] = -1.0
    held[0] = flipping[0] = 0.0                            # the reset entry carries no action
    for source, actions in (('train', [held, flipping]), ('eval', [held, held, flipping, flipping])):
        for action in actions:
            replay.save_episode(str(run / f'{source}_eps'), dict(
                image=np.zeros((501, 1, 1, 3), np.uint8), action=action, reward=np.full(501, 0.5, np.float32)))
    assert diagnose.main([str(run), '--actions', '--episodes', '0']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert '2 of 2 train episodes' in lines[0]
    assert lines[2].split() == ['1000', '250.0', '|', '-1.00', '100%', '0', '|', '-1.00', '100%', '0']
    assert lines[3].split() == ['2000', '250.0', '|', '+0.00', '100%', '499', '|', '+0.00', '100%', '499']
    assert diagnose.main([str(run), '--actions', '--stalls', '--source', 'eval', '--episodes', '2']) == 0
    out = capsys.readouterr().out
    assert 'evaluation 2: 0 of 2' in out and out.count('2 of 4 eval episodes') == 2
    assert out.splitlines()[-1].split() == ['evaluation', '2', '250.0', '|', '+0.00', '100%', '499', '|', '+0.00',
                                            '100%', '499']              # the average of evaluation 2's episodes
    assert diagnose.main([str(tmp_path), '--actions']) == 2          # not a run folder: one clear error
    assert '--actions needs a dreamer.py run folder' in capsys.readouterr().err


def test_a_snapshot_is_diagnosed_on_the_episodes_written_up_to_it(tmp_path, capsys):
    """RUN/checkpoints/checkpoint_<step>.pt (--keep_checkpoints): the run folder is RUN, and only the episodes
    written before the first training episode after the snapshot's last one count (its evaluation's included)."""
    import replay
    run = tmp_path / 'run'
    (run / 'checkpoints').mkdir(parents=True)
    (run / 'config.yaml').write_text('action_repeat: 2\neval_episodes: 2\n')
    still, moving = np.zeros(501, np.float32), np.full(501, 0.5, np.float32)
    names = {}
    # written in this order by a run: 2 training episodes, evaluation 1 (+ snapshot), 1 more, evaluation 2
    for key, source, reward in (('t1', 'train', moving), ('t2', 'train', moving), ('e1', 'eval', still),
                                ('e2', 'eval', still), ('t3', 'train', still), ('e3', 'eval', moving),
                                ('e4', 'eval', moving)):
        path = replay.save_episode(str(run / f'{source}_eps'), dict(image=np.zeros((501, 1, 1, 3), np.uint8),
                                                                   reward=reward))
        names[key] = os.path.basename(path)
    snapshot = run / 'checkpoints' / 'checkpoint_000002000.pt'
    torch.save({'counters': {'last_episode': names['t2']}}, snapshot)
    assert diagnose.run_folder(str(snapshot)) == str(run)
    assert diagnose.run_folder(str(run / 'checkpoint.pt')) == str(run)
    assert diagnose.run_folder(str(run)) == str(run)
    assert diagnose.episodes_cut(str(run), {'last_episode': names['t2']}) == names['t3']
    assert diagnose.episodes_cut(str(run), {'last_episode': names['t3']}) is None      # the run's last checkpoint
    assert diagnose.episodes_cut(str(run), {}) is None
    kept = diagnose.episode_files(str(run / 'eval_eps'), 0, names['t3'])
    assert [os.path.basename(f) for f in kept] == [names['e1'], names['e2']]
    assert diagnose.main([str(snapshot), '--stalls', '--source', 'eval', '--episodes', '2']) == 0
    out = capsys.readouterr().out
    assert '2 of 2 eval episodes' in out and 'evaluation 1: 2 of 2' in out and 'evaluation 2' not in out
    assert diagnose.main([str(run), '--stalls', '--source', 'eval', '--episodes', '2']) == 0   # the folder: all
    out = capsys.readouterr().out
    assert '2 of 4 eval episodes' in out and 'evaluation 2: 0 of 2' in out
    torch.save({'counters': {'last_episode': names['t2']}, 'agent': {}}, run / 'checkpoint.pt')
    (run / 'eval_eps').rename(run / 'elsewhere')
    assert diagnose.main([str(snapshot), '--stalls', '--source', 'eval']) == 2      # nothing to read: one error
    assert f"written before '{names['t3']}'" in capsys.readouterr().err


def refit_agent_and_episodes():
    agent, _ = tiny_agent_and_batch('--batch_length', '10', '--batch_size', '2')
    rng = np.random.default_rng(4)
    episodes = []
    for _ in range(3):
        reward = rng.uniform(0.5, 2, 30).astype(np.float32)
        reward[rng.uniform(0, 1, 30) < 0.4] = 0.0                     # still steps
        episodes.append(dict(image=rng.integers(0, 255, (30, 64, 64, 3), dtype=np.uint8),
                             action=rng.uniform(-1, 1, (30, 2)).astype(np.float32), reward=reward,
                             is_first=np.eye(1, 30, dtype=bool)[0]))
    return agent, episodes


def test_reward_features_are_the_training_windows_posteriors():
    agent, episodes = refit_agent_and_episodes()
    feats, rewards, index = diagnose.reward_features(agent.wm, episodes, 10)
    assert feats.shape[0] == len(rewards) == len(index) == 3 * 3 * 9
    with torch.no_grad():
        out = agent.wm.observe(dict(image=torch.as_tensor(episodes[1]['image'][20:30][None]),
                                    action=torch.as_tensor(episodes[1]['action'][20:30][None]),
                                    reward=torch.as_tensor(episodes[1]['reward'][20:30][None]),
                                    is_first=torch.eye(1, 10)), sample=False)
        direct = agent.wm.rssm.feat(out['post'])[0, 1:]
    rows = np.flatnonzero(index == 1)[18:27]                          # episode 1, its third window
    assert torch.allclose(feats[rows], direct, atol=1e-6)
    assert np.array_equal(rewards[rows], episodes[1]['reward'][21:30])


def test_reward_refit_rows_and_the_agent_left_alone():
    agent, episodes = refit_agent_and_episodes()
    before = [p.clone() for p in agent.wm.reward.parameters()]
    feats, rewards, index = diagnose.reward_features(agent.wm, episodes, 10)
    with torch.no_grad():
        pred = agent.wm.reward(feats).numpy()
    still = rewards < 0.02
    rows = diagnose.reward_refit(agent, episodes, held_out=1, steps=0)
    name, part, mse, n_still, true_still, pred_still, n_other, true_other, pred_other = rows[0]
    assert (name, part) == ("the run's head", 'all')
    assert mse == pytest.approx(np.mean((pred - rewards) ** 2), rel=1e-5)
    assert (n_still, n_other) == (still.sum(), (~still).sum()) and true_still == 0.0
    assert pred_still == pytest.approx(pred[still].mean(), rel=1e-5)
    assert true_other == pytest.approx(rewards[~still].mean(), rel=1e-5)
    assert rows[1][1] == 'last 1' and rows[1][3] + rows[1][6] == (index == 2).sum()
    assert rows[2][2:] == pytest.approx(rows[0][2:])                  # no steps: the run's head itself
    assert [r[1] for r in rows[4:]] == ['fitted on', 'held out: last 1']
    assert rows[4][3] + rows[4][6] == (index < 2).sum()
    rows = diagnose.reward_refit(agent, episodes, held_out=1, steps=150)
    # random rewards: a fit reaches at best about their variance (predicting their mean); the untrained head is far off
    assert rows[0][2] > 1.5 * rewards.var() and rows[2][2] < 1.05 * rewards.var()        # trained on
    assert rows[4][2] < 1.05 * rewards[index < 2].var()               # the new head fits what it was given
    assert all(torch.equal(a, b) for a, b in zip(before, agent.wm.reward.parameters()))
    assert not any(p.requires_grad for p in agent.wm.reward.parameters())
    text = diagnose.reward_refit_report(rows, 0.02)
    assert 'held out: last 1' in text and 'run head + 150 steps' in text


def test_reward_refit_command(tmp_path, monkeypatch, capsys):
    import replay
    agent, episodes = refit_agent_and_episodes()
    for ep in episodes:
        replay.save_episode(str(tmp_path / 'train_eps'), ep)
    torch.save({'counters': {}}, tmp_path / 'checkpoint.pt')      # read for its counters; the agent is given
    monkeypatch.setattr(agents, 'load_agent', lambda path, overrides=None, state=None: (
        agent, agent.config, str(tmp_path / 'checkpoint.pt')))
    assert diagnose.main([str(tmp_path), '--reward_refit', '--episodes', '0', '--held_out', '5',
                          '--refit_steps', '3']) == 0
    out = capsys.readouterr().out
    assert '3 train episodes, the last 2 held out' in out and '3 Adam steps per fit' in out   # held_out capped
    assert out.count('\n') == 1 + 2 + 6 and 'held out: last 2' in out


def tiny_run_config(tmp_path):
    return tools.make_config(['--configs', 'defaults', 'dmc2gym', 'debug', '--device', 'cpu', '--units', '16',
                              '--dyn_deter', '16', '--dyn_hidden', '16', '--dyn_stoch', '4', '--cnn_depth', '4',
                              '--prefill', '60', '--prefill_updates', '2', '--batch_size', '2', '--batch_length', '8',
                              '--seed', '3', '--logdir', str(tmp_path)])


def random_episodes(count: int, length: int = 31, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [dict(image=rng.integers(0, 255, (length, 64, 64, 3), dtype=np.uint8),
                 action=rng.uniform(-1, 1, (length, 2)).astype(np.float32),
                 reward=rng.uniform(0, 1, length).astype(np.float32), is_first=np.eye(1, length, dtype=bool)[0])
            for _ in range(count)]


def test_first_updates_start_from_the_seeded_fresh_agent_and_read_every_state(tmp_path):
    """With no update the actor is the fresh agent of the run's seed; its mean action on every state equals the
    actor applied to posteriors observed step by step (latents at their mode)."""
    config = tiny_run_config(tmp_path)
    episodes = random_episodes(2)
    result = diagnose.first_updates(config, 2, episodes, 0)
    assert result['trace'] == [] and result['states'] == 2 * 31
    tools.configure_torch(config)
    agent = agents.make_agent(config, 2)
    means = []
    with torch.no_grad():
        for ep in episodes:
            data = agent.to_torch({k: v[None] for k, v in ep.items()})
            embed = agent.wm.encoder(data['image'].float() / 255 - 0.5, sample=False)['embed'][0]
            state = None
            for t in range(len(ep['image'])):
                state = agent.wm.rssm.initial(1, 'cpu') if state is None else state
                state, _ = agent.wm.rssm.obs_step(state, agent.wm.pad_action(data['action'][:, t]), embed[t:t + 1],
                                                  data['is_first'][:, t].float(), sample=False)
                means.append(agent.behavior.actor(agent.wm.rssm.feat(state)).mean[0].numpy())
    means = np.stack(means)
    assert np.allclose(result['mean'], means.mean(0), atol=1e-5)
    assert np.allclose(result['saturated'], (np.abs(means) > 0.9).mean(0))
    assert np.allclose(result['spread'], means.std(0), atol=1e-5)
    trained = diagnose.first_updates(config, 2, episodes, 3, every=1)
    assert [i for i, _, _ in trained['trace']] == [1, 2, 3]
    assert not np.allclose(trained['mean'], result['mean'])               # the updates moved the actor
    again = diagnose.first_updates(config, 2, episodes, 3, every=1)
    assert again['trace'] == trained['trace'] and np.array_equal(again['mean'], trained['mean'])   # seeded


def test_first_updates_command_reads_the_runs_config_and_prefill(tmp_path, capsys):
    import replay
    config = tiny_run_config(tmp_path)
    tools.save_config(config, str(tmp_path / 'config.yaml'))
    for ep in random_episodes(3, seed=1):            # 90 agent steps: the first two cover the prefill of 60
        replay.save_episode(str(tmp_path / 'train_eps'), ep)
    assert diagnose.main([str(tmp_path), '--first_updates', '--set', 'opt_eps_keras=True']) == 0
    out = capsys.readouterr().out
    assert '2 updates from fresh weights (seed 3) on its first 2 training episodes (60 agent steps)' in out
    assert 'changed: opt_eps_keras=True' in out and out.count('\n') == 1 + 1 + 2 + 1
    assert diagnose.main([str(tmp_path), '--first_updates', '--set', 'opt_eps_kerass=True']) == 2
    assert "--set expects KEY=VALUE with a key of the run's config" in capsys.readouterr().err
    assert diagnose.main([str(tmp_path), '--first_updates', '--set', 'prefill=200']) == 2
    assert 'has not finished its random prefill' in capsys.readouterr().err


def test_official_first_updates_reads_the_prefill_in_official_dreamerv2s_episode_format(tmp_path, capsys):
    """scripts/official_first_updates.py (needs TensorFlow to train; not here): the run's prefill episodes with the
    package's keys, `is_last` on the last step only, and a clear error before any import when the prefill is short."""
    import replay
    official = load_script('official_first_updates')
    for ep in random_episodes(3, seed=2):
        ep['discount'], ep['is_terminal'] = np.ones(31, np.float32), np.zeros(31, bool)
        ep['color'] = np.zeros((31, 4), np.float32)                      # an extra key of this project's episodes
        replay.save_episode(str(tmp_path / 'train_eps'), ep)
    episodes = official.prefill_episodes(str(tmp_path), 60)
    assert len(episodes) == 2
    for ep in episodes:
        assert set(ep) == {'image', 'action', 'reward', 'discount', 'is_first', 'is_terminal', 'is_last'}
        assert ep['is_last'].tolist() == [False] * 30 + [True] and ep['is_first'][0] and not ep['is_first'][1:].any()
    assert official.main([str(tmp_path), '--prefill', '100']) == 2
    assert 'fewer than 100 agent steps' in capsys.readouterr().err
