"""bf16 autocast against fp32: the loss curves of 200 updates on a fixed batch stream stay close.

Stated tolerance: every 20-update window mean of the world-model loss (and of its image term) under bf16 is within
2 % of fp32's, and the KL term within 0.1 nats + 3 %, from the same initial weights and the same batches.
"""
import numpy as np
import torch

import models
import tools

SMALL = ['--units', '32', '--dyn_deter', '32', '--dyn_hidden', '32', '--dyn_stoch', '8', '--cnn_depth', '8',
         '--imag_horizon', '5', '--batch_size', '2', '--batch_length', '8']


def curves(precision, batches):
    torch.manual_seed(0)
    cfg = tools.make_config(['--configs', 'defaults', 'dmc2gym', '--logdir', '/tmp/x', '--device', 'cpu',
                             '--precision', precision, *SMALL])
    agent = models.Agent(cfg, 2)
    out = {'model_loss': [], 'image_loss': [], 'kl_loss': []}
    for batch in batches:
        metrics = agent.update(batch, 0)
        for key in out:
            out[key].append(float(metrics[key]))
    return {k: np.array(v) for k, v in out.items()}


def test_bf16_loss_curves_follow_fp32():
    rng = np.random.default_rng(0)
    # a learnable stream: a bright square at a random place on a random-colour background
    batches = []
    for _ in range(200):
        image = np.broadcast_to(rng.integers(0, 255, (2, 1, 1, 1, 3), dtype=np.uint8), (2, 8, 64, 64, 3)).copy()
        for b in range(2):
            x = rng.integers(0, 48)
            image[b, :, 10:26, x:x + 16] = 255
        batch = dict(image=image, action=rng.uniform(-1, 1, (2, 8, 2)).astype(np.float32),
                     reward=rng.normal(size=(2, 8)).astype(np.float32), is_first=np.zeros((2, 8), bool))
        batch['is_first'][:, 0] = True
        batches.append(batch)
    fp32, bf16 = curves('32', batches), curves('bf16', batches)
    window = lambda x: x.reshape(-1, 20).mean(1)
    for key in ('model_loss', 'image_loss'):
        a, b = window(fp32[key]), window(bf16[key])
        assert np.all(np.abs(a - b) / np.abs(a) < 0.02), (key, a, b)
    a, b = window(fp32['kl_loss']), window(bf16['kl_loss'])
    assert np.all(np.abs(a - b) <= 0.1 + 0.03 * np.abs(a)), (a, b)
    assert window(fp32['image_loss'])[-1] < window(fp32['image_loss'])[0]      # it does learn


def test_video_model_update_follows_precision():
    """Stage-1 pretraining (`models.video_model_update`, what `dreamer.py --beta_vae_pretrain True` runs) computes
    under the --precision autocast: bf16 gives a slightly different but close image loss from the same weights."""
    rng = np.random.default_rng(0)
    data = {'image': torch.as_tensor(rng.integers(0, 255, (2, 8, 64, 64, 3), dtype=np.uint8)),
            'is_first': torch.zeros(2, 8)}
    losses = {}
    for precision in ('32', 'bf16'):
        torch.manual_seed(0)
        cfg = tools.make_config(['--configs', 'defaults', 'dmc2gym', '--logdir', '/tmp/x', '--device', 'cpu',
                                 '--beta_vae_pretrain', 'True', '--beta_vae', 'True', '--precision', precision,
                                 *SMALL])
        wm = models.WorldModel(cfg, 2, models.METHOD_SPECS['pretrain'])
        opt = tools.Optimizer.for_config('model', wm.parameters(), cfg.model_lr, cfg)
        losses[precision] = float(models.video_model_update(wm, opt, data, 0)['image_loss'])
    assert losses['32'] != losses['bf16']
    assert abs(losses['bf16'] - losses['32']) < 0.02 * abs(losses['32'])


