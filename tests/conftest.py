import os
import sys

os.environ.setdefault('MUJOCO_GL', 'egl')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

torch.set_num_threads(1)  # tests compare numbers; small ops are faster single-threaded on 2 cores
