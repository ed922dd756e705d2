"""A user-style config (mmpretrain bases via ``mmpretrain::``, our SimDINO / head / loss via
``custom_imports``, mmpretrain's own VisionTransformer) builds and trains in a real Runner."""
import glob
import math
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from testing_utils import load_tool

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs', 'examples', 'mmpretrain_mix_simdino.py')


def test_bases_come_from_mmpretrain():
    with open(CONFIG) as f:
        text = f.read()
    assert "'mmpretrain::_base_/default_runtime.py'" in text
    cfg = Config.fromfile(CONFIG)
    assert cfg.custom_imports == dict(imports=['mmselfsup_vmf'], allow_failed_imports=False)
    assert cfg.default_scope == 'mmpretrain'
    # mmpretrain's MoCo v3 data base: two augmented 224 px views, ImageNet layout
    views = cfg.train_pipeline[1]
    assert views.type == 'MultiView' and views.num_views == [1, 1]
    assert cfg.train_dataloader.dataset.type == 'ImageNet'


def shrink_for_cpu(cfg, work_dir):
    """The user's config on 48 in-memory digits images at 32 px and a 2-layer ViT: the
    mmpretrain augmentations, runtime and backbone class stay as written."""
    for view in cfg.train_pipeline[1].transforms:
        for t in view:
            if t.type == 'RandomResizedCrop':
                t.scale = 32
    pipeline = cfg.train_pipeline[1:]  # in-memory images: no LoadImageFromFile
    cfg.train_dataloader.update(
        batch_size=16, num_workers=0, persistent_workers=False,
        dataset=dict(type='SklearnDigits', split='train', image_size=32, num_train=48,
                     pipeline=pipeline))
    cfg.model.backbone.update(arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                                        feedforward_channels=64), img_size=32, patch_size=8)
    cfg.model.head.update(in_channels=32, hidden_channels=64, bottleneck_channels=16)
    cfg.train_cfg.max_epochs = 1
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint.interval = 1
    cfg.work_dir = str(work_dir)
    cfg.log_level = 'WARNING'
    return cfg


def test_user_config_trains_in_a_runner(tmp_path):
    from mmpretrain.models.backbones import VisionTransformer

    from mmselfsup_vmf.models.algorithms import SimDINO
    from mmselfsup_vmf.models.heads import DINOHead
    from mmselfsup_vmf.models.losses import SimDINOLoss

    cfg = shrink_for_cpu(Config.fromfile(CONFIG), tmp_path)
    runner = Runner.from_cfg(cfg)
    model = runner.model
    assert type(model) is SimDINO
    assert type(model.backbone) is VisionTransformer  # mmpretrain's own class, not a subclass
    assert type(model.head) is DINOHead and type(model.loss_module) is SimDINOLoss

    student_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in model.teacher.module.state_dict().items()}
    runner.train()
    assert runner.iter == 3  # 48 images / 16 per batch, one epoch

    hub = runner.message_hub
    for key in ('loss', 'loss_comp', 'loss_expa', 'comp', 'expa'):
        value = hub.get_scalar(f'train/{key}').current()
        assert math.isfinite(value), key
    total = hub.get_scalar('train/loss').current()
    parts = hub.get_scalar('train/loss_comp').current() + hub.get_scalar(
        'train/loss_expa').current()
    assert total == pytest.approx(parts, rel=1e-5)
    assert 0 < hub.get_scalar('train/comp').current() <= 1
    assert hub.get_scalar('train/expa').current() > 0

    moved = [k for k, v in model.backbone.state_dict().items()
             if not torch.equal(v, student_before[k])]
    assert moved, 'the optimiser did not update the student'
    teacher_moved = [k for k, v in model.teacher.module.state_dict().items()
                     if not torch.equal(v, teacher_before[k])]
    assert teacher_moved, 'the EMA did not update the teacher'
    assert osp.isfile(osp.join(str(tmp_path), 'epoch_1.pth'))


# --------------------------------------------------------------------- as a user runs them
FASHION = '/usr/share/datasets/fashion-mnist'
# ImageNet (mmpretrain's MoCo v3 base) -> demo images in memory, 28 px views, a small ViT;
# only --cfg-options, the config file itself is used as written
IMAGENET_TO_DEMO = [
    'train_dataloader.dataset.type=FashionMNISTSubset',
    f'train_dataloader.dataset.data_root={FASHION}',
    'train_dataloader.dataset.pipeline.0.type=KeyMapper',  # in-memory images: no file loading
    'train_dataloader.dataset.pipeline.1.transforms.0.0.scale=28',
    'train_dataloader.dataset.pipeline.1.transforms.1.0.scale=28',
    'model.backbone.arch=deit-tiny', 'model.backbone.img_size=28', 'model.backbone.patch_size=7',
    'model.head.in_channels=192',
]
SMALL_LOADER = ['train_dataloader.batch_size=8', 'train_dataloader.num_workers=0',
                'train_dataloader.persistent_workers=False', 'log_level=WARNING']
EXAMPLES = sorted(glob.glob(osp.join(ROOT, 'configs', 'examples', '*.py')))


def readme_snippet() -> str:
    """The first python block of docs/own_config.md ('A complete config')."""
    with open(osp.join(ROOT, 'docs', 'own_config.md')) as f:
        text = f.read()
    section = text[text.index('## A complete config'):]
    return re.search(r'```python\n(.*?)```', section, re.S).group(1)


def train_two_iterations(config: str, work_dir, options):
    if not osp.isdir(FASHION):
        pytest.skip(f'the demo data {FASHION} is missing (apt-get install dataset-fashion-mnist)')
    train = load_tool('tools/train.py', 'train_tool')
    runner = train.main([config, '--work-dir', str(work_dir), '--epochs', '1',
                         '--epoch-iters', '2', '--cfg-options', *options, *SMALL_LOADER])
    assert runner.iter == 2
    loss = runner.message_hub.get_scalar('train/loss').current()
    assert math.isfinite(loss)
    assert osp.isfile(osp.join(str(work_dir), 'epoch_1.pth'))
    return runner


def test_readme_snippet_trains_on_the_demo_data(tmp_path):
    config = tmp_path / 'readme_snippet.py'
    config.write_text(readme_snippet())
    runner = train_two_iterations(str(config), tmp_path / 'work', IMAGENET_TO_DEMO)
    assert type(runner.model).__name__ == 'SimDINO'
    assert runner.model.teacher.max_iters == 2  # TrainProgressHook reached the model


@pytest.mark.parametrize('config', EXAMPLES, ids=osp.basename)
def test_each_example_trains(config, tmp_path):
    options = IMAGENET_TO_DEMO if "'ImageNet'" in Config.fromfile(config).pretty_text else []
    train_two_iterations(config, tmp_path, options)


def test_collate_fn_of_a_scoped_base_builds_a_stacked_batch():
    cfg = Config.fromfile(CONFIG)
    # mmengine tags the inherited dict; it would reach default_collate as a keyword
    assert cfg.train_dataloader.collate_fn == dict(type='default_collate', _scope_='mmpretrain')
    loader = Runner.build_dataloader(dict(
        batch_size=4, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
        collate_fn=cfg.train_dataloader.collate_fn,
        dataset=dict(type='SklearnDigits', split='train', image_size=8, num_train=8,
                     pipeline=[dict(type='PackInputs')])))
    batch = next(iter(loader))
    assert isinstance(batch['inputs'], torch.Tensor) and batch['inputs'].shape[0] == 4
