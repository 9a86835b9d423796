#!/usr/bin/env python
"""Launches the paper's experiments (tables in `experiments.py`) as dreamer.py runs, locally or on Slurm.

    scripts/sweep.py fig4 --dry-run                                  # print the exact commands, one per line
    scripts/sweep.py pretrain fig4 --launcher local --jobs 4         # pretraining first, then the finetunes
    SEEDS="0 1 2 3 4" scripts/sweep.py tableB --methods diswm --launcher slurm --partition gpu --time 2880
    scripts/sweep.py fig4 --preset debug --steps 2000 -- --threads 1 # presets appended to --configs; flags after --
    scripts/sweep.py vid2act_teacher vid2act --jobs 2                # Vid2Act: teachers first, then the online runs

Run folders are `<root>/<task>/<method>/seed_<n>`, `<root>/pretrain/<source>/seed_<n>` and (Vid2Act's teachers)
`<root>/vid2act_teacher/<target>/seed_<n>`; rerunning a sweep resumes unfinished runs (dreamer.py resumes on the same
--logdir) and skips finished ones. Finetuning runs load the video model of
`<pretrain-root>/<source>/seed_<pretrain-seed>`, Vid2Act runs the teacher `<teacher-root>/<target>/seed_<pretrain-seed>`.
Exit status: 0 if every launched run exited 0.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import experiments as ex  # noqa: E402
import rundata  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASETS_URL = 'https://huggingface.co/datasets/MrSC320/DisWM-Pretrain-Datasets'


@dataclasses.dataclass
class Run:
    """One dreamer.py invocation of a sweep."""
    logdir: str
    cmd: list
    kind: str                       # 'pretrain' | 'teacher' | 'online' | 'eval' (of an online run's checkpoint)
    needs: str | None = None        # pretraining (or teacher) run folder whose model this run loads
    data: str | None = None         # pretraining dataset folder
    sources: tuple = ()             # Vid2Act: the offline dataset folder of each source task, <offline_dir>/<task>
    needs_file: str = 'encoder.pt'  # what `needs` holds once its pretraining has finished

    @property
    def text(self) -> str:
        return shlex.join(self.cmd)


PRETRAINING = ('pretrain', 'teacher')   # run kinds launched first; the runs that load them wait until they finished
TEACHER_FILE = 'teacher.pt'              # vid2act.TEACHER_FILE (not imported: vid2act.py imports torch)


# --------------------------------------------------------------------------------------------------------- commands
def gpu_ids() -> list[str]:
    """The GPUs in CUDA_VISIBLE_DEVICES ([] when unset, empty or -1)."""
    value = os.environ.get('CUDA_VISIBLE_DEVICES', '').strip()
    ids = [v.strip() for v in value.split(',') if v.strip()]
    return [] if not ids or ids[0] in ('-1', 'NoDevFiles') else ids


def display_path(path: str) -> str:
    """`path` relative to the working directory when it lies inside it (shorter, copy-pasteable commands)."""
    rel = os.path.relpath(os.path.abspath(path))
    return path if rel.startswith('..') else rel


def common_flags(args, task: ex.Task) -> list[str]:
    return ['--configs', 'defaults', task.preset, *args.preset]


def tail_flags(args) -> list[str]:
    flags = ['--device', 'cuda'] if args.use_cuda else []
    return flags + ['--progress', 'False', *args.extra]


def pretrain_run(args, source: str, seed: int) -> Run:
    task = ex.TASKS[source]
    logdir = os.path.join(args.pretrain_root, source, f'seed_{seed}')
    data = os.path.join(args.data_root, source, 'train_eps')
    cmd = [args.python, args.entry, *common_flags(args, task), '--task', task.env, '--logdir', logdir,
           '--seed', str(seed), '--beta_vae_pretrain', 'True', '--beta_vae', 'True',
           '--pretrain_action_num', str(task.action_size), '--pretrain_datasets_path', data]
    if args.pretrain_steps is not None:
        cmd += ['--pretrain_steps', str(args.pretrain_steps)]
    return Run(logdir, cmd + tail_flags(args), 'pretrain', data=data)


def teacher_run(args, stage: ex.Experiment, target: str, seed: int) -> Run:
    """A method's own pretraining stage (Vid2Act's multi-task teacher) for one target task."""
    task, method = ex.TASKS[target], ex.teacher_owners(stage.key)[0]
    logdir = os.path.join(teacher_root(args, stage.key), target, f'seed_{seed}')
    cmd = [args.python, args.entry, *common_flags(args, task), '--task', task.env, '--logdir', logdir,
           '--seed', str(seed), '--method_name', method, '--vid2act_pretrain', 'True',
           '--source_tasks', ','.join(stage.sources), '--offline_dir', args.offline_dir]
    if args.pretrain_steps is not None:
        cmd += ['--pretrain_steps', str(args.pretrain_steps)]
    return Run(logdir, cmd + tail_flags(args), 'teacher', sources=source_folders(args, stage),
               needs_file=TEACHER_FILE)


def teacher_root(args, stage: str) -> str:
    return args.teacher_root or os.path.join(args.root, stage)


def source_folders(args, stage: ex.Experiment) -> tuple:
    return tuple(os.path.join(args.offline_dir, s) for s in stage.sources)


def loaded_seed(args, seed: int) -> int:
    """The pretraining / teacher seed an online run of `seed` loads."""
    return seed if args.pretrain_seed == 'same' else int(args.pretrain_seed)


def online_run(args, source: str, target: str, method_key: str, seed: int) -> Run:
    task, src, method = ex.TASKS[target], ex.TASKS[source], ex.METHODS[method_key]
    logdir = os.path.join(args.root, target, method_key, f'seed_{seed}')
    cmd = [args.python, args.entry, *common_flags(args, task), '--task', task.env, '--logdir', logdir,
           '--seed', str(seed), '--method_name', method.key, *method.flags]
    needs, sources, needs_file = None, (), 'encoder.pt'
    if method.pretrained:
        needs = os.path.join(args.pretrain_root, source, f'seed_{loaded_seed(args, seed)}')
        cmd += ['--pretrain_checkpoint_path', needs, '--pretrain_action_num', str(src.action_size)]
    if method.teacher:   # Vid2Act: its teacher for this target; the source data is read again online (the CVAE)
        stage = ex.EXPERIMENTS[method.teacher]
        needs = os.path.join(teacher_root(args, stage.key), target, f'seed_{loaded_seed(args, seed)}')
        sources, needs_file = source_folders(args, stage), TEACHER_FILE
        cmd += ['--source_tasks', ','.join(stage.sources), '--offline_dir', args.offline_dir,
                '--teacher_checkpoint_path', needs]
    if method.union_actions:
        gap = max(src.action_size, task.action_size) - src.action_size
        cmd += ['--source_action_num', str(src.action_size), '--action_num_gap', str(gap)]
    if task.cross_domain:
        cmd += ['--cross_domain', 'True']
    cmd += ['--color_distractor', 'True']
    if args.steps is not None:
        cmd += ['--steps', str(args.steps)]
    return Run(logdir, cmd + tail_flags(args), 'online', needs=needs, sources=sources, needs_file=needs_file)


def eval_run(run: Run) -> Run:
    """An evaluation-only run of `run`'s final checkpoint, same flags, into `<run>/eval` (GIFs in eval_videos/)."""
    cmd = list(run.cmd)
    at = cmd.index('--logdir') + 1
    logdir = os.path.join(run.logdir, 'eval')
    cmd[at] = logdir
    cmd[at + 1:at + 1] = ['--mode', 'eval', '--checkpoint', os.path.join(run.logdir, 'checkpoint.pt')]
    return Run(logdir, cmd, 'eval', needs=run.logdir)


