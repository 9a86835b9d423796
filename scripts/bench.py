"""Benchmark: seconds per training update (world model + behaviour), memory, achieved GFLOP/s; env and replay speed.

    python scripts/bench.py --mode all --batch 16,50 --length 50            # the table of docs/benchmarks.md
    python scripts/bench.py --mode diswm --batch 16 --precision bf16         # one mode, bf16 autocast
    python scripts/bench.py --mode all --batch 16 --device cuda --compile True
    python scripts/bench.py --mode dreamerv2 --batch 16 --device cuda --profile True  # kernels, GPU busy time
    python scripts/bench.py --envs 1,2 --replay                              # env throughput, replay sampler
    python scripts/bench.py --checkpoint RUN --batch 16 --precision bf16     # updates from a run's own weights

`--checkpoint RUN` (a run folder or a checkpoint file) times the updates of that run's agent from its saved weights
and optimizer state (architecture from the run's config; images and actions of its shapes) instead of a new agent:
whether a run whose updates grew slower is slowed by its weights (e.g. denormal numbers) or by the machine. Compare
it with the same command on a fresh agent of the same model in the same hour.

Each (mode, batch) measurement runs in a fresh subprocess so its peak memory is its own. Updates use random data of
the dmc2gym preset's shapes (64x64 images, 6-dim actions) and hyperparameters: warm-up updates, then the median of
the timed ones. One JSON line per measurement on stdout, then a table.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('MUJOCO_GL', 'egl')

MODES = {
    'diswm': 'DisWM finetune (beta-VAE, distillation)',
    'dreamerv2': 'DreamerV2',
    'pretrain': 'action-free beta-VAE pretraining',
    'checkpoint': "a run's agent (--checkpoint)",
}


def matmul_peak(threads: int, device: str, dtype_name: str = 'float32', size: int = 2048) -> float:
    """GFLOP/s of a large square matmul: the practical arithmetic limit the updates are compared against."""
    import torch
    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(5):
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.startswith('cuda'):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 2 * size ** 3 / statistics.median(times) / 1e9


def child(args) -> dict:
    """One measurement (runs in its own process)."""
    import numpy as np
    import torch
    import models
    import tools

    torch.set_num_threads(args.threads)
    malloc_cache = tools.keep_freed_memory(args.malloc_cache)
    B, L = args.batch[0], args.length
    tmp = tempfile.mkdtemp()
    argv = ['--configs', 'defaults', 'dmc2gym', '--batch_size', str(B), '--batch_length', str(L), '--device',
            args.device, '--precision', args.precision, '--compile', str(args.compile), '--tf32', str(args.tf32),
            '--logdir', os.path.join(tmp, 'run'), '--seed', '0', '--malloc_cache', str(args.malloc_cache)]
    argv += list(args.extra)
    if args.mode == 'diswm':
        video = models.WorldModel(tools.make_config(argv + ['--beta_vae_pretrain', 'True', '--beta_vae', 'True']), 2,
                                  models.METHOD_SPECS['pretrain'])
        models.save_video_model(tmp, video, dict(z_dim=20))
        argv += ['--method_name', 'diswm', '--beta_vae', 'True', '--pretrain_checkpoint_path', tmp]
    elif args.mode == 'pretrain':
        argv += ['--beta_vae_pretrain', 'True', '--beta_vae', 'True']
    config = tools.make_config(argv)
    tools.set_tf32(config.device, config.tf32)      # as dreamer.py does
    rng = np.random.default_rng(0)
    A = 6

    def batch():
        b = dict(image=rng.integers(0, 255, (B, L, *config.size, 3), dtype=np.uint8),
                 action=rng.uniform(-1, 1, (B, L, A)).astype(np.float32),
                 reward=rng.normal(size=(B, L)).astype(np.float32), is_first=np.zeros((B, L), bool))
        b['is_first'][:, 0] = True
        return b

    cuda = args.device.startswith('cuda')
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if args.mode == 'pretrain':
        wm = models.WorldModel(config, 2, models.METHOD_SPECS['pretrain']).to(config.device)
        if config.compile:
            models.compile_world_model(wm, config.compile_mode)
        opt = tools.Optimizer.for_config('model', wm.parameters(), config.model_lr, config)

        def update(data):      # what `dreamer.py --beta_vae_pretrain True` does per update
            metrics = models.video_model_update(wm, opt, data, 0)
            sync()
            return metrics, None

        def prepare(b):
            return {'image': torch.as_tensor(b['image']).to(config.device),
                    'is_first': torch.as_tensor(b['is_first']).to(config.device).float()}
    else:
        if args.checkpoint:     # the run's agent with its trained weights and optimizer state; its own shapes
            import agents
            state = agents.read_checkpoint(agents.checkpoint_file(args.checkpoint))
            agent, config, _ = agents.load_agent(args.checkpoint, dict(
                device=args.device, precision=args.precision, compile=args.compile, tf32=args.tf32, batch_size=B,
                batch_length=L, malloc_cache=args.malloc_cache), state)
            A = agents.checkpoint_action_size(state['agent'])
            del state
            agent.train()
        else:
            agent = models.Agent(config, A)

        def update(data):      # what Agent.update does, with the world model and behaviour timed apart
            t0 = time.perf_counter()
            tools.mark_update_begin(config)
            out, metrics = agent.update_world_model(data, 10_000)
            sync()
            t1 = time.perf_counter()
            metrics.update(agent.update_behavior(out))
            sync()
            return metrics, (t1 - t0, time.perf_counter() - t1)

        prepare = agent.training_batch

    # parameters the update trains (an agent keeps them frozen between updates; the slow critic and a teacher never)
    params = sum(p.numel() for name, p in (wm if args.mode == 'pretrain' else agent).named_parameters()
                 if not name.startswith('behavior.slow_critic.') and '.teacher.' not in name)
    data = [batch() for _ in range(2)]
    for i in range(args.warmup):
        update(prepare(data[i % 2]))
    times, wm_times, beh_times, losses = [], [], [], []
    for i in range(args.repeats):
        t = time.perf_counter()
        metrics, split = update(prepare(data[i % 2]))
        times.append(time.perf_counter() - t)
        if split:
            wm_times.append(split[0])
            beh_times.append(split[1])
        losses.append(float(metrics['model_loss']))
    median = statistics.median(times)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2 ** 30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    # FLOPs counted last: FlopCounterMode's own allocations must not count towards the update's peak memory
    flops = None
    if args.flops:
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)
        with counter:
            update(prepare(data[0]))
        flops = counter.get_total_flops()
    profiled = profile_update(lambda: update(prepare(data[0])), cuda) if args.profile else {}
    return dict(**profiled, mode=args.mode, batch=B, length=L, params=params, s_per_update=median,
                s_world_model=statistics.median(wm_times) if wm_times else median,
                s_behavior=statistics.median(beh_times) if beh_times else 0.0,
                updates_per_s=1 / median, min_s=min(times), max_s=max(times), repeats=args.repeats,
                peak_mem_gb=peak, peak_kind='cuda_max_allocated' if cuda else 'process_max_rss',
                gflop_per_update=flops / 1e9 if flops else None,
                gflops=flops / 1e9 / median if flops else None,
                device=args.device, precision=args.precision, compile=bool(args.compile),
                compile_mode=config.compile_mode if args.compile else None, tf32=config.tf32,
                malloc_cache=malloc_cache, checkpoint=args.checkpoint or None,
                torch=torch.__version__, threads=torch.get_num_threads(), final_loss=losses[-1])


def profile_update(run_update, cuda: bool) -> dict:
    """Kernel count and device busy time of one update (torch.profiler's Chrome trace): on a GPU, how much of an
    update's wall time the kernels fill; the rest is launch and host overhead. On a CPU: the number of aten ops."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t = time.perf_counter()
        run_update()
        wall = time.perf_counter() - t
    with tempfile.NamedTemporaryFile(suffix='.json') as f:
        prof.export_chrome_trace(f.name)
        with open(f.name) as g:
            events = [e for e in json.load(g).get('traceEvents', []) if e.get('ph') == 'X']
    kernels = [e for e in events if e.get('cat') == 'kernel']
    out = dict(profiled_wall_s=wall, cpu_ops=sum(e.get('cat') == 'cpu_op' for e in events))
    if cuda:
        # kernels of one stream do not overlap here, so the summed durations are the time the GPU was busy
        out.update(kernels=len(kernels), kernel_busy_s=sum(e.get('dur', 0) for e in kernels) / 1e6)
    return out


def bench_replay(repeats: int = 20) -> dict:
    import numpy as np
    import replay as replay_lib
    buffer = replay_lib.Replay(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = 501
        buffer.add_episode(dict(image=rng.integers(0, 255, (n, 64, 64, 3), dtype=np.uint8),
                                action=rng.uniform(-1, 1, (n, 6)).astype(np.float32),
                                reward=rng.normal(size=n).astype(np.float32), is_first=np.eye(1, n, 0, bool)[0]))
    buffer.sample(50, 50)
    t = time.perf_counter()
    for _ in range(repeats):
        buffer.sample(50, 50)
    per = (time.perf_counter() - t) / repeats
    return dict(kind='replay', batch=50, length=50, stored_steps=len(buffer), s_per_batch=per,
                batches_per_s=1 / per)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--mode', default='all', help=f"all or a comma list of {', '.join(MODES)} (none: skip)")
    parser.add_argument('--batch', default='16,50', help='batch sizes, comma-separated')
    parser.add_argument('--length', type=int, default=50)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--precision', default='32', choices=['32', 'bf16', '16'])
    parser.add_argument('--compile', default='False', choices=['True', 'False'])
    parser.add_argument('--tf32', default='True', choices=['True', 'False'],
                        help='CUDA: TF32 matmuls and convolutions, as the --tf32 training option (default True)')
    parser.add_argument('--malloc_cache', default='True', choices=['True', 'False'],
                        help="keep freed memory for reuse (the --malloc_cache training option; False: glibc's defaults)")
    parser.add_argument('--flops', default='True', choices=['True', 'False'],
                        help='count FLOPs of one update (torch.utils.flop_counter) for GFLOP/s')
    parser.add_argument('--profile', default='False', choices=['True', 'False'],
                        help='profile one more update: aten ops, and on a GPU the kernels and their busy time')
    parser.add_argument('--envs', default='', help='also measure env throughput with these worker counts, e.g. 1,2')
    parser.add_argument('--env_tasks', default='dmc2gym_cheetah_run,gymnasium_Pusher-v5,metaworld_drawer-open-v1')
    parser.add_argument('--env_steps', type=int, default=300)
    parser.add_argument('--replay', action='store_true', help='also measure the replay sampler')
    parser.add_argument('--out', default='', help='append the JSON lines to this file')
    parser.add_argument('--checkpoint', default='',
                        help="a run folder or checkpoint file: time that run's agent from its saved weights and "
                             "optimizer state (the run's architecture) instead of a new one")
    parser.add_argument('extra', nargs='*', help='further dreamer.py flags for the benchmarked model after --, '
                                                 'e.g. -- --dyn_stoch 32 --dyn_discrete 32')
    parser.add_argument('--_child', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.batch = [int(b) for b in args.batch.split(',') if b]
    args.compile = args.compile == 'True'
    args.flops = args.flops == 'True'
    args.profile = args.profile == 'True'
    args.malloc_cache = args.malloc_cache == 'True'
    if args._child:
        print(json.dumps(child(args)))
        return
    results = []

    def emit(row):
        results.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, 'a') as f:
                f.write(json.dumps(row) + '\n')

    if args.checkpoint:
        if args.mode not in ('all', 'checkpoint') or args.extra:
            sys.exit("--checkpoint times the run's own agent (its architecture from the run's config): leave out "
                     "--mode and the dreamer.py flags after --.")
        if not os.path.exists(args.checkpoint):
            sys.exit(f"--checkpoint '{args.checkpoint}' does not exist: give a run folder holding checkpoint.pt or "
                     f"a checkpoint file.")
        args.checkpoint = os.path.abspath(args.checkpoint)      # the measurements run from the repository root
        args.mode = 'checkpoint'
    modes = ([m for m in MODES if m != 'checkpoint'] if args.mode == 'all'
             else [m for m in args.mode.split(',') if m and m != 'none'])
    if 'checkpoint' in modes and not args.checkpoint:
        sys.exit('--mode checkpoint needs --checkpoint RUN (a run folder or checkpoint file).')
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        sys.exit(f"Unknown --mode {unknown}: use all or {', '.join(MODES)}.")
    if args.device.startswith('cuda'):
        import torch
        if not torch.cuda.is_available():
            sys.exit('--device cuda requested but no CUDA GPU is available.')
    if modes:
        peak32 = matmul_peak(args.threads, args.device, 'float32')
        # bf16 matmuls without hardware bf16 (e.g. an AVX2 CPU) run at well under 1 GFLOP/s, so this peak would take
        # minutes to measure: only measured when the updates use it.
        peak16 = matmul_peak(args.threads, args.device, 'bfloat16') if args.precision in ('bf16', '16') else None
        emit(dict(kind='matmul_peak', device=args.device, threads=args.threads, fp32_gflops=peak32,
                  bf16_gflops=peak16))
    for mode in modes:
        for batch in args.batch:
            cmd = [sys.executable, os.path.abspath(__file__), '--_child', '--mode', mode, '--batch', str(batch),
                   '--length', str(args.length), '--warmup', str(args.warmup), '--repeats', str(args.repeats),
                   '--threads', str(args.threads), '--device', args.device, '--precision', args.precision,
                   '--compile', str(args.compile), '--tf32', args.tf32, '--flops', str(args.flops),
                   '--profile', str(args.profile),
                   '--malloc_cache', str(args.malloc_cache), '--checkpoint', args.checkpoint] + (
                       ['--', *args.extra] if args.extra else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                sys.exit(f'benchmark of {mode} at batch {batch} failed')
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row['kind'] = 'update'
            if args.extra:
                row['extra'] = ' '.join(args.extra)
            if row.get('gflops'):
                peak = peak16 if args.precision in ('bf16', '16') else peak32
                row['fraction_of_matmul_peak'] = row['gflops'] / peak
            emit(row)
    if args.envs:
        sys.path.insert(0, os.path.join(ROOT, "scripts"))
        from bench_envs import measure_env_throughput
        for task in args.env_tasks.split(','):
            for n in [int(x) for x in args.envs.split(',')]:
                emit(dict(kind='env', **measure_env_throughput(task, n, args.env_steps, 0)))
    if args.replay:
        emit(bench_replay())

    print()
    updates = [r for r in results if r.get('kind') == 'update']
    if updates:
        print(f"| mode | B x L | s/update | world model | behaviour | updates/s | peak mem (GB) | GFLOP/update | "
              f"GFLOP/s | % of {args.precision if args.precision != '32' else 'fp32'} matmul peak |")
        print('|---|---|---|---|---|---|---|---|---|---|')
        for r in updates:
            gf = f"{r['gflop_per_update']:.0f}" if r.get('gflop_per_update') else '-'
            gs = f"{r['gflops']:.0f}" if r.get('gflops') else '-'
            frac = f"{100 * r['fraction_of_matmul_peak']:.0f} %" if r.get('fraction_of_matmul_peak') else '-'
            print(f"| {MODES[r['mode']]} | {r['batch']} x {r['length']} | {r['s_per_update']:.2f} | "
                  f"{r['s_world_model']:.2f} | {r['s_behavior']:.2f} | {r['updates_per_s']:.2f} | "
                  f"{r['peak_mem_gb']:.2f} | {gf} | {gs} | {frac} |")
        peak = next(r for r in results if r.get('kind') == 'matmul_peak')
        bf16 = f"{peak['bf16_gflops']:.0f} GFLOP/s" if peak['bf16_gflops'] is not None else 'not measured (fp32 run)'
        print(f"\nmatmul peak ({args.device}, {args.threads} threads): fp32 {peak['fp32_gflops']:.0f} GFLOP/s, "
              f"bf16 {bf16}; precision {args.precision}, compile {args.compile}, tf32 {args.tf32} (CUDA only), "
              f"malloc_cache {args.malloc_cache}, "
              f"torch {updates[0]['torch']}")
        for r in updates:
            if 'cpu_ops' in r:
                gpu = (f", {r['kernels']} kernels busy {r['kernel_busy_s']:.3f} s "
                       f"({100 * r['kernel_busy_s'] / r['profiled_wall_s']:.0f} % of it)") if 'kernels' in r else ''
                print(f"profile {r['mode']} {r['batch']} x {r['length']}: {r['cpu_ops']} aten ops in "
                      f"{r['profiled_wall_s']:.3f} s (under the profiler){gpu}")
    envs = [r for r in results if r.get('kind') == 'env']
    if envs:
        print('\n| task | envs | agent steps/s |')
        print('|---|---|---|')
        for r in envs:
            print(f"| {r.get('task')} | {r.get('n_envs')} | {r.get('steps_per_s', float('nan')):.1f} |")
    for r in results:
        if r.get('kind') == 'replay':
            print(f"\nreplay sampler: {r['batches_per_s']:.0f} batches/s of 50 x 50 from {r['stored_steps']} steps")


if __name__ == '__main__':
    main()
