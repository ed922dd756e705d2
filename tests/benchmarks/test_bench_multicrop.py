"""benchmarks/bench_multicrop.py: DINO's torchvision pipeline as re-expressed there makes
DINO's 12 views with its laws, and one short in-process run measures every pipeline."""
import importlib.util
import json
import os.path as osp
import random

import torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def load_bench():
    spec = importlib.util.spec_from_file_location(
        'bench_multicrop', osp.join(ROOT, 'benchmarks', 'bench_multicrop.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dino_torchvision_views_and_a_short_run(tmp_path):
    from PIL import Image
    bench = load_bench()
    random.seed(0)
    torch.manual_seed(0)
    # a flat mid-grey image: every view is ToTensor+Normalize of (128 +- jitter) / 255
    views = bench.dino_torchvision_views()(Image.new('RGB', (120, 90), (128, 128, 128)))
    assert [tuple(v.shape) for v in views] == [(3, 224, 224)] * 2 + [(3, 96, 96)] * 10
    grey = (128 / 255 - 0.485) / 0.229
    assert all(abs(float(v[0].mean()) - grey) < 1.0 for v in views)
    out = tmp_path / 'bench.json'
    medians = bench.main(['--rounds', '1', '--repeats', '1', '--batch', '6', '--out', str(out)])
    assert set(medians) == {'MultiCrop (CPU)', 'DINO torchvision (CPU)',
                            'device path: loader part', 'device path: device part (this CPU)'}
    assert all(0 < s < 10 for s in medians.values())
    assert json.loads(out.read_text())['median_seconds'] == medians
