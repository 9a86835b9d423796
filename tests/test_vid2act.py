"""Vid2Act: teacher weights, distillation and CVAE pairs, the frozen teacher, per-teacher acting states, checkpoint
checks, and teacher pretraining + online training end to end (dreamer.py in a subprocess)."""
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

import agents
import models
import replay as replay_lib
import tools
import vid2act
from helpers import random_batch, run_dreamer
from tools import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = {'finger_spin': 2, 'cheetah_run': 6}


def make_sources(root, episodes=3, length=21, seed=0):
    """Tiny source datasets with different action sizes: a bright square whose position follows the actions."""
    rng = np.random.default_rng(seed)
    for task, size in SOURCES.items():
        for _ in range(episodes):
            action = rng.uniform(-1, 1, (length, size)).astype(np.float32)
            action[0] = 0
            image = np.full((length, 64, 64, 3), rng.integers(0, 255, 3), np.uint8)
            for t in range(length):
                x = int(24 + 20 * action[t, 0])
                image[t, 20:36, x:x + 16] = 255
            is_first = np.zeros(length, bool)
            is_first[0] = True
            replay_lib.save_episode(str(root / task), dict(
                image=image, action=action, reward=rng.normal(size=length).astype(np.float32),
                discount=np.ones(length, np.float32), is_first=is_first, is_terminal=np.zeros(length, bool)))
    return root


def config(tmp_path, *argv, task='dmc2gym_hopper_stand'):
    return tools.make_config(['--configs', 'defaults', 'dmc2gym', 'debug', '--task', task, '--device', 'cpu',
                              '--logdir', str(tmp_path / 'unused'), '--method_name', 'vid2act',
                              '--source_tasks', 'finger_spin,cheetah_run', '--offline_dir', str(tmp_path / 'D'),
                              '--teacher_checkpoint_path', str(tmp_path / 'T'), '--batch_size', '3',
                              '--batch_length', '6', '--imag_horizon', '3', *argv])


def make_teacher(tmp_path, tasks=tuple(SOURCES), action_size=6, seed=0):
    torch.manual_seed(seed)
    cfg = config(tmp_path)
    sizes = {key: cfg[key] for key in models.WORLD_MODEL_KEYS}
    teacher = vid2act.LabelledWorldModel(len(tasks), action_size, sizes)
    meta = dict(source_tasks=list(tasks), action_size=action_size, sizes=sizes,
                source_action_sizes={t: SOURCES.get(t, 2) for t in tasks})
    vid2act.save_teacher(str(tmp_path / 'T'), teacher, meta)
    return teacher


@pytest.fixture
def setup(tmp_path):
    make_sources(tmp_path / 'D')
    return tmp_path, make_teacher(tmp_path)


def target_batch(B=3, T=6, A=4, seed=0):
    return random_batch(B, T, A, seed)


# ---------------------------------------------------------------------------------------------------- the math
@pytest.mark.parametrize('B,T', [(2, 5), (1, 1)])
def test_weights_are_a_softmax_over_teachers(B, T):
    torch.manual_seed(0)
    K, F = 3, 8
    imp = nn.Linear(2 * F, 1)
    teacher, feat = torch.randn(K, B, T, F), torch.randn(B, T, F)
    weights = vid2act.teacher_weights(imp, teacher, feat)
    assert weights.shape == (B, T, K)
    assert torch.allclose(weights.sum(-1), torch.ones(B, T), atol=1e-6)
    for b in range(B):
        for t in range(T):
            scores = torch.stack([imp(torch.cat([teacher[k, b, t], feat[b, t]]))[0] for k in range(K)])
            assert torch.allclose(weights[b, t], torch.softmax(scores, 0), atol=1e-6)


def test_distill_loss_matches_hand_computation_with_clamp():
    torch.manual_seed(1)
    K, B, T, F = 3, 2, 4, 5
    distilled, feat = torch.randn(K, B, T, F), torch.randn(B, T, F)
    weights = torch.softmax(3 * torch.randn(B, T, K), -1).requires_grad_(True)
    assert (weights < 0.1).any() and (weights > 0.1).any()          # both sides of the clamp are exercised
    loss, mse = vid2act.distill_loss(distilled, feat, weights, min_weight=0.1)
    expected = 0.0
    for k in range(K):
        total = 0.0
        for b in range(B):
            for t in range(T):
                err = sum((distilled[k, b, t, d] - feat[b, t, d]) ** 2 for d in range(F)) / F
                total += max(0.1, float(weights[b, t, k].detach())) * float(err)
        expected += total / (B * T)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert mse.shape == (K,)
    loss.backward()
    below = weights.detach() < 0.1
    assert torch.all(weights.grad[below] == 0) and torch.all(weights.grad[~below] > 0)   # max(m, w) blocks w < m


