"""Where the published configs stand on the current device: one command.

For each ``configs/<method>/vit-*.py`` at its per-GPU batch and multi-crop sizes (synthetic
crops made once, so the data loader is out of the measure), a short training run reports
images/s, peak device memory, fp16 vs bf16 and ``torch.compile`` off/on; for the first
precision without compilation it also measures the ratio of mmengine's Runner to a bare
PyTorch loop of the same model, optimiser wrapper and data (the measure of
``bench_runner_overhead.py``: per-iteration time from the difference of two run lengths).
A markdown table goes to stdout and the rows to a JSON file.

    python benchmarks/bench_gpu.py                           # 1 GPU, every published config
    python benchmarks/bench_gpu.py --configs configs/simdino/vit-b16_8xb64.py --iters 50
    python benchmarks/bench_gpu.py --device cpu --tiny       # CI: shrunk models, ~1 min

``--tiny`` shrinks every config (1-layer 32-d ViT, 48/32 px crops, 2 local crops, batch 4,
1,024 prototypes, 2 iterations) so that the whole path runs on a CPU.
"""
import argparse
import copy
import glob
import json
import os
import os.path as osp
import sys
import tempfile
import time
from datetime import date

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.dataset import default_collate  # noqa: E402
from mmengine.logging import MMLogger  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmengine.runner import Runner  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402
from mmpretrain.structures import DataSample  # noqa: E402

import mmselfsup_vmf  # noqa: E402,F401

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DTYPES = {'fp32': None, 'fp16': 'float16', 'bf16': 'bfloat16'}
TINY = dict(arch=dict(embed_dims=32, num_layers=1, num_heads=2, feedforward_channels=64),
            global_size=48, local_size=32, num_local=2, batch=4, prototypes=1024)


class SyntheticCrops(torch.utils.data.Dataset):
    """The same multi-crop sample (uint8-range floats) for every index."""

    def __init__(self, sizes, length=10 ** 6):
        gen = torch.Generator().manual_seed(0)
        self.views = [torch.rand(3, s, s, generator=gen) * 255 for s in sizes]
        self.length = length

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        return dict(inputs=list(self.views), data_samples=DataSample())


def multicrop_sizes(cfg):
    pipeline = cfg.train_dataloader.dataset.dataset.pipeline
    crop = next(t for t in pipeline if t['type'] == 'MultiCrop')
    return ([crop['global_size']] * crop.get('num_global', 2)
            + [crop['local_size']] * crop.get('num_local', 0))


def shrink(cfg):
    """--tiny: the same model types and losses on a 1-layer 32-d ViT and small crops."""
    model = cfg.model
    model.backbone.update(arch=TINY['arch'], img_size=TINY['global_size'],
                          drop_path_rate=0.0)
    model.head.update(in_channels=TINY['arch']['embed_dims'], hidden_channels=64)
    for part in (model.head, model.get('loss', {}), model.get('patch_loss', {})):
        for key in ('num_prototypes', 'num_patch_prototypes'):
            if part.get(key):
                part[key] = TINY['prototypes']
    sizes = ([TINY['global_size']] * 2 + [TINY['local_size']] * TINY['num_local'])
    return sizes, TINY['batch']


def setting(cfg_path, tiny, precision, compile_backend):
    cfg = Config.fromfile(cfg_path)
    sizes, batch = multicrop_sizes(cfg), cfg.train_dataloader.batch_size
    if tiny:
        sizes, batch = shrink(cfg)
    wrapper = copy.deepcopy(cfg.optim_wrapper)
    if DTYPES[precision] is None:
        wrapper.update(type='DistillOptimWrapper')
        for key in ('dtype', 'loss_scale'):
            wrapper.pop(key, None)
    else:
        wrapper.update(type='AmpDistillOptimWrapper', dtype=DTYPES[precision],
                       loss_scale=wrapper.get('loss_scale', 'dynamic'))
    model = copy.deepcopy(cfg.model)
    if compile_backend:
        model.compile = dict(backend=compile_backend)
    return model, wrapper, sizes, batch


def loader(sizes, batch):
    return torch.utils.data.DataLoader(SyntheticCrops(sizes), batch_size=batch,
                                       collate_fn=default_collate, num_workers=0)


def sync(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def bare_run(model_cfg, wrapper_cfg, sizes, batch, warmup, iters, device):
    """Seconds per iteration and peak device memory (MB) of a bare PyTorch loop."""
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(model_cfg)).to(device)
    model.init_weights()
    model.train()
    optim = build_optim_wrapper(model, copy.deepcopy(wrapper_cfg))
    data_iter = iter(loader(sizes, batch))
    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup + iters):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        model.set_train_progress(epoch=0, iteration=i, max_iters=warmup + iters)
        with optim.optim_context(model):
            data = model.data_preprocessor(next(data_iter), True)
            losses = model(**data, mode='loss')
        loss, _ = model.parse_losses(losses)
        optim.update_params(loss)
    sync(device)
    per_iter = (time.perf_counter() - start) / iters
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if device.startswith('cuda')
            else None)
    return per_iter, peak


