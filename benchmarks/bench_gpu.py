"""The GPU questions in one call: train-step speed, memory, MFU, compile, loader, Runner, DDP.

    python benchmarks/bench_gpu.py                      # one GPU, every published config
    python benchmarks/bench_gpu.py --device cpu --tiny  # CI smoke run (shrunk models)

Every row is appended to ``<out>.jsonl`` as soon as it is measured and ``<out>.md`` (the
table) is rewritten; an out-of-memory error is a row with ``status='oom'``, a row that does
not fit in ``--budget-min`` is ``status='skipped'``. Rows, most important first:

1. ``step``: each ``configs/<method>/vit-*.py`` at its per-GPU batch and crop sizes; the
   batch is staged on the device once as uint8 (what the loader delivers), so the timed loop
   is the training step only (``model.train_step``: data preprocessor, forward, loss,
   backward, optimiser step). Precisions fp32 / bf16 / fp16 (tf32: fp32 with TF32 matmuls),
   eager; then ``torch.compile`` for ``--compile-configs``, warmed up until a step compiles
   nothing. Images/s, ms/step, peak memory, GFLOP per image (``FlopCounterMode``, forward +
   backward) and MFU against the device's dense peak.
2. ``runner``: mmengine's Runner with the recipe's own hooks over the same staged batch,
   per step, against the bare step of row 1 (same precision).
3. ``loader``: CPU seconds per image of each config's pipeline (and of the device-crop
   pipeline) on synthetic JPEGs, the loader-bound images/s with all the machine's cores, and
   the device time of the batched crops.
4. ``ddp``: with two GPUs, two processes train the first config with DDP.
"""
import argparse
import copy
import gc
import glob
import json
import os
import os.path as osp
import sys
import time
from datetime import date

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gpu_bench_parts import (  # noqa: E402
    DTYPES,
    ddp_row,
    loader_rows,
    markdown,
    peak_tflops,
    runner_row,
    setting,
)
from mmengine.logging import MMLogger  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402
from mmpretrain.structures import DataSample  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import mmselfsup_vmf  # noqa: E402,F401
from mmselfsup_vmf.models.utils.masking import (  # noqa: E402
    global_grid,
    global_view_masks,
    mask_law,
)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
COMPILE_DEFAULT = ('configs/dino/vit-s16_8xb64.py', 'configs/simdinov2/vit-b16_8xb128.py')


def sync(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def staged_batch(sizes, batch, device, seed=0, model_cfg=None):
    """uint8 views on the device, made once (what a pinned loader copy delivers), with the
    masks ``masked_collate`` would deliver when ``model_cfg`` masks its global views."""
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randint(0, 256, (batch, 3, s, s), generator=gen, dtype=torch.uint8)
             .to(device) for s in sizes]
    data = dict(inputs=views, data_samples=[DataSample() for _ in range(batch)])
    pre = (model_cfg or {}).get('data_preprocessor') or {}
    if str(pre.get('type', '')).startswith('Masked'):
        keys = ('patch_size', 'num_global_views', 'mask_mode', 'mask_cfg', 'mask_start_epoch')
        law = mask_law(**{k: pre[k] for k in keys if k in pre})
        masks = global_view_masks(batch, global_grid(sizes[0], sizes[0], law['patch_size']),
                                  law['num_global_views'], law['mask_mode'],
                                  np.random.default_rng(seed), **law['mask_cfg'])
        data.update(masks=torch.from_numpy(masks).to(device), mask_law=law)
    return data


def build(model_cfg, wrapper_cfg, device):
    torch.manual_seed(0)
    model = MODELS.build(copy.deepcopy(model_cfg)).to(device)
    model.init_weights()
    model.train()
    return model, build_optim_wrapper(model, copy.deepcopy(wrapper_cfg))


def step(model, wrapper, data, i, max_iters):
    model.set_train_progress(epoch=1, iteration=i, max_iters=max_iters)
    return model.train_step(dict(data), wrapper)


def graphs_compiled():
    return torch._dynamo.utils.counters['stats'].get('unique_graphs', 0)


