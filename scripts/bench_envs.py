"""Env throughput with 1 and with N parallel envs (`env.parallel.ParallelEnvs`): agent steps per second of random-action
collection at each task's preset (action repeat, one 64x64 render per agent step), counting the resets of finished
envs that fall inside the timed window, as real collection does. Worker start-up is reported apart, not timed.

    MUJOCO_GL=egl .venv/bin/python scripts/bench_envs.py                      # 3 tasks x (1, 2 envs) x 3 repeats
    MUJOCO_GL=egl .venv/bin/python scripts/bench_envs.py --envs 4 --tasks dmc2gym_cheetah_run --repeats 5

Prints one JSON line per measurement, then a table of medians over repeats (1 and N envs are measured alternately,
so a change in the machine's load hits both alike). Other jobs on the machine slow everything down: the table shows
the 1-minute load average seen during the measurements. `scripts/bench.py` imports `measure_env_throughput`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault('MUJOCO_GL', 'egl')

import numpy as np  # noqa: E402

import env as envs  # noqa: E402
from env.parallel import ParallelEnvs  # noqa: E402

TASKS = ('dmc2gym_cheetah_run', 'gymnasium_Pusher-v5', 'metaworld_drawer-open-v1')


def _cpu_seconds(pids: list) -> float | None:
    """CPU time (user + system, all threads) of this process plus the given worker processes; None off Linux."""
    total = time.process_time()
    for pid in pids:
        if pid is None:
            continue
        try:
            with open(f'/proc/{pid}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
        except OSError:
            return None
        total += (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')  # utime, stime
    return total


def measure_env_throughput(task: str, n_envs: int, steps: int, seed: int, warmup: int = 5,
                           workers: bool = True) -> dict:
    """Agent steps per second of `n_envs` envs of `task` stepped as one batch (`ParallelEnvs`, env i seeded
    `seed + i`, worker processes when `n_envs > 1` and `workers`), with uniform random actions.

    The config is the task's suite preset in configs.yaml (`dmc2gym`, `gymnasium`, `metaworld`) and the first train
    distractor set. `steps` counts agent steps summed over the envs (rounded up to whole batches), so 1 and N envs
    do the same work; `warmup` untimed batched steps come first. Returns a JSON-ready dict: `steps_per_s`,
    `ms_per_batch`, `cpu_ms_per_step` and `cores_used` (CPU time of this process and its workers per agent step and
    per wall second: what the envs cost, and how much of the machine they got), `startup_s` (env / worker creation and
    first reset), `load_avg_1m` (mean of before and after).
    """
    import tools  # here, not at import: a worker start method that re-imports the main script stays light

    suite, _ = envs.split_task(task)
    config = tools.make_config(['--configs', suite])
    distractor = envs.distractor_schedule(task, True)['train_1']
    rng = np.random.default_rng(seed)
    batches = max(1, -(-int(steps) // n_envs))
    start = time.perf_counter()
    with ParallelEnvs(task, config, [seed + i for i in range(n_envs)], distractor, workers=workers) as batch:
        batch.reset()
        startup = time.perf_counter() - start

        def collect(count: int) -> None:
            for _ in range(count):
                actions = rng.uniform(-1, 1, (n_envs, batch.action_size)).astype(np.float32)
                _, _, dones, _ = batch.step(actions)
                if dones.any():
                    batch.reset(np.flatnonzero(dones))

        collect(warmup)
        load_before = os.getloadavg()[0]
        cpu_before = _cpu_seconds(batch.pids)
        start = time.perf_counter()
        collect(batches)
        elapsed = time.perf_counter() - start
        cpu_after = _cpu_seconds(batch.pids)
        mode = 'in-process' if batch.in_process else 'workers'
    load = (load_before + os.getloadavg()[0]) / 2
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return {'task': task, 'n_envs': n_envs, 'mode': mode, 'action_repeat': int(config.action_repeat),
            'steps': batches * n_envs, 'seconds': round(elapsed, 3),
            'steps_per_s': round(batches * n_envs / elapsed, 2), 'ms_per_batch': round(elapsed / batches * 1000, 2),
            'cpu_ms_per_step': None if cpu is None else round(cpu / (batches * n_envs) * 1000, 2),
            'cores_used': None if cpu is None else round(cpu / elapsed, 2),
            'startup_s': round(startup, 2), 'load_avg_1m': round(load, 2), 'cpus': os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--tasks', nargs='*', default=list(TASKS), help=f'tasks to time (default: {list(TASKS)})')
    parser.add_argument('--envs', type=int, default=2, help='N, the number of parallel envs compared with 1')
    parser.add_argument('--steps', type=int, default=200, help='timed agent steps per measurement (over all envs)')
    parser.add_argument('--warmup', type=int, default=5, help='untimed batched steps before each measurement')
    parser.add_argument('--repeats', type=int, default=3, help='measurements per (task, number of envs); the table '
                                                               'shows their median')
    parser.add_argument('--seed', type=int, default=0, help='env i is seeded seed + i')
    parser.add_argument('--in-process', action='store_true', help='run the N envs in this process (no workers): '
                                                                  'shows the cost of stepping them one by one')
    args = parser.parse_args()
    if args.envs < 1:
        sys.exit('--envs must be >= 1.')
    for task in args.tasks:
        try:
            envs.split_task(task)
        except (ValueError, ImportError) as error:
            sys.exit(str(error))

    counts = sorted({1, args.envs})
    results: dict[tuple[str, int], list[dict]] = {}
    for _ in range(args.repeats):
        for task in args.tasks:
            for n_envs in counts:
                result = measure_env_throughput(task, n_envs, args.steps, args.seed, args.warmup,
                                                workers=not args.in_process)
                results.setdefault((task, n_envs), []).append(result)
                print(json.dumps(result), flush=True)

    print(f'\n{"task":26s} {"envs":>4s} {"mode":>10s} {"agent steps/s (median)":>22s} {"range":>13s} '
          f'{"speed-up":>8s} {"cpu ms/step":>11s} {"cores used":>10s} {"load 1m":>7s}')
    for task in args.tasks:
        base = float(np.median([r['steps_per_s'] for r in results[(task, 1)]]))
        for n_envs in counts:
            runs = results[(task, n_envs)]
            rates = [r['steps_per_s'] for r in runs]
            median = float(np.median(rates))
            load = float(np.median([r['load_avg_1m'] for r in runs]))
            cpu = [r['cpu_ms_per_step'] for r in runs if r['cpu_ms_per_step'] is not None]
            cores = [r['cores_used'] for r in runs if r['cores_used'] is not None]
            cpu_text = f'{np.median(cpu):11.1f}' if cpu else f'{"n/a":>11s}'
            cores_text = f'{np.median(cores):10.2f}' if cores else f'{"n/a":>10s}'
            print(f'{task:26s} {n_envs:4d} {runs[0]["mode"]:>10s} {median:22.1f} '
                  f'{f"{min(rates):.1f}-{max(rates):.1f}":>13s} {median / base:7.2f}x {cpu_text} {cores_text} '
                  f'{load:7.2f}')
    print(f'({os.cpu_count()} CPUs, MUJOCO_GL={os.environ["MUJOCO_GL"]}, {args.steps} agent steps per measurement, '
          f'{args.repeats} repeats; other load on the machine slows these down)')


if __name__ == '__main__':
    main()
