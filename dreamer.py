"""The single entry point: CLI and config resolution, the run folder, and the stage loop that `--mode` picks: online
training (train), evaluation-only runs (eval), the action-free video pretraining (video_pretrain) and Vid2Act's
teacher pretraining (teacher_pretrain). Nothing imports it; the acting loop is `env/driver.py`, agents are built and
loaded by `agents.py`.

    python dreamer.py --configs defaults dmc2gym --task dmc2gym_walker_walk --logdir runs/x --seed 0 [--key value ...]

Running the same command again resumes from `<logdir>/checkpoint.pt` and the episodes on disk.
"""
from __future__ import annotations

import os

os.environ.setdefault('MUJOCO_GL', 'egl')  # headless rendering; must be set before dm_control / mujoco import

import json
import sys
import time

import numpy as np
import torch

import agents
import models
import tools
from env.driver import Collector, random_policy  # the acting loop
from tools import ConfigError

# --------------------------------------------------------------------------------------------------------------------
# Run folder
# --------------------------------------------------------------------------------------------------------------------
# Keys a later start of a run may change (each change is recorded in <logdir>/resumes.jsonl); every other key defines
# the run and must equal the value in its config.yaml.
RESUMABLE_KEYS = frozenset({
    'steps', 'threads', 'device', 'precision', 'compile', 'compile_mode', 'tf32', 'malloc_cache', 'deterministic',
    'progress', 'tensorboard', 'tensorboard_video', 'wandb', 'log_every', 'logdir', 'logdir_timestamp', 'eval_videos',
    'checkpoint_every', 'keep_checkpoints', 'pretrain_steps', 'pretrain_save_every', 'model_memory_fraction'})
FINISHED_FILE = 'finished.json'   # written when training reached --steps (after the final checkpoint)
_RUN_LOCK: dict = {}               # logdir -> open lock file, held for the life of the process


def _plain(config) -> dict:
    return json.loads(json.dumps(config.to_dict()))


def run_changes(logdir: str, config) -> tuple[list[str], dict]:
    """Compares `config` with the run's stored config.yaml (read-only). Returns the differing run-defining keys as
    message lines and the changed resumable keys as {key: [stored, now]}. Keys present on one side only (written by
    another version of the code) are not compared."""
    path = os.path.join(logdir, 'config.yaml')
    if not os.path.exists(path):
        return [], {}
    from ruamel.yaml import YAML
    try:
        with open(path) as f:
            stored = YAML(typ='safe', pure=True).load(f)
    except Exception as e:
        raise ConfigError(f"'{path}' is unreadable ({e}); the run folder is damaged: use a new --logdir.") from None
    stored = tools.upgrade_saved_config(stored)
    now = _plain(config)
    conflicts, resumable = [], {}
    for key in sorted(set(stored or {}) & set(now)):
        if stored[key] == now[key]:
            continue
        if key in RESUMABLE_KEYS:
            resumable[key] = [stored[key], now[key]]
        else:
            conflicts.append(f'  --{key}: the run has {stored[key]!r}, this command {now[key]!r}')
    return conflicts, resumable


def check_run_identity(config) -> dict:
    """Stops (before anything is written) when the command would change what the run in --logdir is."""
    if not config.logdir:
        raise ConfigError('--logdir is required (the run folder; rerunning with the same folder resumes).')
    conflicts, resumable = run_changes(config.logdir, config)
    if conflicts:
        raise ConfigError(f"--logdir '{config.logdir}' holds a different run; these settings differ from its "
                          f"config.yaml:\n" + '\n'.join(conflicts) +
                          '\nNothing was changed. Start a new run with another --logdir, or rerun with the '
                          "run's own settings to resume it.")
    return resumable


def lock_run_folder(logdir: str) -> None:
    """Exclusive lock on `<logdir>/.run.lock` for the life of this process (the OS releases it when the process
    dies); a second process on the same folder stops at once, naming the first."""
    import fcntl
    key = os.path.realpath(logdir)
    if key in _RUN_LOCK:
        return
    f = open(os.path.join(logdir, '.run.lock'), 'a+')
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or 'another process'
        f.close()
        raise ConfigError(f"--logdir '{logdir}' is in use by {owner}. Wait for it to finish or stop it; a second "
                          f"process must not write into the same run folder.") from None
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()} on {os.uname().nodename}\n')
    f.flush()
    _RUN_LOCK[key] = f


def remove_stale_temp_files(logdir: str) -> int:
    """Deletes `*.tmp*` files that killed or failed atomic writes left behind (only called under the run lock)."""
    removed = 0
    for folder, _, files in os.walk(logdir):
        for name in files:
            if '.tmp' in name:
                try:
                    os.remove(os.path.join(folder, name))
                    removed += 1
                except OSError:
                    pass
    return removed


