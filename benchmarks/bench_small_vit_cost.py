"""Per-iteration training cost of candidate small ViTs for the small-scale study (28 px).

For each candidate ``METHOD,PATCH,WIDTH,DEPTH,NUM_LOCAL,LOCAL_SIZE`` it builds
``configs/benchmarks/small_scale/<METHOD>.py`` with those sizes (heads 4, MLP ratio 4), makes
batches of 64 Fashion-MNIST images with the config's real multi-crop pipeline (in this
process: the data time is what a loader worker must keep up with) and times
``model.train_step`` (forward, backward, optimiser step, EMA update) on one torch thread.
Prints the median over ``--iters`` steps after 2 warm-up steps, and the load average.

Usage: python benchmarks/bench_small_vit_cost.py simdino,7,64,4,2,14 dino,4,128,4,4,16 ...
"""
import argparse
import copy
import logging
import os
import os.path as osp
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)


def measure(method, patch, width, depth, num_local, local_size, iters=12):
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner
    from mmpretrain.registry import MODELS
    cfg = Config.fromfile(osp.join(ROOT, 'configs/benchmarks/small_scale', f'{method}.py'))
    model_cfg = cfg.model
    model_cfg.backbone.patch_size = patch
    model_cfg.backbone.arch = dict(embed_dims=width, num_layers=depth, num_heads=4,
                                   feedforward_channels=4 * width)
    model_cfg.head.in_channels = width
    if 'patch_size' in model_cfg.data_preprocessor:
        model_cfg.data_preprocessor.patch_size = patch
        cfg.train_dataloader.collate_fn.patch_size = patch  # the loader draws the masks
    crop = cfg.train_dataloader.dataset.dataset.pipeline[0]
    crop.num_local, crop.local_size = num_local, local_size
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    loader_cfg.dataset.dataset.num_samples = 64 * 4
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    start = time.time()
    batches = list(loader)
    data_ms = (time.time() - start) / len(batches) * 1000
    model = MODELS.build(model_cfg)
    model.init_weights()
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    times = []
    for i in range(iters):
        start = time.time()
        model.train_step(batches[i % len(batches)], optim_wrapper)
        times.append(time.time() - start)
    times = sorted(times[2:])
    params = sum(p.numel() for p in model.backbone.parameters()) / 1e6
    return times[len(times) // 2] * 1000, data_ms, params


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('candidates', nargs='+',
                        help='METHOD,PATCH,WIDTH,DEPTH,NUM_LOCAL,LOCAL_SIZE')
    parser.add_argument('--iters', type=int, default=12)
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from mmengine.logging import MMLogger
    from mmengine.registry import init_default_scope

    import mmselfsup_vmf  # noqa: F401
    init_default_scope('mmpretrain')
    MMLogger.get_instance('mmengine').setLevel(logging.WARNING)
    for candidate in args.candidates:
        method, *sizes = candidate.split(',')
        model_ms, data_ms, params = measure(method, *map(int, sizes), iters=args.iters)
        patch, width, depth, num_local, local_size = sizes
        print(f'{method:10s} patch {patch} width {width} depth {depth} local {num_local}x'
              f'{local_size}px: train step {model_ms:6.1f} ms, data {data_ms:5.1f} ms '
              f'(batch 64), backbone {params:.2f} M params, load {os.getloadavg()[0]:.2f}',
              flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
