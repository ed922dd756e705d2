"""benchmarks/bench_gpu.py --device cpu --tiny: every published config runs its train step in
fp32, bf16 and fp16, through mmengine's Runner with the recipe's hooks, and the loaders; each
row reaches the JSON-lines file and the table as it completes. In-process: an out-of-memory
error is a row, a row past the time budget is skipped, and a compiled step is warmed up
until it compiles nothing new."""
import glob
import json
import math
import os
import os.path as osp
import subprocess
import sys
import time

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(ROOT, 'benchmarks'))


def published_configs():
    return sorted(osp.relpath(p, ROOT) for p in glob.glob(
        osp.join(ROOT, 'configs', '*', 'vit-*.py')) if not p.endswith('_fsdp.py'))


@pytest.mark.slow
def test_bench_gpu_tiny_on_cpu_writes_rows_as_they_complete(tmp_path):
    out = tmp_path / 'bench'
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    start = time.time()
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'benchmarks', 'bench_gpu.py'),
                           '--device', 'cpu', '--tiny', '--out', str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f'bench_gpu.py --device cpu --tiny: {time.time() - start:.0f} s '
          f'(load average {os.getloadavg()[0]:.1f})')
    lines = [json.loads(line) for line in open(f'{out}.jsonl')]
    env_row, rows = lines[0], lines[1:]
    assert env_row['kind'] == 'env' and env_row['tiny'] is True
    assert env_row['cpu_cores'] == os.cpu_count()
    configs = published_configs()
    assert len(configs) >= 12
    steps = [r for r in rows if r['kind'] == 'step']
    assert sorted((r['config'], r['precision']) for r in steps) == sorted(
        (c, p) for c in configs for p in ('fp32', 'bf16', 'fp16'))
    flops = {}
    for r in steps:
        assert r['status'] == 'ok', r
        assert r['batch'] == 4 and r['crops'] == [48, 48, 32, 32] and r['compile'] == 'off'
        assert r['peak_mem_mb'] is None and r['mfu'] is None  # no device counters on a CPU
        assert r['images_per_s'] * r['ms_per_step'] == pytest.approx(4e3, rel=1e-9)
        flops.setdefault(r['config'], set()).add(round(r['gflop_per_image'], 9))
    # the FLOP count is the model's, not the precision's
    assert all(len(v) == 1 and next(iter(v)) > 0 for v in flops.values()), flops
    runners = [r for r in rows if r['kind'] == 'runner']
    assert sorted(r['config'] for r in runners) == configs
    for r in runners:
        assert r['status'] == 'ok' and math.isfinite(r['runner_over_bare']), r
        assert {'TrainProgressHook', 'DivergenceGuardHook', 'LoggerHook'} <= set(r['hooks'])
    loaders = [r for r in rows if r['kind'] == 'loader']
    assert [r['path'] for r in loaders].count('device') == 1
    assert 2 <= len(loaders) <= len(configs) + 1
    for r in loaders:
        assert r['status'] == 'ok', r
        assert r['loader_images_per_s'] == pytest.approx(os.cpu_count() / r['cpu_s_per_image'])
    table = open(f'{out}.md').read()
    assert table.count('\n| step |') == len(steps) and table.count('\n| loader |') == len(loaders)


def tiny_args(tmp_path, *extra):
    import bench_gpu
    return bench_gpu.parse_args(['--device', 'cpu', '--tiny', '--out', str(tmp_path / 'b'),
                                 *extra])


def test_out_of_memory_is_a_row_and_the_budget_skips(tmp_path, monkeypatch):
    import bench_gpu

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 90.00 GiB')

    monkeypatch.setattr(bench_gpu, 'build', no_memory)
    args = tiny_args(tmp_path)
    cfg = osp.join(ROOT, 'configs', 'simdinov2', 'vit-l16_8xb128.py')
    row = bench_gpu.step_row(cfg, 'bf16', False, args)
    assert row['status'] == 'oom' and 'Tried to allocate 90.00 GiB' in row['error']
    rec = bench_gpu.Recorder(args, dict(device_name='cpu', gpus=0, cpu_cores=2, torch='x',
                                        date='d', tiny=True))
    rec.add(row)
    args.budget_min = 0.0
    assert rec.run(dict(kind='step', config='c'), lambda: 1 / 0) is None
    lines = [json.loads(line) for line in open(f'{args.out}.jsonl')]
    assert [r.get('status') for r in lines] == [None, 'oom', 'skipped']
    assert '| oom |' in open(f'{args.out}.md').read()


@pytest.mark.slow
def test_a_compiled_step_is_warmed_up_until_nothing_compiles(tmp_path):
    import bench_gpu
    torch._dynamo.reset()
    args = tiny_args(tmp_path, '--compile-backend', 'eager')
    cfg = osp.join(ROOT, 'configs', 'simdinov2', 'vit-b16_8xb128.py')
    row = bench_gpu.step_row(cfg, 'fp32', True, args)
    assert row['status'] == 'ok' and row['compile'] == 'eager', row
    # the first step compiles; the warm-up ends at the first step that compiles nothing
    assert row['warmup_steps'] == 2, row


@pytest.mark.slow
def test_the_ddp_row_trains_two_processes(tmp_path):
    """On a GPU machine the row uses NCCL and one GPU per process; here gloo on the CPU."""
    from gpu_bench_parts import ddp_row
    args = tiny_args(tmp_path)
    row = ddp_row(osp.join(ROOT, 'configs', 'dino', 'vit-s16_8xb64.py'), 'fp32', args)
    assert row['status'] == 'ok' and row['gpus'] == 2 and row['batch'] == 4
    assert row['images_per_s'] == pytest.approx(2 * 4 / row['ms_per_step'] * 1e3)
