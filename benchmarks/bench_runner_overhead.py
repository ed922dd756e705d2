"""Training-iteration time through mmengine's Runner vs a bare PyTorch loop (same work).

Both run the same tiny DINO model (ViT 64-d x 4 layers, patch 8, 32 px digits, 2 global +
2 local crops), the same dataset and pipeline, the same DistillOptimWrapper step (per-tensor
clipping) and the same EMA teacher update. The Runner adds its hooks (timer, logger,
param schedulers, checkpoint at the end only), message hub and logging. Per-iteration time
is taken from the difference of two run lengths, so start-up costs cancel; the two loops are
interleaved ``--repeats`` times and the medians compared. Target: ratio <= 1.05.
The Runner uses mmengine's ``InfiniteSampler``: with ``DefaultSampler`` an iteration-based
loop sleeps 2 s each time it restarts the dataloader (mmengine's deadlock guard).

    python benchmarks/bench_runner_overhead.py [--iters 40] [--repeats 3]
"""
import argparse
import os.path as osp
import statistics
import sys
import tempfile
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402
from mmengine.dataset import default_collate  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import mmselfsup_vmf  # noqa: E402,F401

BATCH = 32
PIPELINE = [dict(type='MultiCrop', num_global=2, num_local=2, global_size=32, local_size=16,
                 interpolation='bilinear'), dict(type='PackInputs')]
MODEL = dict(
    type='DINO',
    backbone=dict(type='VisionTransformer', img_size=32, patch_size=8, out_type='cls_token',
                  arch=dict(embed_dims=64, num_layers=4, num_heads=4, feedforward_channels=128)),
    head=dict(type='DINOHead', in_channels=64, hidden_channels=256, bottleneck_channels=64,
              num_prototypes=256),
    loss=dict(type='DINOLoss', num_prototypes=256, dim=64),
    data_preprocessor=dict(type='SelfSupDataPreprocessor', mean=[128] * 3, std=[64] * 3))
DATASET = dict(type='SklearnDigits', split='train', image_size=32, pipeline=PIPELINE)
OPTIM = dict(type='DistillOptimWrapper', optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.04),
             clip_grad=dict(type='per_tensor', max_norm=3.0))


def runner_time(iters: int, work_dir: str) -> float:
    cfg = dict(
        model=MODEL, work_dir=work_dir, default_scope='mmpretrain',
        train_dataloader=dict(batch_size=BATCH, num_workers=0, dataset=DATASET,
                              sampler=dict(type='InfiniteSampler', shuffle=True),
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=OPTIM,
        param_scheduler=[dict(type='CosineAnnealingLR', T_max=iters, by_epoch=False)],
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=iters),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=10),
                           checkpoint=dict(type='CheckpointHook', interval=10 ** 6)),
        randomness=dict(seed=0), log_level='WARNING')
    runner = Runner.from_cfg(cfg)
    start = time.perf_counter()
    runner.train()
    return time.perf_counter() - start


def bare_time(iters: int) -> float:
    from mmpretrain.registry import DATASETS, MODELS, OPTIM_WRAPPERS
    torch.manual_seed(0)
    model = MODELS.build(MODEL)
    model.init_weights()
    dataset = DATASETS.build(DATASET)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True,
                                         collate_fn=default_collate)
    optim = OPTIM_WRAPPERS.build(dict(OPTIM, optimizer=torch.optim.AdamW(
        model.parameters(), lr=1e-3, weight_decay=0.04)))
    start = time.perf_counter()
    done = 0
    while done < iters:
        for data in loader:
            model.set_train_progress(epoch=0, iteration=done, max_iters=iters)
            data = model.data_preprocessor(data, True)
            losses = model(**data, mode='loss')
            loss, _ = model.parse_losses(losses)
            optim.update_params(loss)
            done += 1
            if done == iters:
                break
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iters', type=int, default=40)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    init_default_scope('mmpretrain')
    short, long_ = 5, 5 + args.iters
    per_runner, per_bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            per_bare.append((bare_time(long_) - bare_time(short)) / args.iters)
            per_runner.append((runner_time(long_, f'{tmp}/{r}l') -
                               runner_time(short, f'{tmp}/{r}s')) / args.iters)
    rt, bt = statistics.median(per_runner), statistics.median(per_bare)
    print(f'batch {BATCH} x (2x32px + 2x16px), {args.iters} iterations x {args.repeats} repeats')
    print(f'bare PyTorch loop : {bt * 1e3:8.1f} ms/iter  (runs: '
          + ', '.join(f'{t * 1e3:.1f}' for t in per_bare) + ')')
    print(f'mmengine Runner   : {rt * 1e3:8.1f} ms/iter  (runs: '
          + ', '.join(f'{t * 1e3:.1f}' for t in per_runner) + ')')
    print(f'ratio Runner / bare = {rt / bt:.3f}  (target <= 1.05)')


if __name__ == '__main__':
    main()
