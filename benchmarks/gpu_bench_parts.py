"""Settings, Runner, loader and DDP measurements and the table of ``bench_gpu.py``."""
import copy
import os
import os.path as osp
import tempfile
import time

import numpy as np
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DTYPES = {'fp32': None, 'tf32': None, 'fp16': 'float16', 'bf16': 'bfloat16'}
TINY = dict(arch=dict(embed_dims=32, num_layers=1, num_heads=2, feedforward_channels=64),
            global_size=48, local_size=32, num_local=2, batch=4, prototypes=1024)
# dense peak TFLOP/s (bf16/fp16 tensor cores, tf32, fp32) from the vendors' data sheets;
# the longest matching name wins ('A100' before 'A10')
PEAKS = {'H100 PCIe': (756, 378, 51), 'H100': (989, 494, 67), 'H200': (989, 494, 67),
         'A100': (312, 156, 19.5), 'A10': (125, 62.5, 31.2), 'L40S': (362, 183, 91.6),
         'L4': (121, 60, 30.3), 'V100': (125, None, 15.7), 'RTX 4090': (165, 82.6, 82.6),
         'RTX 3090': (71, 35.6, 35.6), 'A6000': (155, 77, 38.7)}


def peak_tflops(args, precision):
    if args.peak_tflops is not None:
        return args.peak_tflops
    if not args.device.startswith('cuda'):
        return None
    name = torch.cuda.get_device_name()
    match = max((k for k in PEAKS if k in name), key=len, default=None)
    if match is None:
        return None
    half, tf32, fp32 = PEAKS[match]
    if precision == 'bf16' and match == 'V100':
        return None
    return {'fp16': half, 'bf16': half, 'tf32': tf32, 'fp32': fp32}[precision]


def crop_sizes(cfg):
    pipeline = cfg.train_dataloader.dataset.dataset.pipeline
    crop = next(t for t in pipeline if t['type'] == 'MultiCrop')
    return ([crop['global_size']] * crop.get('num_global', 2)
            + [crop['local_size']] * crop.get('num_local', 0))


def shrink(cfg):
    """--tiny: the same model types and losses on a 1-layer 32-d ViT and small crops."""
    model = cfg.model
    model.backbone.update(arch=TINY['arch'], img_size=TINY['global_size'], drop_path_rate=0.0)
    model.head.update(in_channels=TINY['arch']['embed_dims'], hidden_channels=64)
    for part in (model.head, model.get('loss', {}), model.get('patch_loss', {})):
        for key in ('num_prototypes', 'num_patch_prototypes'):
            if part.get(key):
                part[key] = TINY['prototypes']
    return [TINY['global_size']] * 2 + [TINY['local_size']] * TINY['num_local'], TINY['batch']


def load(cfg_path, tiny):
    cfg = Config.fromfile(cfg_path)
    sizes, batch = crop_sizes(cfg), cfg.train_dataloader.batch_size
    if tiny:
        sizes, batch = shrink(cfg)
    return cfg, sizes, batch


def wrapper_for(cfg, precision):
    wrapper = copy.deepcopy(cfg.optim_wrapper)
    if DTYPES[precision] is None:
        wrapper.update(type='DistillOptimWrapper')
        for key in ('dtype', 'loss_scale'):
            wrapper.pop(key, None)
    else:
        wrapper.update(type='AmpDistillOptimWrapper', dtype=DTYPES[precision],
                       loss_scale=wrapper.get('loss_scale', 'dynamic'))
    return wrapper


def setting(cfg_path, tiny, precision, compile_backend):
    cfg, sizes, batch = load(cfg_path, tiny)
    model = copy.deepcopy(cfg.model)
    if compile_backend:
        model.compile = dict(backend=compile_backend)
    return model, wrapper_for(cfg, precision), sizes, batch


# ----------------------------------------------------------------------------- Runner
class StepTimer(Hook):
    """Wall time of iterations [warmup, warmup + iters), synchronised with the device."""

    priority = 'LOWEST'

    def __init__(self, warmup, iters, device):
        self.warmup, self.iters, self.device = warmup, iters, device
        self.start = self.end = None

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 in (self.warmup, self.warmup + self.iters):
            if self.device.startswith('cuda'):
                torch.cuda.synchronize()
            if runner.iter + 1 == self.warmup:
                self.start = time.perf_counter()
            else:
                self.end = time.perf_counter()


