"""benchmarks/bench_multicrop.py: one short in-process run measures every pipeline (the
official ones when their checkouts are given), and the per-method mode measures each
recipe with its CPU MultiCrop and with the crops on the device."""
import importlib.util
import json
import os
import os.path as osp

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def load_bench():
    spec = importlib.util.spec_from_file_location(
        'bench_multicrop', osp.join(ROOT, 'benchmarks', 'bench_multicrop.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_inputs_are_imagenet_sized_jpegs():
    import io

    from PIL import Image
    sizes = {Image.open(io.BytesIO(b)).size for b in load_bench().jpeg_inputs()}
    assert sizes == {(500, 375), (375, 500)}


def test_a_short_run_of_every_pipeline(tmp_path):
    out = tmp_path / 'bench.json'
    medians = load_bench().main(['--rounds', '1', '--repeats', '1', '--batch', '6',
                                 '--dino-root', '', '--dinov2-root', '', '--out', str(out)])
    assert set(medians) == {'MultiCrop, DINO laws', 'MultiCrop, DINOv2 laws (kernel-9 blur)',
                            'device path: loader part', 'device path: device part (this CPU)'}
    assert all(0 < s < 10 for s in medians.values())
    assert json.loads(out.read_text())['median_seconds'] == medians


@pytest.mark.skipif(not (os.environ.get('DINO_ROOT') and os.environ.get('DINOV2_ROOT')),
                    reason='DINO_ROOT / DINOV2_ROOT (checkouts of facebookresearch/dino and '
                           'dinov2) not set: the official pipelines are not measured')
def test_the_official_pipelines_run_from_their_checkouts():
    medians = load_bench().main(['--rounds', '1', '--repeats', '1', '--batch', '6'])
    assert {'official DINO', 'official DINOv2'} <= set(medians)


def test_per_method_costs_on_the_device_and_cpu():
    costs = load_bench().method_costs(demo=False, rounds=1, batch_size=2)
    assert len(costs) == 12
    for (method, crops), (loader, model) in costs.items():
        assert 0 < loader < 10 and 0 < model < 10
    # the device path leaves the loader an order of magnitude less work
    assert all(costs[(m, 'device crops')][0] < costs[(m, 'CPU MultiCrop')][0] / 3
               for m in ('dino', 'ibot', 'simdinov2'))
