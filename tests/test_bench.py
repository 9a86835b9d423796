"""scripts/bench.py's profiler summary (the GPU figures of docs/benchmarks.md come from it)."""
import torch

from helpers import load_script

bench = load_script('bench')


def test_profile_counts_the_ops_of_one_update():
    x, y = torch.ones(8), torch.ones(8)

    def adds(n):
        def run():
            for _ in range(n):
                torch.add(x, y)
        return run

    one, five = bench.profile_update(adds(1), cuda=False), bench.profile_update(adds(5), cuda=False)
    assert five['cpu_ops'] - one['cpu_ops'] == 4
    assert 'kernels' not in one and one['profiled_wall_s'] > 0