def finished_run(config) -> dict | None:
    """The run's finished.json when it already trained to at least --steps (read-only), else None."""
    path = os.path.join(config.logdir, FINISHED_FILE)
    try:
        with open(path) as f:
            done = json.load(f)
    except (OSError, ValueError):
        return None
    return done if done.get('env_steps', -1) >= config.steps else None


def record_resume(logdir: str, **fields) -> None:
    """Appends one line to <logdir>/resumes.jsonl, the run folder's log of its later starts: the settings a start
    changed (`changed`, {key: [stored, now]}) or the point a training run resumed from (`resumed_from`)."""
    tools.append_jsonl(os.path.join(logdir, 'resumes.jsonl'), {'time': tools.timestamp(), **fields})


def prepare_logdir(config, check_identity: bool = True) -> str:
    """Validates the run folder, then takes it: identity against config.yaml (nothing written on a mismatch), the
    process lock, stale temp files removed, config.yaml written (first start) or the changed resumable keys recorded
    in resumes.jsonl (later starts)."""
    if not config.logdir:
        raise ConfigError('--logdir is required (the run folder; rerunning with the same folder resumes).')
    if config.logdir_timestamp:
        config.logdir = os.path.join(config.logdir, tools.timestamp())
    resumable = check_run_identity(config) if check_identity else {}
    logdir = config.logdir
    try:
        os.makedirs(logdir, exist_ok=True)
        probe = os.path.join(logdir, f'.write_test{os.getpid()}')
        with open(probe, 'w') as f:
            f.write('ok')
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"Cannot write to --logdir '{logdir}' ({e.strerror}): choose a writable folder.") from None
    lock_run_folder(logdir)
    removed = remove_stale_temp_files(logdir)
    if removed:
        print(f'Removed {removed} temporary file(s) left by an earlier crash in {logdir}.')
    if resumable:   # only on a later start of a run whose config.yaml exists
        record_resume(logdir, changed=resumable)
        print('Resuming with changed settings: ' +
              ', '.join(f'{k} {old!r} -> {new!r}' for k, (old, new) in resumable.items()))
    tools.save_config(config, os.path.join(logdir, 'config.yaml'))
    return logdir


# --------------------------------------------------------------------------------------------------------------------
# Online training
# --------------------------------------------------------------------------------------------------------------------
def distractor_schedule(config) -> dict:
    import env as envs
    try:
        envs.split_task(config.task)
        return envs.distractor_schedule(config.task, config.color_distractor, config.clean_render)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def make_parallel(config, seed: int, distractor: str):
    """`config.envs` envs seeded seed + i (worker processes when more than one)."""
    from env.parallel import ParallelEnvs
    try:
        return ParallelEnvs(config.task, config, [seed + i for i in range(config.envs)], distractor)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def make_envs(config, schedule, phase: int, seed_offset: int):
    train_envs = make_parallel(config, config.seed + seed_offset, schedule[f'train_{phase}'])
    eval_envs = make_parallel(config, config.seed + 10_000 + seed_offset, schedule[f'eval_{phase}'])
    return train_envs, eval_envs


def save_checkpoint(path: str, agent, counters: dict, replay, config) -> None:
    tools.atomic_torch_save({
        'agent': agent.state_dict(), 'optimizers': agent.optimizer_state(), 'counters': dict(counters),
        'rng': tools.rng_state(), 'replay_rng': replay.rng.bit_generator.state, 'config': config.to_dict(),
    }, path)


def set_aside_episodes(train_dir: str, last_episode: str | None, to: str) -> int:
    """Moves the episode files named after `last_episode` (names sort by time) out of `train_dir` into `to`."""
    import replay as replay_lib
    if not last_episode or not os.path.isdir(train_dir):
        return 0
    later = [p for p in replay_lib.list_episodes(train_dir, recursive=False) if os.path.basename(p) > last_episode]
    if later:
        os.makedirs(to, exist_ok=True)
        for path in later:
            os.replace(path, os.path.join(to, os.path.basename(path)))
    return len(later)


def keep_snapshot(path: str, snapshot: str) -> None:
    """A numbered copy of the checkpoint just written (a hard link where the file system allows: no extra space
    until the next checkpoint replaces `path`)."""
    import shutil
    os.makedirs(os.path.dirname(snapshot), exist_ok=True)
    if os.path.exists(snapshot):
        os.remove(snapshot)
    try:
        os.link(path, snapshot)
    except OSError:
        shutil.copyfile(path, snapshot + '.tmp')
        os.replace(snapshot + '.tmp', snapshot)


