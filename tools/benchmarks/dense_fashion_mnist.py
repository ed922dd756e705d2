"""Dense evaluation on the embedded data: pre-train -> export -> segmentor -> mIoU, vs random.

1. Pre-trains ``configs/<method>/demo_fashion-mnist.py`` (the README demo) with mmengine's
   Runner (``--pretrain-epochs`` shortens it as ``tools/train.py --epochs`` does).
2. Exports the teacher backbone with ``tools/model_converters/extract_backbone.py``.
3. Trains each segmentation config (``configs/benchmarks/mmseg/demo-vit-p7_*``: frozen
   backbone + linear head, UperNet fine-tuning) on 56x56 Fashion-MNIST mosaics with mmseg's
   Runner, once from the export and once from a randomly initialised backbone (same config,
   same seed), and prints mIoU (mmseg's ``IoUMetric`` on the test-image mosaics) of both.
"""
import argparse
import os.path as osp
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, osp.join(ROOT, 'tools', 'model_converters'))

from extract_backbone import extract_backbone  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import mmselfsup_vmf  # noqa: E402,F401
from mmselfsup_vmf.engine.short_run import shorten_run  # noqa: E402
from mmselfsup_vmf.engine.threads import set_torch_threads  # noqa: E402

METHODS = ('simdino', 'dino', 'dino_vmf', 'ibot', 'ibot_vmf')  # no registers: plain ViT
SEG_CONFIGS = {
    'linear': 'demo-vit-p7_linear-frozen_1xb16-1k_fashion-mnist-mosaic-28x28.py',
    'upernet': 'demo-vit-p7_upernet_1xb16-1k_fashion-mnist-mosaic-28x28.py',
}
INITS = ('pretrained', 'random')


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--method', default='simdino', choices=METHODS)
    p.add_argument('--work-dir', default='work_dirs/dense_fashion_mnist')
    p.add_argument('--pretrain-epochs', type=int, help='default: the demo config (3)')
    p.add_argument('--pretrain-epoch-iters', type=int,
                   help='cap each pre-training epoch at this many iterations (smoke runs)')
    p.add_argument('--no-knn', action='store_true',
                   help='skip the demo\'s k-NN probe before and after pre-training')
    p.add_argument('--backbone', help='an exported backbone: skip pre-training and export')
    p.add_argument('--heads', nargs='+', default=list(SEG_CONFIGS),
                   help='linear, upernet or a config path')
    p.add_argument('--seg-iters', type=int,
                   help='segmentor iterations (default: the config\'s 1,000); the warm-up '
                        'is scaled with it')
    p.add_argument('--train-mosaics', type=int, help='default: the config\'s 2,000')
    p.add_argument('--val-mosaics', type=int, help='default: the config\'s 500')
    p.add_argument('--threads', type=int, default=None,
                   help='torch threads (default: one per core not used by a loader worker)')
    return p.parse_args(argv)


def pretrain(args) -> str:
    """Run the demo pre-training; returns its last checkpoint."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', args.method, 'demo_fashion-mnist.py'))
    if args.pretrain_epochs is not None or args.pretrain_epoch_iters is not None:
        shorten_run(cfg, args.pretrain_epochs, args.pretrain_epoch_iters)
    if args.no_knn:
        cfg.custom_hooks = [h for h in cfg.custom_hooks if h['type'] != 'KNNHook']
    cfg.work_dir = osp.join(args.work_dir, f'pretrain_{args.method}')
    cfg.experiment_name = f'pretrain_{args.method}'  # Runner appends a timestamp
    runner = Runner.from_cfg(cfg)
    runner.train()
    with open(osp.join(cfg.work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def segmentor_cfg(head: str, backbone: str, args) -> Config:
    """The segmentation config of ``head``, from ``backbone`` (a path) or random init (None)."""
    path = osp.join(ROOT, 'configs', 'benchmarks', 'mmseg', SEG_CONFIGS.get(head, head))
    cfg = Config.fromfile(path)
    if backbone is None:
        cfg.model.backbone.init_cfg = None
    else:
        cfg.model.backbone.init_cfg.checkpoint = backbone
    if args.seg_iters is not None:
        if args.seg_iters < 1:
            raise ValueError(f'--seg-iters must be >= 1, got {args.seg_iters}')
        old = cfg.train_cfg.max_iters
        for sched in cfg.param_scheduler:  # warm-up and poly keep their proportions
            sched.begin = round(sched.begin * args.seg_iters / old)
            sched.end = max(round(sched.end * args.seg_iters / old), sched.begin + 1)
        cfg.train_cfg.max_iters = cfg.train_cfg.val_interval = args.seg_iters
        cfg.default_hooks.checkpoint.interval = args.seg_iters
        cfg.default_hooks.logger.interval = min(cfg.default_hooks.logger.interval,
                                                args.seg_iters)
    for loader, num in (('train_dataloader', args.train_mosaics),
                        ('val_dataloader', args.val_mosaics)):
        if num is not None:
            cfg[loader].dataset.num_mosaics = num
    cfg.test_dataloader = cfg.val_dataloader
    init = 'random' if backbone is None else 'pretrained'
    cfg.work_dir = osp.join(args.work_dir, f'{head}_{init}')
    cfg.experiment_name = f'{head}_{init}'
    return cfg


def train_segmentor(cfg: Config) -> dict:
    """mmseg's Runner: train, validate at the end; returns the validation metrics."""
    runner = Runner.from_cfg(cfg)
    runner.train()
    hub = runner.message_hub
    return {k: hub.get_scalar(f'val/{k}').current() for k in ('mIoU', 'aAcc', 'mAcc')}


def run(args) -> dict:
    """{(head, init): metrics with 'seconds'}, plus 'pretrain_seconds'."""
    print(set_torch_threads(args.threads, 1)[1], flush=True)
    start = time.time()
    backbone = args.backbone
    if backbone is None:
        checkpoint = pretrain(args)
        backbone = osp.join(args.work_dir, f'pretrain_{args.method}', 'backbone.pth')
        extract_backbone(checkpoint, backbone)
    elif not osp.isfile(backbone):
        raise FileNotFoundError(f'--backbone {backbone} does not exist')
    results = {'pretrain_seconds': time.time() - start}
    for head in args.heads:
        for init in INITS:
            start = time.time()
            metrics = train_segmentor(
                segmentor_cfg(head, backbone if init == 'pretrained' else None, args))
            results[head, init] = dict(metrics, seconds=time.time() - start)
    return results


def report(results: dict, args) -> str:
    lines = [f'=== segmentation of 56x56 Fashion-MNIST mosaics (11 classes), {args.method} '
             f'demo backbone ===',
             f'pre-training + export: {results["pretrain_seconds"]:.0f} s',
             f'{"head":<8} {"backbone":<11} {"mIoU":>6} {"mAcc":>6} {"aAcc":>6} {"time":>6}']
    for head in args.heads:
        for init in INITS:
            m = results[head, init]
            lines.append(f'{head:<8} {init:<11} {m["mIoU"]:6.2f} {m["mAcc"]:6.2f} '
                         f'{m["aAcc"]:6.2f} {m["seconds"]:5.0f}s')
        gain = results[head, 'pretrained']['mIoU'] - results[head, 'random']['mIoU']
        lines.append(f'{head}: pre-trained - random = {gain:+.2f} mIoU points')
    return '\n'.join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = run(args)
    print('\n' + report(results, args), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