def test_bf16_on_a_cpu_without_hardware_bf16_warns(monkeypatch, capsys):
    """oneDNN emulates bf16 on CPUs without AVX-512 BF16 / AMX (~15x slower than fp32): the run says so at start."""
    config = tools.make_config(['--configs', 'defaults', '--precision', 'bf16', '--device', 'cpu', '--logdir', 'x'])
    monkeypatch.setattr(tools, 'cpu_has_native_bf16', lambda: False)
    tools.configure_torch(config)
    assert 'without hardware bf16' in capsys.readouterr().err
    monkeypatch.setattr(tools, 'cpu_has_native_bf16', lambda: True)
    tools.configure_torch(config)
    assert 'without hardware bf16' not in capsys.readouterr().err


def test_tf32_flag_sets_both_cuda_backends_and_leaves_cpu_alone():
    """`--tf32 False` must mean full fp32 on a GPU: PyTorch's default already allows TF32 in cuDNN convolutions, so
    the flag has to switch that off too, not only the matmul one. Setting the flags needs no GPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True   # PyTorch's defaults
        for device, tf32, want in [('cuda', 'True', (True, True)), ('cuda:1', 'False', (False, False))]:
            config = tools.make_config(['--configs', 'defaults', '--device', 'cpu', '--tf32', tf32, '--logdir', 'x'])
            config.device = device      # make_config refuses cuda without a GPU; configure_torch only reads the name
            tools.configure_torch(config)
            assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == want
        tools.set_tf32('cpu', True)                                      # a CPU run leaves the flags as they are
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_logged_window_mean_skips_non_finite_values_and_counts_them(tmp_path):
    """With --precision 16 the grad scaler skips overflowing steps, whose gradient norm is inf: the logged mean of a
    window is that of the finite values, and `<name>_nonfinite` says how many were left out."""
    import json
    logger = tools.Logger(str(tmp_path), use_tensorboard=False)
    logger.scalars({'model_grad_norm': torch.tensor(1.0), 'model_loss': 4.0})
    logger.scalars({'model_grad_norm': torch.tensor(float('inf')), 'model_loss': 6.0})
    logger.scalars({'model_grad_norm': torch.tensor(3.0), 'model_loss': 8.0})
    row = logger.write(10, echo=False)
    assert row == {'step': 10, 'model_grad_norm': 2.0, 'model_grad_norm_nonfinite': 1, 'model_loss': 6.0}
    logger.scalar('critic_grad_norm', float('nan'))                 # nothing finite: the window reads nan
    row = logger.write(20, echo=False)
    assert np.isnan(row['critic_grad_norm']) and row['critic_grad_norm_nonfinite'] == 1
    lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
    assert json.loads(lines[0]) == {'step': 10, 'model_grad_norm': 2.0, 'model_grad_norm_nonfinite': 1,
                                    'model_loss': 6.0}


def test_heads_output_layers_run_in_fp32_under_bf16():
    """Reward head, critic and actor: the hidden layers follow bf16 autocast, the output layer runs in fp32 (official
    DreamerV2 casts head outputs to float32). A value near 50 keeps its fp32 resolution (bf16's step there is 0.25),
    and without autocast the head is the plain MLP, bit for bit."""
    import networks
    torch.manual_seed(0)
    head = networks.DenseHead(16, 2, 32)
    with torch.no_grad():
        head.net[-1].bias.fill_(50.0)
    feat = torch.randn(64, 16)
    with torch.no_grad():
        assert torch.equal(head(feat), head.net(feat).squeeze(-1))                        # fp32: unchanged
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = head(feat)
            hidden = head.net[:-1](feat)
        assert out.dtype == torch.float32 and hidden.dtype == torch.bfloat16
        want = (hidden.float() @ head.net[-1].weight.T + head.net[-1].bias).squeeze(-1)   # fp32 output layer
        torch.testing.assert_close(out, want, rtol=0, atol=1e-5)
        steps = torch.remainder(out - 50.0, 0.25)
        assert ((steps > 0.01) & (steps < 0.24)).float().mean() > 0.5      # not on bf16's 0.25 grid
    actor = networks.ActionHead(16, 2, 2, 32)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        dist = actor(feat)
    assert dist.mean.dtype == torch.float32 and dist.std.dtype == torch.float32


def test_bf16_lambda_returns_are_fp32(monkeypatch):
    """Under --precision bf16 the imagined rewards, slow-critic values and lambda-returns of a behaviour update are
    fp32 tensors, and close to the fp32 update's from the same weights and start states."""
    out = {}
    for precision in ('32', 'bf16'):
        torch.manual_seed(0)
        cfg = tools.make_config(['--configs', 'defaults', 'dmc2gym', '--logdir', '/tmp/x', '--device', 'cpu',
                                 '--precision', precision, *SMALL])
        agent = models.Agent(cfg, 2)
        with torch.no_grad():
            agent.behavior.slow_critic.net[-1].bias.fill_(50.0)      # values of a trained cartpole critic
        start = {k: torch.randn(4, 3, n) if k != 'std' else torch.rand(4, 3, n) + 0.1
                 for k, n in (('mean', 8), ('std', 8), ('stoch', 8), ('deter', 32))}
        seen = {}

        def spy(reward, next_value, *args, lambda_return=tools.lambda_return, **kwargs):
            seen.update(reward=reward.dtype, value=next_value.dtype)
            seen['target'] = lambda_return(reward, next_value, *args, **kwargs)
            return seen['target']
        with monkeypatch.context() as patch:
            patch.setattr(tools, 'lambda_return', spy)
            torch.manual_seed(1)
            with agent.autocast():
                agent.behavior.losses(agent.wm, start, agent.reward_fn)
        out[precision] = seen
    assert out['bf16']['reward'] == out['bf16']['value'] == out['bf16']['target'].dtype == torch.float32
    # same weights, same noise: the bf16 targets differ from fp32 only by the hidden layers' rounding (~0.1 %)
    torch.testing.assert_close(out['bf16']['target'], out['32']['target'], rtol=0.01, atol=0.1)


def test_compile_mode_reaches_torch_compile_and_cuda_graph_steps_are_marked(monkeypatch, capsys):
    """`--compile_mode` is handed to every torch.compile call; a compile failure falls back to eager with a warning;
    with CUDA graphs (reduce-overhead / max-autotune on a GPU) each update marks a new graph generation, and in every
    other case nothing is marked. An unknown mode is one clear error."""
    import pytest
    modes, marks = [], []

    def fake_compile(fn, dynamic, mode):
        modes.append(mode)

        def broken(*args, **kwargs):
            raise RuntimeError('no compiler here')
        return broken
    monkeypatch.setattr(torch, 'compile', fake_compile)
    monkeypatch.setattr(torch.compiler, 'cudagraph_mark_step_begin', lambda: marks.append(1))
    cfg = tools.make_config(['--configs', 'defaults', 'dmc2gym', '--logdir', '/tmp/x', '--device', 'cpu', '--compile',
                             'True', '--compile_mode', 'max-autotune-no-cudagraphs', *SMALL])
    agent = models.Agent(cfg, 2)
    assert modes and set(modes) == {'max-autotune-no-cudagraphs'}
    rng = np.random.default_rng(0)
    batch = dict(image=rng.integers(0, 255, (2, 8, 64, 64, 3), dtype=np.uint8),
                 action=rng.uniform(-1, 1, (2, 8, 2)).astype(np.float32),
                 reward=rng.normal(size=(2, 8)).astype(np.float32), is_first=np.eye(1, 8, 0, bool).repeat(2, 0))
    metrics = agent.update(batch, 0)            # every compiled call fails -> eager, and the update still trains
    assert np.isfinite(float(metrics['model_loss'])) and 'running it eagerly' in capsys.readouterr().err
    assert marks == []                          # no CUDA graphs in this mode (and not on a CPU)
    for device, mode, marked in [('cuda', 'reduce-overhead', True), ('cuda:1', 'max-autotune', True),
                                 ('cuda', 'default', False), ('cpu', 'reduce-overhead', False)]:
        marks.clear()
        tools.mark_update_begin(tools.Config(dict(compile=True, device=device, compile_mode=mode)))
        assert marks == ([1] if marked else []), (device, mode)
    with pytest.raises(tools.ConfigError, match='--compile_mode must be one of default, reduce-overhead'):
        tools.make_config(['--configs', 'defaults', '--logdir', 'x', '--device', 'cpu', '--compile_mode', 'fast'])