def evaluate(agent, eval_envs, config, logger, episodes: int, video_dir: str | None = None):
    """Runs evaluation episodes with the actor's mean action (sampled ones with --eval_sample True); logs eval_return,
    eval_return_average/_std, eval_success_rate."""
    import replay as replay_lib
    agent.eval()
    recs = Collector(eval_envs).episodes(agent.policy, training=False, count=episodes)
    agent.train()
    returns = [rec.score for rec in recs]
    successes = [float(rec.success) for rec in recs]
    for rec in recs:
        logger.scalar('eval_return', rec.score)
        if video_dir:
            replay_lib.save_episode(video_dir, rec.episode())
    logger.scalar('eval_return_average', float(np.mean(returns)))
    logger.scalar('eval_return_std', float(np.std(returns)))
    logger.scalar('eval_length', float(np.mean([len(rec) for rec in recs])))
    if any(rec.reports_success for rec in recs):
        logger.scalar('eval_success_rate', float(np.mean(successes)))
    return returns, successes, recs


def log_predictions(agent, replay, logger, config, logdir: str, step: int) -> None:
    """Open-loop video prediction and (with --traverse) a latent traversal PNG of the current world model."""
    import imageio.v2 as imageio
    length = max(config.batch_length, 8)
    if len(replay) < length:
        return
    data = agent.to_torch(replay.sample(min(4, config.batch_size), length))
    logger.video('openloop', agent.wm.open_loop(data))
    if config.traverse and config.beta_vae:
        grid = agent.wm.traverse(data['image'])
        os.makedirs(os.path.join(logdir, 'traversals'), exist_ok=True)
        path = os.path.join(logdir, 'traversals', f'traverse_{step:08d}.png')
        imageio.imwrite(path + '.tmp.png', grid)
        os.replace(path + '.tmp.png', path)
        logger.image('traverse', grid)


TIME_KEYS = ('time_env', 'time_update', 'time_eval', 'time_paused')


def log_times(logger, counters: dict) -> None:
    """Cumulative seconds since the run began of env stepping (incl. acting), updates and evaluation, wall-clock time
    less pauses (SIGTSTP: Ctrl-Z or `kill -TSTP PID`), and of those pauses."""
    for key in TIME_KEYS:
        logger.scalar(key, counters[key])


