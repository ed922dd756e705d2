# How a user mixes this plugin into their own mmpretrain config: everything generic comes from
# mmpretrain's own bases (runtime, ImageNet data with MoCo v3's two augmented views) and its
# own ViT backbone; only the algorithm, the head and the loss come from mmselfsup_vmf, made
# available by `custom_imports`. Train it like any mmpretrain config:
#   python tools/train.py configs/examples/mmpretrain_mix_simdino.py
#   (or mmpretrain's own tools/train.py; no other change is needed)
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs512_mocov3.py',
    'mmpretrain::_base_/default_runtime.py',
]
# registers SimDINO, DINOHead and SimDINOLoss in mmpretrain's registries
custom_imports = dict(imports=['mmselfsup_vmf'], allow_failed_imports=False)

model = dict(
    type='SimDINO',  # from mmselfsup_vmf
    backbone=dict(  # mmpretrain's own VisionTransformer
        type='VisionTransformer', arch='deit-small', img_size=224, patch_size=16,
        drop_path_rate=0.1, out_type='cls_token'),
    head=dict(  # from mmselfsup_vmf: 3-layer MLP -> L2-normalised 256-d features
        type='DINOHead', in_channels=384, hidden_channels=2048, bottleneck_channels=256,
        num_prototypes=None),
    loss=dict(  # from mmselfsup_vmf: -cosine alignment - gamma * coding rate
        type='SimDINOLoss', eps=0.05, coeff=1.0, expa_type='mean'),
    num_global_views=2,  # MoCo v3's two 224 px views are both "global" (no local crops)
    teacher_momentum=0.996,
    data_preprocessor={{_base_.data_preprocessor}})

# mmengine 0.10 tags every dict of a `mmpretrain::` base with `_scope_` and then passes it to
# the collate function as a keyword (TypeError); restating collate_fn drops the tag
train_dataloader = dict(batch_size=64, collate_fn=dict(_delete_=True, type='default_collate'))

# plain mmengine optimisation (on GPUs use type='AmpOptimWrapper', loss_scale='dynamic')
max_epochs = 100
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='DistillOptimWrapperConstructor',  # one log line for the frozen teacher
    optimizer=dict(type='AdamW', lr=5e-4, betas=(0.9, 0.999), weight_decay=0.04),
    clip_grad=dict(max_norm=3.0),
    paramwise_cfg=dict(bias_decay_mult=0.0, norm_decay_mult=0.0, flat_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-4, by_epoch=True, begin=0, end=10,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 10, eta_min=1e-6, by_epoch=True,
         begin=10, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
default_hooks = dict(checkpoint=dict(max_keep_ckpts=3), divergence=dict(type='DivergenceGuardHook'),
                     unreadable_samples=dict(type='UnreadableSampleHook'))
auto_scale_lr = dict(base_batch_size=256)