def test_transition_pairs_pair_state_t_with_action_t_plus_1():
    T = 6
    feat = torch.arange(T, dtype=torch.float32).reshape(1, T, 1).repeat(2, 1, 3)
    action = 100 + torch.arange(T, dtype=torch.float32).reshape(1, T, 1).repeat(2, 1, 2)
    is_first = torch.zeros(2, T)
    is_first[:, 0] = 1
    is_first[1, 3] = 1                                                  # a new episode starts at step 3 of row 1
    states, actions, valid = vid2act.transition_pairs(feat, action, is_first)
    assert states.shape == (2, T - 1, 3) and actions.shape == (2, T - 1, 2)
    assert torch.equal(states[..., 0], torch.arange(T - 1.).expand(2, -1))
    assert torch.equal(actions[..., 0], 101 + torch.arange(T - 1.).expand(2, -1))   # the action taken in state t
    assert valid[0].tolist() == [1.0] * (T - 1) and valid[1].tolist() == [1, 1, 0, 1, 1]


def test_task_shares_split_the_batch():
    assert vid2act.task_shares(4, 2, 0) == [2, 2]
    assert sum(vid2act.task_shares(50, 4, 7)) == 50
    counts = np.sum([vid2act.task_shares(5, 3, u) for u in range(3)], 0)
    assert counts.tolist() == [5, 5, 5]                                 # the remainder rotates


def test_cvae_sampling_clips_z_and_returns_the_bottleneck():
    vae = vid2act.ActionReplayVAE(10, 6, 2, hidden=32, bottleneck=7)
    assert vae.latent == 12
    state, onehot = torch.randn(5, 10), torch.eye(2)[[0, 1, 0, 1, 0]]
    action, hidden = vae.decode(state, onehot)
    assert action.shape == (5, 6) and hidden.shape == (5, 7) and (hidden >= 0).all() and action.abs().max() <= 1
    torch.manual_seed(3)
    sampled = vae.decode(state, onehot)[1]
    torch.manual_seed(3)
    expected = vae.decode(state, onehot, torch.randn(5, 12).clamp(-0.5, 0.5))[1]   # z ~ N(0, I) clipped to 0.5
    assert torch.allclose(sampled, expected)


# ---------------------------------------------------------------------------------------------------- the agent
def test_gradients_reach_imp_distiller_and_cvae_never_the_teacher(setup):
    tmp_path, _ = setup
    agent = agents.make_agent(config(tmp_path), 4)
    part = agent.distill
    teacher = part.teacher
    saved = torch.load(tmp_path / 'T' / 'teacher.pt')
    opt_params = {id(p) for group in agent.model_opt.opt.param_groups for p in group['params']}
    assert not any(id(p) in opt_params for p in teacher.parameters())
    assert all(id(p) in opt_params for p in (*part.imp.parameters(), *part.distiller.parameters(),
                                             *part.vae.parameters()))
    assert not any(k.startswith('wm.parts.0.') and 'teacher' in k for k in agent.state_dict())
    feat_size = agent.wm.rssm.feat_size
    assert agent.behavior.actor.net[0].in_features == feat_size + 50
    assert agent.behavior.critic.net[0].in_features == feat_size

    data = agent.training_batch(target_batch())   # with its source batch
    for p in agent._wm_params:
        p.requires_grad_(True)
    loss, out, metrics = agent.wm.loss(data, 0)
    loss.backward()
    for name, module in [('imp', part.imp), ('distiller', part.distiller), ('vae encoder', part.vae.encoder),
                         ('vae decoder', part.vae.decoder), ('vae out', part.vae.out)]:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert out['behavior_context'].shape == (3, 6) and out['behavior_context'].max() < 2
    assert {'vid2act_distill_loss', 'vid2act_vae_loss', 'vid2act_weight/finger_spin',
            'vid2act_weight/cheetah_run'} <= set(metrics)
    assert metrics['vid2act_weight/finger_spin'] + metrics['vid2act_weight/cheetah_run'] == pytest.approx(1, abs=1e-5)
    for p in agent._wm_params:
        p.requires_grad_(False)
        p.grad = None

    before = [p.clone() for p in part.imp.parameters()]
    for i in range(2):
        metrics = agent.update(target_batch(seed=i), step=0)
    agent.train()
    assert not teacher.training
    for name in ('encoder', 'rssm'):                                  # bit-identical after updates
        for key, value in getattr(teacher, name).state_dict().items():
            assert torch.equal(value, saved[name][key]), key
    assert any(not torch.equal(a, b) for a, b in zip(before, part.imp.parameters()))
    assert all(torch.isfinite(torch.as_tensor(metrics[k])) for k in ('actor_loss', 'vid2act_vae_loss'))