def build_runs(args) -> list[Run]:
    """Every run of the chosen experiments after the filters: pretraining (video models, teachers) first, then seed by
    seed, each run folder once (Fig. 4 and Table A share reacher_easy -> cheetah_run). A teacher stage follows
    --methods like the method that owns it, and --tasks by its targets."""
    runs: dict[str, Run] = {}

    def add(run: Run):
        if run.logdir in runs and runs[run.logdir].cmd != run.cmd:
            raise SystemExit(f'Error: two experiments write {run.logdir} with different commands:\n  '
                             f'{runs[run.logdir].text}\n  {run.text}')
        runs.setdefault(run.logdir, run)

    for seed in args.seeds:   # seed-major: a local pool finishes a first seed of everything early
        for name in args.experiments:
            exp = ex.EXPERIMENTS[name]
            if exp.kind == 'teacher':
                if args.methods is None or set(ex.teacher_owners(exp.key)) & set(args.methods):
                    for target in exp.targets:
                        if args.tasks is None or target in args.tasks:
                            add(teacher_run(args, exp, target, seed))
                continue
            for source in exp.sources:
                if args.tasks is None or source in args.tasks:
                    add(pretrain_run(args, source, seed))
            for source, target in exp.pairs:
                if args.tasks is None or target in args.tasks:
                    for method in exp.methods:
                        if args.methods is None or method in args.methods:
                            add(online_run(args, source, target, method, seed))
    ordered = sorted(runs.values(), key=lambda r: r.kind not in PRETRAINING)   # stable: table order within a kind
    if args.eval:
        ordered = [eval_run(r) for r in ordered if r.kind == 'online']
    if not ordered:
        hint = ''
        if args.methods:   # e.g. `fig4 --methods vid2act`: say where the methods do run
            where = {m: [k for k, e in ex.EXPERIMENTS.items() if m in e.methods] for m in args.methods}
            hint = ' ' + '; '.join(f'{m} runs in: {", ".join(w) or "no experiment"}' for m, w in where.items()) + '.'
        raise SystemExit(f'Error: no runs match --tasks {args.tasks} --methods {args.methods} in '
                         f'{", ".join(args.experiments)}.{hint}')
    return ordered


