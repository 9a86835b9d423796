"""scripts/bench.py's profiler summary (the GPU figures of docs/benchmarks.md come from it)."""
import torch

from helpers import load_script

bench = load_script('bench')


def test_profile_counts_the_ops_of_one_update():
    x, y = torch.ones(8), torch.ones(8)

    def adds(n):
        def run():
            for _ in range(n):
                torch.add(x, y)
        return run

    one, five = bench.profile_update(adds(1), cuda=False), bench.profile_update(adds(5), cuda=False)
    assert five['cpu_ops'] - one['cpu_ops'] == 4
    assert 'kernels' not in one and one['profiled_wall_s'] > 0


def test_flags_after_the_options_reach_the_benchmarked_model():
    """`bench.py ... -- --dyn_stoch 4 --dyn_discrete 8`: the measured update is that of the model those flags make."""
    import argparse

    def measure(extra):
        args = argparse.Namespace(mode='dreamerv2', batch=[2], length=3, warmup=0, repeats=1, threads=1, device='cpu',
                                  precision='32', compile=False, tf32=True, malloc_cache=False, flops=False,
                                  profile=False, checkpoint='', extra=['--cnn_depth', '4', '--units', '8', '--dyn_deter', '8',
                                                        '--dyn_hidden', '8', *extra])
        return bench.child(args)

    gaussian, categorical = measure(['--dyn_stoch', '4']), measure(['--dyn_stoch', '4', '--dyn_discrete', '8'])
    # the latent's width feeds the prior's input layer, both distribution layers, the decoder's linear layer and the
    # first layers of the reward head, actor, critic and slow critic (not trained: not counted): 4 x 8 wide, not 4
    feat_widening = 4 * 8 - 4
    hidden, units, deter, embed = 8, 8, 8, 4 * 2 * 2 * 2 * 4 * 2   # hidden, head width, deter, conv embedding
    extra = (feat_widening * hidden                      # img_in
             + (4 * 8 - 2 * 4) * (hidden + 1) * 2        # img_out, obs_out: 32 logits instead of 2 x 4
             + feat_widening * 32 * 4                    # decoder linear: 32 * depth outputs
             + feat_widening * units * 3)                # reward head, actor, critic
    assert categorical['params'] - gaussian['params'] == extra
    assert categorical['s_per_update'] > 0 and gaussian['final_loss'] == gaussian['final_loss']


def test_a_checkpoint_is_timed_with_its_own_weights_and_shapes(tmp_path, monkeypatch):
    """`bench.py --checkpoint RUN`: the timed agent is the run's (its architecture, action size and weights), and
    the update changes those weights."""
    import argparse

    import agents
    import tools
    config = tools.make_config(['--configs', 'defaults', 'dmc2gym', '--cnn_depth', '4', '--units', '8',
                                '--dyn_deter', '8', '--dyn_hidden', '8', '--dyn_stoch', '4', '--device', 'cpu', '--logdir', str(tmp_path / 'run')])
    torch.manual_seed(3)
    agent = agents.make_agent(config, 3)
    torch.save({'agent': agent.state_dict(), 'optimizers': agent.optimizer_state(), 'counters': {'updates': 5},
                'rng': tools.rng_state(), 'config': config.to_dict()}, tmp_path / 'checkpoint.pt')
    seen = {}
    real_load = agents.load_agent

    def load(path, overrides=None, state=None):
        loaded, cfg, ckpt = real_load(path, overrides, state)
        seen.update(agent=loaded, overrides=dict(overrides))
        return loaded, cfg, ckpt

    monkeypatch.setattr(agents, 'load_agent', load)
    args = argparse.Namespace(mode='checkpoint', batch=[2], length=3, warmup=0, repeats=1, threads=1,
                              device='cpu', precision='32', compile=False, tf32=True, malloc_cache=False,
                              flops=False, profile=False, checkpoint=str(tmp_path), extra=[])
    row = bench.child(args)
    loaded = seen['agent']
    assert seen['overrides']['batch_size'] == 2 and seen['overrides']['batch_length'] == 3
    trained = loaded.state_dict()
    slow = [k for k in trained if k.startswith('behavior.slow_critic.')]
    # the slow critic is not trained by the timed update (updates 5 -> 6): it is the checkpoint's, not a new one's
    assert slow and all(torch.equal(agent.state_dict()[k], trained[k]) for k in slow)
    own = {k: v for k, v in agent.state_dict().items() if k not in slow}
    assert row['params'] == sum(p.numel() for name, p in agent.named_parameters()
                                if not name.startswith('behavior.slow_critic.'))
    assert any(not torch.equal(v, trained[k]) for k, v in own.items() if v.is_floating_point())   # it updated
    assert row['checkpoint'] == str(tmp_path) and row['s_per_update'] > 0 and row['final_loss'] == row['final_loss']