def test_acting_keeps_one_state_per_teacher_reset_at_episode_start(setup):
    tmp_path, _ = setup
    rng = np.random.default_rng(0)
    B, K, steps = 2, 2, 3
    frames = rng.integers(0, 255, (steps, B, 64, 64, 3), dtype=np.uint8)
    for compat in (False, True):
        torch.manual_seed(0)
        # means, not samples, in evaluation: the teacher states are compared with the deterministic filter
        agent = agents.make_agent(config(tmp_path, '--release_compat', str(compat), '--eval_state_mean', 'True'), 4)
        teacher = agent.distill.teacher
        state, actions = None, [np.zeros((B, 4), np.float32)]
        for i in range(steps):
            action, state = agent.policy(dict(image=frames[i], is_first=np.full(B, i == 0)), state, training=False)
            actions.append(action)
            if i == 0:
                fresh = {k: v.clone() for k, v in state[2].items()}
                assert action.shape == (B, 4) and state[2]['deter'].shape == (K * B, teacher.rssm.deter_size)
        # Each teacher's own filter over the episode (label-major rows), as in training.
        image = vid2act.models.preprocess_image(torch.as_tensor(frames).transpose(0, 1)).repeat(K, 1, 1, 1, 1)
        action = torch.nn.functional.pad(torch.as_tensor(np.stack(actions[:steps], 1)), (0, 2)).repeat(K, 1, 1)
        is_first = torch.zeros(K * B, steps)
        is_first[:, 0] = 1
        onehot = teacher.onehot(torch.arange(K).repeat_interleave(B))
        expected = teacher.observe(image, action, is_first, onehot, sample=False)[0]
        own = torch.allclose(state[2]['deter'], expected['deter'][:, -1], atol=1e-4)
        assert own != compat      # release (bug 5): every teacher is stepped from the student's posterior instead
        if not compat:            # an episode start resets every teacher to its own initial state
            _, state = agent.policy(dict(image=frames[0], is_first=np.full(B, True)), state, training=False)
            assert all(torch.allclose(state[2][k], fresh[k], atol=1e-5) for k in fresh)


def test_teacher_checkpoint_mismatches_fail_clearly(setup):
    tmp_path, _ = setup
    with pytest.raises(ConfigError, match=r'has 2 teachers.*this run has 1'):
        agents.make_agent(config(tmp_path, '--source_tasks', 'finger_spin'), 4)
    with pytest.raises(ConfigError, match=r'tasks finger_spin,cheetah_run.*--source_tasks cheetah_run,finger_spin'):
        agents.make_agent(config(tmp_path, '--source_tasks', 'cheetah_run,finger_spin'), 4)
    with pytest.raises(ConfigError, match=r'padded action size 6 but this run needs 8'):
        agents.make_agent(config(tmp_path, '--action_pad', '8'), 4)
    with pytest.raises(ConfigError, match=r'padded action size 6 but this run needs 12'):
        agents.make_agent(config(tmp_path), 12)                       # a target with 12 actions (quadruped)
    with pytest.raises(ConfigError, match='not found'):
        agents.make_agent(config(tmp_path, '--teacher_checkpoint_path', str(tmp_path / 'nowhere')), 4)
    with pytest.raises(ConfigError, match='No .npz episodes'):
        agents.make_agent(config(tmp_path, '--offline_dir', str(tmp_path / 'T')), 4)
    with pytest.raises(ConfigError, match='--source_tasks'):
        agents.make_agent(config(tmp_path, '--source_tasks', ''), 4)


