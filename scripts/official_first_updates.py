"""Official DreamerV2's first training call on a run's random prefill: the check behind docs/learning.md, "Adam's
epsilon, and what the first 100 updates do to the actor". The counterpart of `diagnose.py RUN --first_updates`, run
by the authors' own TensorFlow code (the `dreamerv2` package on PyPI, 2.2.0) instead of this project's.

It writes the run's first training episodes (its random prefill) in the package's episode format, builds its agent
with its `defaults` + `dmc_vision` config (fp32 on a CPU: `precision 32`), samples batches with its own replay and
trains `--updates` times as its `train.py` does at the first training call, then prints the actor's entropy and
gradient norm on the way and where the actor's mean (the truncated Normal's loc, tanh of the output) sits on every
state of those episodes (posteriors from its `rssm.observe`).

It needs TensorFlow, which this project does not install; a separate environment (Python 3.11):

    python -m venv tfenv && tfenv/bin/pip install "tensorflow-cpu==2.15.*" "tensorflow-probability==0.23.*" \\
        "numpy<2" ruamel.yaml gym==0.26.2 cloudpickle "pandas<2.3" "matplotlib<3.10"
    tfenv/bin/pip install --no-deps dreamerv2==2.2.0

The package was written for TensorFlow 2.4-2.6; two of its lines need today's names (same behaviour): in
`common/nets.py` and `common/tfutils.py`, `from tensorflow.keras.mixed_precision import experimental as prec` ->
`from tensorflow.keras import mixed_precision as prec`, and in `common/replay.py` `np.bool` -> `bool`. Then:

    tfenv/bin/python scripts/official_first_updates.py runs/learning_official_all/finger_spin/seed_0 --seed 0
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import diagnose  # noqa: E402  (numpy only at import: usable without torch)

KEYS = ('image', 'action', 'reward', 'discount', 'is_first', 'is_terminal')


def official_episode(episode: dict) -> dict:
    """An episode of this project (`replay.save_episode`) in the package's format: its keys plus `is_last`."""
    out = {key: np.asarray(episode[key]) for key in KEYS}
    out['is_last'] = np.zeros(len(out['reward']), bool)
    out['is_last'][-1] = True
    return out


def prefill_episodes(run: str, prefill: int) -> list[dict]:
    """The run's random prefill episodes (`diagnose.prefill_episodes`) in the package's format."""
    return [official_episode(ep) for ep in diagnose.prefill_episodes(run, prefill, KEYS)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('run', help='a dreamer.py run folder that has finished its random prefill')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--updates', type=int, default=100, help='official DreamerV2\'s `pretrain` for dmc_vision')
    parser.add_argument('--prefill', type=int, default=1000, help='agent steps of random prefill in the run')
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args(argv)
    episodes = prefill_episodes(args.run, args.prefill)
    if sum(len(ep['reward']) - 1 for ep in episodes) < args.prefill:
        print(f"Error: '{args.run}/train_eps' holds fewer than {args.prefill} agent steps.", file=sys.stderr)
        return 2
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    tf.random.set_seed(args.seed)
    np.random.seed(args.seed)
    import dreamerv2
    import gym
    import ruamel.yaml as yaml
    root = pathlib.Path(list(dreamerv2.__path__)[0])
    sys.path.append(str(root))
    import agent as agent_lib
    import common
    configs = yaml.YAML(typ='safe').load((root / 'configs.yaml').read_text())
    config = common.Config(configs['defaults']).update(configs['dmc_vision']).update({'precision': 32})
    folder = pathlib.Path(tempfile.mkdtemp(prefix='official_first_updates_'))
    try:
        for i, ep in enumerate(episodes):
            np.savez_compressed(folder / f'20200101T00000{i}-{i:032d}-{len(ep["reward"]) - 1}.npz', **ep)
        replay = common.Replay(folder, **config.replay)
        replay._random.seed(args.seed)
        dataset = iter(replay.dataset(**config.dataset))
        size = episodes[0]['image'].shape[1:]
        flag = lambda: gym.spaces.Box(0, 1, (), bool)
        obs_space = {'image': gym.spaces.Box(0, 255, size, np.uint8), 'is_first': flag(), 'is_last': flag(),
                     'reward': gym.spaces.Box(-np.inf, np.inf, (), np.float32), 'is_terminal': flag()}
        act_space = {'action': gym.spaces.Box(-1, 1, episodes[0]['action'].shape[1:], np.float32)}
        agent = agent_lib.Agent(config, obs_space, act_space, common.Counter(args.prefill))
        train = common.CarryOverState(agent.train)
        start = time.time()
        print('update | actor entropy | actor grad norm')
        for i in range(args.updates):
            metrics = train(next(dataset))
            if i % 20 == 0 or i == args.updates - 1:
                print(f"{i + 1} | {float(metrics['actor_ent']):.3f} | {float(metrics['actor_grad_norm']):.4g}",
                      flush=True)
        means, stds = [], []
        for ep in episodes:
            data = agent.wm.preprocess({k: tf.constant(v[None]) for k, v in ep.items()})
            post, _ = agent.wm.rssm.observe(agent.wm.encoder(data), data['action'], data['is_first'])
            dist = agent._task_behavior.actor(agent.wm.rssm.get_feat(post)).distribution
            means.append(np.asarray(dist.loc)[0])
            stds.append(np.asarray(dist.scale)[0])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    mean, std = np.concatenate(means), np.concatenate(stds)
    fmt = lambda x: '(' + ', '.join(f'{v:.3f}' for v in x) + ')'
    print(f'official DreamerV2, seed {args.seed}, {args.updates} updates in {time.time() - start:.0f} s: on '
          f'{len(mean)} states, mean action per dimension {fmt(mean.mean(0))}, share with |mean| > 0.9 '
          f'{fmt((np.abs(mean) > 0.9).mean(0))}, std of the mean over states {fmt(mean.std(0))}, actor std '
          f'{fmt(std.mean(0))}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
