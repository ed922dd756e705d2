"""benchmarks/bench_device_crops_ops.py: a short run merges its row by label, and the
batched device-crop preprocessor of this checkout reads nothing on the host (the counter
sees the reads of a preprocessor that does)."""
import json

import torch
from testing_utils import load_tool


def load_bench():
    return load_tool('benchmarks/bench_device_crops_ops.py')


def test_short_run_writes_a_row_without_host_reads(tmp_path):
    bench = load_bench()
    out = tmp_path / 'rows.json'
    for label in ('a', 'b'):
        bench.main(['--label', label, '--batch', '2', '--size', '128', '--rounds', '1',
                    '--out', str(out)])
    saved = json.loads(out.read_text())
    assert set(saved['rows']) == {'a', 'b'} and '--batch 2 --size 128' in saved['command']
    row = saved['rows']['b']
    assert row['host_reads_per_batch'] == {} and row['aten_ops_per_batch'] > 100
    assert len(row['cpu_s_per_batch']) == 1


def test_the_counter_sees_host_reads():
    x = torch.ones(3)
    with load_bench().CountOps() as counter:
        x.sum().item(), x[x > 0], torch.tensor([1.0, 2.0]), x + 1
    # .item(), a boolean index, a tensor from Python data; not the addition
    assert counter.reads == {'aten::_local_scalar_dense': 1, 'aten::index.Tensor': 1,
                             'aten::lift_fresh': 1}
    assert counter.ops['aten::add.Tensor'] == 1
