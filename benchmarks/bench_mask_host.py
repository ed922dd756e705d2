"""Host (CPU) time per training step that the data preprocessor spends on random draws:
made in the training process against taken from what the loader workers drew.

* masks of the global views (iBOT, SimDINOv2 ImageNet recipes at their per-GPU batch): drawn
  by the preprocessor (a batch without masks) against the batch's ``masks`` from
  ``masked_collate``, fed zero-filled global views of the recipe's size (the masks read
  only their shape);
* the device crops' per-view parameters (``imagenet_multicrop_device.py``, batch 64, 384 px
  inputs): drawn from each sample's ``aug_seed`` against stacking the ``crop_params`` that
  ``DeviceMultiCropInput`` drew.

Median of ``--rounds`` steps of each kind, interleaved; process CPU time.

    OMP_NUM_THREADS=1 python benchmarks/bench_mask_host.py --out results.json
"""
import argparse
import json
import os
import os.path as osp
import platform
import statistics
import sys
import time

import numpy as np
import torch
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

RECIPES = {'iBOT': 'configs/ibot/vit-s16_8xb64.py',
           'SimDINOv2': 'configs/simdinov2/vit-b16_8xb128.py'}


def cpu_ms(fn):
    start = time.process_time()
    fn()
    return (time.process_time() - start) * 1e3


def measure(path, rounds):
    from mmpretrain.registry import MODELS

    import mmselfsup_vmf  # noqa: F401  (registers the classes)
    from mmselfsup_vmf.models.utils.masking import global_view_masks
    cfg = Config.fromfile(osp.join(ROOT, path))
    pre = MODELS.build(cfg.model.data_preprocessor)
    pre.set_train_progress(epoch=1, iteration=0)
    batch, size = cfg.train_dataloader.batch_size, 224
    views = [torch.zeros(batch, 3, size, size)] * pre.num_global_views
    grid = (size // pre.patch_size,) * 2
    staged = torch.from_numpy(global_view_masks(batch, grid, pre.num_global_views,
                                                pre.mask_mode, np.random.default_rng(0),
                                                **pre.mask_cfg))
    drawn, copied = [], []
    for i in range(rounds):
        pre.set_train_progress(epoch=1, iteration=i)
        drawn.append(cpu_ms(lambda: pre.global_view_masks(views)))
        copied.append(cpu_ms(lambda: pre.batch_masks(staged, pre.law)))
    return dict(config=path, batch=batch, global_views=pre.num_global_views, grid=grid,
                in_training_process_ms=statistics.median(drawn),
                from_loader_ms=statistics.median(copied))


def measure_crop_params(rounds, batch=64, size=384):
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample

    from mmselfsup_vmf.models.utils.multicrop_params import draw_sample_params
    cfg = Config.fromfile(osp.join(ROOT, 'configs/_base_/datasets/imagenet_multicrop_device.py'))
    pre = MODELS.build(cfg.data_preprocessor)
    seeds = [DataSample(metainfo=dict(aug_seed=i, img_shape=(size, size))) for i in range(batch)]
    drawn = [DataSample(metainfo=dict(crop_params=draw_sample_params(
        i, size, size, pre.view_laws, **pre.draw_kwargs))) for i in range(batch)]
    in_process, stacked = [], []
    for _ in range(rounds):
        in_process.append(cpu_ms(lambda: pre.draw_params(seeds, size, size)))
        stacked.append(cpu_ms(lambda: pre.draw_params(drawn, size, size)))
    return dict(config='configs/_base_/datasets/imagenet_multicrop_device.py', batch=batch,
                views=len(pre.view_laws), in_training_process_ms=statistics.median(in_process),
                from_loader_ms=statistics.median(stacked))


def cpu_model():
    try:
        with open('/proc/cpuinfo') as f:
            return next(line.split(':', 1)[1].strip() for line in f
                        if line.startswith('model name'))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rounds', type=int, default=20)
    parser.add_argument('--out', help='JSON file for the rows')
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = {f'{name} masks': measure(path, args.rounds) for name, path in RECIPES.items()}
    rows['device crop parameters'] = measure_crop_params(args.rounds)
    for name, row in rows.items():
        print(f"{name}: drawn in the training process {row['in_training_process_ms']:.2f}"
              f" ms/step, from the loader {row['from_loader_ms']:.3f} ms/step")
    if args.out:
        meta = dict(command='OMP_NUM_THREADS=1 python benchmarks/bench_mask_host.py '
                    + ' '.join(argv if argv is not None else sys.argv[1:]),
                    date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
                    machine=f'{cpu_model()}, '
                            f'{os.cpu_count()} cores, torch {torch.__version__}',
                    load_average=os.getloadavg(), unit='CPU ms per training step (median)')
        with open(args.out, 'w') as f:
            json.dump(dict(meta=meta, rows=rows), f, indent=1)
    return rows


if __name__ == '__main__':
    main()
