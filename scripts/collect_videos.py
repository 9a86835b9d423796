"""Collects colour-distracted video episodes of a source task for DisWM's video pretraining (DISWM_SPEC §1a, §6).

A policy (uniform random actions, or a trained agent's checkpoint) runs in `env.make_env` and every episode is written
as one DreamerV2/DisWM `.npz` file with `replay.save_episode`: `image` (T, 64, 64, 3) uint8, `action` (T, A) (action[t]
led to image t, zeros at t = 0), `reward`, `discount`, `is_first`, `is_terminal` and the per-step distractor state
`color`. Actions and rewards are kept so the same files serve action-conditioned baselines (Vid2Act).

    MUJOCO_GL=egl .venv/bin/python scripts/collect_videos.py --task dmc2gym_reacher_easy --policy random \\
        --episodes 10 --out data/reacher_easy/train_eps [--seed 0] [--time_limit 1000] [--color.max_delta 0.2]
    MUJOCO_GL=egl .venv/bin/python scripts/collect_videos.py --task dmc2gym_walker_walk \\
        --policy runs/walker/checkpoint.pt --episodes 100 --out data/walker_walk/train_eps

Besides the flags of this script (see --help), every key of configs.yaml can be set the way `dreamer.py` takes it
(`--seed`, `--time_limit` in env steps, `--action_repeat`, `--color.max_delta`, `--color.step_std`, `--size`,
`--camera`, `--release_compat`, `--device`, `--progress`); the task's preset (dmc2gym, gymnasium or metaworld) is
applied first unless `--configs` is given. With a checkpoint, the run's `config.yaml` rebuilds the agent, and the env
settings the policy depends on (`action_repeat`, `size`, `camera`, `release_compat`) default to the run's own.

The same seed gives the same episodes (environment, colours and random actions all derive from `--seed`). Rerunning
into the same folder adds episodes; use a new `--seed` for new data. Each call appends its settings to
`<out>/collections.jsonl`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('MUJOCO_GL', 'egl')  # before dm_control / mujoco are imported

import numpy as np  # noqa: E402

import tools  # noqa: E402
from tools import ConfigError  # noqa: E402

# Env settings a trained policy depends on: taken from its run unless given on the command line.
POLICY_ENV_KEYS = ('action_repeat', 'size', 'camera', 'release_compat')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Collect colour-distracted video episodes (.npz) of a task with a random or trained policy.',
        epilog='Any configs.yaml key is also accepted, e.g. --seed 0 --time_limit 1000 --action_repeat 2 '
               '--color.max_delta 0.2 --color.step_std 0.2 --release_compat False --device cpu --progress False.',
        allow_abbrev=False)
    # `--task` is a configs.yaml key, read here first because it picks the preset (dmc2gym, gymnasium, metaworld).
    parser.add_argument('--task', required=True, help='task name, e.g. dmc2gym_reacher_easy')
    parser.add_argument('--policy', default='random',
                        help="'random' (uniform in [-1, 1], seeded) or the path of a run's checkpoint.pt (or its run "
                             "folder); the run's config.yaml next to it rebuilds the agent")
    parser.add_argument('--episodes', type=int, default=10, help='number of episodes to collect')
    parser.add_argument('--out', required=True, help='folder the .npz episodes are written to (created if needed)')
    parser.add_argument('--distractor', default=None,
                        help="distractor set: train | test (colours, DMC and Pusher), grid | wood | metal "
                             "(DrawerWorld textures); default: the task's first training set (train, grid)")
    parser.add_argument('--save_actions', default='True',
                        help='keep the `action` key in the files (True; False writes video-only episodes). '
                             'Rewards are always kept')
    parser.add_argument('--sample_actions', default='False',
                        help='checkpoint policies: sample from the actor (as during training; more diverse data) '
                             'instead of taking its mode (False, as in evaluation)')
    return parser


def parse_args(argv: list[str]):
    """Splits the command line into this script's flags and a resolved configs.yaml config (env and device)."""
    args, rest = build_parser().parse_known_args(argv)
    args.save_actions = tools.parse_value(args.save_actions, True, 'save_actions')
    args.sample_actions = tools.parse_value(args.sample_actions, False, 'sample_actions')
    if args.episodes < 1:
        raise ConfigError(f'--episodes must be at least 1, got {args.episodes}.')
    presets, pairs = tools.split_argv(rest)
    explicit = {key for key, _ in pairs}
    if not presets:
        suite = args.task.partition('_')[0]
        presets = ['defaults'] + ([suite] if suite in tools.load_presets() else [])
    config_argv = ['--configs', *presets, '--task', args.task]
    for key, values in pairs:
        config_argv += [f'--{key}', *values]
    config = tools.make_config(config_argv)
    return args, config, explicit