def flops_per_step(model, wrapper, data, device):
    with FlopCounterMode(display=False) as counter:
        step(model, wrapper, data, 0, 10)
    sync(device)
    return counter.get_total_flops()


def step_row(cfg_path, precision, compiled, args):
    """One (config, precision, compile) setting: a row dict (status 'ok' or 'oom')."""
    model_cfg, wrapper_cfg, sizes, batch = setting(
        cfg_path, args.tiny, precision, args.compile_backend if compiled else None)
    row = dict(kind='step', config=osp.relpath(cfg_path, ROOT), precision=precision,
               compile=args.compile_backend if compiled else 'off', batch=batch, crops=sizes)
    torch.backends.cuda.matmul.allow_tf32 = precision == 'tf32'
    torch.backends.cudnn.allow_tf32 = precision == 'tf32'
    model = wrapper = None
    try:
        model, wrapper = build(model_cfg, wrapper_cfg, args.device)
        data = staged_batch(sizes, batch, args.device, model_cfg=model_cfg)
        if args.device.startswith('cuda'):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        warm = 0
        # warm-up past compilation: until a step compiles no new graph (at least --warmup)
        while True:
            before = graphs_compiled()
            step(model, wrapper, data, warm, 10 ** 6)
            warm += 1
            new = graphs_compiled() - before
            if warm >= args.warmup and (not compiled or new == 0 or warm >= 20):
                break
        sync(args.device)
        row['warmup_steps'], row['warmup_s'] = warm, time.perf_counter() - start
        start = time.perf_counter()
        for i in range(args.iters):
            step(model, wrapper, data, warm + i, 10 ** 6)
        sync(args.device)
        seconds = (time.perf_counter() - start) / args.iters
        row.update(status='ok', ms_per_step=seconds * 1e3, images_per_s=batch / seconds,
                   peak_mem_mb=(torch.cuda.max_memory_allocated() / 2 ** 20
                                if args.device.startswith('cuda') else None))
        if not compiled:
            flops = flops_per_step(model, wrapper, data, args.device)
            peak = peak_tflops(args, precision)
            row.update(gflop_per_image=flops / batch / 1e9,
                       mfu=None if peak is None else flops / seconds / (peak * 1e12))
    except torch.OutOfMemoryError as err:
        row.update(status='oom', error=str(err).splitlines()[0][:200])
    finally:
        del model, wrapper
        gc.collect()
        if args.device.startswith('cuda'):
            torch.cuda.empty_cache()
    return row