def progress(args, run: Run) -> tuple[int, int | None]:
    """(last logged step, step at which the run is finished) of a run folder; (0, None) if it has not started."""
    if run.kind == 'eval':
        return int(os.path.exists(os.path.join(run.logdir, 'eval_result.json'))), 1
    config = rundata.read_config(run.logdir)
    if not config:
        return 0, None
    rows, _ = rundata.read_metrics(os.path.join(run.logdir, 'metrics.jsonl'))
    if run.kind in PRETRAINING:   # logged steps are updates
        last = max((int(r['step']) for r in rows), default=0)
        return last, rundata.target_steps(config, 'pretrain', pretrain_steps=args.pretrain_steps)
    last = max((int(r['step']) for r in rows if 'eval_return_average' in r), default=0)
    return last, rundata.target_steps(config, 'online', steps=args.steps)


def is_done(args, run: Run) -> bool:
    last, target = progress(args, run)
    return target is not None and last >= target


# --------------------------------------------------------------------------------------------------------- checks
def has_episodes(folder: str) -> bool:
    """Whether `folder` holds an .npz episode (searched recursively, as dreamer.py does)."""
    return any(name.endswith('.npz') for _, _, names in os.walk(folder) for name in names)


def check_inputs(runs: list[Run]) -> list[str]:
    """Problems that would make runs fail at start: a missing dataset, pretrained video model or teacher."""
    produced = {r.logdir for r in runs if r.kind in PRETRAINING}
    problems, missing, offline = [], {}, {}
    for run in runs:
        if run.data and not os.path.isdir(run.data):
            source = os.path.basename(os.path.dirname(run.data))
            problems.append(f'Pretraining dataset {run.data} not found: python scripts/download_datasets.py '
                            f'--tasks {source} --out {os.path.dirname(os.path.dirname(run.data))} ({DATASETS_URL}), '
                            f'or point --data-root at it.')
        suite = run.cmd[run.cmd.index('--task') + 1].partition('_')[0]
        for folder in run.sources:   # dreamer.py also accepts the suite-prefixed folder (dmc2gym_cheetah_run)
            if folder not in offline:
                parent, task = os.path.split(folder)
                found = has_episodes(folder) or has_episodes(os.path.join(parent, f'{suite}_{task}'))
                offline[folder] = None if found else run.logdir   # the first run that needs a missing one
        if run.kind == 'online' and run.needs and run.needs not in produced and not os.path.exists(
                os.path.join(run.needs, run.needs_file)):
            missing.setdefault((run.needs, run.needs_file), []).append(run)
    by_root = {}
    for folder, user in offline.items():
        if user is not None:
            by_root.setdefault(os.path.dirname(folder), []).append((os.path.basename(folder), user))
    for root, tasks in by_root.items():
        names = ' '.join(t for t, _ in tasks)
        problems.append(f'Vid2Act source datasets without .npz episodes in {root}/: {", ".join(t for t, _ in tasks)} '
                        f'(needed by e.g. {tasks[0][1]}). Collect them with DATA={root} TASKS="{names}" '
                        f'scripts/collect_vid2act_sources.sh, or point --offline-dir at them.')
    for (needs, needs_file), users in missing.items():
        parent = os.path.dirname(needs)   # <root>/<source or target>
        method = ex.METHODS[users[0].cmd[users[0].cmd.index('--method_name') + 1]]
        if method.teacher:
            problems.append(f'{method.label} teacher {needs}/{needs_file} not found ({len(users)} runs need it, e.g. '
                            f'{users[0].logdir}). Pretrain it first (scripts/sweep.py {method.teacher} --tasks '
                            f'{os.path.basename(parent)}), add `{method.teacher}` to this sweep '
                            f'(scripts/vid2act_sweep.sh does), or point --teacher-root / --pretrain-seed at an '
                            f'existing one.')
            continue
        problems.append(f'Pretrained video model {needs}/encoder.pt not found ({len(users)} runs need it, e.g. '
                        f'{users[0].logdir}). Pretrain first (scripts/pretrain_all.sh --tasks '
                        f'{os.path.basename(parent)}), add `pretrain` to this sweep, or point --pretrain-root / '
                        f'--pretrain-seed at an existing one.')
    return problems