def train(config) -> None:
    import replay as replay_lib
    from tqdm import tqdm

    schedule = distractor_schedule(config)  # validates the task before anything is written
    check_run_identity(config)
    done = finished_run(config)
    if done:
        print(f"Run complete: {config.logdir} trained to {done['env_steps']} env steps ({done['updates']} updates; "
              f"--steps {config.steps}). Nothing to do.\n  metrics:    {os.path.join(config.logdir, 'metrics.jsonl')}"
              f"\n  checkpoint: {os.path.join(config.logdir, 'checkpoint.pt')}\n"
              f"Pass a larger --steps to train on.")
        return
    logdir = prepare_logdir(config)
    tools.configure_torch(config)
    train_dir, eval_dir = os.path.join(logdir, 'train_eps'), os.path.join(logdir, 'eval_eps')
    ckpt_path = os.path.join(logdir, 'checkpoint.pt')
    logger = tools.Logger(logdir, config, use_tensorboard=config.tensorboard, use_wandb=config.wandb)
    repeat = config.action_repeat
    total_steps = config.steps // repeat
    switches = schedule['train_1'] != schedule['train_2'] or schedule['eval_1'] != schedule['eval_2']
    switch_step = total_steps // 2 if switches else None

    saved_state = agents.read_checkpoint(ckpt_path) if os.path.exists(ckpt_path) else None
    moved, from_checkpoint = 0, saved_state is not None
    if from_checkpoint:
        # Episodes finished after the checkpoint was written: their steps and updates are not in the loaded weights.
        moved = set_aside_episodes(train_dir, saved_state['counters'].get('last_episode'),
                                   os.path.join(logdir, 'train_eps_after_checkpoint'))
        if moved:
            print(f'{moved} episode(s) finished after the last checkpoint were moved to train_eps_after_checkpoint/ '
                  f'so that the replay and the step count match the loaded weights.')
    replay = replay_lib.for_training(config)
    episodes, _ = replay_lib.load_episodes(train_dir, limit_steps=config.dataset_size or None)
    for ep in episodes:
        replay.add_episode(ep)
    step = replay_lib.count_steps(train_dir)      # completed episodes on disk are the ground truth

    phase = 2 if switch_step is not None and step >= switch_step else 1
    train_envs, eval_envs = make_envs(config, schedule, phase, seed_offset=len(episodes))
    action_size = train_envs.action_size
    agent = agents.make_agent(config, action_size, step=step)
    # Seconds spent on env stepping, updates and evaluation, SIGTSTP pauses left out, and of those pauses (cumulative
    # over resumes; logged as time_*).
    counters = {'step': step, 'updates': 0, 'episodes': len(episodes), **{key: 0.0 for key in TIME_KEYS}}
    if saved_state is not None:
        saved = agents.load_checkpoint(ckpt_path, agent, replay, saved_state)
        del saved_state
        counters['updates'] = saved.get('updates', 0)
        for key in TIME_KEYS:
            counters[key] = saved.get(key, 0.0)
        if 'train_last' in saved:          # older checkpoints lack it: counting restarts at `step`
            counters['train_last'] = saved['train_last']
        print(f'Resuming from {ckpt_path}: agent step {step} ({step * repeat} env steps), '
              f'{len(episodes)} episodes on disk, {agent.updates} updates done.')
    elif step > 0:
        print(f'Found {len(episodes)} episodes ({step} agent steps) in {train_dir} but no checkpoint: '
              f'continuing with fresh weights.')
    if step > 0:   # where this start picks the run up (steps past it that an earlier start made are run again)
        record_resume(logdir, resumed_from={'env_steps': step * repeat, 'updates': agent.updates,
                                            'episodes': len(episodes), 'checkpoint': from_checkpoint},
                      episodes_set_aside=moved)
    print(f"Method {agent.spec.name} on {config.task} ({action_size} actions, device {config.device}); "
          f"{total_steps} agent steps = {config.steps} env steps; logs in {logdir}")
    if switch_step is not None:
        print(f'Distractor schedule: {schedule}; switch to set 2 at agent step {switch_step}.')

    rng = np.random.default_rng(config.seed + len(episodes))
    prefill_until = step + (max(0, config.prefill - step) if not os.path.exists(ckpt_path) else 0)
    # The schedule, in agent steps (train) and env steps (log, eval); the first training call does `pretrain` updates.
    # The update schedule's position is part of the checkpoint: a resume keeps the steps updates fall on.
    train_ratio = tools.Ratio(config.train_every, start=counters.get('train_last', step))
    log_due = tools.Every(config.log_every, start=step * repeat)
    eval_due = tools.Every(config.eval_every, start=step * repeat)
    first_call = counters['updates'] == 0
    timer = tools.Timer(counters)
    tools.count_pauses()
    paused_offset = counters['time_paused'] - tools.paused_seconds()   # earlier processes' pauses of this run
    fps_time, fps_step = tools.run_clock(), step
    last_return, last_save = float('nan'), time.time()

    bar = tqdm(total=total_steps, initial=min(step, total_steps), unit='step', dynamic_ncols=True,
               disable=not config.progress, desc='train')
    collector = Collector(train_envs)
    guard = tools.FiniteGuard(config.device, skip_grad_norms=config.precision == '16')
    prefetcher = None
    act = random_policy(action_size, rng)
    if prefill_until > step:
        print(f'Prefilling {prefill_until - step} agent steps with random actions ({config.envs} env(s)).')
    while counters['step'] < total_steps:
        # Collect one step of every env; finished episodes go to disk and into the replay.
        with timer('time_env'):
            finished = collector.step(act if counters['step'] < prefill_until else agent.policy, training=True)
            for _, rec in finished:
                ep = rec.episode()
                counters['last_episode'] = os.path.basename(replay_lib.save_episode(train_dir, ep))
                replay.add_episode(ep)
                counters['episodes'] += 1
                last_return = rec.score
                logger.scalar('train_return', rec.score)
                logger.scalar('train_length', len(rec))
                if rec.reports_success:
                    logger.scalar('train_success', float(rec.success))
                fps = (counters['step'] - fps_step) * repeat / max(tools.run_clock() - fps_time, 1e-6)
                bar.set_postfix(ret=f'{last_return:.1f}', fps=f'{fps:.0f}')
        counters['step'] += config.envs
        bar.update(config.envs)
        if switch_step is not None and phase == 1 and counters['step'] >= switch_step:
            phase = 2
            train_envs.set_distractor(schedule['train_2'])   # every worker, at its next reset
            eval_envs.set_distractor(schedule['eval_2'])
            print(f"Distractor switch at agent step {counters['step']}: train '{schedule['train_2']}', "
                  f"eval '{schedule['eval_2']}'.")
            logger.scalar('distractor_switch', 1.0)
            logger.scalar('distractor_phase', 2.0)
        # Train: `train_steps` updates per `train_every` agent steps (once the replay holds a sequence).
        prefilling = counters['step'] < prefill_until
        if prefilling:
            train_ratio.restart(counters['step'])
            due = 0
        else:
            due = train_ratio(counters['step']) if len(replay) >= config.batch_length else 0
        counters['train_last'] = train_ratio.last   # stored in checkpoints: a resume keeps the schedule's position
        if due:
            with timer('time_update'):
                for _ in range(config.prefill_updates if first_call else due * config.train_steps):
                    batch = prefetcher.next() if prefetcher else replay.sample(config.batch_size, config.batch_length)
                    metrics = agent.update(batch, counters['step'])
                    guard.watch(metrics, agent.updates)
                    logger.scalars(metrics)
                    if prefetcher is None and str(config.device).startswith('cuda'):
                        # On a GPU the next batch is sampled, pinned and copied in a background thread while the
                        # update runs. Not on CPUs: there it gains nothing and would make sampling timing-dependent.
                        prefetcher = replay_lib.Prefetcher(replay, config.batch_size, config.batch_length,
                                                           agent.training_batch)
            first_call = False
            counters['updates'] = agent.updates
        counters['time_paused'] = paused_offset + tools.paused_seconds()
        # A periodic checkpoint: on a step that finished an episode (the episodes on disk match it) and after that
        # step's updates (a resume counts the updates due from its step on; it must find this step's done).
        if finished and time.time() - last_save >= config.checkpoint_every * 60 and counters['step'] < total_steps:
            guard.check()
            save_checkpoint(ckpt_path, agent, counters, replay, config)
            last_save = time.time()
        if prefilling:
            continue

        # Log and evaluate (an evaluation also at the end), after checking that nothing became non-finite.
        env_step = counters['step'] * repeat
        log_now = log_due(env_step)
        eval_now = eval_due(env_step) or counters['step'] >= total_steps
        if log_now or eval_now:
            guard.check()   # before anything is logged or saved from this state
        if log_now:
            now = tools.run_clock()
            logger.scalar('fps', (counters['step'] - fps_step) * repeat / max(now - fps_time, 1e-6))
            logger.scalar('updates', agent.updates)
            logger.scalar('episodes', counters['episodes'])
            log_times(logger, counters)
            fps_time, fps_step = now, counters['step']
            if config.tensorboard_video:
                log_predictions(agent, replay, logger, config, logdir, env_step)
            logger.write(env_step, echo=not config.progress)
        if eval_now:
            with timer('time_eval'):
                returns, successes, _ = evaluate(agent, eval_envs, config, logger, config.eval_episodes, eval_dir)
                log_predictions(agent, replay, logger, config, logdir, env_step)
            log_times(logger, counters)
            row = logger.write(env_step, echo=False)
            msg = f'Eval at env step {env_step}: return {np.mean(returns):.1f} ± {np.std(returns):.1f}'
            if 'eval_success_rate' in row:
                msg += f", success {row['eval_success_rate']:.2f}"
            bar.write(msg)
            save_checkpoint(ckpt_path, agent, counters, replay, config)
            last_save = time.time()
            if config.keep_checkpoints:
                keep_snapshot(ckpt_path, os.path.join(logdir, 'checkpoints', f'checkpoint_{env_step:09d}.pt'))
    bar.close()
    if prefetcher is not None:
        prefetcher.close()
    guard.check()
    logger.write(counters['step'] * repeat, echo=False)
    tools.atomic_write_bytes(os.path.join(logdir, FINISHED_FILE), json.dumps(dict(
        env_steps=counters['step'] * repeat, agent_steps=counters['step'], updates=agent.updates,
        episodes=counters['episodes'], time=tools.timestamp())).encode())
    logger.close()
    train_envs.close()
    eval_envs.close()
    print(f"Done: {counters['step']} agent steps ({counters['step'] * repeat} env steps), {agent.updates} updates.\n"
          f"  metrics:    {os.path.join(logdir, 'metrics.jsonl')} (TensorBoard: tensorboard --logdir {logdir})\n"
          f"  episodes:   {train_dir}, {eval_dir}\n"
          f"  checkpoint: {ckpt_path}")


