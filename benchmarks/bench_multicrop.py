"""Loader CPU-seconds per image of multi-crop: this project's pipelines vs the official ones.

All pipelines make 2 x 224 + 10 x 96 crops (global scale (0.4, 1), local (0.05, 0.4)) of the
same ImageNet-sized JPEGs (scikit-image's colour photos, resized and cropped to 500 x 375 or
375 x 500, quality 90), in one process with one thread, interleaved ``--rounds`` times,
``time.process_time`` per image (median over rounds). Each includes decoding and the
``default_collate`` of its batch of tensors, as a dataloader worker does:

* ``MultiCrop`` (DINO's laws, and ``blur='kernel9'`` for DINOv2's): mmcv decode (the
  configs' ``LoadImageFromFile``), ``MultiCrop``, ``PackInputs`` (uint8 tensors out;
  normalisation is the data preprocessor's, on the device).
* the official pipelines, imported at run time from checkouts given by ``--dino-root``
  (facebookresearch/dino: ``main_dino.DataAugmentationDINO``) and ``--dinov2-root``
  (facebookresearch/dinov2: ``dinov2.data.augmentations.DataAugmentationDINO``), with
  torchvision's ImageFolder loading (PIL decode + ``convert('RGB')``); float tensors out.
* the device path's loader part (decode + ``DeviceMultiCropInput(--resize)``) and its device
  part (``MultiCropDataPreprocessor`` on the batch, here on this CPU).

    git clone https://github.com/facebookresearch/dino /tmp/dino
    git clone https://github.com/facebookresearch/dinov2 /tmp/dinov2
    python benchmarks/bench_multicrop.py --dino-root /tmp/dino --dinov2-root /tmp/dinov2 \\
        [--rounds 5] [--repeats 4] [--batch 16] [--out results.json]

``--methods`` instead measures each method's ImageNet recipe (``--demo``: its Fashion-MNIST
demo config) with its CPU ``MultiCrop`` and with the crops on the device
(``use_device_crops``): per image, the loader's CPU time (decode or ``SeededDataset``,
pipeline, the config's collate function, which draws the masks) and the data
preprocessor's (on this CPU).

    python benchmarks/bench_multicrop.py --methods [--demo] [--rounds 5]
"""
import argparse
import functools
import importlib
import io
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time

os.environ.setdefault('OMP_NUM_THREADS', '1')
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import cv2  # noqa: E402
import mmcv  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.dataset import default_collate  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmpretrain.registry import MODELS, TRANSFORMS  # noqa: E402
from PIL import Image  # noqa: E402

import mmselfsup_vmf  # noqa: E402,F401

PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'immunohistochemistry',
          'hubble_deep_field')
GLOBAL_SCALE, LOCAL_SCALE = (0.4, 1.0), (0.05, 0.4)
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def jpeg_inputs(long_side: int = 500, short_side: int = 375):
    """The photos as ImageNet-sized JPEG bytes, alternately landscape and portrait."""
    from skimage import data
    out = []
    for k, name in enumerate(PHOTOS):
        img = Image.fromarray(getattr(data, name)()).convert('RGB')
        size = (long_side, short_side) if k % 2 == 0 else (short_side, long_side)
        s = max(size[0] / img.width, size[1] / img.height)
        img = img.resize((round(img.width * s), round(img.height * s)), Image.BICUBIC)
        left, top = (img.width - size[0]) // 2, (img.height - size[1]) // 2
        img = img.crop((left, top, left + size[0], top + size[1]))
        buf = io.BytesIO()
        img.save(buf, format='JPEG', quality=90)
        out.append(buf.getvalue())
    return out