# --------------------------------------------------------------------------------------------------------- launchers
class AlreadyRunning(RuntimeError):
    """Another sweep process is running this run folder."""


@contextlib.contextmanager
def run_lock(logdir: str):
    """Holds `<logdir>/.sweep.lock` while a run is going, so two sweeps never train into one folder at once.

    flock is released by the kernel when its holder dies: no stale locks after a crash.
    """
    os.makedirs(logdir, exist_ok=True)
    with open(os.path.join(logdir, '.sweep.lock'), 'a') as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(f'{logdir} is being run by another sweep') from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_running(logdir: str) -> bool:
    """A sweep or a dreamer.py process is training in `logdir` now."""
    return rundata.in_use(logdir)


class RunCommand:
    """Runs one command with its output appended to `<logdir>/stdout.log`; returns the exit code.

    Also the job submitted to Slurm: it raises on failure there (so dependent jobs do not start) and asks submitit
    to requeue it on timeout or preemption (the rerun resumes from the run's checkpoint).
    """

    def __init__(self, cmd: list, logdir: str, cwd: str, env: dict | None = None, raise_on_error: bool = False):
        self.cmd, self.logdir, self.cwd, self.env, self.raise_on_error = cmd, logdir, cwd, env, raise_on_error

    def start(self, log) -> subprocess.Popen:
        log.write(f'\n===== {time.strftime("%Y-%m-%d %H:%M:%S")} on {os.uname().nodename}: {shlex.join(self.cmd)}\n')
        log.flush()
        env = dict(os.environ, **(self.env or {}))
        return subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, env=env)

    def __call__(self) -> int:
        with run_lock(self.logdir), open(os.path.join(self.logdir, 'stdout.log'), 'a') as log:
            code = self.start(log).wait()
        if code and self.raise_on_error:
            raise RuntimeError(f'exit code {code}; see {os.path.join(self.logdir, "stdout.log")}')
        return code

    def checkpoint(self, *args, **kwargs):
        import submitit
        return submitit.helpers.DelayedSubmission(self)


def log_tail(logdir: str, lines: int = 6) -> str:
    try:
        with open(os.path.join(logdir, 'stdout.log'), 'rb') as f:
            f.seek(max(0, os.path.getsize(f.name) - 8192))
            text = f.read().decode('utf-8', errors='replace')
    except OSError:
        return ''
    return '\n'.join('      ' + line for line in text.replace('\r', '\n').splitlines()[-lines:])


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{sec:02d}s'