# --------------------------------------------------------------------------------------------------------------------
# Evaluation-only runs
# --------------------------------------------------------------------------------------------------------------------
# An evaluation-only run takes these from the checkpoint's stored config unless the command sets them itself.
EVAL_KEYS_FROM_CHECKPOINT = ('task', 'action_repeat', 'time_limit', 'size', 'camera', 'clean_render',
                             'legacy_inertia', 'color_distractor', 'color') + models.ARCHITECTURE_KEYS


def default_eval_logdir(checkpoint: str) -> str:
    """`--mode eval` without `--logdir`: `eval/` beside the checkpoint (the folder scripts/sweep.py uses), or
    `eval_2/`, `eval_3/`, ... when an earlier evaluation is there, so that none is overwritten."""
    base = os.path.join(os.path.dirname(checkpoint) or '.', 'eval')
    folder, n = base, 1
    while any(os.path.exists(os.path.join(folder, f)) for f in ('eval_result.json', 'config.yaml')):
        n += 1
        folder = f'{base}_{n}'
    return folder


def evaluate_only(config, explicit=frozenset()) -> None:
    """`--mode eval`: evaluates `--checkpoint` (a run folder or its checkpoint.pt); the task, env and model settings
    come from the checkpoint except the keys in `explicit` (given on the command line)."""
    if not config.checkpoint:
        raise ConfigError("--mode eval needs --checkpoint: a run folder or its checkpoint.pt.")
    path = config.checkpoint = agents.checkpoint_file(config.checkpoint)
    state = agents.read_checkpoint(path)
    stored = state.get('config', {})
    taken = []
    for key in EVAL_KEYS_FROM_CHECKPOINT:
        if key in stored and key not in explicit and stored[key] != config.get(key):
            setattr(config, key, stored[key])
            taken.append(f'{key}={stored[key]!r}')
    print(f"Evaluating {path} on {config.task}: " + (f"from the checkpoint's config: {', '.join(taken)}" if taken
                                                      else "the command's settings match the checkpoint") + '.')
    if not config.logdir:
        config.logdir = default_eval_logdir(path)
        print(f"No --logdir given: writing the evaluation to {config.logdir}.")
    config = tools.finalize_config(config)
    schedule = distractor_schedule(config)
    logdir = prepare_logdir(config, check_identity=False)
    tools.configure_torch(config)
    if config.eval_distractor not in schedule:
        raise ConfigError(f"--eval_distractor must be one of {', '.join(schedule)}, got '{config.eval_distractor}'.")
    eval_envs = make_parallel(config, config.seed + 20_000, schedule[config.eval_distractor])
    run_time = {k: config[k] for k in ('device', 'precision', 'compile', 'compile_mode', 'tf32', 'eval_state_mean',
                                       'eval_sample', 'seed')}
    agent, _, _ = agents.load_agent(path, run_time, state)
    if agent.action_size != eval_envs.action_size:
        raise ConfigError(f"The policy in '{path}' has {agent.action_size} actions but {config.task} has "
                          f"{eval_envs.action_size}: evaluate it on its own task (leave out --task).")
    del state
    logger = tools.Logger(logdir, config, use_tensorboard=config.tensorboard)
    returns, successes, recs = evaluate(agent, eval_envs, config, logger, config.eval_episodes,
                                        video_dir=os.path.join(logdir, 'eval_only_eps'))
    logger.write(0, echo=False)
    video = os.path.join(logdir, 'eval_videos')
    os.makedirs(video, exist_ok=True)
    import imageio.v2 as imageio
    paths = []
    for i, rec in enumerate(recs[:config.eval_videos]):
        path = os.path.join(video, f'episode_{i:02d}.gif')
        imageio.mimsave(path, list(rec.episode()['image']), duration=1 / 25, loop=0)
        paths.append(path)
    acting = 'sampled actions' if config.eval_sample else "the actor's mean action"
    msg = (f"Evaluation of {config.checkpoint} on {config.task} ({schedule[config.eval_distractor]} distractors, "
           f"{acting}), {len(returns)} episodes: return {np.mean(returns):.1f} ± {np.std(returns):.1f}")
    reports_success = any(rec.reports_success for rec in recs)   # success is only defined for DrawerWorld
    if reports_success:
        msg += f', success rate {np.mean(successes):.2f}'
    print(msg)
    print(f'  videos: {video} ({len(paths)} GIFs)')
    result = dict(task=config.task, checkpoint=config.checkpoint, eval_sample=bool(config.eval_sample), returns=returns,
                  mean=float(np.mean(returns)), std=float(np.std(returns)))
    if reports_success:
        result['success_rate'] = float(np.mean(successes))
    tools.atomic_write_bytes(os.path.join(logdir, 'eval_result.json'), json.dumps(result, indent=2).encode())
    eval_envs.close()
    logger.close()


