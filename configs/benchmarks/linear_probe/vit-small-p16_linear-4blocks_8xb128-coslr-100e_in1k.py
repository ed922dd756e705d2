# Linear probe on ImageNet-1k, DINO's eval_linear.py recipe for ViT-S/16: the pre-trained
# backbone is frozen; the feature is the CLS token of each of the last 4 blocks, each through
# the backbone's final LayerNorm, concatenated (4 x 384 = 1536-d); one linear layer
# (weights N(0, 0.01), bias 0) trained with SGD (momentum 0.9, no weight decay), lr 0.001 per
# 256 images (0.004 for 8 x 128), cosine to 0 over 100 epochs. Train: RandomResizedCrop 224
# + flip; test: resize 256 (bicubic) + center crop 224. Validation every epoch as DINO.
#
# Backbone weights: the file written by tools/model_converters/extract_backbone.py
# (teacher by default):
#   --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/<run>/backbone.pth
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs32_pil_resize.py',
    'mmpretrain::_base_/default_runtime.py',
]
custom_imports = dict(
    imports=['mmpretrain.models', 'mmselfsup_vmf', 'mmselfsup_vmf.evaluation.linear_probe'],
    allow_failed_imports=False)

pretrained = 'work_dirs/backbone.pth'  # output of extract_backbone.py
embed_dims = 384
n_last_blocks = 4
avgpool_patch_tokens = False

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='LinearProbeViT',  # mmpretrain VisionTransformer + DINO's multi-block feature
        arch='deit-small',  # ViT-S/16: 384-d, 12 blocks, 6 heads (mmpretrain 'small' is not)
        img_size=224,
        patch_size=16,
        n_last_blocks=n_last_blocks,
        avgpool_patch_tokens=avgpool_patch_tokens,
        drop_path_rate=0.0,
        frozen_stages=12,  # patch/pos embeddings, all blocks and the final norm
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=embed_dims * (n_last_blocks + int(avgpool_patch_tokens)),
        loss=dict(type='CrossEntropyLoss'),
        topk=(1, 5),
        init_cfg=dict(type='Normal', layer='Linear', std=0.01, bias=0.)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bilinear'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='ResizeEdge', scale=256, edge='short', backend='pillow', interpolation='bicubic'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=128, num_workers=10, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=128, num_workers=10, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.001 * 1024 / 256, momentum=0.9, weight_decay=0.0))
param_scheduler = [
    dict(type='CosineAnnealingLR', T_max=100, eta_min=0.0, by_epoch=True, begin=0, end=100)
]
train_cfg = dict(by_epoch=True, max_epochs=100, val_interval=1)
val_cfg = dict()
test_cfg = dict()
# DINO scales the lr linearly with the total batch (0.001 per 256 images).
auto_scale_lr = dict(base_batch_size=1024)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=50),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=2, save_best='auto'))
randomness = dict(seed=0, diff_rank_seed=True)
# a backbone checkpoint that does not fit model.backbone is an error (mmengine only warns)
custom_hooks = [dict(type='PretrainedMatchHook')]