class Recorder:
    """Appends each row to <out>.jsonl and rewrites <out>.md; knows the time budget."""

    def __init__(self, args, header):
        self.args, self.start, self.rows = args, time.perf_counter(), []
        os.makedirs(osp.dirname(osp.abspath(args.out)) or '.', exist_ok=True)
        self.jsonl, self.md = args.out + '.jsonl', args.out + '.md'
        self.header = header
        with open(self.jsonl, 'w') as f:
            f.write(json.dumps(dict(kind='env', **header)) + '\n')

    def over_budget(self):
        return time.perf_counter() - self.start > self.args.budget_min * 60

    def add(self, row):
        row['elapsed_s'] = round(time.perf_counter() - self.start, 1)
        self.rows.append(row)
        with open(self.jsonl, 'a') as f:
            f.write(json.dumps(row) + '\n')
        with open(self.md, 'w') as f:
            f.write(markdown(self.header, self.rows) + '\n')
        print(json.dumps(row), flush=True)

    def run(self, what, make_row):
        if self.over_budget():
            self.add(dict(what, status='skipped',
                          error=f'over --budget-min {self.args.budget_min}'))
            return None
        try:
            row = make_row()
        except Exception as err:  # one broken setting must not lose the others
            row = dict(what, status='error', error=f'{type(err).__name__}: {err}'[:300])
        self.add(row)
        return row


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--configs', nargs='+',
                   default=sorted(osp.relpath(c, ROOT)
                                  for c in glob.glob(osp.join(ROOT, 'configs', '*', 'vit-*.py'))
                                  if not c.endswith('_fsdp.py')))
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--tiny', action='store_true', help='shrunk models (CPU smoke run)')
    p.add_argument('--precisions', nargs='+', default=['bf16', 'fp16', 'fp32'],
                   choices=list(DTYPES))
    p.add_argument('--compile-configs', nargs='*', default=None,
                   help=f'configs also run compiled (default {" ".join(COMPILE_DEFAULT)}; '
                        '--tiny: none); "all" for every config')
    p.add_argument('--compile-precision', default='bf16', choices=list(DTYPES))
    p.add_argument('--compile-backend', default='inductor')
    p.add_argument('--warmup', type=int, default=None, help='default 3 (--tiny: 1)')
    p.add_argument('--iters', type=int, default=None, help='default 10 (--tiny: 2)')
    p.add_argument('--budget-min', type=float, default=8.0,
                   help='rows that would start after this many minutes are skipped')
    p.add_argument('--peak-tflops', type=float, default=None,
                   help='dense peak of the device for the precision (default: known GPUs)')
    p.add_argument('--loader-images', type=int, default=None, help='default 24 (--tiny: 2)')
    p.add_argument('--skip', nargs='*', default=[], choices=['runner', 'loader', 'ddp'])
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    p.add_argument('--out', default=osp.join('work_dirs', 'bench_gpu'),
                   help='writes <out>.jsonl and <out>.md')
    args = p.parse_args(argv)
    if args.compile_configs is None:
        args.compile_configs = [] if args.tiny else list(COMPILE_DEFAULT)
    if args.compile_configs == ['all']:
        args.compile_configs = list(args.configs)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.iters = args.iters if args.iters is not None else (2 if args.tiny else 10)
    args.loader_images = args.loader_images or (2 if args.tiny else 24)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    init_default_scope('mmpretrain')
    MMLogger.get_instance('bench_gpu', log_level='ERROR')
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        raise SystemExit('error: --device cuda but no GPU is visible; use --device cpu')
    for cfg_path in args.configs + args.compile_configs:
        if not osp.isfile(osp.join(ROOT, cfg_path)):
            raise SystemExit(f'error: config file {cfg_path} does not exist')
    cuda = args.device.startswith('cuda')
    header = dict(date=str(date.today()), device=args.device,
                  device_name=torch.cuda.get_device_name() if cuda else 'cpu',
                  gpus=torch.cuda.device_count() if cuda else 0, cpu_cores=os.cpu_count(),
                  torch=torch.__version__, tiny=args.tiny, warmup=args.warmup,
                  iters=args.iters, peak_tflops={p: peak_tflops(args, p) for p in DTYPES},
                  loadavg=os.getloadavg())
    rec = Recorder(args, header)
    configs = [osp.join(ROOT, c) for c in args.configs]
    bare = {}
    for precision in args.precisions:  # eager steps, the first precision on every config first
        for cfg_path in configs:
            what = dict(kind='step', config=osp.relpath(cfg_path, ROOT), precision=precision,
                        compile='off')
            row = rec.run(what, lambda: step_row(cfg_path, precision, False, args))
            if row and row.get('status') == 'ok':
                bare[(row['config'], precision)] = row['ms_per_step']
    for cfg_path in args.compile_configs:
        what = dict(kind='step', config=cfg_path, precision=args.compile_precision,
                    compile=args.compile_backend)
        rec.run(what, lambda: step_row(osp.join(ROOT, cfg_path), args.compile_precision,
                                       True, args))
    if 'runner' not in args.skip:
        precision = args.precisions[0]
        for cfg_path in configs:
            rel = osp.relpath(cfg_path, ROOT)
            what = dict(kind='runner', config=rel, precision=precision)
            rec.run(what, lambda: runner_row(cfg_path, precision, args, bare.get((rel,
                                                                                 precision))))
    if 'loader' not in args.skip:
        for row in loader_rows(configs, args, rec):
            rec.add(row)
    if 'ddp' not in args.skip and cuda and torch.cuda.device_count() >= 2:
        rec.run(dict(kind='ddp', config=args.configs[0], precision=args.precisions[0]),
                lambda: ddp_row(osp.join(ROOT, args.configs[0]), args.precisions[0], args))
    print(f'\n{header["device_name"]}: {rec.md} and {rec.jsonl}')
    return rec.rows


if __name__ == '__main__':
    main()
