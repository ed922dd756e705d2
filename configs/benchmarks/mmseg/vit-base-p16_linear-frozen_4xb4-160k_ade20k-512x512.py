# ADE20K semantic segmentation, linear head on a frozen pre-trained ViT-B/16, 512x512, 160k.
# Recipe of iBOT (evaluation/semantic_segmentation/configs/linear/vit_base_512_ade20k_160k.py
# and its README command for ViT-B/16): the patch tokens of blocks 3/5/7/11 are upsampled,
# concatenated (4 x 768 = 3072 channels) and classified by one 1x1 convolution; every
# backbone parameter is frozen; AdamW lr 8e-4, weight decay 0.05, 1500 linear warm-up
# iterations then poly (power 1), batch 4x4, sliding-window test (stride 341).
# Layer-wise LR decay does not apply: the only trained layer is the head.
# Deviation (documented in docs/downstream.md): mmpretrain's ViT applies its final LayerNorm
# to the last block only (iBOT's `out_with_norm=true` normalises blocks 3/5/7 too).
#
# Set the exported backbone with:
#   --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/<run>/backbone.pth
_base_ = [
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['mmpretrain.models', 'mmselfsup_vmf'],
                      allow_failed_imports=False)

pretrained = 'work_dirs/backbone.pth'  # output of extract_backbone.py
crop_size = (512, 512)
num_layers = 12
embed_dims = 768

data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='mmpretrain.VisionTransformer',
        arch='base',
        img_size=512,
        patch_size=16,
        out_indices=(3, 5, 7, 11),
        out_type='featmap',
        final_norm=True,
        drop_path_rate=0.0,
        interpolate_mode='bicubic',
        frozen_stages=num_layers,  # patch/pos embeddings, all blocks and the final norm
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(
        type='FCNHead',
        in_channels=[embed_dims] * 4,
        in_index=[0, 1, 2, 3],
        input_transform='resize_concat',
        channels=embed_dims * 4,
        num_convs=0,  # linear: only the 1x1 classifier conv_seg
        concat_input=False,
        dropout_ratio=0.0,
        num_classes=150,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=8e-4, betas=(0.9, 0.999), weight_decay=0.05))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]

# 4 GPUs x 4 images (iBOT); scale the lr linearly if you change the total batch of 16.
train_dataloader = dict(batch_size=4)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
auto_scale_lr = dict(enable=False, base_batch_size=16)
# a backbone checkpoint that does not fit model.backbone is an error (mmengine only warns)
custom_hooks = [dict(type='PretrainedMatchHook')]
