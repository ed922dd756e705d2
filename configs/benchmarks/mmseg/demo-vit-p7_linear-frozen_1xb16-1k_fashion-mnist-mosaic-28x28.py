# Linear head on the frozen demo ViT (28 px, patch 7, 64-d, 4 blocks; every
# configs/<method>/demo_fashion-mnist.py) for the embedded segmentation task: 56x56 mosaics of
# Fashion-MNIST garments, 11 classes. The structure of
# vit-base-p16_linear-frozen_4xb4-160k_ade20k-512x512.py (iBOT's linear recipe): patch tokens
# of all 4 blocks upsampled and concatenated (4 x 64 = 256 channels), one 1x1 conv, backbone
# frozen, AdamW + linear warm-up then poly, sliding-window test. Sized for a CPU: random
# 28x28 crops (the backbone's pre-training size, so its 4x4 position embedding is used as
# it is), 1,000 iterations of 16 crops, a higher lr than ADE20K's 160k-iteration 8e-4.
# tools/benchmarks/dense_fashion_mnist.py runs it on our export and on a random backbone.
#
#   --cfg-options model.backbone.init_cfg.checkpoint=work_dirs/<demo run>/backbone.pth
_base_ = [
    '../../_base_/datasets/fashion_mnist_mosaic.py',
    'mmseg::_base_/default_runtime.py',
    '../../_base_/schedules/mmseg_demo_poly_1k.py',
]
custom_imports = dict(
    imports=['mmpretrain.models', 'mmselfsup_vmf', 'mmselfsup_vmf.datasets.fashion_mnist_mosaic'],
    allow_failed_imports=False)

pretrained = 'work_dirs/backbone.pth'  # output of extract_backbone.py
crop_size = (28, 28)
num_layers = 4
embed_dims = 64
num_classes = 11

data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[72.9, 72.9, 72.9],  # the demo pre-training's normalisation
    std=[90.0, 90.0, 90.0],
    bgr_to_rgb=False,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=data_preprocessor,
    pretrained=None,
    backbone=dict(
        type='mmpretrain.VisionTransformer',
        arch=dict(embed_dims=embed_dims, num_layers=num_layers, num_heads=4,
                  feedforward_channels=128),
        img_size=crop_size[0],
        patch_size=7,
        out_indices=(0, 1, 2, 3),
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
        num_classes=num_classes,
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(14, 14)))

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-2, betas=(0.9, 0.999), weight_decay=0.05))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
# a backbone checkpoint that does not fit model.backbone is an error (mmengine only warns)
custom_hooks = [dict(type='PretrainedMatchHook')]