def interrupt_on_sigterm() -> None:
    """SIGTERM (`kill`, `timeout`, a scheduler) stops a launcher the way Ctrl-C does, so that it stops its runs too
    instead of leaving them training on as orphans that hold their run folders' locks. Call from the main thread."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


def stop_runs(procs: list[tuple[str, subprocess.Popen]], resume: str) -> None:
    """Stops each child run still alive (SIGTERM, SIGKILL after 30 s), telling how to resume it."""
    for logdir, proc in procs:
        if proc.poll() is None:
            proc.terminate()
        print(f'Interrupted: stopped {logdir} (pid {proc.pid}); {resume}.', file=sys.stderr)
    for _, proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch_local(runs: list[Run], jobs: int, gpus: list[str]) -> int:
    """`jobs` runs at a time, each once the run it loads from has finished (pretraining and teachers first, runs that
    load nothing beside them); returns the number of failed runs."""
    slots: queue.Queue = queue.Queue()
    for i in range(jobs):   # with several GPUs each concurrent slot keeps one of them
        slots.put(gpus[i % len(gpus)] if len(gpus) > 1 else None)
    live: dict[str, subprocess.Popen] = {}
    stop = threading.Event()
    lock = threading.Lock()

    def work(run: Run):
        gpu = slots.get()
        try:
            if stop.is_set():
                return None, 0.0
            job = RunCommand(run.cmd, run.logdir, os.getcwd(), {'CUDA_VISIBLE_DEVICES': gpu} if gpu else None)
            start = time.time()
            try:
                with run_lock(run.logdir), open(os.path.join(run.logdir, 'stdout.log'), 'a') as log:
                    proc = job.start(log)
                    with lock:
                        live[run.logdir] = proc
                    code = proc.wait()
            except AlreadyRunning:
                return 'already running', 0.0
            with lock:
                live.pop(run.logdir, None)
            return code, time.time() - start
        finally:
            slots.put(gpu)

    results: dict[str, tuple] = {}
    # Each run starts once the run it loads from (`needs`, when that is one of these runs) has exited 0, so a run that
    # needs nothing starts beside the pretraining; pretraining and teachers go first when slots are scarce.
    pending = sorted(runs, key=lambda r: r.kind not in PRETRAINING)
    ours = {r.logdir for r in runs}
    ok: set = set()
    futures: dict = {}
    done = 0
    print(f'Launching {len(runs)} runs, {jobs} at a time; output in <run>/stdout.log.', flush=True)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=jobs)
    try:
        while pending or futures:
            for run in list(pending):
                if run.needs in ours and run.needs in results and run.needs not in ok:   # it failed or never ran
                    skip = 'not started', 'did not finish'
                elif run.needs and run.needs not in ours and is_running(run.needs):    # another process trains it
                    skip = 'pretraining still running', 'is still running in another process; rerun once it has ' \
                                                        'finished'
                elif run.needs is None or run.needs not in ours or run.needs in ok:
                    skip = None
                else:
                    continue                                                            # its pretraining is running
                pending.remove(run)
                if skip is None:
                    futures[pool.submit(work, run)] = run
                    continue
                results[run.logdir] = (skip[0], 0.0)
                done += 1
                print(f'[{done}/{len(runs)}] SKIPPED {run.logdir}: its pretraining {run.needs} {skip[1]}', flush=True)
            if not futures:
                break
            finished, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                run = futures.pop(future)
                code, seconds = future.result()
                results[run.logdir] = (code, seconds)
                if code == 0:
                    ok.add(run.logdir)
                done += 1
                state = 'ok    ' if code == 0 else 'SKIPPED (another sweep runs it)' if isinstance(code, str) \
                    else f'FAILED (exit {code})'
                print(f'[{done}/{len(runs)}] {state} {run.logdir} ({_duration(seconds)})', flush=True)
                if code and not isinstance(code, str):
                    print(log_tail(run.logdir), flush=True)
    except KeyboardInterrupt:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)
        with lock:
            procs = list(live.items())
        stop_runs(procs, 'rerun the sweep to resume it')
        raise SystemExit(130)
    pool.shutdown()

    failed = [(d, c) for d, (c, _) in results.items() if c not in (0, 'already running')]
    print(f'\nSummary: {len(results) - len(failed)} of {len(results)} runs exited 0.')
    for logdir, code in failed:
        if isinstance(code, str):
            print(f'  {code:<12} {logdir}   (its pretraining did not finish)' if code == 'not started' else
                  f'  {code}: {logdir}')
        else:
            print(f'  exit {code:<7} {logdir}   (log: {os.path.join(logdir, "stdout.log")})')
    return len(failed)


def launch_slurm(runs: list[Run], args) -> int:
    """Submits one Slurm job per run through submitit (finetunes wait for their pretraining with afterok)."""
    try:
        import submitit
    except ImportError:
        raise SystemExit('Error: --launcher slurm needs submitit: pip install submitit') from None
    if args.submitit_cluster == 'slurm' and shutil.which('sbatch') is None:
        raise SystemExit('Error: --launcher slurm but `sbatch` is not on PATH (not on a Slurm login node?). '
                         'Use --launcher local.')
    folder = os.path.join(args.root, '.submitit', '%j')
    params = dict(timeout_min=args.time, gpus_per_node=args.gpus, cpus_per_task=args.cpus, nodes=1,
                  tasks_per_node=1)
    if args.mem_gb:
        params['mem_gb'] = args.mem_gb
    slurm = {'slurm_partition': args.partition, 'slurm_account': args.account, 'slurm_qos': args.qos}
    params.update({k: v for k, v in slurm.items() if v})
    extra = dict(kv.split('=', 1) for kv in args.slurm_param)

    submitted, failed_submit = {}, []
    for run in runs:
        executor = submitit.AutoExecutor(folder=folder, cluster=args.submitit_cluster)
        after = submitted.get(run.needs)
        additional = dict(extra, **({'dependency': f'afterok:{after.job_id}'} if after is not None else {}))
        name = os.path.relpath(run.logdir, args.root).replace(os.sep, '/')
        executor.update_parameters(name=f'diswm:{name}', **params,
                                   **({'slurm_additional_parameters': additional} if additional else {}))
        try:
            job = executor.submit(RunCommand(run.cmd, run.logdir, os.getcwd(), raise_on_error=True))
        except Exception as e:   # one bad submission should not hide the others
            failed_submit.append((run.logdir, str(e).strip().splitlines()[-1] if str(e).strip() else repr(e)))
            continue
        submitted[run.logdir] = job
        print(f'submitted {job.job_id}  {run.logdir}', flush=True)
    print(f'Submitted {len(submitted)} of {len(runs)} jobs (submitit logs in {os.path.dirname(folder)}, run output '
          f'in <run>/stdout.log).')
    for logdir, error in failed_submit:
        print(f'  submission FAILED {logdir}: {error}', file=sys.stderr)
    if not args.wait:
        return len(failed_submit)
    failed = len(failed_submit)
    for logdir, job in submitted.items():
        try:
            job.result()
            print(f'ok      {logdir}')
        except Exception:   # submitit's FailedJobError / UncompletedJobError
            failed += 1
            print(f'FAILED  {logdir} (output: {os.path.join(logdir, "stdout.log")}; job log: {job.paths.stderr})')
    print(f'Summary: {len(runs) - failed} of {len(runs)} runs succeeded.')
    return failed


# --------------------------------------------------------------------------------------------------------- CLI
def _words(values):
    """Space- or comma-separated CLI/env lists."""
    if values is None:
        return None
    return [w for v in ([values] if isinstance(values, str) else values) for w in v.replace(',', ' ').split()]


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if '--' in argv:   # everything after `--` goes to dreamer.py unchanged
        i = argv.index('--')
        argv, extra = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('experiments', nargs='+', metavar='EXPERIMENT',
                        help=f'one or more of: {", ".join(ex.EXPERIMENTS)}, all')
    what = parser.add_argument_group('what to run')
    what.add_argument('--seeds', nargs='+', default=os.environ.get('SEEDS', '0 1 2'),
                      help='seeds, space- or comma-separated (default: env SEEDS, else "0 1 2")')
    what.add_argument('--methods', nargs='+', help=f'only these methods (of: {", ".join(ex.METHODS)})')
    what.add_argument('--tasks', nargs='+', help='only these targets (finetuning, Vid2Act teachers) / sources '
                      '(pretraining): task keys such as walker_walk, pusher, quadruped_run, or dreamer.py task names')
    what.add_argument('--steps', default=os.environ.get('STEPS') or None,
                      help='env steps of online runs (default: env STEPS, else the preset: 1e6)')
    what.add_argument('--pretrain-steps', default=os.environ.get('PRETRAIN_STEPS') or None,
                      help='--pretrain_steps of pretraining and Vid2Act teacher runs (default: env PRETRAIN_STEPS, '
                           'else the preset)')
    what.add_argument('--preset', action='append', default=_words(os.environ.get('PRESETS', '')),
                      help='configs.yaml preset appended to --configs, e.g. debug (repeatable; env PRESETS)')
    what.add_argument('--extra', default=os.environ.get('EXTRA', ''),
                      help='extra dreamer.py flags as one string, e.g. "--threads 2" (env EXTRA); '
                           'anything after a bare -- is appended too')
    where = parser.add_argument_group('where')
    where.add_argument('--root', default='runs', help='runs go to ROOT/<task>/<method>/seed_<n> (default runs)')
    where.add_argument('--pretrain-root', help='pretraining runs: PRETRAIN_ROOT/<source>/seed_<n> '
                       '(default ROOT/pretrain); finetunes load their video model from here')
    where.add_argument('--teacher-root', help='Vid2Act teacher runs: TEACHER_ROOT/<target>/seed_<n> (default '
                       'ROOT/vid2act_teacher); Vid2Act runs load their teacher from here')
    where.add_argument('--pretrain-seed', default='0',
                       help='which pretraining (and Vid2Act teacher) seed the online runs load: a number, or "same" '
                            'as the run (default 0)')
    where.add_argument('--data-root', default='data', help='pretraining episodes in DATA_ROOT/<source>/train_eps')
    where.add_argument('--offline-dir', help='Vid2Act\'s offline source datasets, OFFLINE_DIR/<task>/*.npz '
                       '(default DATA_ROOT/vid2act; scripts/collect_vid2act_sources.sh)')
    where.add_argument('--python', default=sys.executable, help='interpreter for dreamer.py (default: this one)')
    where.add_argument('--entry', default=display_path(os.path.join(ROOT, 'dreamer.py')),
                       help=argparse.SUPPRESS)   # the script launched; tests swap in a stub
    how = parser.add_argument_group('how')
    how.add_argument('--dry-run', action='store_true', help='print the commands, one per line, and exit')
    how.add_argument('--status', action='store_true', help='print each run\'s progress and exit')
    how.add_argument('--eval', action='store_true',
                     help='instead of training: evaluate each online run\'s checkpoint with dreamer.py --mode eval '
                          'into <run>/eval (return on eval_distractor, GIFs in <run>/eval/eval_videos)')
    how.add_argument('--launcher', choices=('local', 'slurm'), default=os.environ.get('LAUNCHER', 'local'))
    how.add_argument('--jobs', type=int, default=int(os.environ.get('JOBS', 1)),
                     help='local: concurrent runs (default env JOBS, else 1); with several GPUs in '
                          'CUDA_VISIBLE_DEVICES each slot keeps one GPU')
    how.add_argument('--rerun-done', action='store_true', help='also launch runs that already finished')
    how.add_argument('--no-checks', action='store_true',
                     help='launch even when datasets, pretrained video models or teachers are missing')
    slurm = parser.add_argument_group('slurm (--launcher slurm, through submitit)')
    slurm.add_argument('--partition', help='Slurm partition')
    slurm.add_argument('--time', type=int, default=4320, help='time limit per job in minutes (default 3 days); '
                       'a job that hits it is requeued and resumes')
    slurm.add_argument('--gpus', type=int, default=1, help='GPUs per job (default 1; 0 = CPU job)')
    slurm.add_argument('--cpus', type=int, default=8, help='CPUs per job (default 8)')
    slurm.add_argument('--mem-gb', type=int, default=0, help='memory per job in GB (default: the partition\'s)')
    slurm.add_argument('--account', help='Slurm account')
    slurm.add_argument('--qos', help='Slurm QOS')
    slurm.add_argument('--slurm-param', action='append', default=[], metavar='KEY=VALUE',
                       help='any other sbatch option, e.g. constraint=a100 (repeatable)')
    slurm.add_argument('--wait', action='store_true', help='wait for the jobs and summarise their results')
    slurm.add_argument('--submitit-cluster', default='slurm', choices=('slurm', 'local', 'debug'),
                       help=argparse.SUPPRESS)   # submitit's local/debug executors: the Slurm path without Slurm
    args = parser.parse_args(argv)

    names = list(ex.EXPERIMENTS) if 'all' in args.experiments else args.experiments
    unknown = [n for n in names if n not in ex.EXPERIMENTS]
    if unknown:
        parser.error(f'unknown experiment {", ".join(unknown)}; choose from {", ".join(ex.EXPERIMENTS)}, all')
    args.experiments = list(dict.fromkeys(names))
    try:
        args.seeds = [int(s) for s in _words(args.seeds)]
    except ValueError:
        parser.error(f'--seeds / SEEDS must be integers, got {args.seeds!r}')
    if not args.seeds:
        parser.error('no seeds given (--seeds / SEEDS is empty)')
    args.methods = _words(args.methods)
    if args.methods is not None:
        bad = [m for m in args.methods if m not in ex.METHODS]
        if bad:
            parser.error(f'unknown method {", ".join(bad)}; choose from {", ".join(ex.METHODS)}')
    if args.tasks is not None:
        tasks = []
        for name in _words(args.tasks):
            task = ex.find_task(name)
            if task is None:
                parser.error(f'unknown task {name!r}; choose from {", ".join(ex.TASKS)}')
            tasks.append(task.key)
        args.tasks = tasks
    for key in ('steps', 'pretrain_steps'):
        value = getattr(args, key)
        if value is not None:
            try:
                setattr(args, key, int(float(value)))
            except ValueError:
                parser.error(f'--{key.replace("_", "-")} must be a number, got {value!r}')
    if args.pretrain_seed != 'same' and not args.pretrain_seed.isdigit():
        parser.error('--pretrain-seed is a number or "same"')
    if args.jobs < 1:
        parser.error('--jobs must be >= 1')
    bad = [kv for kv in args.slurm_param if '=' not in kv]
    if bad:
        parser.error(f'--slurm-param expects KEY=VALUE, got {bad[0]!r}')
    args.preset = _words(args.preset) or []
    args.extra = shlex.split(args.extra) + extra
    args.pretrain_root = args.pretrain_root or os.path.join(args.root, 'pretrain')
    args.offline_dir = args.offline_dir or os.path.join(args.data_root, 'vid2act')
    args.use_cuda = args.gpus > 0 if args.launcher == 'slurm' else bool(gpu_ids())
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    runs = build_runs(args)
    if args.dry_run:
        for run in runs:
            print(run.text)
        return 0
    if args.status:
        for run in runs:
            last, target = progress(args, run)
            state = 'not started' if target is None else 'done' if last >= target else f'{last / target:.0%}'
            state = f'running {state}' if is_running(run.logdir) else state
            print(f'{state:>12}  {last:>9} / {target if target is not None else "?":<9} {run.logdir}')
        return 0
    todo = runs if args.rerun_done else [r for r in runs if not is_done(args, r)]
    if len(todo) < len(runs):
        print(f'Skipping {len(runs) - len(todo)} finished runs (--rerun-done to run them again).')
    if args.eval:
        ready = [r for r in todo if os.path.exists(os.path.join(r.needs, 'checkpoint.pt'))]
        if len(ready) < len(todo):
            print(f'Skipping {len(todo) - len(ready)} runs without a checkpoint.pt yet.')
        todo = ready
    running = [r for r in todo if is_running(r.logdir)]
    if running:
        print(f'Skipping {len(running)} runs that another sweep or dreamer.py is running now, e.g. {running[0].logdir}.')
        todo = [r for r in todo if r not in running]
    if not todo:
        print('Nothing to do.')
        return 0
    problems = [] if args.no_checks else check_inputs(todo)
    if problems:
        print('Error: cannot start these runs:\n  ' + '\n  '.join(problems) +
              '\n(--no-checks launches anyway.)', file=sys.stderr)
        return 2
    if args.launcher == 'slurm':
        failed = launch_slurm(todo, args)
    else:
        failed = launch_local(todo, args.jobs, gpu_ids())
    return 1 if failed else 0


if __name__ == '__main__':
    interrupt_on_sigterm()
    try:
        sys.exit(main())
    except KeyboardInterrupt:        # outside a local launch (which stops its runs itself): e.g. slurm --wait
        print('Interrupted.', file=sys.stderr)
        sys.exit(130)
