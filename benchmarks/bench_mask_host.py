"""Host (CPU) time per training step that the data preprocessor spends on the masks of the
global views: drawn in the training process (a batch without masks) against copied from
the batch that ``masked_collate`` made in a loader worker.

Each masked ImageNet recipe at its per-GPU batch: the preprocessor of the recipe, fed
zero-filled global views of the recipe's size (the masks read only their shape). Median of
``--rounds`` steps of each kind, interleaved; process CPU time (``time.process_time``).

    OMP_NUM_THREADS=1 python benchmarks/bench_mask_host.py --out results.json
"""
import argparse
import json
import os.path as osp
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rounds', type=int, default=20)
    parser.add_argument('--out', help='JSON file for the rows')
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = {name: measure(path, args.rounds) for name, path in RECIPES.items()}
    for name, row in rows.items():
        print(f"{name}: masks drawn in the training process {row['in_training_process_ms']:.2f}"
              f" ms/step, from the loader {row['from_loader_ms']:.3f} ms/step")
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == '__main__':
    main()