def runner_row(cfg_path, precision, args, bare_ms):
    """mmengine's Runner with the recipe's hooks, over the staged batch, per step."""
    from bench_gpu import staged_batch
    cfg, sizes, batch = load(cfg_path, args.tiny)
    staged = staged_batch(sizes, batch, args.device, model_cfg=cfg.model)
    steps = args.warmup + args.iters
    loader = torch.utils.data.DataLoader(range(steps * batch), batch_size=batch,
                                         collate_fn=lambda _: dict(staged))
    hooks = copy.deepcopy(cfg.default_hooks)
    hooks['checkpoint'] = dict(type='CheckpointHook', interval=10 ** 6, save_last=False)
    custom = [h for h in copy.deepcopy(cfg.get('custom_hooks', []))
              if h['type'] != 'KNNHook']  # needs labelled datasets; runs once per epochs
    timer = StepTimer(args.warmup, args.iters, args.device)
    with tempfile.TemporaryDirectory() as work_dir:
        runner = Runner(
            model=copy.deepcopy(cfg.model), work_dir=work_dir, train_dataloader=loader,
            optim_wrapper=wrapper_for(cfg, precision),
            param_scheduler=copy.deepcopy(cfg.get('param_scheduler')),
            train_cfg=dict(by_epoch=True, max_epochs=1), default_hooks=hooks,
            custom_hooks=custom + [timer], default_scope='mmpretrain',
            randomness=dict(seed=0), log_level='ERROR',
            log_processor=copy.deepcopy(cfg.get('log_processor', {})),
            visualizer=dict(type='Visualizer', vis_backends=[dict(type='LocalVisBackend')],
                            name=f'bench_{time.monotonic_ns()}'))
        runner.train()
    ms = (timer.end - timer.start) / args.iters * 1e3
    return dict(kind='runner', config=osp.relpath(cfg_path, ROOT), precision=precision,
                status='ok', batch=batch, ms_per_step=ms, images_per_s=batch / ms * 1e3,
                bare_ms_per_step=bare_ms,
                runner_over_bare=None if not bare_ms else ms / bare_ms,
                hooks=sorted(h['type'] for h in list(hooks.values()) + custom if h))


