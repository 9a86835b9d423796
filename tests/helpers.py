"""Helpers shared by several test files."""
import importlib.util
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_batch(B=2, T=8, A=6, seed=0):
    """A replay-shaped batch of random data (uint8 images, actions in [-1, 1], episode start at t = 0)."""
    rng = np.random.default_rng(seed)
    batch = dict(image=rng.integers(0, 255, (B, T, 64, 64, 3), dtype=np.uint8),
                 action=rng.uniform(-1, 1, (B, T, A)).astype(np.float32),
                 reward=rng.normal(size=(B, T)).astype(np.float32), is_first=np.zeros((B, T), bool))
    batch['is_first'][:, 0] = True
    return batch


def load_script(name):
    """Imports scripts/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, 'scripts', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_dreamer(args, timeout=300, check=True):
    """Runs `python dreamer.py ARGS` from the repository root (MUJOCO_GL=egl); with `check`, a non-zero exit fails
    the test with the tail of its output."""
    env = dict(os.environ, MUJOCO_GL='egl', PYTHONUNBUFFERED='1')
    proc = subprocess.run([sys.executable, 'dreamer.py', *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'dreamer.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    return proc


def wait_until_stopped(pid: int, timeout: float = 30.0) -> bool:
    """Waits until process `pid` is stopped (SIGSTOP, SIGTSTP; Linux /proc); whether it is, at the end."""
    def stopped():
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] == 'T'
    deadline = time.time() + timeout
    while not stopped() and time.time() < deadline:
        time.sleep(0.01)
    return stopped()
