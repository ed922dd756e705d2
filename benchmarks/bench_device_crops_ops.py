"""Cost of the device-crop data preprocessor per batch: dispatched ops, host reads, time.

Runs ``MultiCropDataPreprocessor`` (the ImageNet recipes' laws: 2 x 224 + 10 x 96 crops
from a 384 px image) in training mode on batches built as the loader builds them
(``DeviceMultiCropInput`` + ``PackInputs`` + the collate function the switch uses), on this
machine's CPU with one thread. Per batch it reports the aten ops dispatched, the host reads
among them (the counter of the host-read tests: ``.item()``, ``nonzero``, boolean indexing,
tensors made from Python data) and the median CPU time. The row is merged by ``--label``
into the JSON, so runs of two checkouts (``PYTHONPATH=<checkout>``) land side by side::

    OMP_NUM_THREADS=1 PYTHONPATH=<checkout> python benchmarks/bench_device_crops_ops.py \\
        --label <name> --out benchmarks/results/loader/device_crops_preprocessor.json
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from collections import Counter

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

LAWS = dict(num_global=2, num_local=10, global_size=224, local_size=96,
            global_scale=(0.25, 1.0), local_scale=(0.05, 0.25))


class CountOps(TorchDispatchMode):
    """Every dispatched aten op, and the host reads among them."""

    def __init__(self):
        super().__init__()
        self.ops, self.reads = Counter(), Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        self.ops[name] += 1
        bool_index = name.startswith('aten::index') and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for a in args if isinstance(a, (list, tuple)) for i in a)
        if bool_index or func is torch.ops.aten._local_scalar_dense.default or any(
                op in name for op in ('unique', 'nonzero', 'masked_select', 'lift_fresh')):
            self.reads[name] += 1
        return func(*args, **(kwargs or {}))


def loader_batch(batch: int, size: int, seed: int) -> dict:
    """What the device-crop loader hands the data preprocessor (before pinning)."""
    from mmpretrain.registry import TRANSFORMS
    try:  # the collate function of this checkout's switch (packs the parameters)
        from mmselfsup_vmf.datasets import multicrop_collate as collate
    except ImportError:
        from mmengine.dataset import default_collate as collate
    crop = TRANSFORMS.build(dict(type='DeviceMultiCropInput', size=size, **LAWS))
    pack = TRANSFORMS.build(dict(type='PackInputs',
                                 meta_keys=('img_shape', 'aug_seed', 'crop_params')))
    rng = np.random.default_rng(seed)
    np.random.seed(seed)
    samples = []
    for _ in range(batch):
        h, w = rng.integers(size // 2, 2 * size, 2)
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        samples.append(pack(crop(dict(img=img, img_shape=(h, w), ori_shape=(h, w)))))
    return collate(samples)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--label', required=True, help='name of this checkout in the JSON')
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--size', type=int, default=384, help='DeviceMultiCropInput size')
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--out', default='benchmarks/results/loader/device_crops_preprocessor.json')
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from mmpretrain.registry import MODELS

    import mmselfsup_vmf.datasets  # noqa: F401  (registers the transforms)
    import mmselfsup_vmf.models  # noqa: F401
    pre = MODELS.build(dict(type='MultiCropDataPreprocessor', mean=[123.675, 116.28, 103.53],
                            std=[58.395, 57.12, 57.375], to_rgb=True, **LAWS))
    batches = [loader_batch(args.batch, args.size, seed) for seed in range(args.rounds + 1)]
    with torch.no_grad():
        with CountOps() as counter:
            pre(batches[0], True)
        times = []
        for data in batches[1:]:
            start = time.process_time()
            pre(data, True)
            times.append(time.process_time() - start)
    row = dict(batch=args.batch, input_size=args.size, laws=LAWS,
               aten_ops_per_batch=sum(counter.ops.values()),
               host_reads_per_batch=dict(counter.reads),
               most_dispatched=dict(counter.ops.most_common(8)),
               cpu_s_per_batch_median=statistics.median(times), cpu_s_per_batch=times)
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True,
                            text=True, cwd=os.path.dirname(mmselfsup_vmf.datasets.__file__))
    row['commit'] = commit.stdout.strip()
    row['load_average_1min'] = round(os.getloadavg()[0], 2)  # a shared machine: timings vary
    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    results.setdefault('rows', {})[args.label] = row
    results['command'] = ('OMP_NUM_THREADS=1 PYTHONPATH=<checkout> python '
                          'benchmarks/bench_device_crops_ops.py --label <label> '
                          f'--batch {args.batch} --size {args.size} --rounds {args.rounds}')
    results['machine'] = f'{platform.machine()} {platform.processor() or ""}'.strip() + \
        f', torch {torch.__version__}, 1 thread, date {time.strftime("%Y-%m-%d")}'
    with open(args.out, 'w') as f:
        json.dump(results, f, indent=1)
    print(json.dumps(row, indent=1))


if __name__ == '__main__':
    main()
