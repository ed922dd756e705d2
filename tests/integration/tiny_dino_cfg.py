"""The real DINO demo config shrunk for tests: scikit-learn digits at 32 px, a 48-d 2-layer
ViT (patch 8) or a narrow ResNet-18 + GlobalAveragePooling, 2 global 32 px + 2 local 16 px
crops. Schedules, optimiser wrapper, hooks and runtime come from the config files.
(Hook *objects* are registered on the built Runner: ``Runner.from_cfg`` deep-copies.)"""
import os.path as osp

from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(ROOT, 'configs', 'dino', 'demo_fashion-mnist.py')


def tiny_dino_cfg(work_dir, *, backbone='vit', epochs=None, num_train=32, batch=16,
                  drop_path=0.1, k=64, freeze_epochs=1):
    cfg = Config.fromfile(DEMO)
    if backbone == 'vit':
        cfg.model.backbone = dict(
            type='VisionTransformer', img_size=32, patch_size=8, out_type='cls_token',
            drop_path_rate=drop_path,
            arch=dict(embed_dims=48, num_layers=2, num_heads=3, feedforward_channels=96))
        width = 48
    else:
        cfg.model.backbone = dict(type='ResNet', depth=18, stem_channels=16,
                                  base_channels=16)
        cfg.model.neck = dict(type='GlobalAveragePooling')
        width = 128
    cfg.model.head = dict(type='DINOHead', in_channels=width, hidden_channels=64,
                          bottleneck_channels=32, num_prototypes=k, norm_last_layer=False)
    cfg.model.loss = dict(type='DINOLoss', num_prototypes=k, dim=32, centering='logit')
    cfg.model.teacher_temp = dict(start=0.04, end=0.07, warmup_epochs=2)
    pipeline = [dict(type='MultiCrop', num_global=2, num_local=2, global_size=32,
                     local_size=16, global_scale=(0.4, 1.0), local_scale=(0.1, 0.4),
                     interpolation='bilinear'),
                dict(type='PackInputs')]
    cfg.train_dataloader.batch_size = batch
    cfg.train_dataloader.dataset.dataset = dict(
        type='SklearnDigits', split='train', image_size=32, num_train=num_train,
        pipeline=pipeline)
    if epochs is not None:  # stretch the config's schedule (boundaries in epochs)
        old = cfg.train_cfg.max_epochs
        for s in cfg.param_scheduler:
            s.begin = epochs if s.begin == old else s.begin
            s.end = epochs if s.end == old else s.end
            if 'T_max' in s:
                s.T_max = s.end - s.begin
        cfg.train_cfg.max_epochs = epochs
    cfg.custom_hooks = [dict(type='RandomStateHook'),
                        dict(type='FreezeLastLayerHook', epochs=freeze_epochs)]
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = str(work_dir)
    return cfg


def tiny_method_cfg(method, work_dir, *, num_train=32, batch=16,
                    config='demo_fashion-mnist.py'):
    """``configs/<method>/<config>`` (a demo config) on 32 scikit-learn digits at 28 px with a
    48-d 2-layer ViT (patch 7) and no k-NN probe: 2 iterations per epoch, 3 epochs."""
    cfg = Config.fromfile(osp.join(ROOT, 'configs', method, config))
    cfg.model.backbone.arch = dict(embed_dims=48, num_layers=2, num_heads=3,
                                   feedforward_channels=96)
    cfg.model.head.in_channels = 48
    cfg.train_dataloader.update(batch_size=batch, num_workers=0, persistent_workers=False)
    inner = cfg.train_dataloader.dataset.dataset
    cfg.train_dataloader.dataset.dataset = dict(
        type='SklearnDigits', split='train', image_size=28, num_train=num_train,
        pipeline=inner.pipeline)
    cfg.custom_hooks = [h for h in cfg.custom_hooks if h.type != 'KNNHook']
    cfg.visualizer.vis_backends = [dict(type='LocalVisBackend')]
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = str(work_dir)
    return cfg
