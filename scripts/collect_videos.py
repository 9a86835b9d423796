"""Collects colour-distracted video episodes of a source task for DisWM's video pretraining (docs/method.md, "Stage 1").

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

Held-out evaluation episodes for the disentanglement metrics (`--heldout True`, DMC only; docs/disentanglement.md):

    MUJOCO_GL=egl .venv/bin/python scripts/collect_videos.py --task dmc2gym_reacher_easy --policy random \
        --heldout True --episodes 30 --out data/reacher_easy/heldout [--policy runs/reacher/checkpoint.pt]

Episode i uses the fixed seed `--heldout_seed + i` (default 1_000_000 + i, far from any training or evaluation seed;
`--seed` is not used), colour set i % 2 (train, test; or only `--distractor`), and, when `--policy` is a checkpoint,
random actions for the pairs i // 2 even and the policy for the others (all random with `--policy random`). Besides
the usual keys each episode holds the ground-truth factors of every frame, read right after the frame was rendered:
`factor_color` (T, M*3) the RGB of every material, `factor_color_names` (M*3,), `factor_state` (T, S) joint positions
(`env.dmc.DMCEnv.state_factors`), `factor_state_names` (S,), `material_names` (M,), `material_coverage` (T, M) the
fraction of pixels each material covers (segmentation render), `visible_materials` (those covering >= 0.5 % of the
pixels on average over the episode), `colour_set`, `policy` ('random' | 'checkpoint') and `episode_seed`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('MUJOCO_GL', 'egl')  # before dm_control / mujoco are imported

import numpy as np  # noqa: E402

import tools  # noqa: E402
from tools import ConfigError  # noqa: E402

# Env settings a trained policy depends on: taken from its run unless given on the command line.
POLICY_ENV_KEYS = ('action_repeat', 'size', 'camera', 'release_compat')
# Held-out evaluation episodes: episode i uses seed HELDOUT_SEED + i (training runs use --seed + small offsets and
# evaluation envs --seed + 10_000 + offsets, video collections --seed), and keeps a material as visible when its
# geoms cover at least MIN_COVERAGE of the pixels on average over the episode.
HELDOUT_SEED = 1_000_000
MIN_COVERAGE = 0.005


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
    parser.add_argument('--heldout', default='False',
                        help='held-out evaluation episodes for scripts/disentanglement.py (DMC): fixed seeds '
                             '--heldout_seed + i, both colour sets, half random / half --policy, and the per-frame '
                             'factor keys (factor_color, factor_state, material_coverage, visible_materials, ...)')
    parser.add_argument('--heldout_seed', type=int, default=HELDOUT_SEED,
                        help=f'first seed of the held-out episodes (default {HELDOUT_SEED}); --seed is not used')
    return parser


def parse_args(argv: list[str]):
    """Splits the command line into this script's flags and a resolved configs.yaml config (env and device)."""
    args, rest = build_parser().parse_known_args(argv)
    args.save_actions = tools.parse_value(args.save_actions, True, 'save_actions')
    args.sample_actions = tools.parse_value(args.sample_actions, False, 'sample_actions')
    args.heldout = tools.parse_value(args.heldout, False, 'heldout')
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
    tools.check_device(config)
    return args, config, explicit


# --------------------------------------------------------------------------------------------------------------------
# Trained-agent policy
# --------------------------------------------------------------------------------------------------------------------
def load_agent_policy(path: str, config, action_size: int, sample_actions: bool):
    """A trained agent as a policy (`agents.load_agent`: architecture from the run's own config, shapes checked);
    returns (policy, run config, checkpoint path)."""
    import agents

    ckpt_path = agents.checkpoint_file(path)
    state = agents.read_checkpoint(ckpt_path)
    saved_actions = agents.checkpoint_action_size(state.get('agent', {})) if isinstance(state, dict) else None
    if saved_actions is not None and saved_actions != action_size:
        task = (state.get('config') or {}).get('task', 'unknown')
        raise ConfigError(
            f"The policy in '{ckpt_path}' (task {task}) has {saved_actions} actions but {config.task} has "
            f"{action_size}: collect with a checkpoint trained on {config.task} (or a task with {action_size} "
            f"actions), or with --policy random.")
    agent, agent_config, ckpt_path = agents.load_agent(ckpt_path, dict(device=config.device), state)
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

    from env import driver
    import env as envs
    import replay as replay_lib

    environment = _make_env(envs, config, distractor)
    try:
        distractor = distractor or envs.distractor_schedule(config.task, True)['train_1']
        tools.set_seed(config.seed)
        agent_config = None
        if policy == 'random':
            act = driver.random_policy(environment.action_size, np.random.default_rng(config.seed))
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
            rec = driver.run_episode(environment, act, training=sample_actions)
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
    tools.append_jsonl(os.path.join(out, 'collections.jsonl'), dict(summary, time=tools.timestamp()))
    summary['paths'] = paths
    return summary


