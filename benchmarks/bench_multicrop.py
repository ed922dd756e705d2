"""Loader CPU-seconds per image of DINO's multi-crop: CPU pipelines vs multi-crop on the device.

Four measures at DINO's 2 x 224 + 10 x 96 crops (global scale (0.4, 1), local (0.05, 0.4)),
on the same JPEG bytes, interleaved ``--rounds`` times in one process with one thread,
``time.process_time`` per image (median over rounds):

1. ``MultiCrop`` (this project's CPU pipeline): mmcv decode, ``MultiCrop``, ``PackInputs``.
2. DINO's torchvision pipeline: PIL decode + ``convert('RGB')`` (torchvision's ImageFolder
   loader) and ``DataAugmentationDINO`` of facebookresearch/dino ``main_dino.py``
   (re-expressed below with torchvision transforms: bicubic ``RandomResizedCrop``, flip,
   ``ColorJitter(0.4, 0.4, 0.2, 0.1)`` p=0.8, grayscale p=0.2, PIL Gaussian blur p=1/0.1/0.5,
   solarisation p=0.2 on the second global crop, ``ToTensor`` + ``Normalize``).
3. The device path's loader part: mmcv decode, ``DeviceMultiCropInput(size)``, ``PackInputs``.
4. The device path's device part: ``MultiCropDataPreprocessor`` on the collated batch, here
   on this CPU (on a GPU it leaves the loader cores entirely).

Each loader measure includes ``default_collate`` of its batch, as a dataloader worker does.
Inputs: scikit-image's bundled colour photos, shrunk to at most 500 px (ImageNet-like) and
JPEG-encoded (quality 90).

    python benchmarks/bench_multicrop.py [--rounds 3] [--repeats 4] [--batch 16]

``--demo`` instead measures the two DINO demo configs (``configs/dino/demo_fashion-mnist.py``
and ``..._device-crops.py``): per batch of 64, the loader's CPU time (``SeededDataset`` +
pipeline + collate) and the data preprocessor's, in the training process.

    python benchmarks/bench_multicrop.py --demo [--rounds 5]
"""
import argparse
import io
import json
import os
import os.path as osp
import random
import statistics
import sys
import time

os.environ.setdefault('OMP_NUM_THREADS', '1')
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import cv2  # noqa: E402
import mmcv  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.dataset import default_collate  # noqa: E402
from mmengine.registry import init_default_scope  # noqa: E402
from mmpretrain.registry import MODELS, TRANSFORMS  # noqa: E402
from PIL import Image, ImageFilter, ImageOps  # noqa: E402
from torchvision import transforms as T  # noqa: E402

import mmselfsup_vmf  # noqa: E402,F401

PHOTOS = ('astronaut', 'chelsea', 'coffee', 'rocket', 'immunohistochemistry',
          'hubble_deep_field')
GLOBAL_SCALE, LOCAL_SCALE = (0.4, 1.0), (0.05, 0.4)
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def jpeg_inputs(max_side: int = 500):
    from skimage import data
    out = []
    for name in PHOTOS:
        img = Image.fromarray(getattr(data, name)()).convert('RGB')
        img.thumbnail((max_side, max_side), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format='JPEG', quality=90)
        out.append(buf.getvalue())
    return out


class RandomPILBlur:
    """PIL GaussianBlur with radius ~ U[0.1, 2], applied with probability ``p``."""

    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        if random.random() > self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


class RandomSolarize:
    def __init__(self, p):
        self.p = p

    def __call__(self, img):
        return ImageOps.solarize(img) if random.random() < self.p else img


def dino_torchvision_views(num_local: int = 10):
    """DINO's DataAugmentationDINO, written with torchvision transforms: image -> views."""
    colour = T.Compose([T.RandomHorizontalFlip(0.5),
                        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                        T.RandomGrayscale(0.2)])
    to_tensor = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406),
                                                     (0.229, 0.224, 0.225))])
    bicubic = T.InterpolationMode.BICUBIC
    first = T.Compose([T.RandomResizedCrop(224, GLOBAL_SCALE, interpolation=bicubic), colour,
                       RandomPILBlur(1.0), to_tensor])
    second = T.Compose([T.RandomResizedCrop(224, GLOBAL_SCALE, interpolation=bicubic), colour,
                        RandomPILBlur(0.1), RandomSolarize(0.2), to_tensor])
    local = T.Compose([T.RandomResizedCrop(96, LOCAL_SCALE, interpolation=bicubic), colour,
                       RandomPILBlur(0.5), to_tensor])
    return lambda img: [first(img), second(img)] + [local(img) for _ in range(num_local)]