# --------------------------------------------------------------------------------------------------------------------
# Trained-agent policy
# --------------------------------------------------------------------------------------------------------------------
def _checkpoint_path(path: str) -> str:
    if os.path.isdir(path):
        path = os.path.join(path, 'checkpoint.pt')
    if not os.path.isfile(path):
        raise ConfigError(f"--policy: checkpoint '{path}' not found; give 'random' or the path of a run's "
                          f"checkpoint.pt (written by dreamer.py at every evaluation).")
    return path


def _update_known(base: dict, saved: dict, prefix: str = '') -> list[str]:
    """Copies the saved run's values into the current defaults; returns the keys this code no longer knows."""
    unknown = []
    for key, value in saved.items():
        if key not in base:
            unknown.append(prefix + key)
        elif isinstance(base[key], dict) and isinstance(value, dict):
            unknown += _update_known(base[key], value, f'{prefix}{key}.')
        else:
            base[key] = value
    return unknown


def run_config(ckpt_path: str, state: dict, device: str) -> tools.Config:
    """The run's resolved config: `config.yaml` next to the checkpoint, else the copy stored inside it."""
    yaml_path = os.path.join(os.path.dirname(ckpt_path), 'config.yaml')
    if os.path.exists(yaml_path):
        from ruamel.yaml import YAML
        with open(yaml_path) as f:
            saved = YAML(typ='safe', pure=True).load(f)
    elif isinstance(state.get('config'), dict):
        saved = state['config']
    else:
        raise ConfigError(f"No config.yaml next to '{ckpt_path}' and none stored in it: copy the run's config.yaml "
                          f"into {os.path.dirname(ckpt_path) or '.'}.")
    if saved.get('beta_vae_pretrain'):
        raise ConfigError(f"'{ckpt_path}' belongs to a video-pretraining run (no policy): give the checkpoint.pt of "
                          f"an online training run.")
    base = tools.make_config(['--configs', 'defaults']).to_dict()
    unknown = _update_known(base, saved)
    if unknown:
        print(f"Note: ignoring keys of the run's config unknown to this code: {', '.join(unknown[:8])}.")
    config = tools.finalize_config(tools.Config(base))
    config.device = device
    return config


def checkpoint_action_size(agent_state: dict) -> int | None:
    """Action size of a saved agent, read from its actor's output layer (mean and std per action)."""
    weights = [k for k in agent_state if k.startswith('behavior.actor.') and k.endswith('.weight')]
    if not weights:
        return None
    last = max(weights, key=lambda k: [int(p) if p.isdigit() else -1 for p in k.split('.')])
    return int(agent_state[last].shape[0]) // 2


def _write_pretrained_parts(agent_state: dict, spec, directory: str) -> None:
    """Methods built on the pretrained video model (DisWM, APV, DV2 Finetune) load its files when constructed; their
    weights are overwritten by the checkpoint right after, so the copies inside the checkpoint are written out
    instead of requiring the original pretraining folder."""
    import torch

    def subset(match) -> dict:
        return {k.split(match, 1)[1]: v for k, v in agent_state.items() if match in k}

    parts = {}
    if spec.teacher:
        parts['encoder'] = subset('.teacher.')
    for name in spec.load:
        parts[name] = subset(f'wm.{name}.')
    if spec.video_stack:
        parts['rssm'] = subset('wm.video_rssm.')
    for name, part in parts.items():
        torch.save(part, os.path.join(directory, f'{name}.pt'))


def load_agent_policy(path: str, config, action_size: int, sample_actions: bool):
    """Builds `models.Agent` from a run's config and checkpoint; returns (policy, run config, checkpoint path)."""
    import torch

    import dreamer
    import models

    ckpt_path = _checkpoint_path(path)
    try:
        state = torch.load(ckpt_path, map_location='cpu', weights_only=False)
    except Exception as e:
        raise ConfigError(f"Checkpoint '{ckpt_path}' is unreadable ({type(e).__name__}: {e}).") from None
    if not isinstance(state, dict) or 'agent' not in state:
        raise ConfigError(f"'{ckpt_path}' is not a dreamer.py checkpoint (no 'agent' weights).")
    agent_config = run_config(ckpt_path, state, config.device)
    saved_actions = checkpoint_action_size(state['agent'])
    if saved_actions != action_size:
        raise ConfigError(
            f"The policy in '{ckpt_path}' (task {agent_config.task}) has {saved_actions} actions but "
            f"{config.task} has {action_size}: collect with a checkpoint trained on {config.task} (or a task with "
            f"{action_size} actions), or with --policy random.")
    spec = models.method_spec(agent_config)
    with tempfile.TemporaryDirectory() as parts_dir:
        if spec.needs_checkpoint:
            _write_pretrained_parts(state['agent'], spec, parts_dir)
            agent_config.pretrain_checkpoint_path = parts_dir
        agent = models.Agent(agent_config, action_size)
    own = agent.state_dict()
    problems = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}' for k, v in state['agent'].items()
                if k in own and own[k].shape != v.shape]
    missing, extra = sorted(set(own) - set(state['agent'])), sorted(set(state['agent']) - set(own))
    if problems or missing or extra:
        details = '; '.join(problems[:3] + ([f'missing {missing[:3]}'] if missing else []) +
                            ([f'unexpected {extra[:3]}'] if extra else []))
        raise ConfigError(f"'{ckpt_path}' does not fit the agent built from its run's config ({details}): keep the "
                          f"run's config.yaml next to its checkpoint.pt.")
    dreamer.load_checkpoint(ckpt_path, agent, None)
    agent.eval()
    del state

    def act(obs, agent_state, training):
        return agent.policy(obs, agent_state, training=sample_actions)

    return act, agent_config, ckpt_path


