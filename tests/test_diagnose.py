"""scripts/diagnose.py: the reward and value checks of a trained agent, against slow obvious computations."""
import numpy as np
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