def git_commit(path: str) -> str:
    try:
        return subprocess.run(['git', '-C', path, 'rev-parse', 'HEAD'], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown (not a git checkout)'


def official_pipeline(root: str, module: str):
    """``DataAugmentationDINO`` of the checkout at ``root`` (imported from there)."""
    if not osp.isdir(root):
        raise SystemExit(f'official checkout not found: {root} (git clone it first)')
    sys.path.insert(0, root)
    return importlib.import_module(module).DataAugmentationDINO


def build_loaders(args) -> dict:
    """name -> function(jpeg bytes) -> one loader sample (tensors)."""
    pack = TRANSFORMS.build(dict(type='PackInputs'))
    crops = dict(num_global=2, num_local=10, global_scale=GLOBAL_SCALE, local_scale=LOCAL_SCALE)
    dino = TRANSFORMS.build(dict(type='MultiCrop', **crops))
    dinov2 = TRANSFORMS.build(dict(type='MultiCrop', blur='kernel9', **crops))
    loaders = {'MultiCrop, DINO laws': lambda b: pack(dino(dict(img=mmcv.imfrombytes(b))))}
    if args.dino_root:
        official = official_pipeline(args.dino_root, 'main_dino')(GLOBAL_SCALE, LOCAL_SCALE, 10)
        loaders['official DINO'] = lambda b: official(Image.open(io.BytesIO(b)).convert('RGB'))
    loaders['MultiCrop, DINOv2 laws (kernel-9 blur)'] = \
        lambda b: pack(dinov2(dict(img=mmcv.imfrombytes(b))))
    if args.dinov2_root:
        official_v2 = official_pipeline(args.dinov2_root, 'dinov2.data.augmentations')(
            GLOBAL_SCALE, LOCAL_SCALE, 10, 224, 96)

        def dinov2_views(b):
            out = official_v2(Image.open(io.BytesIO(b)).convert('RGB'))
            return out['global_crops'] + out['local_crops']
        loaders['official DINOv2'] = dinov2_views
    device_input = TRANSFORMS.build(dict(type='DeviceMultiCropInput', size=args.resize))
    pack_device = TRANSFORMS.build(dict(type='PackInputs', meta_keys=('img_shape', 'aug_seed')))
    loaders['device path: loader part'] = \
        lambda b: pack_device(device_input(dict(img=mmcv.imfrombytes(b))))
    return loaders


def run(args):
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    init_default_scope('mmpretrain')
    np.random.seed(0)
    torch.manual_seed(0)
    import random
    random.seed(0)
    jpegs = jpeg_inputs() * args.repeats
    loaders = build_loaders(args)
    preprocessor = MODELS.build(dict(
        type='MultiCropDataPreprocessor', num_global=2, num_local=10, global_scale=GLOBAL_SCALE,
        local_scale=LOCAL_SCALE, mean=MEAN, std=STD, to_rgb=True))
    device_name = 'device path: device part (this CPU)'
    per_image = {name: [] for name in [*loaders, device_name]}
    for _ in range(args.rounds):
        device_batches = []
        for name, load in loaders.items():
            start = time.process_time()
            for i in range(0, len(jpegs), args.batch):
                batch = default_collate([load(b) for b in jpegs[i:i + args.batch]])
                if name.startswith('device'):
                    device_batches.append(batch)
            per_image[name].append((time.process_time() - start) / len(jpegs))
        start = time.process_time()
        for batch in device_batches:
            preprocessor(batch, True)
        per_image[device_name].append((time.process_time() - start) / len(jpegs))
    return {name: statistics.median(times) for name, times in per_image.items()}, per_image


RECIPES = {'dino': 'dino/vit-s16_8xb64.py', 'dino_vmf': 'dino_vmf/vit-s16_8xb64.py',
           'ibot': 'ibot/vit-s16_8xb64.py', 'ibot_vmf': 'ibot_vmf/vit-s16_8xb64.py',
           'simdino': 'simdino/vit-s16_8xb64.py', 'simdinov2': 'simdinov2/vit-b16_8xb128.py'}


def method_costs(demo: bool, rounds: int, batch_size: int) -> dict:
    """(method, crops) -> (loader CPU s / image, data preprocessor CPU s / image), medians
    over ``rounds`` batches, for each method's ImageNet recipe on the JPEGs (``demo``: its
    Fashion-MNIST demo config, through ``SeededDataset``), with its CPU ``MultiCrop`` and
    with the crops on the device (``use_device_crops``, the preprocessor run on this CPU)."""
    from mmengine.config import Config
    from mmengine.dataset import Compose
    from mmpretrain.registry import DATASETS

    from mmselfsup_vmf.datasets.transforms.device_multicrop import find_multicrop, use_device_crops
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    init_default_scope('mmpretrain')
    np.random.seed(0)
    jpegs = jpeg_inputs()
    costs = {}
    recipes = list(RECIPES.items())
    # the first method is measured twice and the first pass dropped (overwritten): the first
    # configuration measured in a process paid ~3 ms / image of one-off costs
    for method, recipe in recipes[:1] + recipes:
        for crops in ('CPU MultiCrop', 'device crops'):
            name = f'{method}/demo_fashion-mnist.py' if demo else recipe
            cfg = Config.fromfile(osp.join(ROOT, 'configs', name))
            transforms = find_multicrop(cfg.train_dataloader)[0]  # switched in place
            if crops == 'device crops':
                use_device_crops(cfg, check_device=False)
            if demo:
                dataset = DATASETS.build(cfg.train_dataloader.dataset)
            else:
                pipeline = Compose([t for t in transforms if t['type'] != 'LoadImageFromFile'])
            preprocessor = MODELS.build(cfg.model.data_preprocessor)
            collate = recipe_collate(cfg)
            loader, model = [], []
            for r in range(rounds + 1):  # round 0 warms up (first calls allocate)
                start = time.process_time()
                keys = [(i, r, 0) for i in range(batch_size * r, batch_size * (r + 1))]
                if demo:
                    batch = collate([dataset[k] for k in keys])
                else:
                    samples = [pipeline(dict(img=mmcv.imfrombytes(jpegs[(r + i) % len(jpegs)])))
                               for i in range(batch_size)]
                    for key, sample in zip(keys, samples):  # what SeededDataset records
                        sample['data_samples'].set_metainfo(dict(sample_key=key))
                    batch = collate(samples)
                loader.append((time.process_time() - start) / batch_size)
                start = time.process_time()
                preprocessor(batch, True)
                model.append((time.process_time() - start) / batch_size)
            costs[(method, crops)] = (statistics.median(loader[1:]),
                                      statistics.median(model[1:]))
    return costs


def recipe_collate(cfg):
    """The config's ``train_dataloader.collate_fn`` (``masked_collate`` for the masked
    methods: their masks are drawn in the loader), as ``Runner.build_dataloader`` builds it."""
    from mmengine.registry import FUNCTIONS

    from mmselfsup_vmf.scoped_collate import resolve_collate_scope
    collate = dict(resolve_collate_scope(cfg.train_dataloader)['collate_fn'])
    function = collate.pop('type')
    function = FUNCTIONS.get(function) if isinstance(function, str) else function
    return functools.partial(function, **collate)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--rounds', type=int, default=5, help='interleaved rounds (median taken)')
    p.add_argument('--repeats', type=int, default=4,
                   help=f'passes over the {len(PHOTOS)} photos per round')
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--resize', type=int, default=384, help='DeviceMultiCropInput size')
    p.add_argument('--dino-root', default=os.environ.get('DINO_ROOT'),
                   help='checkout of facebookresearch/dino (default: $DINO_ROOT)')
    p.add_argument('--dinov2-root', default=os.environ.get('DINOV2_ROOT'),
                   help='checkout of facebookresearch/dinov2 (default: $DINOV2_ROOT)')
    p.add_argument('--out', help='write the figures as JSON here')
    p.add_argument('--methods', action='store_true',
                   help="each method's ImageNet recipe, CPU MultiCrop vs device crops")
    p.add_argument('--demo', action='store_true',
                   help='--methods on the Fashion-MNIST demo configs')
    args = p.parse_args(argv)
    load = os.getloadavg()
    if args.methods or args.demo:
        costs = method_costs(args.demo, args.rounds, 64 if args.demo else args.batch)
        print(f'# {"demo" if args.demo else "ImageNet recipe"} configs, batch '
              f'{64 if args.demo else args.batch}, {args.rounds} batches, 1 thread, load '
              f'average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n')
        print('| method | crops | loader CPU ms / image | data preprocessor CPU ms / image |')
        print('|---|---|---|---|')
        for (method, crops), (loader, model) in costs.items():
            print(f'| {method} | {crops} | {1e3 * loader:.2f} | {1e3 * model:.2f} |')
        if args.out:
            per_image = {f'{m} / {c}': v for (m, c), v in costs.items()}
            with open(args.out, 'w') as f:
                json.dump(dict(args=vars(args), loadavg=load, commit=git_commit(ROOT),
                               seconds_per_image=per_image), f, indent=1)
        return costs
    medians, rounds = run(args)
    print(f'# 2 x 224 + 10 x 96 crops, {len(PHOTOS) * args.repeats} JPEGs x {args.rounds} '
          f'rounds, batch {args.batch}, 1 thread, load average {load[0]:.2f} {load[1]:.2f} '
          f'{load[2]:.2f}\n')
    print('| pipeline | CPU ms / image | images / s per core | speed vs official: median '
          '(range) of the rounds |')
    print('|---|---|---|---|')
    reference = {'MultiCrop, DINO laws': 'official DINO',
                 'MultiCrop, DINOv2 laws (kernel-9 blur)': 'official DINOv2'}
    for name, sec in medians.items():
        ratio = ''
        if reference.get(name) in rounds:  # paired: the same round's official time / ours
            paired = [ref / t for ref, t in zip(rounds[reference[name]], rounds[name])]
            ratio = (f'{statistics.median(paired):.2f}x ({min(paired):.2f}-'
                     f'{max(paired):.2f})')
        print(f'| {name} | {1e3 * sec:.1f} | {1 / sec:.1f} | {ratio} |')
    if args.out:
        commits = {k: git_commit(v) for k, v in (('dino', args.dino_root),
                                                 ('dinov2', args.dinov2_root)) if v}
        with open(args.out, 'w') as f:
            json.dump(dict(args=vars(args), loadavg=load, commit=git_commit(ROOT),
                           median_seconds=medians, rounds=rounds, official_commits=commits,
                           torch=torch.__version__, pillow=Image.__version__), f, indent=1)
    return medians


if __name__ == '__main__':
    main()