def _make_env(envs, config, distractor: str | None):
    """`env.make_env` with this task's first training set by default; a bad task or set becomes a ConfigError."""
    try:
        distractor = distractor or envs.distractor_schedule(config.task, True)['train_1']
        return envs.make_env(config.task, config, config.seed, distractor)
    except ValueError as e:  # unknown task or distractor set: the env's message names the valid ones
        raise ConfigError(str(e)) from None


# --------------------------------------------------------------------------------------------------------------------
# Held-out evaluation episodes with ground-truth factors (--heldout True)
# --------------------------------------------------------------------------------------------------------------------
def heldout_plan(episodes: int, colour_sets, with_policy: bool, seed: int = HELDOUT_SEED) -> list[dict]:
    """Seed, colour set and policy of each held-out episode: colour sets alternate; with a policy, pairs of
    episodes alternate random / policy, so both halves cover both colour sets."""
    return [dict(seed=seed + i, colour_set=colour_sets[i % len(colour_sets)],
                 policy='checkpoint' if with_policy and (i // len(colour_sets)) % 2 == 1 else 'random')
            for i in range(episodes)]


def run_factor_episode(environment, act, training: bool = False):
    """`env.driver.run_episode` that also reads the base env's full factors right after every frame was rendered (the
    wrapper renders once after the last sub-step; nothing touches the model before they are read). Returns
    (EpisodeRecorder, list of factor dicts, one per frame)."""
    from env import driver

    base = environment.unwrapped
    factors = []
    rec = driver.run_episode(environment, act, training, on_frame=lambda: factors.append(base.factors(full=True)))
    return rec, factors


def factor_keys(base, factors: list[dict], min_coverage: float = MIN_COVERAGE) -> dict:
    """The extra npz keys of a held-out episode from the per-frame factor dicts of `run_factor_episode`."""
    materials = base.material_names
    coverage = np.stack([f['material_coverage'] for f in factors]).astype(np.float32)
    return {
        'factor_color': np.stack([f['material_rgb'] for f in factors]).astype(np.float32),
        'factor_color_names': np.array([f'{m}_{c}' for m in materials for c in 'rgb'], dtype=str),
        'factor_state': np.stack([f['state'] for f in factors]).astype(np.float32),
        'factor_state_names': np.array(base.state_factor_names, dtype=str),
        'material_names': np.array(materials, dtype=str),
        'material_coverage': coverage,
        'visible_materials': np.array([m for m, c in zip(materials, coverage.mean(0)) if c >= min_coverage],
                                      dtype=str),
    }


def collect_heldout(config, policy: str, episodes: int, out: str, distractor: str | None = None,
                    save_actions: bool = True, sample_actions: bool = False, explicit=frozenset(),
                    seed: int = HELDOUT_SEED) -> dict:
    """Held-out evaluation episodes with per-frame factors (see the module docstring); returns a summary dict."""
    from tqdm import tqdm

    from env import driver
    import env as envs
    import replay as replay_lib

    if os.path.isdir(out) and replay_lib.list_episodes(out, recursive=False):
        raise ConfigError(f"{out} already holds episodes; held-out episodes use fixed seeds, so collect them into a "
                          f"new folder (or delete it) instead of adding duplicates.")
    colour_sets = [distractor] if distractor else list(dict.fromkeys(
        envs.distractor_schedule(config.task, True)[k] for k in ('train_1', 'train_2')))
    probe = _make_env(envs, config, colour_sets[0])
    try:
        if not hasattr(probe, 'state_factors'):
            raise ConfigError(f'--heldout True records ground-truth factors, which only the DMC envs provide '
                              f'(task {config.task}).')
        action_size = probe.action_size
    finally:
        probe.close()
    agent_act = None
    if policy != 'random':
        agent_act, agent_config, policy = load_agent_policy(policy, config, action_size, sample_actions)
        inherited = {k: agent_config[k] for k in POLICY_ENV_KEYS if k not in explicit and config[k] != agent_config[k]}
        if inherited:
            print(f"Using the run's env settings {inherited} (override with --key value).")
            config.update(inherited)
    plan = heldout_plan(episodes, colour_sets, agent_act is not None, seed)
    returns, frames, paths, visible = [], 0, [], {}
    start = time.time()
    bar = tqdm(plan, unit='ep', desc=f'heldout {config.task}', disable=not config.progress, dynamic_ncols=True)
    for item in bar:
        try:
            environment = envs.make_env(config.task, config, item['seed'], item['colour_set'])
        except ValueError as e:
            raise ConfigError(str(e)) from None
        try:
            if item['policy'] == 'random':
                act = driver.random_policy(action_size, np.random.default_rng([HELDOUT_SEED, item['seed']]))
            else:
                tools.set_seed(item['seed'])
                act = agent_act
            rec, factors = run_factor_episode(environment, act, training=sample_actions)
            episode = rec.episode()
            episode.update(factor_keys(environment.unwrapped, factors))
        finally:
            environment.close()
        episode.update(colour_set=np.array(item['colour_set']), policy=np.array(item['policy']),
                       episode_seed=np.array(item['seed'], np.int64))
        if not save_actions:
            episode.pop('action')
        paths.append(replay_lib.save_episode(out, episode))
        returns.append(rec.score)
        frames += len(episode['image'])
        for name in episode['visible_materials'].tolist():
            visible[name] = visible.get(name, 0) + 1
        bar.set_postfix(ret=f'{rec.score:.1f}', frames=frames)
    bar.close()
    summary = dict(task=config.task, heldout=True, policy=policy, colour_sets=colour_sets, heldout_seeds=[
        seed, seed + episodes - 1], episodes=len(paths), frames=frames, agent_steps=frames - len(paths),
        mean_return=float(np.mean(returns)), std_return=float(np.std(returns)), out=out,
        seconds=time.time() - start, action_repeat=config.action_repeat, time_limit=config.time_limit,
        color=config.color.to_dict(), release_compat=config.release_compat, save_actions=save_actions,
        sample_actions=sample_actions if agent_act is not None else None, visible_materials=visible,
        plan=[dict(item) for item in plan], distractor=','.join(colour_sets))
    tools.append_jsonl(os.path.join(out, 'collections.jsonl'), dict(summary, time=tools.timestamp()))
    summary['paths'] = paths
    return summary


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args, config, explicit = parse_args(argv)
        if args.heldout:
            summary = collect_heldout(config, args.policy, args.episodes, args.out, args.distractor,
                                      args.save_actions, args.sample_actions, explicit, args.heldout_seed)
        else:
            summary = collect(config, args.policy, args.episodes, args.out, args.distractor, args.save_actions,
                              args.sample_actions, explicit)
    except ConfigError as e:
        print(f'Error: {e}', file=sys.stderr)
        return 2
    if args.heldout:
        print(f"Visible materials (episodes in which each covers >= {MIN_COVERAGE:.1%} of the pixels): "
              f"{summary['visible_materials']}")
        first, last = summary['heldout_seeds']
        print(f"Collected {summary['episodes']} held-out episodes, {summary['frames']} frames of {config.task} "
              f"(policy {summary['policy']}, colour sets {summary['colour_sets']}, seeds {first}..{last}), mean "
              f"return {summary['mean_return']:.1f} ± {summary['std_return']:.1f}, in {summary['seconds']:.0f} s "
              f"-> {args.out}")
        return 0
    print(f"Collected {summary['episodes']} episodes, {summary['frames']} frames of {config.task} "
          f"(policy {summary['policy']}, distractor '{summary['distractor']}', seed {config.seed}), mean return "
          f"{summary['mean_return']:.1f} ± {summary['std_return']:.1f}, in {summary['seconds']:.0f} s -> {args.out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