# --------------------------------------------------------------------------------------------------------------------
# Stage 1: action-free beta-VAE video pretraining
# --------------------------------------------------------------------------------------------------------------------
def offline_updates(config, logger, start: int, total: int, update_fn, save_fn, desc: str, postfix: dict) -> None:
    """The loop shared by the offline pretraining stages (DisWM video model, Vid2Act teacher).

    `update_fn(update)` does one update and returns its metrics (tensors); every `log_every` updates (at most 100,
    at most `pretrain_save_every`) the averaged metrics and updates/s are written and shown on the progress bar
    (`postfix`: bar label -> metric name); `save_fn(updates)` runs every `pretrain_save_every` updates and at the end.
    """
    from tqdm import tqdm
    log_every = max(1, min(100, config.pretrain_save_every))
    bar = tqdm(range(start, total), initial=start, total=total, unit='upd', disable=not config.progress, desc=desc,
               dynamic_ncols=True)
    tools.count_pauses()     # updates/s leaves out SIGTSTP pauses
    tic, tic_update = tools.run_clock(), start
    guard = tools.FiniteGuard(config.device, skip_grad_norms=str(config.precision) == '16')
    for update in bar:
        metrics = update_fn(update)
        done = update + 1
        guard.watch(metrics, done)
        logger.scalars(metrics)
        if done % log_every == 0 or done == total or done % config.pretrain_save_every == 0:
            guard.check()
        if done % log_every == 0 or done == total:
            now = tools.run_clock()
            logger.scalar('updates_per_second', (done - tic_update) / max(now - tic, 1e-6))
            tic, tic_update = now, done
            row = logger.write(done, echo=not config.progress)
            bar.set_postfix({label: f'{row.get(name, float("nan")):.4g}' for label, name in postfix.items()})
        if done % config.pretrain_save_every == 0 or done == total:
            save_fn(done)
            logger.write(done, echo=False)
    bar.close()


