import os
import sys

os.environ.setdefault('MUJOCO_GL', 'egl')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Tests compare numbers, and small ops are faster single-threaded on 2 shared cores. Reset before every test:
    scripts run in-process (e.g. disentanglement.py) may change the thread count."""
    torch.set_num_threads(1)
    yield