def runner_time(model_cfg, wrapper_cfg, sizes, batch, max_iters, work_dir, device):
    runner = Runner(
        model=copy.deepcopy(model_cfg), work_dir=work_dir,
        train_dataloader=loader(sizes, batch), optim_wrapper=copy.deepcopy(wrapper_cfg),
        param_scheduler=[dict(type='CosineAnnealingLR', T_max=max_iters, by_epoch=False)],
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=10),
                           checkpoint=dict(type='CheckpointHook', interval=10 ** 6),
                           train_progress=dict(type='TrainProgressHook')),
        default_scope='mmpretrain', randomness=dict(seed=0), log_level='ERROR')
    start = time.perf_counter()
    runner.train()
    sync(device)
    return time.perf_counter() - start


def measure(cfg_path, args):
    rows = []
    for compile_on in args.compile:
        for precision in args.precisions:
            model_cfg, wrapper_cfg, sizes, batch = setting(
                cfg_path, args.tiny, precision, args.compile_backend if compile_on else None)
            per_iter, peak = bare_run(model_cfg, wrapper_cfg, sizes, batch, args.warmup,
                                      args.iters, args.device)
            row = dict(config=osp.relpath(cfg_path, ROOT), precision=precision,
                       compile=args.compile_backend if compile_on else 'off', batch=batch,
                       crops=sizes, ms_per_iter=per_iter * 1e3,
                       images_per_s=batch / per_iter, peak_mem_mb=peak,
                       runner_over_bare=None)
            if not rows:  # the Runner's overhead, once per config
                with tempfile.TemporaryDirectory() as tmp:
                    t_short = runner_time(model_cfg, wrapper_cfg, sizes, batch, args.warmup,
                                          f'{tmp}/s', args.device)
                    t_long = runner_time(model_cfg, wrapper_cfg, sizes, batch,
                                         args.warmup + args.iters, f'{tmp}/l', args.device)
                row['runner_over_bare'] = (t_long - t_short) / args.iters / per_iter
            rows.append(row)
    return rows


def markdown(rows):
    lines = ['| config | batch | precision | compile | images/s | ms/iter | peak MB | '
             'Runner / bare |', '|---|---|---|---|---|---|---|---|']
    for r in rows:
        peak = '—' if r['peak_mem_mb'] is None else f"{r['peak_mem_mb']:.0f}"
        ratio = '' if r['runner_over_bare'] is None else f"{r['runner_over_bare']:.3f}"
        lines.append(f"| {r['config']} | {r['batch']} | {r['precision']} | {r['compile']} | "
                     f"{r['images_per_s']:.1f} | {r['ms_per_iter']:.1f} | {peak} | {ratio} |")
    return '\n'.join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # *_fsdp.py configs train their base config's model sharded over several processes
    p.add_argument('--configs', nargs='+',
                   default=sorted(c for c in glob.glob(osp.join(ROOT, 'configs', '*', 'vit-*.py'))
                                  if not c.endswith('_fsdp.py')))
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--tiny', action='store_true', help='shrunk models (CPU smoke run)')
    p.add_argument('--precisions', nargs='+', default=['fp16', 'bf16'], choices=list(DTYPES))
    p.add_argument('--compile', nargs='+', default=None, choices=['off', 'on'],
                   help='default: off and on (--tiny: off; compiling takes minutes on a CPU)')
    p.add_argument('--compile-backend', default='inductor')
    p.add_argument('--warmup', type=int, default=None, help='default 5 (--tiny: 1)')
    p.add_argument('--iters', type=int, default=None, help='default 20 (--tiny: 2)')
    p.add_argument('--threads', type=int, default=1, help='torch CPU threads')
    p.add_argument('--out', default=osp.join('work_dirs', 'bench_gpu.json'))
    args = p.parse_args(argv)
    args.compile = [c == 'on' for c in (args.compile or (['off'] if args.tiny
                                                         else ['off', 'on']))]
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 5)
    args.iters = args.iters if args.iters is not None else (2 if args.tiny else 20)
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    init_default_scope('mmpretrain')
    MMLogger.get_instance('bench_gpu', log_level='ERROR')  # the table is the output
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit('error: --device cuda but no GPU is visible; use --device cpu')
    rows = []
    for cfg_path in args.configs:
        if not osp.isfile(cfg_path):
            raise SystemExit(f'error: config file {cfg_path} does not exist')
        rows.extend(measure(cfg_path, args))
    result = dict(date=str(date.today()), device=args.device,
                  device_name=(torch.cuda.get_device_name() if args.device.startswith('cuda')
                               else 'cpu'),
                  torch=torch.__version__, tiny=args.tiny, threads=args.threads,
                  loadavg=os.getloadavg(), warmup=args.warmup, iters=args.iters, rows=rows)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(result, f, indent=1)
    print(markdown(rows))
    print(f"\n{result['device_name']}, torch {result['torch']}, load average "
          f"{' '.join(f'{x:.2f}' for x in result['loadavg'])}; JSON: {args.out}")
    return result


if __name__ == '__main__':
    main()