# ----------------------------------------------------------------------------- loader
def synthetic_jpegs(directory, count, size=(500, 375)):
    """Smooth random images (upsampled noise: JPEG sizes like photographs), 500 x 375."""
    from PIL import Image
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.BICUBIC)
        arr = np.clip(np.asarray(img, dtype=np.int16)
                      + rng.integers(-12, 13, (size[1], size[0], 3)), 0, 255)
        paths.append(osp.join(directory, f'{i:04d}.jpg'))
        Image.fromarray(arr.astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def pipeline_seconds(pipeline, paths):
    """CPU seconds per image of ``pipeline`` (one thread, this process)."""
    from mmcv.transforms import Compose
    from mmpretrain.registry import TRANSFORMS
    compose = Compose([TRANSFORMS.build(copy.deepcopy(t)) for t in pipeline])
    compose(dict(img_path=paths[0], sample_idx=0))  # imports, caches
    start = time.process_time()
    outs = [compose(dict(img_path=p, sample_idx=i)) for i, p in enumerate(paths)]
    return (time.process_time() - start) / len(paths), outs


def loader_rows(configs, args, rec):
    """CPU loader per distinct pipeline, and the device crops, loader-bound images/s."""
    rows, seen = [], {}
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        paths = synthetic_jpegs(tmp, args.loader_images)
        for cfg_path in configs:
            cfg = Config.fromfile(cfg_path)
            pipeline = cfg.train_dataloader.dataset.dataset.pipeline
            key = repr(pipeline)
            if key in seen or rec.over_budget():
                continue
            seen[key] = cfg_path
            row = dict(kind='loader', config=osp.relpath(cfg_path, ROOT), path='cpu',
                       cpu_cores=cores)
            try:
                seconds, _ = pipeline_seconds(pipeline, paths)
                row.update(status='ok', cpu_s_per_image=seconds,
                           loader_images_per_s=cores / seconds)
            except Exception as err:
                row.update(status='error', error=f'{type(err).__name__}: {err}'[:300])
            rows.append(row)
        rows.append(device_crop_row(paths, args, cores))
    return rows


def device_crop_row(paths, args, cores):
    """The device path of configs/_base_/datasets/imagenet_multicrop_device.py."""
    from mmpretrain.registry import MODELS
    base = osp.join(ROOT, 'configs', '_base_', 'datasets', 'imagenet_multicrop_device.py')
    row = dict(kind='loader', config=osp.relpath(base, ROOT), path='device', cpu_cores=cores)
    try:
        cfg = Config.fromfile(base)
        seconds, outs = pipeline_seconds(cfg.train_pipeline, paths)
        pre = MODELS.build(copy.deepcopy(cfg.data_preprocessor)).to(args.device)
        from mmselfsup_vmf.datasets import multicrop_collate
        batch = multicrop_collate(outs)  # the config's: the views' parameters packed
        pre(copy.deepcopy(batch), True)
        if args.device.startswith('cuda'):
            torch.cuda.synchronize()
        start = time.perf_counter()
        pre(copy.deepcopy(batch), True)
        if args.device.startswith('cuda'):
            torch.cuda.synchronize()
        device_s = (time.perf_counter() - start) / len(paths)
        row.update(status='ok', cpu_s_per_image=seconds, loader_images_per_s=cores / seconds,
                   device_ms_per_image=device_s * 1e3)
    except Exception as err:
        row.update(status='error', error=f'{type(err).__name__}: {err}'[:300])
    return row


# ----------------------------------------------------------------------------- DDP
def _ddp_worker(rank, port, cfg_path, precision, args, out):
    import torch.distributed as dist
    from bench_gpu import build, setting, staged_batch, sync
    from mmengine.model import MMDistributedDataParallel
    from mmengine.registry import init_default_scope
    init_default_scope('mmpretrain')
    cuda = args.device.startswith('cuda')
    device = f'cuda:{rank}' if cuda else 'cpu'
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group('nccl' if cuda else 'gloo', init_method=f'tcp://127.0.0.1:{port}',
                            rank=rank, world_size=2)
    model_cfg, wrapper_cfg, sizes, batch = setting(cfg_path, args.tiny, precision, None)
    model, wrapper = build(model_cfg, wrapper_cfg, device)
    ddp = MMDistributedDataParallel(module=model, device_ids=[rank] if cuda else None)
    data = staged_batch(sizes, batch, device, seed=rank, model_cfg=model_cfg)
    for i in range(args.warmup + args.iters):
        if i == args.warmup:
            sync(args.device)
            start = time.perf_counter()
        model.set_train_progress(epoch=1, iteration=i, max_iters=10 ** 6)
        ddp.train_step(dict(data), wrapper)
    sync(args.device)
    if rank == 0:
        out.put(((time.perf_counter() - start) / args.iters, batch))
    dist.destroy_process_group()


def ddp_row(cfg_path, precision, args):
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context('spawn')
    out = ctx.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(port, cfg_path, precision, args, out), nprocs=2,
                       join=True, start_method='spawn')
    seconds, batch = out.get()
    return dict(kind='ddp', config=osp.relpath(cfg_path, ROOT), precision=precision,
                status='ok', gpus=2, batch=batch, ms_per_step=seconds * 1e3,
                images_per_s=2 * batch / seconds)


# ----------------------------------------------------------------------------- table
def _fmt(value, pattern):
    return '' if value is None else format(value, pattern)


def markdown(header, rows):
    lines = [f"{header['device_name']} ({header['gpus']} GPU, {header['cpu_cores']} CPU "
             f"cores), torch {header['torch']}, {header['date']}; tiny={header['tiny']}", '',
             '| kind | config | precision | compile | status | images/s | ms/step | peak MB '
             '| GFLOP/img | MFU | Runner/bare | CPU s/img | loader img/s |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append('| ' + ' | '.join([
            r['kind'], r.get('config', ''), r.get('precision', r.get('path', '')),
            r.get('compile', ''), r.get('status', ''), _fmt(r.get('images_per_s'), '.1f'),
            _fmt(r.get('ms_per_step'), '.1f'), _fmt(r.get('peak_mem_mb'), '.0f'),
            _fmt(r.get('gflop_per_image'), '.1f'), _fmt(r.get('mfu'), '.1%'),
            _fmt(r.get('runner_over_bare'), '.3f'), _fmt(r.get('cpu_s_per_image'), '.4f'),
            _fmt(r.get('loader_images_per_s'), '.0f')]) + ' |')
    return '\n'.join(lines)