# --------------------------------------------------------------------------------------------------------------------
# Collection
# --------------------------------------------------------------------------------------------------------------------
def collect(config, policy: str, episodes: int, out: str, distractor: str | None = None, save_actions: bool = True,
            sample_actions: bool = False, explicit=frozenset()) -> dict:
    """Runs `episodes` episodes of `policy` in `config.task` and saves each into `out`; returns a summary dict
    (episodes, frames, returns, paths in collection order)."""
    from tqdm import tqdm

    import dreamer
    import env as envs
    import replay as replay_lib

    environment = _make_env(envs, config, distractor)
    try:
        distractor = distractor or envs.distractor_schedule(config.task, True)['train_1']
        tools.set_seed(config.seed)
        agent_config = None
        if policy == 'random':
            act = dreamer.random_policy(environment.action_size, np.random.default_rng(config.seed))
        else:
            act, agent_config, policy = load_agent_policy(policy, config, environment.action_size, sample_actions)
            inherited = {k: agent_config[k] for k in POLICY_ENV_KEYS
                         if k not in explicit and config[k] != agent_config[k]}
            if inherited:
                print(f"Using the run's env settings {inherited} (override with --key value).")
                config.update(inherited)
                environment.close()
                environment = _make_env(envs, config, distractor)
            if agent_config.task != config.task:
                print(f"Note: the policy was trained on {agent_config.task}, collecting on {config.task}.")
            tools.set_seed(config.seed)  # loading restored the run's RNG state; sampled actions follow --seed
        existing = len(replay_lib.list_episodes(out, recursive=False)) if os.path.isdir(out) else 0
        if existing:
            print(f"{out} already holds {existing} episodes; adding {episodes} more.")
        returns, frames, paths = [], 0, []
        start = time.time()
        bar = tqdm(range(episodes), unit='ep', desc=f'collect {config.task}', disable=not config.progress,
                   dynamic_ncols=True)
        for _ in bar:
            rec = dreamer.run_episode(environment, act, training=sample_actions)
            episode = rec.episode()
            if not save_actions:
                episode.pop('action')
            paths.append(replay_lib.save_episode(out, episode))
            returns.append(rec.score)
            frames += len(episode['image'])
            bar.set_postfix(ret=f'{rec.score:.1f}', frames=frames)
        bar.close()
    finally:
        environment.close()
    summary = dict(task=config.task, policy=policy, distractor=distractor, seed=config.seed, episodes=len(paths),
                   frames=frames, agent_steps=frames - len(paths), mean_return=float(np.mean(returns)),
                   std_return=float(np.std(returns)), out=out, seconds=time.time() - start,
                   action_repeat=config.action_repeat, time_limit=config.time_limit, color=config.color.to_dict(),
                   release_compat=config.release_compat, save_actions=save_actions,
                   sample_actions=sample_actions if agent_config is not None else None)
    with open(os.path.join(out, 'collections.jsonl'), 'a') as f:
        f.write(json.dumps(dict(summary, time=tools.timestamp())) + '\n')
    summary['paths'] = paths
    return summary


def _make_env(envs, config, distractor: str | None):
    """`env.make_env` with this task's first training set by default; a bad task or set becomes a ConfigError."""
    try:
        distractor = distractor or envs.distractor_schedule(config.task, True)['train_1']
        return envs.make_env(config.task, config, config.seed, distractor)
    except ValueError as e:  # unknown task or distractor set: the env's message names the valid ones
        raise ConfigError(str(e)) from None


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, config, explicit = parse_args(argv)
        summary = collect(config, args.policy, args.episodes, args.out, args.distractor, args.save_actions,
                          args.sample_actions, explicit)
    except ConfigError as e:
        print(f'Error: {e}', file=sys.stderr)
        return 2
    print(f"Collected {summary['episodes']} episodes, {summary['frames']} frames of {config.task} "
          f"(policy {summary['policy']}, distractor '{summary['distractor']}', seed {config.seed}), mean return "
          f"{summary['mean_return']:.1f} ± {summary['std_return']:.1f}, in {summary['seconds']:.0f} s -> {args.out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