# ---------------------------------------------------------------------------------------------------- end to end
def run(args, timeout=200):
    return run_dreamer(args, timeout)


def test_pretraining_then_online_training(tmp_path):
    make_sources(tmp_path / 'D')
    common = ['--configs', 'defaults', 'dmc2gym', 'debug', '--method_name', 'vid2act', '--source_tasks',
              'finger_spin,cheetah_run', '--offline_dir', str(tmp_path / 'D'), '--batch_length', '8',
              '--progress', 'False', '--threads', '1', '--device', 'cpu', '--tensorboard', 'False']
    teacher_dir = tmp_path / 'T'
    pretrain = common + ['--task', 'dmc2gym_reacher_easy', '--vid2act_pretrain', 'True', '--logdir', str(teacher_dir),
                         '--pretrain_save_every', '3']
    first = run(pretrain + ['--pretrain_steps', '16'])                 # 16 sequences / batch 4 = 4 updates
    assert 'padded to 6' in first.stdout and '4 updates' in first.stdout
    second = run(pretrain + ['--pretrain_steps', '24'])                # resumes at update 4, stops at 6
    assert 'Resuming the teacher pretraining' in second.stdout and 'at update 4' in second.stdout
    meta = json.loads((teacher_dir / 'teacher_meta.json').read_text())
    assert meta['source_tasks'] == ['finger_spin', 'cheetah_run'] and meta['action_size'] == 6
    assert meta['updates'] == 6 and meta['source_action_sizes'] == SOURCES
    rows = [json.loads(line) for line in open(teacher_dir / 'metrics.jsonl')]
    assert any('teacher_image_loss/finger_spin' in r and 'reward_loss' in r for r in rows)

    logdir = tmp_path / 'online'
    run(common + ['--task', 'dmc2gym_reacher_easy', '--teacher_checkpoint_path', str(teacher_dir), '--logdir',
                  str(logdir), '--steps', '300', '--prefill', '60', '--time_limit', '60', '--eval_every', '300',
                  '--log_every', '100', '--eval_episodes', '1', '--pretrain', '2'])
    rows = [json.loads(line) for line in open(logdir / 'metrics.jsonl')]
    keys = set().union(*rows)
    assert {'vid2act_distill_loss', 'vid2act_vae_loss', 'vid2act_weight/finger_spin', 'vid2act_weight/cheetah_run',
            'train_return', 'eval_return', 'actor_loss'} <= keys
    assert (logdir / 'checkpoint.pt').exists()
    import shutil
    shutil.rmtree(tmp_path / 'D')         # acting needs the teacher, not the source datasets (only updates sample them)
    agent, agent_config, _ = agents.load_agent(str(logdir))
    assert isinstance(agent, vid2act.Vid2ActAgent) and agent_config.mode == 'eval'


def test_target_among_the_sources_is_refused(tmp_path):
    with pytest.raises(ConfigError, match='target task cheetah_run is also a source task'):
        vid2act.source_tasks(config(tmp_path, task='dmc2gym_cheetah_run'))


def test_teacher_action_columns_no_source_fed_are_zeroed_on_load(setup):
    """Sources have 2 and 6 actions, the teacher is padded to 8: prior input columns 6 and 7 never saw a non-zero
    input in pretraining and are zeroed when the teacher is loaded; the columns the sources fed are kept."""
    tmp_path, _ = setup
    torch.manual_seed(0)
    cfg = config(tmp_path)
    sizes = {key: cfg[key] for key in models.WORLD_MODEL_KEYS}
    saved = vid2act.LabelledWorldModel(2, 8, sizes)
    meta = dict(source_tasks=list(SOURCES), action_size=8, sizes=sizes, source_action_sizes=dict(SOURCES))
    vid2act.save_teacher(str(tmp_path / 'T8'), saved, meta)
    teacher, _ = vid2act.load_teacher(config(tmp_path, '--teacher_checkpoint_path', str(tmp_path / 'T8')), 4)
    S = teacher.rssm.stoch_size
    weight, before = teacher.rssm.img_in[0].weight, saved.rssm.img_in[0].weight
    assert torch.all(weight[:, S + 6:S + 8] == 0) and torch.any(before[:, S + 6:S + 8] != 0)
    assert torch.equal(weight[:, :S + 6], before[:, :S + 6]) and torch.equal(weight[:, S + 8:], before[:, S + 8:])
