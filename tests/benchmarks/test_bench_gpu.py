"""benchmarks/bench_gpu.py --device cpu --tiny: every published config runs through the bare
loop and mmengine's Runner in fp16 and bf16, and the JSON on disk holds consistent rows."""
import glob
import json
import math
import os
import os.path as osp
import subprocess
import sys
import time

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@pytest.mark.slow
def test_bench_gpu_tiny_on_cpu_writes_a_table_and_json(tmp_path):
    out = tmp_path / 'bench.json'
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    start = time.time()
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'benchmarks', 'bench_gpu.py'),
                           '--device', 'cpu', '--tiny', '--out', str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f'bench_gpu.py --device cpu --tiny: {time.time() - start:.0f} s '
          f'(load average {os.getloadavg()[0]:.1f})')
    result = json.loads(out.read_text())
    configs = sorted(osp.relpath(p, ROOT) for p in glob.glob(
        osp.join(ROOT, 'configs', '*', 'vit-*.py')) if not p.endswith('_fsdp.py'))
    assert len(configs) >= 12 and result['device'] == 'cpu' and result['tiny'] is True
    rows = result['rows']
    assert sorted({r['config'] for r in rows}) == configs
    assert sorted((r['config'], r['precision']) for r in rows) == sorted(
        (c, p) for c in configs for p in ('fp16', 'bf16'))
    for r in rows:
        assert r['batch'] == 4 and r['crops'] == [48, 48, 32, 32] and r['compile'] == 'off'
        assert r['peak_mem_mb'] is None  # no device memory counter on a CPU
        assert r['images_per_s'] * r['ms_per_iter'] == pytest.approx(4 * 1e3, rel=1e-9)
        first = r['precision'] == 'fp16'  # the Runner's ratio is measured once per config
        assert (r['runner_over_bare'] is not None) == first
        if first:  # 2 iterations: a smoke value (timing noise), but a finite number
            assert math.isfinite(r['runner_over_bare'])
    table = proc.stdout
    assert table.count('\n| configs/') == len(rows)
    assert str(out) in table
