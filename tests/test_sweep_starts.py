"""Every run that `scripts/sweep.py all` schedules starts: pretraining and Vid2Act teacher runs run a few updates
on generated data (in-process `dreamer.main`), and every online run's agent is built from its exact command (loading
the pretrained parts those runs just wrote) and takes one update on a generated batch. A run that cannot start (a
checkpoint that does not fit its model, a missing flag) fails here instead of hours into a sweep."""
import os
import sys

import numpy as np
import pytest

import agents
import dreamer
import models
import replay as replay_lib
import tools
from helpers import ROOT, random_batch

sys.path.insert(0, os.path.join(ROOT, 'scripts'))
import experiments as ex  # noqa: E402
import sweep  # noqa: E402

ACTIONS = {**{k: t.action_size for k, t in ex.TASKS.items()}, 'walker_run': 6}


def write_episodes(folder, action_size, episodes=2, length=12, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(episodes):
        is_first = np.zeros(length, bool)
        is_first[0] = True
        replay_lib.save_episode(folder, dict(
            image=rng.integers(0, 255, (length, 64, 64, 3), dtype=np.uint8),
            action=rng.uniform(-1, 1, (length, action_size)).astype(np.float32),
            reward=rng.normal(size=length).astype(np.float32), discount=np.ones(length, np.float32),
            is_first=is_first, is_terminal=np.zeros(length, bool)))


def flag(cmd, name):
    return cmd[cmd.index(name) + 1]


@pytest.mark.filterwarnings('ignore')
def test_every_scheduled_run_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    small = ['--batch_size', '2', '--batch_length', '6', '--tensorboard', 'False', '--threads', '1']
    args = sweep.parse_args(['all', '--seeds', '0', '--preset', 'debug', '--root', 'runs', '--data-root', 'data',
                             '--pretrain-steps', '4', '--', *small])
    runs = sweep.build_runs(args)
    kinds = [r.kind for r in runs]
    assert kinds.index('online') > max(i for i, k in enumerate(kinds) if k != 'online')   # pretraining first
    for source in ex.VID2ACT_DMC_SOURCES:
        write_episodes(os.path.join(args.offline_dir, source), ACTIONS[source])
    started = {}
    for run in runs:
        argv = run.cmd[2:]                                   # drop the interpreter and dreamer.py
        if run.kind in sweep.PRETRAINING:
            if run.data:
                write_episodes(run.data, ACTIONS[os.path.basename(os.path.dirname(run.data))])
            assert dreamer.main(argv) == 0, run.text
            assert os.path.exists(os.path.join(run.logdir, run.needs_file)), run.text
        else:
            config = tools.make_config(argv)
            task = ex.find_task(flag(argv, '--task'))
            agent = agents.make_agent(config, task.action_size)
            metrics = agent.update(random_batch(2, 6, A=task.action_size), step=0)
            assert np.isfinite(float(metrics['model_loss'])), run.text
        started[run.kind] = started.get(run.kind, 0) + 1
    online = {(t, m) for e in ex.EXPERIMENTS.values() for _, t in e.pairs for m in e.methods}
    assert started == {'pretrain': 4, 'teacher': 2, 'online': len(online)}
