"""docs/custom_dataset.md, followed as a user would: a folder of generated PNG images (sizes
differ, one grey, one in a sub-folder), the config the guide shows, then training through
tools/train.py's main()."""
import math
import os.path as osp
import re

import numpy as np
import pytest
from mmengine.config import Config
from mmpretrain.registry import DATASETS
from PIL import Image
from testing_utils import ROOT, load_tool

GUIDE = osp.join(ROOT, 'docs', 'custom_dataset.md')
GUIDE_BASE = '../dino_vmf/vit-s16_8xb64.py'
GUIDE_ROOT = '/data/my_images'
GREY = 3  # the one single-channel image
PUBLISHED = ['dino/vit-s16_8xb64.py', 'dino_vmf/vit-b16_8xb64.py', 'ibot/vit-s16_8xb64.py',
             'ibot_vmf/vit-s16_8xb64.py', 'simdino/vit-b16_8xb64.py',
             'simdinov2/vit-b16_8xb128.py']
# a tiny model and small crops so that two iterations take seconds; the config file itself
# is the guide's, unchanged apart from the two paths
SMALL = ['model.backbone.arch=deit-tiny', 'model.head.in_channels=192',
         'model.head.num_prototypes=1024', 'model.loss.num_prototypes=1024',
         'train_dataloader.dataset.dataset.pipeline.1.num_local=2',
         'train_dataloader.dataset.dataset.pipeline.1.global_size=64',
         'train_dataloader.dataset.dataset.pipeline.1.local_size=32',
         'train_dataloader.batch_size=2', 'train_dataloader.num_workers=0',
         'train_dataloader.persistent_workers=False', 'log_level=WARNING']


def image_folder(root) -> int:
    """Six PNGs: RGB of several sizes, one grey, two in a sub-folder; returns the count."""
    rng = np.random.default_rng(0)
    (root / 'more').mkdir(parents=True)
    for i in range(6):
        shape = (60 + 10 * i, 90 - 5 * i) + (() if i == GREY else (3,))
        folder = root / 'more' if i % 3 == 2 else root
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f'{i}.png')
    (root / 'notes.txt').write_text('not an image')
    return 6


def guide_config(tmp_path, data_root, base=GUIDE_BASE) -> str:
    """The guide's config block with its base made absolute and its data_root pointed at the
    temporary folder."""
    with open(GUIDE) as f:
        text = f.read()
    block = re.search(r'## 2\. A config.*?```python\n(.*?)```', text, re.S).group(1)
    assert f"'{GUIDE_BASE}'" in block and f"'{GUIDE_ROOT}'" in block
    # the guide saves its config in configs/my_images/, so its base is relative to that
    absolute = osp.normpath(osp.join(ROOT, 'configs', 'my_images', base))
    block = block.replace(f"'{GUIDE_BASE}'", repr(absolute))
    block = block.replace(f"'{GUIDE_ROOT}'", repr(str(data_root)))
    path = tmp_path / 'my_images_config.py'
    path.write_text(block)
    return str(path)


@pytest.mark.parametrize('base', PUBLISHED)
def test_guide_config_reads_every_image_for_each_published_recipe(tmp_path, base):
    count = image_folder(tmp_path / 'images')
    cfg = Config.fromfile(guide_config(tmp_path, tmp_path / 'images', '../' + base))
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    assert type(dataset).__name__ == 'SeededDataset'
    assert type(dataset.dataset).__name__ == 'CustomDataset'
    assert len(dataset) == count  # notes.txt is not an image
    multicrop = next(t for t in cfg.train_dataloader.dataset.dataset.pipeline
                     if t['type'] == 'MultiCrop')
    paths = [dataset.dataset.get_data_info(i)['img_path'] for i in range(count)]
    grey = next(i for i, path in enumerate(paths) if osp.basename(path) == f'{GREY}.png')
    sample = dataset[(grey, 0, 0)]  # three channels like the others
    glob, loc = multicrop['global_size'], multicrop['local_size']
    expected = [(3, glob, glob)] * multicrop['num_global'] + [(3, loc, loc)] * multicrop[
        'num_local']
    assert [tuple(x.shape) for x in sample['inputs']] == expected


def test_guide_config_trains_two_iterations(tmp_path):
    image_folder(tmp_path / 'images')
    train = load_tool('tools/train.py', 'train_tool')
    runner = train.main([guide_config(tmp_path, tmp_path / 'images'),
                         '--work-dir', str(tmp_path / 'work'), '--epochs', '2',
                         '--epoch-iters', '1', '--cfg-options', *SMALL])
    assert runner.iter == 2
    assert type(runner.model).__name__ == 'DINO' and runner.model.loss_module.vmf  # DINO-vMF
    assert math.isfinite(runner.message_hub.get_scalar('train/loss').current())
    assert osp.isfile(tmp_path / 'work' / 'epoch_2.pth')
