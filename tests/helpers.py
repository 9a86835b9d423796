"""Helpers shared by several test files."""
import importlib.util
import os

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
