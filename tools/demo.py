"""The README demo: a short CPU pre-training on Fashion-MNIST, with k-NN before and after.

Runs ``configs/<method>/demo_fashion-mnist.py`` through mmengine's Runner (progress and ETA
in the log, checkpoints and TensorBoard scalars in the work dir), then prints the k-NN top-1
accuracy of the randomly initialised teacher and of the trained teacher, next to the same
k-NN on raw pixels. By default the k-NN uses the full Fashion-MNIST split (all 60,000 training
images as the bank, all 10,000 test images as queries) and runs only before and after
training; ``--knn-split subset`` keeps the config's smaller sets and per-epoch evaluations.
Exits with status 1 if training did not beat random initialisation by ``--min-gain`` points.
"""
import argparse
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.runner import Runner  # noqa: E402

import mmselfsup_vmf  # noqa: E402,F401
from mmselfsup_vmf.datasets.transforms import apply_device_crops_key  # noqa: E402
from mmselfsup_vmf.engine.hooks.knn_hook import KNNHook  # noqa: E402
from mmselfsup_vmf.engine.threads import set_torch_threads  # noqa: E402

METHODS = ('simdino', 'dino', 'dino_vmf', 'ibot', 'ibot_vmf', 'simdinov2')
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--method', default='simdino', choices=METHODS)
    p.add_argument('--config', help='a demo config (overrides --method)')
    p.add_argument('--work-dir', help='default: work_dirs/demo_<method>')
    p.add_argument('--min-gain', type=float, default=1.0,
                   help='required k-NN top-1 gain over random init, in points (default 1.0)')
    p.add_argument('--knn-split', choices=('full', 'subset'), default='full',
                   help='k-NN sets: the full split (60,000-image bank, 10,000 queries; '
                        'default) or the config\'s subsets')
    p.add_argument('--threads', type=int, default=None,
                   help='torch threads for the model (default: one per core not used by a '
                        'data-loader worker, i.e. 1 on a 2-core machine with the demo\'s '
                        'worker; more threads spin-wait badly on a busy machine)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override config settings, key=value')
    return p.parse_args(argv)


def use_full_knn_split(cfg: Config) -> None:
    """Every KNNHook: whole train/test splits, evaluated before and after training only."""
    for hook in cfg.get('custom_hooks', []):
        if hook.get('type') == 'KNNHook':
            for loader in (hook['train_dataloader'], hook['val_dataloader']):
                loader['dataset']['num_samples'] = None
                loader['batch_size'] = 1000
            hook['interval'] = cfg.train_cfg.max_epochs


def main(argv=None) -> int:
    args = parse_args(argv)
    config = args.config or osp.join(ROOT, 'configs', args.method, 'demo_fashion-mnist.py')
    if not osp.isfile(config):
        print(f'error: demo config {config} does not exist', file=sys.stderr)
        return 2
    cfg = Config.fromfile(config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    apply_device_crops_key(cfg)  # --cfg-options device_crops=True: crops on the GPU
    if args.knn_split == 'full':
        use_full_knn_split(cfg)
    print(set_torch_threads(args.threads, cfg.train_dataloader.get('num_workers', 0))[1],
          flush=True)
    name = osp.basename(osp.dirname(config))
    cfg.work_dir = args.work_dir or osp.join('work_dirs', f'demo_{name}')
    start = time.time()
    runner = Runner.from_cfg(cfg)
    runner.train()
    minutes = (time.time() - start) / 60
    knn = [h for h in runner.hooks if isinstance(h, KNNHook)]
    if not knn or len(knn[0].history) < 2:
        print('error: the demo config needs a KNNHook with before_train=True', file=sys.stderr)
        return 2
    (_, before), (stage, after) = knn[0].history[0], knn[0].history[-1]
    key = next(k for k in before if k.endswith('top1'))
    gain = after[key] - before[key]
    print(f'\n=== {name} demo on Fashion-MNIST ({minutes:.1f} min on this machine) ===')
    pixels = knn[0].evaluate_raw_inputs(runner)[key]
    num_bank, num_queries = (len(knn[0].loaders(runner)[n].dataset)
                             for n in ('train', 'val'))
    print(f'k-NN top-1 (k=20, T=0.07, teacher CLS; {num_bank} bank / {num_queries} query '
          f'images): random init {before[key]:.2f}%  ->  trained ({stage}) {after[key]:.2f}%  '
          f'({gain:+.2f} points); raw pixels {pixels:.2f}%')
    print(f'checkpoints and logs: {cfg.work_dir}')
    if gain < args.min_gain:
        print(f'FAILED: training did not beat random initialisation by {args.min_gain} points',
              file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
