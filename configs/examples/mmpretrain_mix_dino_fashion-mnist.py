# A mixed config that trains on the CPU demo data (Debian's Fashion-MNIST, no download):
# mmpretrain's runtime base, mmpretrain's own transforms (MultiView of RandomResizedCrop,
# flips, grey-level jitter), mmpretrain's VisionTransformer and SelfSupDataPreprocessor,
# mmengine's OptimWrapper and schedulers; only DINO, DINOHead, DINOLoss, FashionMNISTSubset and
# TrainProgressHook come from mmselfsup_vmf. About 2 minutes on 2 CPU cores:
#   python tools/train.py configs/examples/mmpretrain_mix_dino_fashion-mnist.py
_base_ = ['mmpretrain::_base_/default_runtime.py']
custom_imports = dict(imports=['mmselfsup_vmf'], allow_failed_imports=False)

view = [  # mmpretrain transforms; 28 px global views of a 28 px image
    dict(type='RandomResizedCrop', scale=28, crop_ratio_range=(0.4, 1.0), backend='pillow'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomApply', prob=0.8,
         transforms=[dict(type='ColorJitter', brightness=0.4, contrast=0.4)]),
]
train_dataloader = dict(
    batch_size=64, num_workers=1, persistent_workers=True, drop_last=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),  # as every mmpretrain dataset base
    dataset=dict(type='FashionMNISTSubset', data_root='/usr/share/datasets/fashion-mnist',
                 split='train', num_samples=6000, image_size=28,
                 pipeline=[dict(type='MultiView', num_views=2, transforms=[view]),
                           dict(type='PackInputs')]))

num_prototypes = 256
model = dict(
    type='DINO',
    backbone=dict(type='VisionTransformer', img_size=28, patch_size=7, out_type='cls_token',
                  arch=dict(embed_dims=64, num_layers=4, num_heads=4, feedforward_channels=128)),
    head=dict(type='DINOHead', in_channels=64, hidden_channels=256, bottleneck_channels=64,
              num_prototypes=num_prototypes),
    loss=dict(type='DINOLoss', num_prototypes=num_prototypes, dim=64),
    num_global_views=2,
    teacher_momentum=0.99,
    data_preprocessor=dict(type='SelfSupDataPreprocessor', mean=[72.9] * 3, std=[90.0] * 3,
                           to_rgb=False))

max_epochs = 2
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.04),
    clip_grad=dict(max_norm=3.0),
    paramwise_cfg=dict(bias_decay_mult=0.0, norm_decay_mult=0.0, flat_decay_mult=0.0))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - 1, eta_min=1e-5, by_epoch=True,
         begin=1, end=max_epochs, convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=max_epochs),
    # epoch / iteration / run length -> the teacher's EMA momentum and temperature schedules
    train_progress=dict(type='TrainProgressHook'))
custom_hooks = [
    dict(type='KNNHook', interval=max_epochs, k=20, temperature=0.07, before_train=True,
         train_dataloader=dict(
             batch_size=256, num_workers=0, collate_fn=dict(type='default_collate'),
             sampler=dict(type='DefaultSampler', shuffle=False),
             dataset=dict(type='FashionMNISTSubset', data_root='/usr/share/datasets/fashion-mnist',
                          split='train', num_samples=5000, seed=1, image_size=28,
                          pipeline=[dict(type='PackInputs')])),
         val_dataloader=dict(
             batch_size=256, num_workers=0, collate_fn=dict(type='default_collate'),
             sampler=dict(type='DefaultSampler', shuffle=False),
             dataset=dict(type='FashionMNISTSubset', data_root='/usr/share/datasets/fashion-mnist',
                          split='test', num_samples=1000, image_size=28,
                          pipeline=[dict(type='PackInputs')])))
]
randomness = dict(seed=0)
