"""Every config under configs/ loads with ``Config.fromfile`` and its model builds with the
registry of its ``default_scope`` (full size, no override: the largest, SimDINOv2 ViT-L,
takes ~8 s). Self-distillation configs are also checked for consistent widths and
resolvable hooks / schedulers / transforms, and the DINO recipes against
docs/methods.md#dino-and-ibot-recipes."""
import glob
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import (
    DATA_SAMPLERS,
    HOOKS,
    MODELS,
    OPTIM_WRAPPERS,
    PARAM_SCHEDULERS,
    TRANSFORMS,
    DefaultScope,
)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = sorted(osp.relpath(p, ROOT) for p in
                 glob.glob(osp.join(ROOT, 'configs', '**', '*.py'), recursive=True))
BIG = ('vit-l16',)  # > ~5 s to build on 2 cores


def load(rel):
    return Config.fromfile(osp.join(ROOT, rel))


def registered(registry, scope, name):
    """Whether ``name`` resolves in ``registry`` seen from ``scope`` (as a Runner builds)."""
    with registry.switch_scope_and_registry(scope) as scoped:
        return scoped.get(name) is not None


def find_pipeline(dataset_cfg):
    """The pipeline of a (possibly wrapped, e.g. SeededDataset) dataset config."""
    while dataset_cfg is not None:
        if 'pipeline' in dataset_cfg:
            return dataset_cfg['pipeline']
        dataset_cfg = dataset_cfg.get('dataset')
    return None


def test_configs_are_found():
    assert 'configs/dino/vit-s16_8xb64.py' in CONFIGS
    assert 'configs/dino/vit-b16_8xb64.py' in CONFIGS
    assert 'configs/_base_/schedules/adamw_coslr_coswd.py' in CONFIGS


@pytest.mark.parametrize('rel', [
    pytest.param(c, marks=pytest.mark.slow) if any(b in c for b in BIG) else c
    for c in CONFIGS])
def test_config_loads_and_model_builds(rel):
    cfg = load(rel)
    if 'model' not in cfg:
        assert '_base_' in rel, f'{rel} has no model and is not a _base_ fragment'
        return
    scope = cfg.get('default_scope', 'mmpretrain')
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(cfg.model)
        assert isinstance(model, torch.nn.Module)
        for hook in cfg.get('custom_hooks', []):
            assert registered(HOOKS, scope, hook['type']), hook['type']
        for sched in cfg.get('param_scheduler', []) or []:
            assert registered(PARAM_SCHEDULERS, scope, sched['type']), sched['type']
        if 'optim_wrapper' in cfg:
            wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
            assert registered(OPTIM_WRAPPERS, scope, wrapper), wrapper
        loader = cfg.get('train_dataloader')
        if loader is not None:
            sampler = loader.get('sampler')
            if sampler is not None:
                assert registered(DATA_SAMPLERS, scope, sampler['type']), sampler['type']
            for t in find_pipeline(loader.get('dataset')) or []:
                assert TRANSFORMS.build(t) is not None
    if hasattr(model, 'teacher'):  # the self-distillation family
        check_self_distillation(cfg, model)
    del model


def check_self_distillation(cfg, model):
    assert all(not p.requires_grad for p in model.teacher.parameters())
    embed = model.backbone.embed_dims
    first = model.head.mlp[0]
    assert first.in_features == embed, 'head in_channels must equal the backbone width'
    k = cfg.model.head.get('num_prototypes')
    if k is not None and 'num_prototypes' in cfg.model.loss:
        assert cfg.model.loss.num_prototypes == k
    # the teacher sees only global crops: the pipeline must produce at least that many
    loader = cfg.get('train_dataloader', {})
    for t in find_pipeline(loader.get('dataset')) or []:
        if t['type'] == 'MultiCrop':
            assert t.get('num_global', 2) >= model.num_global_views


def test_dino_recipes_match_the_published_settings():
    """docs/methods.md#dino-and-ibot-recipes: DINO ViT-S/16 and ViT-B/16 settings."""
    s, b = load('configs/dino/vit-s16_8xb64.py'), load('configs/dino/vit-b16_8xb64.py')
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        assert MODELS.build(s.model.backbone).embed_dims == 384  # deit-small, not 'small'
    for cfg, (epochs, lr, min_lr, norm_last, warm, freeze, clip) in (
            (s, (800, 5e-4, 1e-5, False, 30, 1, None)),
            (b, (400, 7.5e-4, 2e-6, True, 50, 3, 3.0))):
        assert cfg.train_cfg.max_epochs == epochs
        assert cfg.optim_wrapper.optimizer.type == 'AdamW'
        assert cfg.optim_wrapper.optimizer.lr == lr
        assert cfg.auto_scale_lr == dict(base_batch_size=256, enable=True)
        assert cfg.param_scheduler[1].eta_min == min_lr
        assert cfg.param_scheduler[0].end == cfg.param_scheduler[1].begin == 10
        wd = cfg.param_scheduler[2]
        assert (wd.param_name, wd.eta_min_ratio) == ('weight_decay', 10.0)
        assert cfg.optim_wrapper.optimizer.weight_decay == 0.04
        assert cfg.model.head.norm_last_layer is norm_last
        assert cfg.model.head.num_prototypes == 65536
        assert cfg.model.teacher_temp == dict(start=0.04, end=0.07, warmup_epochs=warm)
        assert cfg.model.teacher_momentum == 0.996
        assert cfg.model.loss.student_temp == 0.1 and cfg.model.loss.center_momentum == 0.9
        hooks = {h['type']: h for h in cfg.custom_hooks}
        assert hooks['FreezeLastLayerHook']['epochs'] == freeze
        assert 'RandomStateHook' in hooks
        if clip is None:
            assert not cfg.optim_wrapper.get('clip_grad')
        else:
            assert cfg.optim_wrapper.clip_grad == dict(type='per_tensor', max_norm=clip)
        crop = next(t for t in cfg.train_pipeline if t['type'] == 'MultiCrop')
        assert (crop['num_global'], crop['num_local']) == (2, 10)
        assert (crop['global_size'], crop['local_size']) == (224, 96)
        assert tuple(crop['global_scale']) == (0.25, 1.0)
        assert tuple(crop['local_scale']) == (0.05, 0.25)
        assert cfg.model.backbone.drop_path_rate == 0.1