def build_loaders(resize: int):
    """name -> function(jpeg bytes) -> one loader sample."""
    multicrop = TRANSFORMS.build(dict(type='MultiCrop', num_global=2, num_local=10,
                                      global_scale=GLOBAL_SCALE, local_scale=LOCAL_SCALE))
    pack = TRANSFORMS.build(dict(type='PackInputs'))
    device_input = TRANSFORMS.build(dict(type='DeviceMultiCropInput', size=resize))
    pack_device = TRANSFORMS.build(dict(type='PackInputs', meta_keys=('img_shape', 'aug_seed')))
    dino = dino_torchvision_views()
    return {
        'MultiCrop (CPU)': lambda b: pack(multicrop(dict(img=mmcv.imfrombytes(b)))),
        'DINO torchvision (CPU)': lambda b: dino(Image.open(io.BytesIO(b)).convert('RGB')),
        'device path: loader part': lambda b: pack_device(device_input(
            dict(img=mmcv.imfrombytes(b)))),
    }


def run(args):
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    init_default_scope('mmpretrain')
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    jpegs = jpeg_inputs() * args.repeats
    loaders = build_loaders(args.resize)
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


def demo_costs(rounds: int) -> dict:
    """config name -> (loader s / batch, preprocessor s / batch), medians over batches."""
    from mmengine.config import Config
    from mmpretrain.registry import DATASETS
    torch.set_num_threads(1)
    init_default_scope('mmpretrain')
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    costs = {}
    for name in ('demo_fashion-mnist.py', 'demo_fashion-mnist_device-crops.py'):
        cfg = Config.fromfile(osp.join(root, 'configs', 'dino', name))
        dataset = DATASETS.build(cfg.train_dataloader.dataset)
        preprocessor = MODELS.build(cfg.model.data_preprocessor)
        batch_size = cfg.train_dataloader.batch_size
        loader, model = [], []
        for r in range(rounds):
            start = time.process_time()
            keys = [(i, r, 0) for i in range(batch_size * r, batch_size * (r + 1))]
            batch = default_collate([dataset[k] for k in keys])
            loader.append(time.process_time() - start)
            start = time.process_time()
            preprocessor(batch, True)
            model.append(time.process_time() - start)
        costs[name] = (statistics.median(loader), statistics.median(model))
    return costs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--rounds', type=int, default=3, help='interleaved rounds (median taken)')
    p.add_argument('--repeats', type=int, default=4,
                   help=f'passes over the {len(PHOTOS)} photos per round')
    p.add_argument('--batch', type=int, default=16)
    p.add_argument('--resize', type=int, default=384, help='DeviceMultiCropInput size')
    p.add_argument('--out', help='write the figures as JSON here')
    p.add_argument('--demo', action='store_true', help='measure the DINO demo configs instead')
    args = p.parse_args(argv)
    if args.demo:
        print('| demo config | loader CPU ms / batch | data preprocessor CPU ms / batch |')
        print('|---|---|---|')
        costs = demo_costs(args.rounds)
        for name, (loader, model) in costs.items():
            print(f'| {name} | {1e3 * loader:.1f} | {1e3 * model:.1f} |')
        return costs
    medians, rounds = run(args)
    reference = medians['MultiCrop (CPU)']
    load = os.getloadavg()
    print(f'# 2 x 224 + 10 x 96 crops, {len(PHOTOS) * args.repeats} JPEGs x {args.rounds} '
          f'rounds, batch {args.batch}, 1 thread, load average {load[0]:.2f} {load[1]:.2f} '
          f'{load[2]:.2f}\n')
    print('| pipeline | CPU ms / image | images / s per core | MultiCrop CPU-s / this |')
    print('|---|---|---|---|')
    for name, sec in medians.items():
        print(f'| {name} | {1e3 * sec:.1f} | {1 / sec:.1f} | {reference / sec:.1f}x |')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(dict(args=vars(args), loadavg=load, median_seconds=medians,
                           rounds=rounds, torch=torch.__version__), f, indent=1)
    return medians


if __name__ == '__main__':
    main()
