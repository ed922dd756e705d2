"""benchmarks/bench_device_crops_ops.py: a short run merges its row by label, and the
batched device-crop preprocessor of this checkout reads nothing on the host (the counter
sees the reads of a preprocessor that does)."""
import importlib.util
import json
import os.path as osp

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def load_bench():
    spec = importlib.util.spec_from_file_location(
        'bench_device_crops_ops', osp.join(ROOT, 'benchmarks', 'bench_device_crops_ops.py'))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


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