def pretrain_video(config) -> None:
    """Trains the action-free beta-VAE video prediction model on a folder of video episodes
    (docs/method.md, "Stage 1")."""
    import imageio.v2 as imageio
    import replay as replay_lib

    logdir = prepare_logdir(config)
    tools.configure_torch(config)
    episodes, report = replay_lib.load_video_dataset(
        config.pretrain_datasets_path, config.pretrain_dataset_scale, config.seed, config.batch_length,
        config.model_memory_fraction, tuple(config.size))
    replay = replay_lib.Replay(None, seed=config.seed, within_episodes=replay_lib.samples_within_episodes(config))
    for ep in episodes:
        replay.add_episode(ep)
    del episodes
    print(f"Video dataset {config.pretrain_datasets_path}: {report['episodes']} episodes, {report['frames']} frames "
          f"({report['bytes'] / 2 ** 20:.0f} MiB uint8), {report['unreadable']} unreadable and {report['short']} "
          f"too short skipped.")
    spec = models.METHOD_SPECS['pretrain']
    wm = models.WorldModel(config, config.pretrain_action_num, spec).to(config.device)
    opt = tools.Optimizer.for_config('model', wm.parameters(), config.model_lr, config)
    if config.compile:
        models.compile_world_model(wm, config.compile_mode)
    total = max(1, config.pretrain_steps // config.batch_size)
    state_path = os.path.join(logdir, 'pretrain_state.pt')
    start = 0
    if os.path.exists(state_path):
        state = agents.read_checkpoint(state_path, config.device)
        wm.load_state_dict(state['model'])
        opt.load_state_dict(state['optimizer'])
        tools.set_rng_state(state['rng'])
        replay.rng.bit_generator.state = state['replay_rng']
        start = state['updates']
        print(f'Resuming pretraining from {state_path} at update {start}.')
    print(f'Pretraining the action-free video model for {total} updates (pretrain_steps {config.pretrain_steps} '
          f'sequences / batch {config.batch_size}) on {config.device}; logs in {logdir}')
    logger = tools.Logger(logdir, config, use_tensorboard=config.tensorboard, use_wandb=config.wandb)

    def save(updates: int):
        meta = dict({key: config[key] for key in models.VIDEO_MODEL_KEYS}, updates=updates, task=config.task,
                    config=config.to_dict())
        sample = replay.sample(1, config.batch_length)
        data = {k: torch.as_tensor(v, device=config.device) for k, v in sample.items()}
        grid = wm.traverse(data['image'])
        for directory in (os.path.join(logdir, 'checkpoints', str(updates)), logdir):
            models.save_video_model(directory, wm, meta)
            path = os.path.join(directory, 'traverse.png')
            imageio.imwrite(path + '.tmp.png', grid)
            os.replace(path + '.tmp.png', path)
        logger.image('traverse', grid)
        video = replay.sample(min(4, config.batch_size), config.batch_length)
        logger.video('openloop', wm.open_loop({k: torch.as_tensor(v, device=config.device) for k, v in video.items()}))
        tools.atomic_torch_save(dict(model=wm.state_dict(), optimizer=opt.state_dict(), rng=tools.rng_state(),
                                     replay_rng=replay.rng.bit_generator.state, updates=updates), state_path)

    def update_fn(update: int) -> dict:
        batch = replay.sample(config.batch_size, config.batch_length)
        data = {'image': torch.as_tensor(batch['image']).to(config.device, non_blocking=True),
                'is_first': torch.as_tensor(batch['is_first']).to(config.device).float()}
        return models.video_model_update(wm, opt, data, update)

    offline_updates(config, logger, start, total, update_fn, save, 'pretrain',
                          dict(image='image_loss', kl='kl_loss', bvae='beta_vae_kl_loss', ups='updates_per_second'))
    logger.close()
    print(f"Done: {total} updates. Video model (encoder.pt, decoder.pt, rssm.pt, meta.json, traverse.png) in {logdir} "
          f"and {os.path.join(logdir, 'checkpoints', str(total))}.\n  To finetune: copy them into ./checkpoints "
          f"(or pass --pretrain_checkpoint_path {logdir}).")


# --------------------------------------------------------------------------------------------------------------------
# Vid2Act's teacher pretraining (its parts are in vid2act.py)
# --------------------------------------------------------------------------------------------------------------------
def pretrain_teacher(config) -> None:
    """Trains the label-conditioned teacher on `<offline_dir>/<task>/` for every source task
    (docs/vid2act.md, "Design").

    Updates = pretrain_steps // batch_size, each on a batch with an equal share of sequences per task. Saves
    teacher.pt + teacher_meta.json every `pretrain_save_every` updates and at the end; rerunning resumes.
    """
    import vid2act

    tasks = vid2act.source_tasks(config)
    sources = vid2act.SourceData(config, tasks)               # validates the folders before anything is written
    target_size = None if config.action_pad else vid2act.target_action_size(config)
    action_size = vid2act.padded_action_size(config, sources.action_sizes, target_size)
    logdir = prepare_logdir(config)
    tools.configure_torch(config)
    sizes = {key: config[key] for key in models.WORLD_MODEL_KEYS}
    meta = dict(format=vid2act.TEACHER_FORMAT, source_tasks=tasks, num_teachers=len(tasks), action_size=action_size,
                source_action_sizes=sources.action_sizes, target_task=config.task, target_action_size=target_size,
                sizes=sizes, offline_dir=os.path.abspath(config.offline_dir), updates=0)
    state_path = os.path.join(logdir, vid2act.TEACHER_STATE)
    saved = torch.load(state_path, map_location='cpu', weights_only=False) if os.path.exists(state_path) else None
    if saved is not None:
        old = saved['meta']
        if old['source_tasks'] != tasks or old['action_size'] != action_size or old['sizes'] != sizes:
            raise ConfigError(f"'{logdir}' holds a teacher pretraining on source tasks "
                              f"{','.join(old['source_tasks'])} "
                              f"with action size {old['action_size']}; this run asks for {','.join(tasks)} with "
                              f"{action_size} (or other sizes): use a new --logdir.")
    sources.load(action_size, rewards=True)
    teacher = vid2act.LabelledWorldModel(len(tasks), action_size, sizes).to(config.device)
    opt = tools.Optimizer.for_config('teacher', teacher.parameters(), config.model_lr, config)
    total = max(1, config.pretrain_steps // config.batch_size)
    start = 0
    if saved is not None:
        teacher.load_state_dict(saved['model'])
        opt.load_state_dict(saved['optimizer'])
        tools.set_rng_state(saved['rng'])
        sources.set_rng_states(saved['replay_rngs'])
        start = saved['updates']
        print(f'Resuming the teacher pretraining from {state_path} at update {start}.')
    counts = ', '.join(f'{t} ({sources.action_sizes[t]} actions, {len(r)} steps)'
                       for t, r in zip(tasks, sources.replays))
    print(f'Vid2Act teacher pretraining on {len(tasks)} source tasks: {counts}; actions padded to {action_size}. '
          f'{total} updates (pretrain_steps {config.pretrain_steps} sequences / batch {config.batch_size}) on '
          f'{config.device}; logs in {logdir}')
    logger = tools.Logger(logdir, config, use_tensorboard=config.tensorboard, use_wandb=config.wandb)

    def save(updates: int):
        vid2act.save_teacher(logdir, teacher, dict(meta, updates=updates))
        tools.atomic_torch_save(dict(model=teacher.state_dict(), optimizer=opt.state_dict(), rng=tools.rng_state(),
                                     replay_rngs=sources.rng_states(), updates=updates,
                                     meta=dict(meta, updates=updates)), state_path)

    teacher.train()

    def update_fn(update: int) -> dict:
        shares = vid2act.task_shares(config.batch_size, len(tasks), update)
        batch = tools.to_device(sources.sample(shares, config.batch_length), config.device)
        with tools.autocast(config):
            loss, metrics, image_nll = teacher.loss(batch, config)
        metrics['model_grad_norm'] = opt.step(loss)
        for k, task in enumerate(tasks):
            rows = (batch['label'] == k).float()   # a masked mean: no host sync for the per-task losses
            metrics[f'teacher_image_loss/{task}'] = (image_nll * rows).sum() / rows.sum().clamp_min(1.0)
        return metrics

    offline_updates(config, logger, start, total, update_fn, save, 'pretrain teacher',
                          dict(image='image_loss', reward='reward_loss', kl='kl_loss', ups='updates_per_second'))
    if start >= total and not os.path.exists(os.path.join(logdir, vid2act.TEACHER_FILE)):
        save(start)
    logger.close()
    print(f"Done: {max(start, total)} updates. Teacher in {os.path.join(logdir, vid2act.TEACHER_FILE)} "
          f"(+ {vid2act.TEACHER_META}).\n"
          f"  Online: --method_name vid2act --source_tasks {','.join(tasks)} --offline_dir {config.offline_dir} "
          f"--teacher_checkpoint_path {logdir}")


# The stage loop each --mode runs (tools.finalize_config resolves the mode once, the release's flags included).
STAGES = {'train': train, 'video_pretrain': pretrain_video, 'teacher_pretrain': pretrain_teacher}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if '--help' in argv or '-h' in argv:
        print(tools.config_help())
        return 0
    try:
        config = tools.make_config(argv)
        tools.check_device(config)   # before any file is written
        if config.mode == 'eval':
            evaluate_only(config, explicit={key.split('.')[0] for key, _ in tools.split_argv(argv)[1]})
        else:
            STAGES[config.mode](config)
    except ConfigError as e:
        print(f'Error: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
